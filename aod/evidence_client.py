"""The core's side of the evidence helper: ask aodv2-evidence.socket, render its answer (collect layer).

ring -> dispatch -> detect -> **collect** (actionrun.py evidence steps -> this -> evidence.py).

`request()` connects to /run/aodv2/evidence.sock (AF_UNIX: reachable from the core's private
network namespace, a path socket is not a network), sends one JSON line and reads one bounded
JSON answer, all within `timeout`. A socket that is not there (demo, tests, not installed) is
`Unavailable`, which the actions report as skipped. `render()` turns a section into the
readable bundle file (stacks.txt, inflight.txt, connections.txt).
"""

from __future__ import annotations

import errno
import json
import socket
import time
from typing import Any, Iterable

RESPONSE_MAX = 8 * 1024 * 1024  # evidence.RESPONSE_MAX (not imported: the helper is root-only code)
SECTIONS = ("stacks", "inflight", "connections")
_UNAVAILABLE = {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.EACCES, errno.EPERM}


class EvidenceError(Exception):
    """The helper answered badly, or not in time."""


class Unavailable(EvidenceError):
    """No helper listens on the socket (not installed, socket unit stopped, demo, tests)."""


def request(path: str, want: Iterable[str], pids: Iterable[int], timeout: float) -> dict[str, Any]:
    """One request -> the helper's answer (a dict). Blocking; bounded in time and size."""
    end = time.monotonic() + max(timeout, 0.1)
    budget_ms = int(min(max(timeout * 0.8 * 1000, 100), 60_000))  # the helper stops its scan before we give up
    line = json.dumps({"want": list(want), "pids": sorted(set(pids))[:256], "budget_ms": budget_ms}).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(max(end - time.monotonic(), 0.01))
        try:
            s.connect(path)
        except OSError as e:
            if e.errno in _UNAVAILABLE:
                raise Unavailable(f"{path}: {e.strerror}") from None
            raise EvidenceError(f"cannot connect to {path}: {e.strerror or e}") from None
        s.sendall(line + b"\n")
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            s.settimeout(left)
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            if len(buf) > RESPONSE_MAX:
                raise EvidenceError(f"answer from {path} larger than {RESPONSE_MAX} bytes")
    except socket.timeout:
        raise EvidenceError(f"no answer from {path} within {timeout:g}s") from None
    except OSError as e:
        raise EvidenceError(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        resp = json.loads(bytes(buf))
    except ValueError:
        raise EvidenceError(f"answer from {path} is not JSON ({len(buf)} bytes)") from None
    if not isinstance(resp, dict):
        raise EvidenceError(f"answer from {path} is not a JSON object")
    if "error" in resp:
        raise EvidenceError(f"the helper refused the request: {resp['error']}")
    return resp


# --- the readable files -------------------------------------------------------------------


def _txt(v: Any) -> str:
    """One field on one line: control characters (a task named "x\\n1 2 ...") as \\xNN."""
    s = str(v)
    return s if s.isprintable() else "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)


def _stacks(resp: dict[str, Any]) -> list[str]:
    tasks = resp.get("stacks") or []
    out = [f"# {len(tasks)} tasks: in D state, with cifs/smb frames, cifsd, or the hung requests' issuers",
           "# pid tid comm state wchan (why)"]
    for t in tasks:
        out.append("")
        out.append(f"{t.get('pid')} {t.get('tid')} {_txt(t.get('comm'))} {_txt(t.get('state'))} "
                   f"{_txt(t.get('wchan') or '-')} ({_txt(','.join(t.get('why') or []))})")
        out.extend(f"    {_txt(ln)}" for ln in t.get("stack") or ["(no stack)"])
        if t.get("stack_truncated"):
            out.append("    ... (stack cut)")
    return out


def _inflight(resp: dict[str, Any]) -> list[str]:
    rows = resp.get("inflight") or []
    out = [f"# {len(rows)} requests in flight (map hung = past the hung threshold), oldest first",
           f"{'AGE_MS':>12} {'MAP':8} {'COMMAND':16} {'MID':>8} {'PID':>7} {'COMM':16} "
           f"{'SESSION':>18} {'TREE':>10} {'CONN':9} SHARE"]
    for r in rows:
        share = _txt(r.get("share") or "?")
        server = _txt(r["server"]) if r.get("server") else None
        out.append(f"{r.get('age_ms', 0):12.3f} {r.get('map', ''):8} {r.get('command', ''):16} "
                   f"{r.get('mid', 0):>8} {r.get('pid', 0):>7} {_txt(r.get('comm', '')):16} "
                   f"{r.get('session', 0):#18x} {r.get('tree', 0):#10x} {r.get('conn', '') or '-':9} "
                   f"{share}{f' (server {server})' if server and server not in share else ''}")
    return out


def render(section: str, resp: dict[str, Any]) -> bytes:
    """The bundle file of one section: a header, the data, and the helper's notes."""
    if section == "stacks":
        lines = _stacks(resp)
    elif section == "inflight":
        lines = _inflight(resp)
    else:
        lines = ["# TCP connections to/from ports 445 and 139 in the host's network namespace "
                 "(ss -tnioem)", str(resp.get("connections") or "")]
    for what, notes in (("error", resp.get("errors")), ("missing", resp.get("missing"))):
        if isinstance(notes, dict) and notes.get(section):
            lines.append(f"# {what}: {notes[section]}")
    if isinstance(resp.get("truncated"), dict) and resp["truncated"].get(section):
        lines.append("# truncated: the helper's bound was reached")
    return ("\n".join(lines).rstrip("\n") + "\n").encode("utf-8", "replace")
