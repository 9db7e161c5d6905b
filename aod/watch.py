"""Watcher (detect layer): closes one window every watch_interval_sec.

The rules that count events run per drained batch (detect.py). What needs a whole
window runs here: each tick the watcher takes the matches the count rules passed on
and the batch tallies (`Tally`: records, errors and reconnects by status), reads the
all-traffic counters (per-command histograms, drops), runs the share rules, keeps the
last horizon of histogram deltas (`HorizonStats`, for the percentiles of a bundle's
summary), publishes rates for STATUS= and cumulative totals since this core started
(`snapshot_totals`, for the metrics), and warns once about drops, bad records and a
full event buffer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from . import log, nfsproc
from .anomaly import Anomaly
from .counters import Counters, delta, rebase, zero_stats
from .detectsplit import Detectors
from .dispatch import Columns
from .names import Namer, Names, share_label
from .record import CMD_STATS_DTYPE, KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, TRACER_NFS, hist_bucket
from .sharelabels import ShareTotals


@dataclass
class Rates:
    events_per_sec: float = 0.0
    ring_records: int = 0
    drops_total: int = 0
    drops_last_window: int = 0
    bad_records_total: int = 0
    windows: int = 0


def window_bounds(t_ns: int, interval_ns: int) -> tuple[int, int]:
    start = t_ns - (t_ns % interval_ns)
    return start, start + interval_ns


def _labelled(totals: ShareTotals, names: Optional[Namer], batch: np.ndarray, cols: Columns, errs: np.ndarray,
              status: np.ndarray, trees: np.ndarray) -> None:
    """Error (rows errs) and completion records of a batch by share or export (one name lookup each)."""
    comp = cols.kind == KIND_COMPLETION
    any_comp = bool(comp.any())
    if not len(errs) and not any_comp:
        return
    label: dict[tuple[int, int], str] = {}

    def name(ses: int, tid: int) -> str:
        if (ses, tid) not in label:
            label[(ses, tid)] = share_label(names, ses, tid)
        return label[(ses, tid)]

    if len(errs):
        command, stat = cols.command[errs], status[errs]
        counts: dict[tuple[str, int, int], int] = {}
        for (ses, tid), rows in _pairs(batch["session_id"][errs], trees[errs]):
            share = name(ses, tid)
            for (c, st), n in _by_status(command[rows], stat[rows]):
                counts[(share, c, st)] = counts.get((share, c, st), 0) + n
        totals.add_errors(counts)
    if any_comp:  # grouped over the whole batch (runs: views, no copies), then its completions
        lat, buckets = cols.latency_ns, hist_bucket(cols.latency_ns)
        for (s, t), rows in _pairs(batch["session_id"], trees):
            done = comp[rows]
            if done.any():
                totals.add_slow(name(s, t), buckets[rows][done], int(lat[rows][done].sum()))


def _by_status(command: np.ndarray, status: np.ndarray) -> list[tuple[tuple[int, int], int]]:
    """((command, status), records) of error rows, counted on one packed u64 key."""
    key = (command.astype(np.uint64) << np.uint64(32)) | status.astype(np.uint64)
    return [((k >> 32, k & 0xFFFFFFFF), n) for k, n in zip(*(a.tolist() for a in np.unique(key, return_counts=True)))]


MAX_RUNS = 256  # runs of one (session, tree) a batch is grouped by before a sort is cheaper


def _pairs(ses: np.ndarray, tid: np.ndarray) -> list[tuple[tuple[int, int], Any]]:
    """((session, tree), rows) of each distinct pair. A drained batch is mostly long runs of one
    share, so it is grouped by its runs (linear); a sort of the pairs only when they interleave."""
    n = len(ses)
    if not n:
        return []
    ses, tid = np.ascontiguousarray(ses), np.ascontiguousarray(tid)  # a record field is strided
    cut = np.flatnonzero((ses[1:] != ses[:-1]) | (tid[1:] != tid[:-1])) + 1
    if len(cut) < MAX_RUNS:
        runs: dict[tuple[int, int], list[slice]] = {}
        for a, b in zip([0, *cut.tolist()], [*cut.tolist(), n]):
            runs.setdefault((int(ses[a]), int(tid[a])), []).append(slice(a, b))
        return [(k, v[0] if len(v) == 1 else np.concatenate([np.arange(r.start, r.stop) for r in v]))
                for k, v in runs.items()]
    # interleaved: the session's index and the u32 tree packed in one u64, sorted once (1-D sorts only)
    sessions, si = np.unique(ses, return_inverse=True)
    keys, inv, counts = np.unique((si.reshape(-1).astype(np.uint64) << np.uint64(32)) | tid.astype(np.uint64),
                                  return_inverse=True, return_counts=True)
    groups = np.split(np.argsort(inv.reshape(-1), kind="stable"), np.cumsum(counts)[:-1])
    return [((int(sessions[k >> 32]), k & 0xFFFFFFFF), g) for k, g in zip(keys.tolist(), groups)]


class Tally:
    """Counts of the drained batches since the last `take` (the dispatcher adds, the watcher takes),
    and the per-share totals of error and slow completion records (`labels`, for the metrics)."""

    def __init__(self, names: Optional[Names] = None, nfs_names: Optional[Namer] = None) -> None:
        self.names = names
        self.nfs_names = nfs_names
        self.labels = ShareTotals()
        self.nfs_labels = ShareTotals()  # by export (nfsnames), the NFS error and slow completion records
        self.lock = threading.Lock()
        self.records = 0
        self.errors: dict[tuple[int, int], int] = {}  # (command, nt_status) -> error records
        self.reconnects: dict[int, int] = {}  # nt_status -> reconnect records
        self.nfs_errors: dict[tuple[int, int], int] = {}  # (procedure code, nfsproc.status_key) -> records

    def add(self, batch: np.ndarray, cols: Columns) -> None:
        n_records = len(batch)
        nfs = batch["tracer_id"] == TRACER_NFS
        if nfs.any():  # the error and share tallies below are SMB's (NT statuses, shares)
            self._nfs(batch[nfs], cols.select(nfs))
            batch, cols = batch[~nfs], cols.select(~nfs)
        errs: list[tuple[tuple[int, int], int]] = []
        rcs: list[tuple[int, int]] = []
        idx = np.flatnonzero(cols.kind == KIND_ERROR)
        if len(idx):
            errs = _by_status(cols.command[idx], batch["nt_status"][idx])
        ridx = np.flatnonzero(cols.kind == KIND_RECONNECT)
        if len(ridx):
            rcs = [(int(s), int(n)) for s, n in zip(*np.unique(batch["nt_status"][ridx], return_counts=True))]
        self._by_share(batch, cols, idx)
        with self.lock:
            self.records += n_records
            for k, n in errs:
                self.errors[k] = self.errors.get(k, 0) + n
            for s, n in rcs:
                self.reconnects[s] = self.reconnects.get(s, 0) + n

    def _nfs(self, batch: np.ndarray, cols: Columns) -> None:
        """NFS error records by (procedure, status) and, by export, errors and slow completions."""
        idx = np.flatnonzero(cols.kind == KIND_ERROR)
        status = nfsproc.status_key(batch["nt_status"], batch["err"])
        if len(idx):
            errs = _by_status(cols.command[idx], status[idx])
            with self.lock:
                for k, n in errs:
                    self.nfs_errors[k] = self.nfs_errors.get(k, 0) + n
        # an NFS record's tree_id is its xid: the export is the client's (session_id) alone
        _labelled(self.nfs_labels, self.nfs_names, batch, cols, idx, status, np.zeros(len(batch), np.uint64))

    def _by_share(self, batch: np.ndarray, cols: Columns, errs: np.ndarray) -> None:
        _labelled(self.labels, self.names, batch, cols, errs, batch["nt_status"], batch["tree_id"])

    def take(self) -> tuple[int, dict[tuple[int, int], int], dict[int, int], dict[tuple[int, int], int]]:
        """(records, SMB errors, reconnects, NFS errors) since the last take."""
        with self.lock:
            out = (self.records, self.errors, self.reconnects, self.nfs_errors)
            self.records, self.errors, self.reconnects, self.nfs_errors = 0, {}, {}, {}
        return out


def _words(stats: np.ndarray) -> np.ndarray:
    """Statistics rows as u64 words (a view where stats is contiguous), one row each."""
    return np.ascontiguousarray(stats).view(np.uint64).reshape(len(stats), CMD_STATS_DTYPE.itemsize // 8)


class HorizonStats:
    """The all-traffic histogram deltas of the last windows (at most MAX_WINDOWS of them), for
    the percentiles of a bundle's summary. A window keeps only its rows with counts (280 bytes
    each; the array has record.STATS_ROWS of them, mostly idle). Thread-safe."""

    MAX_WINDOWS = 600

    def __init__(self, keep_ns: Callable[[], int]) -> None:
        self.keep_ns = keep_ns
        self.lock = threading.Lock()
        # (end_ns, rows with counts, their delta)
        self.windows: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=self.MAX_WINDOWS)

    def add(self, end_ns: int, stats: np.ndarray) -> None:
        rows = np.flatnonzero(_words(stats).any(axis=1))
        with self.lock:
            self.windows.append((end_ns, rows, np.array(stats[rows])))
            while len(self.windows) > 1 and self.windows[0][0] <= end_ns - self.keep_ns():
                self.windows.popleft()

    def clear(self) -> None:
        with self.lock:
            self.windows.clear()

    def since(self, start_ns: int) -> Optional[np.ndarray]:
        """Sum of the windows that ended after start_ns (at least the newest); None if none."""
        with self.lock:
            ws = list(self.windows)
        if not ws:
            return None
        newest = ws[-1][0]
        out = zero_stats()
        view = _words(out)
        for end, rows, s in ws:
            if end > start_ns or end == newest:
                view[rows] += _words(s)
        return out


class Watcher:
    name = "watcher"

    def __init__(self, tally: Tally, detector: Detectors, counters: Optional[Counters],
                 interval: Callable[[], float], on_anomaly: Callable[[Anomaly], object],
                 bad_records: Callable[[], int] = lambda: 0, overflow: Callable[[], int] = lambda: 0,
                 on_window: Callable[[], object] = lambda: None,
                 mono: Callable[[], int] = time.monotonic_ns) -> None:
        self.tally = tally
        self.detector = detector
        self.counters = counters
        self.interval = interval
        self.on_anomaly = on_anomaly
        self.on_window = on_window  # after each window: the policy records what it refused
        self.bad_records = bad_records
        self.overflow = overflow  # events the evidence buffer had no room for
        self.mono = mono
        self.rates = Rates()
        self.horizon = HorizonStats(detector.keep_ns)
        self.lock = threading.Lock()  # guards the totals below (read by other threads)
        self.totals = zero_stats()  # CMD_STATS summed over window deltas since this core started
        self.errors: dict[tuple[int, int], int] = {}  # (command, nt_status) -> error records
        self.reconnects: dict[int, int] = {}  # nt_status -> reconnect records
        self.nfs_errors: dict[tuple[int, int], int] = {}  # (procedure code, nfsproc.status_key) -> records
        self.drops = 0  # tracer drops seen by windows since this core started
        self._prev_stats: Optional[np.ndarray] = None
        self._prev_drops: Optional[int] = None
        self._prev_source: tuple[str, ...] = ()
        self._prev_bad = 0
        self._overflow_told = False
        self._window_start: Optional[int] = None
        self._told_earlier_drops = False

    def _read_counters(self) -> tuple[Optional[np.ndarray], int]:
        """(the all-traffic stats delta since the last read, None without one; drops since then).
        The two maps are followed apart: one unreadable never resets or re-reports the other."""
        if self.counters is None:
            return None, 0
        # read first: `available` (of cmd_stats) is only known after a read (it starts False)
        stats, drops = self.counters.cmd_stats(), self.counters.drops()
        d_drops = 0
        if drops is not None:
            if self._prev_drops is not None:
                # going backwards: the tracer recreated its maps, counting starts again
                d_drops = drops - self._prev_drops if drops >= self._prev_drops else drops
            self._prev_drops = self.rates.drops_total = drops
        if not self.counters.available:
            self._prev_stats = None  # baseline again once the map appears
            return None, d_drops
        source = tuple(getattr(self.counters, "source", ()))
        if self._prev_stats is not None and source != self._prev_source:
            self._prev_stats = rebase(self._prev_stats, stats, self._prev_source, source)
        self._prev_source = source
        d_stats = None if self._prev_stats is None else delta(self._prev_stats, stats)
        self._prev_stats = stats
        return d_stats, d_drops

    def _account(self, records: int, errors: dict[tuple[int, int], int], reconnects: dict[int, int],
                 nfs_errors: dict[tuple[int, int], int], stats: Optional[np.ndarray], drops: int) -> None:
        """Add one window to the cumulative totals."""
        with self.lock:
            if stats is not None and stats.shape == self.totals.shape:
                t = self.totals.view(np.uint64)
                t += np.ascontiguousarray(stats).view(np.uint64)
            for k, n in errors.items():
                self.errors[k] = self.errors.get(k, 0) + n
            for s, n in reconnects.items():
                self.reconnects[s] = self.reconnects.get(s, 0) + n
            for k, n in nfs_errors.items():
                self.nfs_errors[k] = self.nfs_errors.get(k, 0) + n
            self.drops += drops
            self.rates.ring_records += records
            self.rates.windows += 1

    def snapshot_totals(self) -> dict[str, Any]:
        """Copies of the cumulative totals since this core started, consistent with each other:
        cmd_stats (CMD_STATS_DTYPE[STATS_ROWS], all traffic from the counters), errors
        {(command, nt_status): records}, reconnects {nt_status: records}, nfs_errors
        {(procedure code, nfsproc.status_key): records}, ring_records,
        drops (tracer ring-full drops), windows."""
        with self.lock:
            return {"cmd_stats": self.totals.copy(), "errors": dict(self.errors),
                    "reconnects": dict(self.reconnects), "nfs_errors": dict(self.nfs_errors),
                    "ring_records": self.rates.ring_records,
                    "drops": self.drops, "windows": self.rates.windows}

    def close_window(self, start: int, end: int) -> list[Anomaly]:
        """Close [start, end): share rules, rates, totals, warnings. Returns the anomalies raised."""
        # the batch counts first, then the histograms: every event counted here is in them
        matched, resets = self.detector.take_matched()
        records, errors, reconnects, nfs_errors = self.tally.take()
        stats, drops = self._read_counters()
        secs = max((end - start) / 1e9, 1e-9)
        if stats is not None and int(stats["hist"].sum()) > 0:
            self.rates.events_per_sec = float(stats["hist"].sum()) / secs
        else:
            self.rates.events_per_sec = records / secs
        self._account(records, errors, reconnects, nfs_errors, stats, drops)
        if stats is not None:
            self.horizon.add(end, stats)
        self.rates.drops_last_window = drops
        self._warn(drops)
        found = self.detector.window(end, stats, matched, resets)
        for a in found:
            self.on_anomaly(a)
        self.on_window()
        return found

    def _warn(self, drops: int) -> None:
        if drops:
            log.emit("drops", log.logging.WARNING,
                     f"AOD ring full: {drops} events dropped by the tracers in the last window",
                     AOD_DROPS=drops, AOD_DROPS_TOTAL=self.rates.drops_total)
        bad = self.bad_records()
        if bad > self._prev_bad:
            log.emit("bad_records", log.logging.WARNING,
                     f"AOD skipped {bad - self._prev_bad} corrupt, foreign or future-stamped ring records",
                     AOD_COUNT=bad - self._prev_bad)
        self._prev_bad = self.rates.bad_records_total = bad
        over = self.overflow()
        if over and not self._overflow_told:
            self._overflow_told = True
            log.emit("overflow", log.logging.WARNING,
                     f"AOD event buffer full: {over} events of the detection horizon were let go before it ended; "
                     "bundles carry the newest ones (detection is not affected; counted in aodv2 status)",
                     AOD_COUNT=over)

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
            start, end = window_bounds(self.mono(), interval_ns)
            if self._window_start is None:
                self._window_start = start
            while not stop.is_set():
                left = end - self.mono()
                if left <= 0:
                    break
                beat()
                stop.wait(min(left / 1e9, 1.0))
            if stop.is_set():
                return
            self.close_window(self._window_start, end)
            self._window_start = end
