"""Anomaly history (detect -> history): one JSON line per alerted anomaly for log shippers.

<output_dir>/anomalies.jsonl, mode 0600, opened per record with O_APPEND so
logrotate's `create` rotation needs no signal. Failures are returned, not raised:
a full disk must never stop detection.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Optional

from .anomaly import Anomaly
from .smb2 import command_name

FILENAME = "anomalies.jsonl"


def record(a: Anomaly) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(a.detected_wall))
        + f".{int(a.detected_wall % 1 * 1000):03d}Z",
        "host": socket.gethostname(),
        "type": a.type,
        "rule": a.rule,
        "count": a.count,
        "commands": [command_name(c) for c in a.commands],
        "details": dict(a.details),
    }


def append(output_dir: str, a: Anomaly) -> Optional[str]:
    """Append one line; returns an error text instead of raising."""
    path = os.path.join(output_dir, FILENAME)
    line = (json.dumps(record(a), default=str, separators=(",", ":")) + "\n").encode()
    try:
        os.makedirs(output_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        return f"cannot append to {path}: {e.strerror or e}"
    return None
