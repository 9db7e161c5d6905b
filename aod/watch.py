"""Watcher (detect layer): closes one window every watch_interval_sec.

Each tick it takes the window's events from the WindowBuffer, reads the
all-traffic counters (per-command histograms, drops), runs the window
detectors and publishes rates for STATUS=. It also keeps cumulative totals
since this core started (`snapshot_totals`, for the metrics exporter): the
counters' per-window deltas summed, and error / reconnect records by status.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from . import log
from .anomaly import Anomaly
from .counters import Counters, delta, zero_stats
from .detect import Detector, window_bounds
from .dispatch import Events, WindowBuffer, concat
from .record import KIND_RECONNECT


@dataclass
class Rates:
    events_per_sec: float = 0.0
    ring_records: int = 0
    drops_total: int = 0
    drops_last_window: int = 0
    bad_records_total: int = 0
    windows: int = 0


LAST_WINDOW_KEEP = 65536  # events of the last window kept for a manual capture


class Watcher:
    name = "watcher"
    grace_ns = 50_000_000  # let the dispatcher drain completions stamped just before the edge

    def __init__(self, buffer: WindowBuffer, detector: Detector, counters: Optional[Counters],
                 interval: Callable[[], float], on_anomaly: Callable[[Anomaly], object],
                 bad_records: Callable[[], int] = lambda: 0,
                 mono: Callable[[], int] = time.monotonic_ns) -> None:
        self.buffer = buffer
        self.detector = detector
        self.counters = counters
        self.interval = interval
        self.on_anomaly = on_anomaly
        self.bad_records = bad_records
        self.mono = mono
        self.rates = Rates()
        self._last: list[np.ndarray] = []  # views of the newest LAST_WINDOW_KEEP events of the last window
        self.lock = threading.Lock()  # guards the totals below (read by other threads)
        self.totals = zero_stats()  # CMD_STATS summed over window deltas since this core started
        self.errors: dict[tuple[int, int], int] = {}  # (command, nt_status) -> error records
        self.reconnects: dict[int, int] = {}  # nt_status -> reconnect records
        self.drops = 0  # tracer drops seen by windows since this core started
        self._prev_stats: Optional[np.ndarray] = None
        self._prev_drops: Optional[int] = None
        self._prev_bad = 0
        self._window_start: Optional[int] = None
        self._told_earlier_drops = False

    def _read_counters(self) -> tuple[Optional[np.ndarray], int]:
        if self.counters is None:
            return None, 0
        # read first: `available` is only known after a read (it starts False: "not read yet")
        stats, drops = self.counters.cmd_stats(), self.counters.drops()
        if not self.counters.available:
            self._prev_stats = self._prev_drops = None  # baseline again once the maps appear
            return None, 0
        d_stats = None if self._prev_stats is None else delta(self._prev_stats, stats)
        d_drops = 0 if self._prev_drops is None else max(drops - self._prev_drops, 0)
        if self._prev_drops is not None and drops < self._prev_drops:
            d_drops = drops  # tracer restarted: counters start again
        self._prev_stats, self._prev_drops = stats, drops
        self.rates.drops_total = drops
        return d_stats, d_drops

    @property
    def last_window(self) -> np.ndarray:
        """The newest events (at most LAST_WINDOW_KEEP) of the last closed window, for manual captures."""
        return concat(self._last)

    def _account(self, events: Events, stats: Optional[np.ndarray], drops: int) -> None:
        """Add one window to the cumulative totals."""
        idx, rows = events.errors()
        errs: dict[tuple[int, int], int] = {}
        if len(idx):
            key = (events.at("command", idx).astype(np.uint64) << np.uint64(32)) | rows["nt_status"]
            for k, n in zip(*np.unique(key, return_counts=True)):
                errs[(int(k) >> 32, int(k) & 0xFFFFFFFF)] = int(n)
        rc = np.zeros(0, np.uint32)
        if len(events):
            rc = events.take(events.where(lambda c: c.kind == KIND_RECONNECT))["nt_status"]
        with self.lock:
            if stats is not None and stats.shape == self.totals.shape:
                t = self.totals.view(np.uint64)
                t += np.ascontiguousarray(stats).view(np.uint64)
            for k2, n2 in errs.items():
                self.errors[k2] = self.errors.get(k2, 0) + n2
            if len(rc):
                for s, n3 in zip(*np.unique(rc, return_counts=True)):
                    self.reconnects[int(s)] = self.reconnects.get(int(s), 0) + int(n3)
            self.drops += drops
            self.rates.ring_records += len(events)
            self.rates.windows += 1

    def snapshot_totals(self) -> dict[str, Any]:
        """Copies of the cumulative totals since this core started, consistent with each other:
        cmd_stats (CMD_STATS_DTYPE[CMD_SLOTS], all traffic from the counters), errors
        {(command, nt_status): records}, reconnects {nt_status: records}, ring_records,
        drops (tracer ring-full drops), windows, overflow (records the window buffer had no room for)."""
        with self.lock:
            return {"cmd_stats": self.totals.copy(), "errors": dict(self.errors),
                    "reconnects": dict(self.reconnects), "ring_records": self.rates.ring_records,
                    "drops": self.drops, "windows": self.rates.windows, "overflow": self.buffer.overflow}

    def close_window(self, start: int, end: int) -> list[Anomaly]:
        """Close [start, end): run detectors, update rates and totals. Returns the anomalies raised."""
        events = self.buffer.take(end)
        stats, drops = self._read_counters()
        secs = max((end - start) / 1e9, 1e-9)
        if stats is not None and int(stats["hist"].sum()) > 0:
            self.rates.events_per_sec = float(stats["hist"].sum()) / secs
        else:
            self.rates.events_per_sec = len(events) / secs
        self._account(events, stats, drops)
        self.rates.drops_last_window = drops
        if drops:
            log.emit("drops", log.logging.WARNING,
                     f"AOD ring full: {drops} events dropped by the tracers in the last window",
                     AOD_DROPS=drops, AOD_DROPS_TOTAL=self.rates.drops_total)
        bad = self.bad_records()
        if bad > self._prev_bad:
            log.emit("bad_records", log.logging.WARNING,
                     f"AOD skipped {bad - self._prev_bad} corrupt or foreign ring records",
                     AOD_COUNT=bad - self._prev_bad)
        self._prev_bad = self.rates.bad_records_total = bad
        self._last = events.tail(LAST_WINDOW_KEEP)  # views: the rest of the window is freed after detection
        found = self.detector.window(events, start, end, stats)
        for a in found:
            self.on_anomaly(a)
        return found

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        if self._prev_stats is None:
            self._read_counters()  # baseline, so the first window is a delta
            if self.rates.drops_total and not self._told_earlier_drops:
                # drops while no core was reading (core stopped or not yet started) are in
                # the baseline, so no window would ever report them: say so once
                self._told_earlier_drops = True
                n = self.rates.drops_total
                log.emit("drops", log.logging.WARNING,
                         f"AOD ring full: {n} events dropped by the tracers before this core started reading "
                         "(total since the tracer started)", AOD_DROPS=n, AOD_DROPS_TOTAL=n)
        while not stop.is_set():
            beat()
            interval_ns = int(self.interval() * 1e9)
            now = self.mono()
            start, end = window_bounds(now, interval_ns)
            if self._window_start is None:
                self._window_start = start
            while not stop.is_set():
                left = end + self.grace_ns - self.mono()
                if left <= 0:
                    break
                beat()
                stop.wait(min(left / 1e9, 1.0))
            if stop.is_set():
                return
            self.close_window(self._window_start, end)
            self._window_start = end
