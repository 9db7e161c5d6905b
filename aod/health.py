"""The kernel's health tracepoints (dispatch -> detect): KIND_HEALTH records -> anomaly types.

The smb tracer turns each cifs health tracepoint into a KIND_HEALTH record whose `command`
holds the health code (record.HEALTH_*). record.HEALTH_TYPE maps a code to the anomaly type a
user understands: credits (credit_timeout, insufficient_credits, reconnect_with_invalid_credits),
connect (connect_err), auth (key_expired, kerberos_auth failures). connect_done and slow_rsp
raise nothing; every code is counted (slow_rsp as aodv2_kernel_slow_responses_total). The
detector raises each type per drained batch, at most once a window (like reconnect), when its
health.TYPE.enabled is true.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .record import HEALTH_NAMES, HEALTH_TYPE
from .smb2 import errno_name

TYPES = ("credits", "connect", "auth")
CODES: dict[str, np.ndarray] = {t: np.array(sorted(c for c, tt in HEALTH_TYPE.items() if tt == t), np.uint16)
                                for t in TYPES}


UNKNOWN = "unknown"  # a code this core does not know (a newer tracer, a bad record): one label for all


def code_name(code: int) -> str:
    return HEALTH_NAMES.get(int(code), UNKNOWN)


def counts(codes: np.ndarray) -> dict[str, int]:
    """Records by health code name (unknown codes together: the metric's labels stay bounded)."""
    v, n = np.unique(codes, return_counts=True)
    out: dict[str, int] = {}
    for c, k in zip(v.tolist(), n.tolist()):
        name = code_name(c)
        out[name] = out.get(name, 0) + int(k)
    return out


def details(rows: np.ndarray) -> dict[str, Any]:
    """A health anomaly's details: its events by name, the errnos and the slowest response."""
    out: dict[str, Any] = {"events": counts(rows["command"])}
    errs = sorted({errno_name(int(e)) for e in rows["err"].tolist() if int(e)})
    if errs:
        out["errnos"] = errs
    return out


def rule(rows: np.ndarray) -> str:
    return ",".join(sorted(counts(rows["command"])))
