"""The event record: numpy mirror of bpf/aod_event.h (first stop of the data flow).

Every layer after the ring speaks in arrays of EVENT_DTYPE.
"""

from __future__ import annotations

import numpy as np

EVENT_VERSION = 1
COMM_LEN = 16

KIND_COMPLETION = 1
KIND_ERROR = 2
KIND_RECONNECT = 3
KIND_NAMES = {KIND_COMPLETION: "completion", KIND_ERROR: "error", KIND_RECONNECT: "reconnect"}

TRACER_SMB = 1
TRACER_SYNTHETIC = 2
TRACER_FILE = 3
TRACER_NAMES = {TRACER_SMB: "smb", TRACER_SYNTHETIC: "synthetic", TRACER_FILE: "file"}

CMD_SLOTS = 32
HIST_BUCKETS = 32
CMD_STATS_VERSION = 2
IGNORED_MAX = 256

EVENT_DTYPE = np.dtype(
    [
        ("version", "<u2"),
        ("size", "<u2"),
        ("kind", "u1"),
        ("tracer_id", "u1"),
        ("command", "<u2"),
        ("ts_ns", "<u8"),
        ("latency_ns", "<u8"),
        ("session_id", "<u8"),
        ("mid", "<u8"),
        ("tree_id", "<u4"),
        ("nt_status", "<u4"),
        ("err", "<i4"),
        ("pid", "<u4"),
        ("comm", f"S{COMM_LEN}"),
    ]
)
EVENT_SIZE = EVENT_DTYPE.itemsize  # 72

# numpy mirror of struct aod_cmd_stats, one row per command slot
CMD_STATS_DTYPE = np.dtype(
    [("hist", "<u8", (HIST_BUCKETS,)), ("latency_sum_ns", "<u8"), ("errors", "<u8"), ("ignored", "<u8")]
)
# struct aod_cmd_stats_v1: what aodv2 0.1 tracers pin as `cmd_stats` (no `ignored`)
CMD_STATS_V1_DTYPE = np.dtype(
    [("hist", "<u8", (HIST_BUCKETS,)), ("latency_sum_ns", "<u8"), ("errors", "<u8")]
)


def cmd_stats_from_v1(old: np.ndarray) -> np.ndarray:
    """CMD_STATS_V1_DTYPE rows as CMD_STATS_DTYPE (ignored = 0)."""
    out = np.zeros(len(old), CMD_STATS_DTYPE)
    for name in CMD_STATS_V1_DTYPE.names or ():
        out[name] = old[name]
    return out


def empty(n: int = 0) -> np.ndarray:
    """A zeroed event array of length n with version and size filled in."""
    a = np.zeros(n, dtype=EVENT_DTYPE)
    a["version"] = EVENT_VERSION
    a["size"] = EVENT_SIZE
    return a


def hist_bucket(latency_ns: np.ndarray) -> np.ndarray:
    """log2 bucket of latency in microseconds, as the BPF side computes it."""
    us = np.asarray(latency_ns, dtype=np.uint64) // np.uint64(1000)
    b = np.zeros(us.shape, dtype=np.int64)
    nz = us > 0
    b[nz] = np.floor(np.log2(us[nz].astype(np.float64))).astype(np.int64) + 1
    return np.minimum(b, HIST_BUCKETS - 1)


def cmd_slot(command: np.ndarray) -> np.ndarray:
    return np.minimum(np.asarray(command, dtype=np.int64), CMD_SLOTS - 1)
