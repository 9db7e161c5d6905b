"""Shared helpers of the guest-side VM drivers e2e_run.py and faults_run.py.

They drive the installed .deb from the outside, as an operator would: systemctl, journalctl,
/etc/aodv2/config.yaml and the bundles in /var/log/aodv2 (the collect -> retain end of the data
flow ring -> dispatch -> detect -> collect -> retain). run.py copies tests/vm/guest/ to
/share/vmlib, so a driver started as `python3 /share/vmlib/<name>.py` imports this module.

    setup(name, base)        log prefix, config temp-file suffix, the driver's base config
    log, run, wait_for       output line, subprocess without a shell, polling
    prop, main_pid, active   systemctl show / is-active of a unit (default aodv2.service)
    cursor, journal, wait_journal, since_arg, diagnostics
                             journal records after a CLOCK_MONOTONIC mark; a failed scenario's
                             journal tail and `systemctl status` (printed and kept in the report)
    timespan_s               seconds of a systemd time span ("30s", "1min 30s", bare microseconds)
    merged, write_config, reload_config
                             the driver's base config plus overrides; `systemctl reload`
    read_bundle, summary_of  members of a .tar.zst bundle
    Checks, run_scenarios    named pass/fail checks; the scenario loop writing the JSON report
                             (tests/vm/e2e_summary.py prints it on the host; unselected = skipped)

Guest python only (python3 with yaml; zstandard where the suite has it, else the zstd CLI:
Debian 11 has no python3-zstandard).
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import yaml

try:
    import zstandard
except ImportError:  # Debian 11: the bundles are read through the zstd CLI
    zstandard = None

CONFIG = "/etc/aodv2/config.yaml"
OUT = "/var/log/aodv2"
PIN_DIR = "/sys/fs/bpf/aodv2"
CORE = "aodv2.service"
MID = {  # aod/log.py MESSAGE_IDS (man aodv2(8), MESSAGE IDS)
    "ready": "a0d20002c0de4b1a9f0e7d6c5b4a3921",
    "anomaly": "a0d20004c0de4b1a9f0e7d6c5b4a3921",
    "suppressed": "a0d20005c0de4b1a9f0e7d6c5b4a3921",
    "bundle": "a0d20006c0de4b1a9f0e7d6c5b4a3921",
    "capture_failed": "a0d20007c0de4b1a9f0e7d6c5b4a3921",
    "action_failed": "a0d20008c0de4b1a9f0e7d6c5b4a3921",
    "reloaded": "a0d2000ac0de4b1a9f0e7d6c5b4a3921",
    "reload_failed": "a0d2000bc0de4b1a9f0e7d6c5b4a3921",
    "pruned": "a0d2000cc0de4b1a9f0e7d6c5b4a3921",
    "upload": "a0d20012c0de4b1a9f0e7d6c5b4a3921",
    "upload_failed": "a0d20013c0de4b1a9f0e7d6c5b4a3921",
    "control": "a0d20014c0de4b1a9f0e7d6c5b4a3921",
}

# set by setup(): the driver's name ("e2e", "faults") and its base config
_NAME = "guest"
_BASE: Dict[str, Any] = {}

Record = Dict[str, Any]


def setup(name: str, base: Dict[str, Any]) -> None:
    """name: the log prefix and config temp-file suffix; base: what write_config merges overrides into."""
    global _NAME, _BASE
    _NAME, _BASE = name, base


def log(msg: str) -> None:
    print(f"[{_NAME} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(argv: List[str], timeout: float = 120, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """argv without a shell; a timeout gives returncode 124 and what was read so far, a missing tool 127."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)  # noqa: S603
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return subprocess.CompletedProcess(argv, 124, out, f"timeout after {timeout}s")
    except OSError as e:  # tool missing or not executable: 127, like a shell
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {e.strerror or e}")


def mono_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.5) -> Any:
    """pred() until it is truthy or timeout s passed; its last value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


# ---------------------------------------------------------------- systemd / journal

def proc_state(pid: int) -> str:
    """The one-letter state of a process (R, S, D, T, ...), "?" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def prop(name: str, unit: str = CORE) -> str:
    return run(["systemctl", "show", "-p", name, "--value", unit]).stdout.strip()


def main_pid(unit: str = CORE) -> int:
    try:
        return int(prop("MainPID", unit) or 0)
    except ValueError:
        return 0


def active(unit: str = CORE) -> bool:
    """Up: active, or reloading (a reload of aodv2 propagates to the tracers for a moment)."""
    return run(["systemctl", "is-active", unit]).stdout.strip() in ("active", "reloading")


def cursor() -> int:
    """A mark: CLOCK_MONOTONIC now in microseconds. Records logged later are "after" it.

    (Not a journal cursor: `journalctl --after-cursor` combined with -u and field matches
    missed records in this guest, so records are filtered here by __MONOTONIC_TIMESTAMP,
    which is CLOCK_MONOTONIC of the same boot.)
    """
    return mono_us()


def since_arg(mark: int) -> List[str]:
    """journalctl --since for a cursor() mark (coarse, 2 s early; journal() filters exactly); 0: none."""
    if not mark:
        return []
    wall = time.time() - (mono_us() - mark) / 1e6 - 2.0
    return [f"--since=@{int(wall)}"]


def journal(mark: int = 0, units: Tuple[str, ...] = (CORE,), mid: str = "") -> List[Record]:
    """Records of `units` this boot logged after cursor() `mark` (0: all), optionally of one MESSAGE_ID kind."""
    argv = ["journalctl", "-o", "json", "--no-pager", "-b"] + since_arg(mark)
    for u in units:
        argv += ["-u", u]
    out = []
    for line in run(argv, timeout=60).stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        for k, v in list(e.items()):
            if isinstance(v, list):  # binary (byte array) or repeated field
                e[k] = bytes(v).decode("utf-8", "replace") if v and isinstance(v[0], int) else v[-1]
        if mark and int(e.get("__MONOTONIC_TIMESTAMP", 0)) <= mark:
            continue
        if mid and e.get("MESSAGE_ID") != MID[mid]:
            continue
        out.append(e)
    return out


def wait_journal(mark: int, mids: Union[str, Tuple[str, ...]], timeout: float,
                 where: Callable[[Record], bool] = lambda e: True, step: float = 0.5) -> Optional[Record]:
    """The first aodv2.service record after `mark` of kind `mids` (one or several) matching `where`."""
    ids = {MID[m] for m in ((mids,) if isinstance(mids, str) else mids)}

    def find() -> Optional[Record]:
        for e in journal(mark):
            if e.get("MESSAGE_ID") in ids and where(e):
                return e
        return None
    return wait_for(find, timeout, step)


JOURNAL_TAIL = 40  # journal lines of a failed scenario kept in the report (tests/run prints them)
STATUS_LINES = 80  # `systemctl status` lines kept


def diagnostics(mark: int, units: Sequence[str] = (CORE,)) -> Dict[str, List[str]]:
    """Why a scenario failed. Prints (guest-output.log) the journal of `units` (names or globs such as
    "aodv2-tracer@*") since `mark` and their `systemctl status`; returns the report's part of it:
    {"journal_tail": last JOURNAL_TAIL journal lines, "unit_status": first STATUS_LINES status lines}."""
    j = run(["journalctl", "--no-pager", "-b", "-o", "short-monotonic"] + [a for u in units for a in ("-u", u)]
            + since_arg(mark), timeout=60)
    jl = j.stdout.splitlines() or [ln for ln in j.stderr.splitlines() if ln.strip()]
    names = " ".join(units)
    print(f"----- journalctl {names} (since the scenario began, last 150 lines)")
    print("\n".join(jl[-150:]))
    st = run(["systemctl", "status", "--no-pager", "-l", "--lines=15", *units])
    sl = (st.stdout + st.stderr).splitlines()
    print(f"----- systemctl status {names}")
    print("\n".join(sl))
    print("-----", flush=True)
    return {"journal_tail": jl[-JOURNAL_TAIL:], "unit_status": sl[:STATUS_LINES]}


_UNITS = {u: f for f, us in ((1e-6, ("us", "usec", "\u00b5s", "\u03bcs")), (1e-3, ("ms", "msec")),
                              (1.0, ("s", "sec", "second", "seconds")), (60.0, ("m", "min", "minute", "minutes")),
                              (3600.0, ("h", "hr", "hour", "hours")), (86400.0, ("d", "day", "days")),
                              (604800.0, ("w", "week", "weeks")))
          for u in us}
_SPAN = r"(\d+(?:\.\d+)?)\s*([^\d\s.]+)"


def timespan_s(text: str) -> Optional[float]:
    """Seconds of a systemd time span as `systemctl show` prints it ("30s", "1min 30s", "500ms",
    "2h 1min", "750\u00b5s", or bare microseconds "30000000"); None if empty, "infinity" or unparsable."""
    t = text.strip()
    if t.isdigit():
        return int(t) / 1e6
    parts = re.findall(_SPAN, t)
    if not parts or re.sub(_SPAN + r"|\s+", "", t) or any(u not in _UNITS for _, u in parts):
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


# ---------------------------------------------------------------- config

def merged(over: Dict[str, Any]) -> Dict[str, Any]:
    """The setup() base config with `over` on top (dict sections are updated key by key)."""
    out = json.loads(json.dumps(_BASE))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def write_config(over: Dict[str, Any], raw: Optional[str] = None) -> None:
    """Replace /etc/aodv2/config.yaml (atomically, 0644) by merged(over), or by `raw` text."""
    tmp = f"{CONFIG}.{_NAME}-tmp"
    with open(tmp, "w") as f:
        f.write(raw if raw is not None else f"# written by tests/vm/guest/{os.path.basename(sys.argv[0])}\n"
                + yaml.safe_dump(merged(over), sort_keys=False))
    os.chmod(tmp, 0o644)
    os.replace(tmp, CONFIG)


def reload_config(over: Dict[str, Any], raw: Optional[str] = None) -> Tuple[str, Optional[Record]]:
    """write_config, `systemctl reload aodv2`, wait for the record: ("ok"|"failed"|"none", record)."""
    write_config(over, raw)
    mark = cursor()
    r = run(["systemctl", "reload", CORE], timeout=60)
    if r.returncode:
        log(f"systemctl reload failed: {r.stderr.strip()}")
    e = wait_journal(mark, ("reloaded", "reload_failed"), 30,
                     lambda e: "reloaded from" in e.get("MESSAGE", "") or e.get("MESSAGE_ID") == MID["reload_failed"])
    kind = "none" if not e else ("failed" if e.get("MESSAGE_ID") == MID["reload_failed"] else "ok")
    return kind, e


# ---------------------------------------------------------------- bundles

def read_bundle(path: str) -> Tuple[List[str], Dict[str, bytes]]:
    """Member names (without the top dir) and their contents."""
    names: List[str] = []
    data: Dict[str, bytes] = {}
    with open(path, "rb") as raw:
        if zstandard is not None:
            zr: Any = zstandard.ZstdDecompressor().stream_reader(raw)
        else:
            zr = io.BytesIO(subprocess.run(["zstd", "-dcq"], stdin=raw, capture_output=True,  # noqa: S603,S607
                                           check=True, timeout=120).stdout)
        with tarfile.open(fileobj=zr, mode="r|") as tar:
            for ti in tar:
                rel = ti.name.split("/", 1)[1] if "/" in ti.name else ""
                if not rel or not ti.isfile():
                    continue
                names.append(rel)
                f = tar.extractfile(ti)
                data[rel] = f.read() if f else b""
    return names, data


def summary_of(data: Dict[str, bytes]) -> Dict[str, Any]:
    """summary.json of read_bundle()'s contents ({} if missing or empty)."""
    return json.loads(data.get("summary.json", b"{}") or b"{}")


# ---------------------------------------------------------------- checks and the scenario loop

class Checks:
    """The named checks of one scenario (each logged PASS/FAIL), plus details and measured times."""

    def __init__(self) -> None:
        self.items: Dict[str, bool] = {}
        self.detail: Dict[str, Any] = {}
        self.times: Dict[str, Any] = {}

    def check(self, name: str, ok: Any, info: Any = None) -> bool:
        ok = bool(ok)
        self.items[name] = ok
        log(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if info is None else f"  ({info})"))
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.items) and all(self.items.values())


Scenario = Tuple[str, Callable[[Checks], None]]


def _write_report(path: str, report: Dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)


def run_scenarios(scenarios: Sequence[Scenario], report_path: str, only: str = "", always: Tuple[str, ...] = (),
                  word: str = "scenario", diag_units: Sequence[str] = (CORE,),
                  cleanup: Optional[Callable[[], None]] = None, info: Optional[Dict[str, Any]] = None) -> int:
    """Run each scenario ("N_name", fn(Checks)) whose N is in `only` (comma-separated; all if empty)
    or in `always`; an exception fails that scenario (then `cleanup`) and the run goes on. A failed
    scenario prints diagnostics(diag_units) and keeps their journal tail and unit status in its detail.
    An unselected scenario is not left out: it is recorded as skipped, which fails the run. The report,
    rewritten after every scenario: {name: {"pass", "detail": {"checks", "journal_tail"?, "unit_status"?,
    ...}, "seconds", times} or {"pass": false, "skipped": true, "seconds": 0}, "_run": {"pass", "seconds",
    "kernel", "failed", "skipped", **info}}. 0 iff every scenario ran and passed."""
    sel = {s.strip() for s in only.split(",") if s.strip()}
    known = {name.split("_", 1)[0] for name, _ in scenarios}
    if sel - known:
        log(f"--only names no such {word}: {','.join(sorted(sel - known))} (known: {','.join(sorted(known))})")
    report: Dict[str, Any] = {}
    skipped: List[str] = []
    t_all = time.monotonic()
    for name, fn in scenarios:
        num = name.split("_", 1)[0]
        if sel and num not in always and num not in sel:
            log(f"===== {name}: SKIPPED (not selected by --only {only})")
            skipped.append(name)
            report[name] = {"pass": False, "skipped": True, "seconds": 0}
            continue
        log(f"===== {word} {name}")
        c = Checks()
        mark = cursor()
        t = time.monotonic()
        try:
            fn(c)
        except Exception as e:  # a driver or product surprise: the scenario fails, the run goes on
            c.check(f"no exception ({e!r})", False)
            traceback.print_exc()
            if cleanup:
                cleanup()
        secs = round(time.monotonic() - t, 1)
        entry: Dict[str, Any] = {"pass": c.ok, "detail": {"checks": c.items, **c.detail}, "seconds": secs, **c.times}
        if not c.ok:
            entry["detail"].update(diagnostics(mark, diag_units))
        report[name] = entry
        log(f"===== {name}: {'PASS' if c.ok else 'FAIL'} in {secs}s")
        _write_report(report_path, report)
    failed = [k for k, v in report.items() if not v["pass"] and not v.get("skipped")]
    report["_run"] = {"pass": bool(scenarios) and not failed and not skipped,
                      "seconds": round(time.monotonic() - t_all, 1), "kernel": os.uname().release, **(info or {}),
                      "failed": failed, "skipped": skipped}
    _write_report(report_path, report)
    return 0 if report["_run"]["pass"] else 1
