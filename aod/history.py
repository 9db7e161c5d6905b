"""Anomaly history (policy -> history): one JSON line per anomaly, for log shippers.

<output_dir>/anomalies.jsonl, mode 0600, opened per record with O_APPEND so
logrotate's `create` rotation needs no signal. The open never blocks or follows a symlink: a
FIFO or symlink at the name is an error returned like a full disk (safefs.open_regular).
Captured anomalies get a line each
("captured": true); refused ones one line per type and window ("captured": false,
with the reason and how many). Every line names the servers and shares involved.
Failures are returned, not raised: a full disk must never stop detection.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Iterable, Optional

from . import safefs
from .anomaly import Anomaly
from .smb2 import command_name

FILENAME = "anomalies.jsonl"


def iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


def base(type_: str, wall: float, rule: str, count: int, commands: Iterable[int]) -> dict[str, Any]:
    return {"time": iso(wall), "host": socket.gethostname(), "type": type_, "rule": rule, "count": count,
            "commands": [command_name(c) for c in commands]}


def record(a: Anomaly, captured: bool = True, reason: str = "") -> dict[str, Any]:
    out = base(a.type, a.detected_wall, a.rule, a.count, a.commands)
    out["protocol"] = a.protocol or "any"  # smb | nfs | any (manual)
    out["servers"] = list(a.details.get("servers") or [])  # named at the top for log shippers
    out["shares"] = list(a.details.get("shares") or [])
    out["details"] = dict(a.details)
    out["captured"] = captured
    if reason:
        out["reason"] = reason
    return out


def append(output_dir: str, line: dict[str, Any]) -> Optional[str]:
    """Append one line; returns an error text instead of raising."""
    path = os.path.join(output_dir, FILENAME)
    data = (json.dumps(line, default=str, separators=(",", ":")) + "\n").encode()
    try:
        dfd, _ = safefs.makedirs_fd(output_dir, 0o700, "output_dir")  # every level checked, by fd
        try:
            fd = safefs.open_regular(FILENAME, dfd, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600, path)
        finally:
            os.close(dfd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        return f"cannot append to {path}: {e.strerror or e}"
    return None
