"""Per-share totals for the metrics' share labels (dispatch -> watch -> metrics), bounded.

Tally.add (dispatcher thread) names the share of each error and slow completion record
(names.share_label: "\\\\server\\share" or an NFS export, else the server, else "unknown") and counts it
here. At most MAX_SHARE_LABELS shares keep their own label, the most recently seen ones;
when a new share pushes the least recently seen one out, that share's counts move into
share="other". So each series only grows (Prometheus counters stay monotonic: a dropped
series is a stale series, and "other" takes over its counts), and the file holds at most
MAX_SHARE_LABELS + 1 shares whatever the number of mounts. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .record import HIST_BUCKETS

MAX_SHARE_LABELS = 20
OTHER = "other"


class ShareTotals:
    def __init__(self, cap: int = MAX_SHARE_LABELS) -> None:
        self.cap = cap
        self.lock = threading.Lock()
        self.recent: OrderedDict[str, None] = OrderedDict()  # labelled shares, least recent first
        self.errors: dict[tuple[str, int, int], int] = {}  # (share, command, nt_status) -> error records
        self.slow: dict[str, np.ndarray] = {}  # share -> log2 histogram of slow completion records
        self.slow_sum_ns: dict[str, int] = {}

    def _label(self, share: str) -> str:
        """The label for share, evicting (folding into OTHER) the least recent one if needed. Lock held."""
        if share == OTHER or share in self.recent:
            if share != OTHER:
                self.recent.move_to_end(share)
            return share
        self.recent[share] = None
        while len(self.recent) > self.cap:
            old, _ = self.recent.popitem(last=False)
            self._fold(old)
        return share

    def _fold(self, share: str) -> None:
        for (s, c, st) in [k for k in self.errors if k[0] == share]:
            n = self.errors.pop((s, c, st))
            self.errors[(OTHER, c, st)] = self.errors.get((OTHER, c, st), 0) + n
        if share in self.slow:
            h = self.slow.pop(share)
            self.slow[OTHER] = self.slow.get(OTHER, np.zeros(HIST_BUCKETS, np.int64)) + h
            self.slow_sum_ns[OTHER] = self.slow_sum_ns.get(OTHER, 0) + self.slow_sum_ns.pop(share, 0)

    def add_errors(self, counts: dict[tuple[str, int, int], int]) -> None:
        with self.lock:
            for (share, cmd, st), n in counts.items():
                key = (self._label(share), cmd, st)
                self.errors[key] = self.errors.get(key, 0) + n

    def add_slow(self, share: str, buckets: np.ndarray, sum_ns: int) -> None:
        """Slow completion records of one share: their log2 bucket indices and latency sum."""
        with self.lock:
            label = self._label(share)
            h = self.slow.setdefault(label, np.zeros(HIST_BUCKETS, np.int64))
            h += np.bincount(buckets, minlength=HIST_BUCKETS)[:HIST_BUCKETS]
            self.slow_sum_ns[label] = self.slow_sum_ns.get(label, 0) + int(sum_ns)

    def snapshot(self) -> dict[str, Any]:
        """{"errors": {"share|command|status": n}, "slow": {share: {"hist": [...], "sum_ns": n}}}
        (JSON-able: it travels in the core snapshot)."""
        with self.lock:
            return {"errors": {f"{s}|{c}|{st}": n for (s, c, st), n in self.errors.items()},
                    "slow": {s: {"hist": h.tolist(), "sum_ns": self.slow_sum_ns.get(s, 0)}
                             for s, h in self.slow.items()}}
