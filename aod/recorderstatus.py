"""The flight recorders in `aodv2 status` (beside the data flow, like status.py).

The core reads each recorder's /run/aodv2/recorder-NAME.json (recorder.py writes it) once per
status snapshot, keeps only typed fields, adds the packet ring's size on disk, and publishes
the result as status.json "recorders"; lines() formats it for people.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Optional

from .configrecorder import RecorderConfig, is_ring_file
from .safetext import short
from .tracerstate import read_recorder

_STR = ("state", "error", "clock", "read", "instance", "dir", "filter", "interface")
_NUM = ("buffer_kb", "ring_bytes", "snaplen", "window_sec", "since")
_LISTS = ("events", "missing")
_MAX_ITEMS = 200


def _ring_usage(path: str, prefix: str = "smb.pcap") -> tuple[int, int]:
    """(files, bytes) of the packet ring; no symlink followed."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0, 0
    n = size = 0
    try:
        for name in os.listdir(dfd)[:10000]:
            if is_ring_file(name, prefix):
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    n, size = n + 1, size + st.st_size
    finally:
        os.close(dfd)
    return n, size


def details(state_dir: Optional[str], rcfg: RecorderConfig) -> dict[str, dict[str, Any]]:
    """name -> {enabled (config), state (recording | disabled | failed | stopped | down | not running), ...}."""
    out: dict[str, dict[str, Any]] = {}
    for name, enabled in (("trace", rcfg.trace.enabled), ("pcap", rcfg.pcap.enabled)):
        d, state = read_recorder(state_dir, name) if state_dir else ({}, "not running")
        row: dict[str, Any] = {"enabled": enabled}
        row.update({k: short(d[k], 300) for k in _STR if isinstance(d.get(k), str)})
        row.update({k: d[k] for k in _NUM if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)})
        for k in _LISTS:
            if isinstance(d.get(k), list):
                row[k] = [short(x, 200) for x in d[k][:_MAX_ITEMS] if isinstance(x, str)]
        if isinstance(d.get("failed"), dict):
            row["refused"] = sorted(short(str(k), 200) for k in list(d["failed"])[:_MAX_ITEMS])
        row["state"] = short(state, 300)
        if name == "pcap":
            row["ring_files"], row["ring_used_bytes"] = _ring_usage(rcfg.pcap.dir)
        out[name] = row
    return out


def _mb(n: Any) -> str:
    return f"{float(n) / 1e6:.1f} MB"


def lines(snap: dict[str, Any]) -> list[str]:
    rec = snap.get("recorders")
    if not isinstance(rec, dict):
        return []
    out = []
    t = rec.get("trace") or {}
    if t:
        state = t.get("state", "?")
        if state == "recording":
            missing = t.get("missing") or []
            out.append(f"  trace recorder: recording {len(t.get('events') or [])} events in {t.get('instance', '?')} "
                       f"({t.get('buffer_kb', '?')} KiB per CPU, clock {t.get('clock', '?')}, read from "
                       f"{t.get('read', '?')})" + (f"; not on this kernel: {', '.join(missing)}" if missing else "")
                       + (f"; refused: {', '.join(t['refused'])}" if t.get("refused") else ""))
            if t.get("events"):
                out.append(f"    recorded: {', '.join(t['events'])}")
        else:
            out.append(f"  trace recorder: {state}" + (f" ({t['error']})" if t.get("error") else "")
                       + ("" if t.get("enabled", True) else " (recorder.trace.enabled is false)"))
    p = rec.get("pcap") or {}
    if p:
        ring = f"ring {_mb(p.get('ring_used_bytes', 0))} of {_mb(p.get('ring_bytes', 0))} in {p.get('dir', '?')}"
        if not p.get("enabled"):
            out.append("  packet recorder: off (recorder.pcap.enabled is false)"
                       + (f"; aodv2-recorder@pcap is {p['state']}" if p.get("state") == "recording" else ""))
        elif p.get("state") == "recording":
            out.append(f"  packet recorder: recording {p.get('filter', '?')} on {p.get('interface', '?')}, "
                       f"{p.get('snaplen', '?')} bytes per packet, {ring}")
        else:
            out.append(f"  packet recorder: {p.get('state', '?')}" + (f" ({p['error']})" if p.get("error") else "")
                       + (" (systemctl enable --now aodv2-recorder@pcap.service)" if p.get("state") == "not running"
                          else ""))
    return out
