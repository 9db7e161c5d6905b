"""`aodv2 evidence`: the privileged evidence helper (collect layer, beside the core).

ring -> dispatch -> detect -> **collect** (actions ask this helper through evidence_client.py).

The core's sandbox cannot see what explains a hang while it holds: /proc/PID/stack needs
CAP_SYS_ADMIN (and CAP_SYS_PTRACE for other users' tasks), ProtectProc=invisible hides other
users' tasks, PrivateNetwork= hides the host's sockets. aodv2-evidence.socket (root only,
0600) starts one aodv2-evidence@.service per connection with the connection as stdin and
stdout; that unit holds CAP_SYS_ADMIN + CAP_SYS_PTRACE, runs in the host's network namespace
and writes nothing. It reads one JSON request line, writes one JSON response and exits:

  request  {"want": ["stacks", "inflight", "connections"], "pids": [int, ...], "budget_ms": int}
           (<= 4 KiB; unknown keys or wrong types -> {"error": "..."}; pids and budget_ms optional)
  response {"version": 1, "stacks": [...], "inflight": [...], "connections": "ss text",
            "errors": {section: message}, "missing": {section: why there is nothing to read},
            "truncated": {section: bool}, "duration_s": float}

It reads only /proc, the pinned maps (read-only) and `ss` output: never a mount path, so a
hung mount cannot block it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
from typing import IO, Any, Callable, Optional

from . import bpfsys
from .smb2 import command_name

VERSION = 1
SECTIONS = ("stacks", "inflight", "connections")
REQUEST_MAX = 4096
RESPONSE_MAX = 8 * 1024 * 1024
PIDS_MAX = 256
PID_MAX = 1 << 22  # kernel PID_MAX_LIMIT
BUDGET_MS_DEFAULT, BUDGET_MS_MIN, BUDGET_MS_MAX = 10_000, 100, 60_000
READ_TIMEOUT_SEC = 5.0  # the request line must arrive within this (the core sends it at once)

TASKS_SCANNED_MAX = 65_536  # threads looked at
TASKS_MAX = 2048  # threads reported
STACK_CAP = 64 * 1024  # bytes read per /proc/PID/task/TID/stack
STACKS_TOTAL_CAP = 4 * 1024 * 1024
INFLIGHT_MAX = 4096  # per map, the oldest kept
CONNECTIONS_CAP = 1024 * 1024
SS_TIMEOUT = 5.0
SMB_PORTS = (445, 139)
PIN_DIR = "/sys/fs/bpf/aodv2"
MAPS = (("inflight", "inflight_v1"), ("hung", "hung_v1"))
SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# a frame of the cifs module, or of its functions (SMB2_open, smb2_reconnect, cifs_*, smbd_*)
CIFS_FRAME = re.compile(r"(?i)\[cifs\]|(?:cifs|smb2|smb3|smbd_|smb_send)\w*\+0x")
# struct aod_key (u64 conn, u64 sesid, u64 mid, u16 cmd, u16 pad, u32 pad2),
# struct aod_start (u64 ts, u32 pid, u32 tid = tree id, char comm[16]): bpf/smb.bpf.c
KEY = struct.Struct("<QQQHHI")
START = struct.Struct("<QII16s")


class RequestError(ValueError):
    pass


def parse_request(raw: bytes) -> dict[str, Any]:
    """Validate one request line strictly; RequestError names what is wrong."""
    if len(raw) > REQUEST_MAX:
        raise RequestError(f"request longer than {REQUEST_MAX} bytes")
    try:
        req = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"request is not JSON: {e}") from None
    except RecursionError:  # 4 KiB of "[[[[": nested deeper than the decoder's stack
        raise RequestError("request is not JSON: nested too deeply") from None
    if not isinstance(req, dict):
        raise RequestError("request must be a JSON object")
    unknown = sorted(set(req) - {"want", "pids", "budget_ms"})
    if unknown:
        raise RequestError(f"unknown request keys: {', '.join(map(str, unknown))}")
    want = req.get("want")
    if not isinstance(want, list) or not want or not all(isinstance(w, str) and w in SECTIONS for w in want):
        raise RequestError(f"want: expected a non-empty list of {', '.join(SECTIONS)}")
    pids = req.get("pids", [])
    if not isinstance(pids, list) or len(pids) > PIDS_MAX or not all(
            type(p) is int and 0 < p <= PID_MAX for p in pids):
        raise RequestError(f"pids: expected a list of at most {PIDS_MAX} pids (1..{PID_MAX})")
    budget = req.get("budget_ms", BUDGET_MS_DEFAULT)
    if type(budget) is not int or not BUDGET_MS_MIN <= budget <= BUDGET_MS_MAX:
        raise RequestError(f"budget_ms: expected an integer {BUDGET_MS_MIN}..{BUDGET_MS_MAX}")
    return {"want": list(dict.fromkeys(want)), "pids": sorted(set(pids)), "budget_ms": budget}


# --- stacks -------------------------------------------------------------------------------


def _read(path: str, cap: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read(cap + 1)


def parse_stat(text: str) -> tuple[str, str]:
    """(comm, state) of a /proc/PID/task/TID/stat line (comm may hold spaces and parentheses)."""
    head, _, rest = text.partition(" (")
    comm, _, tail = rest.rpartition(") ")
    return comm, tail[:1] if head.strip().isdigit() else ""


def is_cifs_stack(lines: list[str]) -> bool:
    return any(CIFS_FRAME.search(ln) for ln in lines)


def collect_stacks(proc: str, pids: list[int], deadline: float) -> tuple[list[dict[str, Any]], bool, str]:
    """Tasks in D state, with cifs/smb frames, named cifsd, or asked for. (tasks, truncated, error)."""
    wanted = set(pids)
    out: list[dict[str, Any]] = []
    truncated, denied, scanned, total = False, "", 0, 0
    try:
        procs = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError as e:
        return [], False, f"cannot list {proc}: {e.strerror or e}"
    for pid in procs:
        try:
            tids = sorted(int(t) for t in os.listdir(f"{proc}/{pid}/task") if t.isdigit())
        except OSError:  # exited
            continue
        for tid in tids:
            scanned += 1
            if scanned > TASKS_SCANNED_MAX or time.monotonic() > deadline:
                return out, True, denied or "task scan stopped at its bound (tasks or time budget)"
            base = f"{proc}/{pid}/task/{tid}"
            try:
                comm, state = parse_stat(_read(f"{base}/stat", 4096).decode("utf-8", "replace"))
            except OSError:
                continue
            lines: list[str] = []
            cut = False
            try:
                raw = _read(f"{base}/stack", STACK_CAP)
                cut = len(raw) > STACK_CAP
                lines = raw[:STACK_CAP].decode("utf-8", "replace").splitlines()
            except OSError as e:
                if not denied and e.errno in (1, 13):  # EPERM, EACCES
                    denied = (f"cannot read {base}/stack: {e.strerror} (needs CAP_SYS_ADMIN, CAP_SYS_PTRACE "
                              "and CAP_DAC_READ_SEARCH)")
            why = [w for w, hit in (("D", state == "D"), ("cifs", is_cifs_stack(lines)),
                                    ("cifsd", comm.startswith("cifsd")),
                                    ("requested", pid in wanted or tid in wanted)) if hit]
            if not why:
                continue
            if len(out) >= TASKS_MAX or total >= STACKS_TOTAL_CAP:
                truncated = True
                continue
            try:
                wchan = _read(f"{base}/wchan", 256)[:256].decode("utf-8", "replace").strip()
            except OSError:
                wchan = ""
            total += sum(len(ln) + 1 for ln in lines)
            out.append({"pid": pid, "tid": tid, "comm": comm, "state": state, "wchan": wchan,
                        "why": why, "stack": lines, "stack_truncated": cut})
    return out, truncated, denied


# --- in-flight requests ---------------------------------------------------------------------


def conn_label(conn: int) -> str:
    """A stable short label of a connection pointer: never the kernel address itself."""
    return "" if not conn else "c" + hashlib.sha256(conn.to_bytes(8, "little")).hexdigest()[:8]


def decode_inflight(key: bytes, value: bytes, now_ns: int, where: str) -> dict[str, Any]:
    conn, sesid, mid, cmd, _pad, _pad2 = KEY.unpack_from(key)
    ts, pid, tree, comm = START.unpack_from(value)
    return {"map": where, "age_ms": round(max(now_ns - ts, 0) / 1e6, 3), "command": command_name(cmd),
            "mid": mid, "pid": pid, "comm": comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
            "session": sesid, "tree": tree, "conn": conn_label(conn)}


def _names(pin_dir: str) -> Optional[Any]:
    """aod.names.Names over the pins and DebugData (share(sesid, tid), server_of_session)."""
    try:
        from .names import Names

        return Names(pin_dir)
    except Exception:  # noqa: BLE001 - names are a nicety; the table stands without them
        return None


def collect_inflight(pin_dir: str,
                     items: Callable[[str, int], tuple[list[tuple[bytes, bytes]], bool]] = bpfsys.map_items,
                     names: Optional[Any] = None) -> tuple[list[dict[str, Any]], bool, str, str]:
    """Every request in inflight_v1 and hung_v1, oldest first (INFLIGHT_MAX per map).
    (rows, truncated, error, missing): missing when no map is pinned (no smb tracer)."""
    out: list[dict[str, Any]] = []
    errors: list[str] = []
    absent: list[str] = []
    truncated = False
    for where, pin in MAPS:
        path = os.path.join(pin_dir, pin)
        try:
            pairs, cut = items(path, 4 * INFLIGHT_MAX)
        except OSError as e:
            (absent if e.errno == 2 else errors).append(f"{path}: {e.strerror or e}")
            continue
        now = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
        rows = [decode_inflight(k, v, now, where) for k, v in pairs if len(k) >= KEY.size and len(v) >= START.size]
        rows.sort(key=lambda r: -r["age_ms"])
        truncated |= cut or len(rows) > INFLIGHT_MAX
        out.extend(rows[:INFLIGHT_MAX])
    if out and names is not None:
        try:
            if hasattr(names, "refresh"):
                names.refresh()
            for r in out:
                r["share"] = names.share(r["session"], r["tree"])
                r["server"] = names.server_of_session(r["session"])
        except Exception as e:  # noqa: BLE001
            errors.append(f"names: {e!r}")
    out.sort(key=lambda r: -r["age_ms"])
    if len(absent) == len(MAPS):
        return out, False, "; ".join(errors), "no in-flight maps pinned (is the smb tracer attached?): " + \
            ", ".join(absent)
    errors += absent
    return out, truncated, "; ".join(errors), ""


# --- connections ----------------------------------------------------------------------------


def ss_argv(ss: str) -> list[str]:
    """TCP sockets to or from the SMB ports, with internals (rtt, retrans, timers, queues)."""
    filt: list[str] = ["("]
    for i, port in enumerate(SMB_PORTS):
        filt += (["or"] if i else []) + ["dport", "=", f":{port}", "or", "sport", "=", f":{port}"]
    return [ss, "-t", "-n", "-i", "-o", "-e", "-m", *filt, ")"]


def run_bounded(argv: list[str], timeout: float, cap: int) -> tuple[bytes, str]:
    """Run argv (no shell); stdout up to cap bytes. (output, problem or "")."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # noqa: S603 - argv list
                            stderr=subprocess.PIPE, close_fds=True, start_new_session=True,
                            env={"PATH": SYS_PATH, "LC_ALL": "C"})
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    end = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    problem = ""
    try:
        while sel.get_map():
            left = end - time.monotonic()
            if left <= 0:
                problem = f"timed out after {timeout:g}s (killed)"
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                buf.extend(chunk[: max(0, cap + 1 - len(buf))])
    finally:
        sel.close()
        if problem:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        rc: Optional[int] = None
        try:
            rc = proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass
        proc.stdout.close()
        proc.stderr.close()
    if len(out) > cap:
        problem = problem or f"output cut at {cap} bytes"
    if not problem and rc:
        problem = f"exit {rc}: {err.decode('utf-8', 'replace').strip()[-300:]}"
    return bytes(out[:cap]), problem


def collect_connections(which: Callable[[str], Optional[str]],
                        timeout: float = SS_TIMEOUT) -> tuple[str, bool, str, str]:
    ss = which("ss")
    if ss is None:
        return "", False, "", f"ss not found in {SYS_PATH} (install iproute2)"
    try:
        out, problem = run_bounded(ss_argv(ss), timeout, CONNECTIONS_CAP)
    except OSError as e:
        return "", False, f"cannot run {ss}: {e.strerror or e}", ""
    text = out.decode("utf-8", "replace")
    return text, "cut at" in problem, problem, ""


# --- the request ----------------------------------------------------------------------------


def answer(req: dict[str, Any], proc: str = "/proc", pin_dir: str = PIN_DIR) -> dict[str, Any]:
    t0 = time.monotonic()
    deadline = t0 + req["budget_ms"] / 1000.0
    resp: dict[str, Any] = {"version": VERSION, "errors": {}, "missing": {}, "truncated": {}}
    # the quick sections first; the task scan, which stops at the deadline, last: the whole answer
    # stays within budget_ms, so the core (which waits a little longer) never drops all of it
    for section in sorted(req["want"], key=lambda s: s == "stacks"):
        missing, err, cut = "", "", False
        try:
            if section == "stacks":
                tasks, cut, err = collect_stacks(proc, req["pids"], deadline)
                resp["stacks"] = tasks
            elif section == "inflight":
                rows, cut, err, missing = collect_inflight(pin_dir, names=_names(pin_dir))
                resp["inflight"] = rows
            else:
                left = min(SS_TIMEOUT, deadline - time.monotonic())
                if left < 0.05:
                    resp["connections"], err = "", "not run: the time budget was used up"
                else:
                    text, cut, err, missing = collect_connections(lambda n: shutil.which(n, path=SYS_PATH), left)
                    resp["connections"] = text
        except Exception as e:  # noqa: BLE001 - one section's bug must not lose the others
            err = f"internal error: {e!r}"[:500]
        resp["truncated"][section] = cut
        for key, note in (("errors", err), ("missing", missing)):
            if note:
                resp[key][section] = note
    resp["duration_s"] = round(time.monotonic() - t0, 3)
    return resp


def encode(resp: dict[str, Any], limit: int = RESPONSE_MAX) -> bytes:
    """JSON of resp within `limit` bytes: drops stack tasks, then rows, from the end."""
    data = json.dumps(resp, separators=(",", ":")).encode() + b"\n"
    while len(data) > limit:
        for section in ("stacks", "inflight"):
            items = resp.get(section)
            if items:
                del items[len(items) // 2:]
                resp["truncated"][section] = True
                break
        else:
            resp["connections"] = resp.get("connections", "")[: limit // 4]
            resp["truncated"]["connections"] = True
        data = json.dumps(resp, separators=(",", ":")).encode() + b"\n"
    return data


def read_line(stream: IO[bytes], limit: int = REQUEST_MAX, timeout: Optional[float] = None) -> bytes:
    """One line (without its newline) of at most `limit` bytes; longer raises RequestError.
    timeout: a peer that sends no full line within it (a stuck or idle client) is refused, so
    the helper never waits for RuntimeMaxSec; needs a real fd (the socket systemd passes)."""
    fd = -1
    if timeout is not None:
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # io.UnsupportedOperation: a buffer in tests
            pass
    if fd >= 0 and timeout is not None:
        return _read_line_fd(fd, limit, timeout)
    line = stream.readline(limit + 1)
    if len(line) > limit and not line.endswith(b"\n") or len(line.rstrip(b"\n")) > limit:
        raise RequestError(f"request longer than {limit} bytes")
    return line.rstrip(b"\r\n")


def _read_line_fd(fd: int, limit: int, timeout: float) -> bytes:
    end = time.monotonic() + timeout
    buf = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = end - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RequestError(f"no request line within {timeout:g}s")
            chunk = os.read(fd, limit + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
            if len(buf) > limit and b"\n" not in buf[: limit + 1]:
                raise RequestError(f"request longer than {limit} bytes")
    line = bytes(buf).split(b"\n", 1)[0]
    if len(line) > limit:
        raise RequestError(f"request longer than {limit} bytes")
    return line.rstrip(b"\r")


def serve(stdin: IO[bytes], stdout: IO[bytes], proc: str = "/proc", pin_dir: str = PIN_DIR,
          read_timeout: Optional[float] = None) -> int:
    """One request -> one response. 0 answered, 2 bad request (answered with an error)."""
    try:
        req = parse_request(read_line(stdin, timeout=read_timeout))
    except RequestError as e:
        stdout.write(json.dumps({"version": VERSION, "error": str(e)}).encode() + b"\n")
        stdout.flush()
        return 2
    stdout.write(encode(answer(req, proc, pin_dir)))
    stdout.flush()
    return 0


def main(proc: str = "/proc", pin_dir: str = PIN_DIR) -> int:
    return serve(sys.stdin.buffer, sys.stdout.buffer, proc, pin_dir, READ_TIMEOUT_SEC)
