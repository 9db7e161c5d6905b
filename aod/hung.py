"""Hung requests (dispatch -> detect -> policy): the tracer's KIND_HUNG records, grouped.

The smb tracer's aging scan sends one KIND_HUNG record per request, the first time it finds
it in flight longer than the hung threshold (ts_ns = scan time, latency_ns = age then). A
dead server stalls many requests on many mounts at once, and the scan finds them within
one or two passes: the first hung record opens a group, every hung record that arrives
within latency.hung_group_ms joins it, and the group becomes one `hung` anomaly at its
deadline, not at a window end. The dispatcher thread feeds the records (`HungGroups.feed`,
from Detector.immediate) and checks the deadline between ring waits (`Detector.tick`,
waking for `next_deadline`), so the anomaly is raised within a few ms of it. A group
after that one is a second anomaly of type hung: within the cooldown the policy refuses
its capture and puts it on record (journal notice, anomalies.jsonl captured:false).

Hung wins over emergency: a hung request that later completes over the emergency threshold
has been captured already (the hang is the story, and the capture ran while it held).
`RecentHung` keeps the keys (tracer, session_id, mid, command) of the last HUNG_KEYS_MAX
hung requests; the detector raises no emergency for a completion or error with such a key.
The completion still counts as a latency sample (latency rule, histograms). A request that
completes over the emergency threshold before any scan found it hung is an emergency only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import numpy as np

from .dispatch import concat
from .names import Namer, involved, server_of_unc
from .smb2 import command_name

HUNG_KEYS_MAX = 16384  # hung requests remembered for the dedupe (4 x the tracer's hung_v1 map)
MAX_LISTED = 500  # requests an anomaly lists one by one (all are counted)

Key = tuple[int, int, int, int]


def _keys(rows: np.ndarray) -> list[Key]:
    return list(zip(rows["tracer_id"].tolist(), rows["session_id"].tolist(), rows["mid"].tolist(),
                    rows["command"].tolist()))


class RecentHung:
    """The keys of the most recent hung requests, at most `cap` (oldest let go first)."""

    def __init__(self, cap: int = HUNG_KEYS_MAX) -> None:
        self.cap = cap
        self._keys: OrderedDict[Key, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, rows: np.ndarray) -> None:
        for k in _keys(rows):
            self._keys[k] = None
            self._keys.move_to_end(k)
        while len(self._keys) > self.cap:
            self._keys.popitem(last=False)

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """bool per record: its request was called hung."""
        return np.array([k in self._keys for k in _keys(rows)], dtype=bool)


class HungGroups:
    """The hung records waiting for their group's deadline (dispatcher thread only)."""

    def __init__(self) -> None:
        self.recent = RecentHung()
        self.parts: list[np.ndarray] = []
        self.deadline: Optional[int] = None  # monotonic ns at which the open group fires
        self.records = 0  # hung records fed since start (aodv2_hung_requests_total)

    def feed(self, rows: np.ndarray, now_ns: int, group_ns: int) -> None:
        if not len(rows):
            return
        self.recent.add(rows)
        self.records += len(rows)
        self.parts.append(np.ascontiguousarray(rows))
        if self.deadline is None:
            self.deadline = now_ns + max(int(group_ns), 0)

    def due(self, now_ns: int) -> Optional[np.ndarray]:
        """The group's records once its deadline has come (the group is then closed), else None."""
        if self.deadline is None or now_ns < self.deadline:
            return None
        rows = concat(self.parts)
        self.parts, self.deadline = [], None
        return rows

    def clear(self) -> None:
        self.parts, self.deadline = [], None


def _comm(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


def details(rows: np.ndarray, names: Optional[Namer], threshold_ms: float, group_ms: float) -> dict[str, Any]:
    """What a hung anomaly says: every request (up to MAX_LISTED, oldest first) with its command,
    mid, age, pid, comm, session, tree and their names; the servers and shares involved."""
    named = involved(names, rows)  # refreshes the names first
    order = np.argsort(-rows["latency_ns"].astype(np.int64), kind="stable")
    listed = []
    for r in rows[order[:MAX_LISTED]]:
        ses, tid = int(r["session_id"]), int(r["tree_id"])
        unc = names.share(ses, tid) if names else None
        srv = (server_of_unc(unc) if unc else None) or (names.server_of_session(ses) if names else None)
        listed.append({"command": command_name(int(r["command"])), "mid": int(r["mid"]),
                       "age_ms": round(int(r["latency_ns"]) / 1e6, 3), "pid": int(r["pid"]),
                       "comm": _comm(r["comm"]), "session_id": f"0x{ses:x}", "tree_id": f"0x{tid:x}",
                       "share": unc, "server": srv})
    out: dict[str, Any] = {
        "hung_threshold_ms": threshold_ms, "group_ms": group_ms, "requests_total": int(len(rows)),
        "requests_listed": len(listed), "oldest_age_ms": listed[0]["age_ms"] if listed else None,
        "by_command": {command_name(int(c)): int(n) for c, n in zip(*np.unique(rows["command"], return_counts=True))},
        "pids": sorted({int(p) for p in rows["pid"].tolist()})[:MAX_LISTED],
        "requests": listed,
    }
    out.update(named)
    return out
