"""The event record: numpy mirror of bpf/aod_event.h (first stop of the data flow).

Every layer after the ring speaks in arrays of EVENT_DTYPE.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EVENT_VERSION = 1
COMM_LEN = 16

KIND_COMPLETION = 1
KIND_ERROR = 2
KIND_RECONNECT = 3
KIND_HUNG = 4  # the aging scan found a request in flight longer than the hung threshold (once per request)
KIND_HEALTH = 5  # a cifs health tracepoint; `command` holds the HEALTH_* code
KIND_NAMES = {KIND_COMPLETION: "completion", KIND_ERROR: "error", KIND_RECONNECT: "reconnect",
              KIND_HUNG: "hung", KIND_HEALTH: "health"}
CMD_NONE = 0xFFFF  # `command` of a record that is no SMB command (smb3_reconnect)

# KIND_HEALTH codes (bpf/aod_event.h AOD_HEALTH_*). session_id holds the connection's conn_id
# for 1-5 and the session id for 6-7.
HEALTH_CREDIT_TIMEOUT = 1
HEALTH_INSUFFICIENT_CREDITS = 2
HEALTH_RECONNECT_INVALID_CREDITS = 3
HEALTH_CONNECT_ERR = 4
HEALTH_CONNECT_DONE = 5
HEALTH_KEY_EXPIRED = 6
HEALTH_KERBEROS_AUTH = 7  # failures only (rc != 0)
HEALTH_SLOW_RSP = 8
# the nfs tracer's transport events (sunrpc): session_id = client_id for RPC_RETRANSMIT
HEALTH_RPC_RETRANSMIT = 9  # latency_ns holds the transmissions so far
HEALTH_XPRT_TIMEOUT = 10
HEALTH_XPRT_DISCONNECT = 11
HEALTH_XPRT_CONNECT = 12
HEALTH_NAMES = {HEALTH_CREDIT_TIMEOUT: "credit_timeout", HEALTH_INSUFFICIENT_CREDITS: "insufficient_credits",
                HEALTH_RECONNECT_INVALID_CREDITS: "reconnect_with_invalid_credits",
                HEALTH_CONNECT_ERR: "connect_err", HEALTH_CONNECT_DONE: "connect_done",
                HEALTH_KEY_EXPIRED: "key_expired", HEALTH_KERBEROS_AUTH: "kerberos_auth",
                HEALTH_SLOW_RSP: "slow_rsp", HEALTH_RPC_RETRANSMIT: "rpc_retransmit",
                HEALTH_XPRT_TIMEOUT: "xprt_timeout", HEALTH_XPRT_DISCONNECT: "xprt_disconnect",
                HEALTH_XPRT_CONNECT: "xprt_connect"}
# health code -> anomaly type; connect_done and slow_rsp raise none (slow_rsp is counted)
HEALTH_TYPE = {HEALTH_CREDIT_TIMEOUT: "credits", HEALTH_INSUFFICIENT_CREDITS: "credits",
               HEALTH_RECONNECT_INVALID_CREDITS: "credits", HEALTH_CONNECT_ERR: "connect",
               HEALTH_KEY_EXPIRED: "auth", HEALTH_KERBEROS_AUTH: "auth"}
HEALTH_BY_CONN = frozenset({1, 2, 3, 4, 5})  # codes whose session_id is a conn_id

TRACER_SMB = 1
TRACER_SYNTHETIC = 2
TRACER_FILE = 3
TRACER_NFS = 4
TRACER_NAMES = {TRACER_SMB: "smb", TRACER_SYNTHETIC: "synthetic", TRACER_FILE: "file", TRACER_NFS: "nfs"}
NFS_SLOTS = 128  # entries of nfs_stats_v1 (bpf/aod_event.h AOD_NFS_SLOTS)
NFS_PROCS_MAX = 256  # the nfs program's procs map (mirrors of the header, tests/test_record.py)
NFS_NAME_LEN = 28

CMD_SLOTS = 32
HIST_BUCKETS = 32
CMD_STATS_VERSION = 2
IGNORED_MAX = 256
HUNG_MAX = 4096  # entries of the pinned hung_v1 hash
SERVERS_MAX = 1024  # entries of servers_v1 (u64 conn_id -> char[HOST_LEN])
TREES_MAX = 4096  # entries of trees_v1 (TREE_KEY_DTYPE -> char[UNC_LEN])
HOST_LEN = 64
UNC_LEN = 128

# pinned maps of the smb tracer (bpf/aod_event.h structs; tests/test_record.py checks them):
# inflight_v1 (lru_hash) and hung_v1 (hash) map INFLIGHT_KEY_DTYPE -> INFLIGHT_START_DTYPE
INFLIGHT_KEY_DTYPE = np.dtype([("conn", "<u8"), ("sesid", "<u8"), ("mid", "<u8"), ("cmd", "<u2"),
                               ("pad", "<u2"), ("pad2", "<u4")])  # struct aod_key, 32 bytes
INFLIGHT_START_DTYPE = np.dtype([("ts", "<u8"), ("pid", "<u4"), ("tid", "<u4"),
                                 ("comm", f"S{COMM_LEN}")])  # struct aod_start, 32 bytes
TREE_KEY_DTYPE = np.dtype([("sesid", "<u8"), ("tid", "<u4"), ("pad", "<u4")])  # struct aod_tree_key
EMIT_CFG_DTYPE = np.dtype([("emit_min_ns", "<u8"), ("cmd_mask", "<u4"), ("pad", "<u4")])  # aod_emit_cfg

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
    # frexp's exponent is the bit length: exact below 2^53 us, and anything over 2^30 us is the last bucket
    return np.minimum(np.frexp(us.astype(np.float64))[1], HIST_BUCKETS - 1).astype(np.int64)


def cmd_slot(command: np.ndarray) -> np.ndarray:
    """cmd_stats_v2 slot (and bit of the emit filter's u32 command mask) of SMB command ids."""
    return np.minimum(np.asarray(command, dtype=np.int64), CMD_SLOTS - 1)


# The core's statistics are one array of STATS_ROWS rows: cmd_stats_v2's SMB slots, then
# nfs_stats_v1's (bpf/nfs.bpf.c nfs_slot: NFSv3 in 0-31, NFSv4 in 32-127; the last of each, others).
STATS_ROWS = CMD_SLOTS + NFS_SLOTS
NFS_V3_ROWS, NFS_V4_ROWS = 32, NFS_SLOTS - 32
_NFS_V3, _NFS_V4 = 3, 4  # a code's high byte (nfsproc.CODE_BASE)


def stats_row(command: Any) -> np.ndarray:
    """Row of the statistics of SMB command ids and NFS procedure codes (0x03xx, 0x04xx)."""
    c = np.asarray(command, dtype=np.int64)
    hi, lo = c >> 8, c & 0xFF
    v3 = CMD_SLOTS + np.minimum(lo, NFS_V3_ROWS - 1)
    v4 = CMD_SLOTS + NFS_V3_ROWS + np.minimum(lo, NFS_V4_ROWS - 1)
    return np.where(hi == _NFS_V3, v3, np.where(hi == _NFS_V4, v4, np.minimum(c, CMD_SLOTS - 1)))


def row_command(row: int) -> int:
    """The command id or procedure code a statistics row counts (an NFS version's last row: 0x..ff, others)."""
    if row < CMD_SLOTS:
        return row
    s = row - CMD_SLOTS
    if s < NFS_V3_ROWS:
        return _NFS_V3 << 8 | (s if s < NFS_V3_ROWS - 1 else 0xFF)
    s -= NFS_V3_ROWS
    return _NFS_V4 << 8 | (s if s < NFS_V4_ROWS - 1 else 0xFF)


def protocol_rows(protocol: str) -> np.ndarray:
    """bool[STATS_ROWS]: the rows of a protocol's commands (smb, nfs; any other: all)."""
    out = np.zeros(STATS_ROWS, bool)
    if protocol == "smb":
        out[:CMD_SLOTS] = True
    elif protocol == "nfs":
        out[CMD_SLOTS:] = True
    else:
        out[:] = True
    return out
