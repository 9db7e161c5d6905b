"""Sliding-horizon rule state (detect layer): what the count and share rules remember.

ring -> dispatch -> detect (detect.py keeps one of these per rule) -> policy -> collect.

`CountRule` answers "have acceptable_count matching events arrived within any horizon_sec?"
at the event that makes it true, whatever the window boundaries: fed the matching events
of each drained batch (one sort of the matches and one vector subtraction, no per-event
Python), it returns the crossing. It keeps only what a later crossing can need: the last
acceptable_count - 1 matches younger than the horizon (plus REORDER_NS, as records of
several CPUs reach the ring slightly out of order). Above EXACT_MAX it counts per time
bucket (horizon / BUCKETS wide) instead, so a huge acceptable_count costs bounded memory
and time, at the price of the horizon being exact to one bucket.

`ShareRule` answers "within the last share_horizon_sec, are at least share of the
completions matches, and at least min_count of them?". Its denominator comes from the
tracers' histograms, read once a window, so it is fed (matches, completions) per window.

After a rule fires it starts afresh: the next anomaly needs new evidence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

_U8 = np.zeros(0, np.uint64)
_U2 = np.zeros(0, np.uint16)
_U4 = np.zeros(0, np.uint32)
EXACT_MAX = 4096  # acceptable_count - 1 up to this: every match's time kept; above: per bucket
BUCKETS = 1024  # buckets of a horizon in the bucketed mode...
MIN_BUCKET_NS = 1_000_000  # ...at least 1 ms wide (a tiny horizon is then exact to 1 ms only)
REORDER_NS = 1_000_000_000  # a match this much older than the newest one can still arrive


def _counts(values: np.ndarray) -> dict[int, int]:
    v, n = np.unique(values, return_counts=True)
    return dict(zip(v.tolist(), n.tolist()))


@dataclass(frozen=True)
class Crossing:
    """The matches an anomaly counts: the acceptable_count that crossed, then any later ones of that batch."""

    count: int
    by_command: dict[int, int]
    by_status: dict[int, int]  # 0 for matches without a status (latency, errno-only)
    first_ts: int
    last_ts: int
    crossing_ts: int  # completion time of the acceptable_count-th match


def _after(ts: np.ndarray, t: int) -> int:
    """Index of the first of the sorted ts later than t."""
    return int(np.searchsorted(ts, np.uint64(t), side="right")) if t >= 0 else 0


class CountRule:
    """At least `k` matches within any `horizon_ns` (strictly: newest - oldest < horizon)."""

    def __init__(self, k: int, horizon_ns: int) -> None:
        self.k = max(1, int(k))
        self.horizon_ns = max(1, int(horizon_ns))
        self.bucketed = self.k - 1 > EXACT_MAX
        self.width = max(MIN_BUCKET_NS, self.horizon_ns // BUCKETS)
        self.clear()

    def clear(self) -> None:
        self.ts, self.command, self.status = _U8, _U2, _U4
        # bucketed mode: bucket index -> [count, {command: n}, {status: n}]
        self.buckets: dict[int, tuple[int, dict[int, int], dict[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.ts) + sum(b[0] for b in self.buckets.values())

    def feed(self, ts: np.ndarray, command: np.ndarray, status: Optional[np.ndarray] = None) -> Optional[Crossing]:
        """Add one batch's matches (any order). Returns the crossing, if this batch makes one."""
        if len(ts) == 0:
            return None
        status = np.zeros(len(ts), np.uint32) if status is None else status
        if self.bucketed:
            return self._feed_buckets(np.asarray(ts, np.uint64), np.asarray(command, np.uint16),
                                      np.asarray(status, np.uint32))
        all_ts = np.concatenate([self.ts, np.asarray(ts, np.uint64)])
        order = np.argsort(all_ts, kind="stable")
        all_ts = all_ts[order]
        all_cmd = np.concatenate([self.command, np.asarray(command, np.uint16)])[order]
        all_st = np.concatenate([self.status, np.asarray(status, np.uint32)])[order]
        n, k = len(all_ts), self.k
        if n >= k:
            span = all_ts[k - 1:] - all_ts[: n - k + 1]  # sorted: never negative
            hit = np.flatnonzero(span < np.uint64(self.horizon_ns))
            if hit.size:
                i = int(hit[0])
                self.clear()
                return Crossing(n - i, _counts(all_cmd[i:]), _counts(all_st[i:]), int(all_ts[i]), int(all_ts[-1]),
                                int(all_ts[i + k - 1]))
        newest = int(all_ts[-1])
        lo = _after(all_ts, newest - self.horizon_ns - REORDER_NS)  # too old for any later crossing
        late = _after(all_ts, newest - REORDER_NS)  # a late record may still land before these
        start = max(lo, min(n - (k - 1), late))
        self.ts, self.command, self.status = all_ts[start:], all_cmd[start:], all_st[start:]
        return None

    def _feed_buckets(self, ts: np.ndarray, command: np.ndarray, status: np.ndarray) -> Optional[Crossing]:
        """Counts per bucket (horizon/BUCKETS wide, MIN_BUCKET_NS at least); a crossing when the
        buckets within one horizon hold k."""
        order = np.argsort(ts // np.uint64(self.width), kind="stable")
        idx = (ts // np.uint64(self.width))[order]
        command, status = command[order], status[order]
        uniq, starts_at = np.unique(idx, return_index=True)
        bounds = list(starts_at.tolist()) + [len(idx)]
        for j, b in enumerate(uniq.tolist()):  # one slice per bucket touched (1 ms wide at least)
            lo, hi = bounds[j], bounds[j + 1]
            n0, c0, s0 = self.buckets.get(b, (0, {}, {}))
            c1, s1 = dict(c0), dict(s0)
            for d, add in ((c1, _counts(command[lo:hi])), (s1, _counts(status[lo:hi]))):
                for key, v in add.items():
                    d[key] = d.get(key, 0) + v
            self.buckets[b] = (n0 + hi - lo, c1, s1)
        keys = sorted(self.buckets)
        span = self.horizon_ns // self.width  # buckets per horizon
        newest = keys[-1]
        for old in [b for b in keys if b < newest - span - REORDER_NS // self.width]:
            del self.buckets[old]
        keys = sorted(self.buckets)
        counts = np.array([self.buckets[b][0] for b in keys], np.int64)
        cum = np.concatenate([[0], np.cumsum(counts)])
        arr = np.array(keys, np.int64)
        starts = np.searchsorted(arr, arr - span + 1)  # the horizon ending at each bucket
        hit = np.flatnonzero(cum[1:] - cum[starts] >= self.k)
        if hit.size:
            j = int(hit[0])
            i = int(starts[j])
            cmds: dict[int, int] = {}
            sts: dict[int, int] = {}
            for b in keys[i:]:
                for d, add in ((cmds, self.buckets[b][1]), (sts, self.buckets[b][2])):
                    for key, v in add.items():
                        d[key] = d.get(key, 0) + v
            total = int(cum[-1] - cum[i])
            first_ts, last_ts = keys[i] * self.width, (keys[-1] + 1) * self.width - 1
            crossing = (keys[j] + 1) * self.width - 1
            self.clear()
            return Crossing(total, cmds, sts, first_ts, max(last_ts, int(ts.max())), min(crossing, int(ts.max())))
        return None


@dataclass(frozen=True)
class ShareHit:
    matches: int
    completions: int
    by_command: dict[int, int]  # matches by the key the caller counted them by (detect.py: command, status)


class ShareRule:
    """Over the windows that ended within `horizon_ns`: matches >= min_count and
    matches >= share * completions (share 0: never)."""

    def __init__(self, share: float, min_count: int, horizon_ns: int) -> None:
        self.share = float(share)
        self.min_count = max(1, int(min_count))
        self.horizon_ns = max(1, int(horizon_ns))
        self.windows: deque[tuple[int, dict[int, int], int]] = deque()  # (end_ns, matches by command, completions)

    def clear(self) -> None:
        self.windows.clear()

    def add(self, end_ns: int, by_command: dict[int, int], completions: int) -> Optional[ShareHit]:
        """One closed window: its matches by command and its completions. The hit, when the rule fires."""
        if self.share <= 0:
            return None
        self.windows.append((int(end_ns), dict(by_command), int(completions)))
        while len(self.windows) > 1 and self.windows[0][0] <= end_ns - self.horizon_ns:
            self.windows.popleft()
        per: dict[int, int] = {}
        for _, w, _ in self.windows:
            for cmd, n in w.items():
                per[cmd] = per.get(cmd, 0) + n
        m = sum(per.values())
        c = max(sum(w[2] for w in self.windows), m)  # matches are completions too (read a moment apart)
        if m >= self.min_count and m >= self.share * c:
            self.clear()
            return ShareHit(m, c, per)
        return None
