"""Tracer state files: each tracer says waiting/attached/stopped, the core reads them for STATUS=.

/run/aodv2/tracer-NAME.json = {"name", "pid", "state", "since"}, written atomically,
mode 0600 in a 0700 directory. A state whose pid is gone reads as "down".

The recorders (recorder.py) write /run/aodv2/recorder-NAME.json the same way (read_recorder).

The smb tracer adds (`extra`), at attach, on reload and at most once a second from its aging
thread: "mode" (tracepoint | kprobe: how it attached), "mode_config" (config tracer.mode then,
or "kprobe (--force-kprobes)"), "emit_min_ns", "emit_cmd_mask" (the emit filter in the kernel), "hung_threshold_ns"
(0 = aging off), "hung_cmd_mask", "health": {"offered": [...], "attached": [...]} (cifs health
tracepoints), "aging": {"scans", "inflight", "hung", "hung_records", "hung_full", "unpaired",
"scan_ms_max", "hung_expired"} (aging.AgingStats), and "aging_unsupported": reason (kprobe mode).
read_detail returns the whole dict.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional, Sequence

from .atomicfile import write_atomic

RUN_DIR = "/run/aodv2"


def state_path(state_dir: str, name: str, prefix: str = "tracer") -> str:
    return os.path.join(state_dir, f"{prefix}-{name}.json")


def write_state(state_dir: Optional[str], name: str, state: str,
                extra: Optional[dict] = None, since: Optional[float] = None, prefix: str = "tracer") -> Optional[str]:
    """Publish one tracer's (or, prefix "recorder", one recorder's) state (+ `extra` keys; `since`:
    when it entered that state, default now). Returns an error text instead of raising (best effort)."""
    if not state_dir:
        return None
    path = state_path(state_dir, name, prefix)
    data: dict[str, Any] = dict(extra or {})
    data.update({"name": name, "pid": os.getpid(), "state": state,
                 "since": time.time() if since is None else since})
    try:
        write_atomic(path, json.dumps(data).encode())
    except OSError as e:
        return f"cannot write tracer state {path}: {e}"
    return None


def pid_alive(pid: Any) -> bool:
    """A process with this pid exists (also when it belongs to another user)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):  # a pid no kernel has (corrupt file)
        return False
    return True


def read_states(state_dir: str, names: Sequence[str]) -> dict[str, str]:
    """name -> waiting | attached | stopped | down (no file, unreadable, or its process is gone)."""
    out: dict[str, str] = {}
    for name in names:
        try:
            with open(state_path(state_dir, name), encoding="utf-8") as f:
                d = json.load(f)
            pid, state = d.get("pid"), d.get("state")
            out[name] = state if pid_alive(pid) and isinstance(state, str) else "down"
        except (OSError, ValueError, AttributeError):
            out[name] = "down"
    return out


def read_detail(state_dir: str, name: str) -> dict:
    """The whole state dict of one tracer; {} when missing, unreadable, not a JSON object, or its
    process is gone."""
    try:
        with open(state_path(state_dir, name), encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(d, dict) or not isinstance(d.get("state"), str) or not pid_alive(d.get("pid")):
        return {}
    return d


RECORDER_FINAL = ("stopped", "disabled", "failed")  # states a recorder leaves behind when it exits


def read_recorder(state_dir: str, name: str) -> tuple[dict, str]:
    """(recorder-NAME.json as written, its state now): "not running" ({}) when missing or corrupt,
    "down" when its process is gone without saying stopped, disabled or failed (its last word
    stays readable after it exits), else the state it wrote."""
    try:
        with open(state_path(state_dir, name, "recorder"), encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return {}, "not running"
    if not isinstance(d, dict) or not isinstance(d.get("state"), str):
        return {}, "not running"
    return d, d["state"] if d["state"] in RECORDER_FINAL or pid_alive(d.get("pid")) else "down"


def describe(states: dict[str, str]) -> str:
    attached = [n for n, s in states.items() if s == "attached"]
    if not attached:
        detail = ", ".join(f"{n} {s}" for n, s in states.items())
        return "no tracer attached" + (f" ({detail})" if detail else "")
    others = [f"{n} {s}" for n, s in states.items() if s != "attached"]
    return "tracers attached: " + ",".join(attached) + (f" ({', '.join(others)})" if others else "")
