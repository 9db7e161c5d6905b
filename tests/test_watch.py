"""Watcher accounting: cumulative totals across windows and tracer restarts, error and
reconnect counts by status, snapshot copies; the window loop and the share rules on a fake
clock; the Dispatcher's hand-off, future-stamped records and the recent events."""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from aod import log, record, smb2
from aod.config import Config, LatencyConfig
from aod.counters import zero_stats
from aod.detect import Detector
from aod.dispatch import FUTURE_TOLERANCE_NS, Columns, Dispatcher, RecentEvents
from aod.record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, empty
from aod.watch import HorizonStats, Tally, Watcher

C = smb2.COMMANDS
ST = smb2.NT_STATUS
S = 10**9
MS = 10**6


def ev(n: int, ts0: int, cmd: str = "READ", kind: int = KIND_COMPLETION, status: int = 0) -> np.ndarray:
    e = empty(n)
    e["command"] = C[cmd]
    e["kind"] = kind
    e["latency_ns"] = 1000
    e["ts_ns"] = ts0 + np.arange(n)
    e["nt_status"] = status
    return e


class FakeCounters:
    def __init__(self) -> None:
        self.available = True
        self.reason = ""
        self.source: tuple[str, ...] = ("cmd_stats_v2", "")
        self.stats = zero_stats()
        self.drop_count = 0

    def add(self, slot: int, n: int, errors: int = 0) -> None:
        self.stats["hist"][slot][3] += n
        self.stats["latency_sum_ns"][slot] += 1000 * n
        self.stats["errors"][slot] += errors

    def drops(self) -> int:
        return self.drop_count

    def cmd_stats(self) -> np.ndarray:
        return self.stats.copy()

    def close(self) -> None:
        pass


class Tallied:
    """A Tally fed like the dispatcher feeds it."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def add(self, batch: np.ndarray) -> None:
        self.tally.add(batch, Columns.of(batch))


def watcher(counters: Any = None, **lat: Any) -> tuple[Watcher, Tallied, list[Any]]:
    cfg = Config(latency=LatencyConfig(**{"acceptable_count": 5, **lat}), errors=())
    tally, found = Tally(), []
    d = Detector(cfg, stats_since=lambda ns: w.horizon.since(ns))
    w = Watcher(tally, d, counters, lambda: 1.0, found.append)
    return w, Tallied(tally), found


def test_totals_sum_window_deltas_across_a_tracer_restart() -> None:
    fc = FakeCounters()
    fc.add(C["READ"], 100)  # before the core started: the baseline, not counted
    w, _, _ = watcher(fc)
    w._read_counters()  # baseline, as run() does
    fc.add(C["READ"], 5, errors=1)
    fc.add(C["WRITE"], 7)
    w.close_window(0, S)
    fc.stats = zero_stats()  # tracer restarted: its maps start from zero
    fc.add(C["READ"], 2)
    w.close_window(S, 2 * S)
    t = w.snapshot_totals()["cmd_stats"]
    assert int(t["hist"][C["READ"]].sum()) == 7 and int(t["hist"][C["WRITE"]].sum()) == 7
    assert int(t["errors"][C["READ"]]) == 1 and int(t["latency_sum_ns"][C["READ"]]) == 7000
    fc.add(C["READ"], 3)
    w.close_window(2 * S, 3 * S)
    assert int(w.totals["hist"][C["READ"]].sum()) == 10


def test_error_and_reconnect_records_counted_by_status() -> None:
    w, buf, _ = watcher()
    timeout, denied = ST["STATUS_IO_TIMEOUT"], ST["STATUS_ACCESS_DENIED"]
    buf.add(np.concatenate([ev(10, 0), ev(2, 20, "WRITE", KIND_ERROR, timeout),
                            ev(1, 30, "READ", KIND_ERROR, timeout)]))
    buf.add(np.concatenate([ev(1, 40, "CREATE", KIND_ERROR, denied), ev(2, 50, "READ", KIND_RECONNECT)]))
    w.close_window(0, S)
    buf.add(ev(3, S + 10, "WRITE", KIND_ERROR, timeout))  # drained in the next window
    snap = w.snapshot_totals()
    assert snap["errors"] == {(C["WRITE"], timeout): 2, (C["READ"], timeout): 1, (C["CREATE"], denied): 1}
    assert snap["reconnects"] == {0: 2} and snap["ring_records"] == 16 and snap["windows"] == 1
    buf.add(ev(1, S + 20, "READ", KIND_RECONNECT, ST["STATUS_NETWORK_SESSION_EXPIRED"]))
    w.close_window(S, 2 * S)
    snap2 = w.snapshot_totals()
    assert snap2["errors"][(C["WRITE"], timeout)] == 5
    assert snap2["reconnects"] == {0: 2, ST["STATUS_NETWORK_SESSION_EXPIRED"]: 1} and snap2["ring_records"] == 20
    # snapshots are copies: neither later windows nor callers change them
    assert snap["errors"][(C["WRITE"], timeout)] == 2
    snap2["errors"].clear()
    snap2["cmd_stats"]["errors"][:] = 99
    assert w.snapshot_totals()["errors"] and int(w.totals["errors"].sum()) == 0


def test_totals_without_counters_are_zero_and_snapshot_is_consistent_under_writes() -> None:
    w, buf, _ = watcher()
    stop = threading.Event()

    def close_many() -> None:
        for i in range(200):
            buf.add(ev(1, i * S, "READ", KIND_ERROR, ST["STATUS_IO_TIMEOUT"]))
            w.close_window(i * S, (i + 1) * S)
        stop.set()

    t = threading.Thread(target=close_many)
    t.start()
    while not stop.is_set():
        s = w.snapshot_totals()
        assert sum(s["errors"].values()) == s["ring_records"] == s["windows"]  # taken under one lock
    t.join()
    s = w.snapshot_totals()
    assert s["ring_records"] == 200 and int(s["cmd_stats"]["hist"].sum()) == 0


def test_each_tracer_map_is_followed_apart() -> None:
    """The nfs tracer's map appearing is a baseline (its counts are from before), its restart
    (counts going backwards) makes only its own rows all new; the SMB rows' deltas go on."""
    fc = FakeCounters()
    fc.add(C["READ"], 100)
    w, _, _ = watcher(fc)
    w._read_counters()
    nfs_read = int(record.stats_row(0x0406))  # NFSv4 READ
    assert nfs_read >= record.CMD_SLOTS and record.row_command(nfs_read) == 0x0406
    fc.add(C["READ"], 10)
    fc.add(nfs_read, 500)  # counted by the nfs tracer before the core saw its map
    fc.source = ("cmd_stats_v2", "nfs_stats_v1")
    w.close_window(0, S)
    t = w.snapshot_totals()["cmd_stats"]
    assert int(t["hist"][C["READ"]].sum()) == 10 and int(t["hist"][nfs_read].sum()) == 0
    fc.add(C["READ"], 5)
    fc.add(nfs_read, 7)
    w.close_window(S, 2 * S)
    t = w.snapshot_totals()["cmd_stats"]
    assert int(t["hist"][C["READ"]].sum()) == 15 and int(t["hist"][nfs_read].sum()) == 7
    fc.stats[record.CMD_SLOTS:] = 0  # the nfs tracer restarted: its map starts from zero
    fc.add(nfs_read, 3)
    fc.add(C["READ"], 1)
    w.close_window(2 * S, 3 * S)
    t = w.snapshot_totals()["cmd_stats"]
    assert int(t["hist"][C["READ"]].sum()) == 16 and int(t["hist"][nfs_read].sum()) == 10


def test_horizon_keeps_only_busy_rows_and_sums_them() -> None:
    h = HorizonStats(lambda: 10 * S)
    a, b = zero_stats(), zero_stats()
    a["hist"][3][2], b["hist"][3][2], b["hist"][100][5] = 4, 1, 2
    h.add(S, a)
    h.add(2 * S, b)
    h.add(3 * S, zero_stats())
    assert [len(rows) for _, rows, _ in h.windows] == [1, 2, 0]
    got = h.since(0)
    assert got is not None and got.shape == (record.STATS_ROWS,)
    assert int(got["hist"][3][2]) == 5 and int(got["hist"][100][5]) == 2 and int(got["hist"].sum()) == 7
    got = h.since(int(1.5 * S))
    assert got is not None and int(got["hist"][3][2]) == 1


def test_a_new_counters_source_is_counted_from_zero() -> None:
    """After an upgrade the core reads the older tracer's cmd_stats, then the newer tracer's
    cmd_stats_v2 once it is pinned: that map's counts are all new, whatever the old values."""
    fc = FakeCounters()
    fc.source = ("cmd_stats", "")
    fc.add(C["READ"], 1000)
    w, _, _ = watcher(fc)
    w._read_counters()
    fc.stats, fc.source = zero_stats(), ("cmd_stats_v2", "")
    fc.add(C["READ"], 1200)  # more than before in every field: a plain delta would say 200
    w.close_window(0, S)
    assert int(w.snapshot_totals()["cmd_stats"]["hist"][C["READ"]].sum()) == 1200


def test_dispatcher_drops_future_records_and_keeps_going() -> None:
    """A record stamped beyond the tolerance is counted as bad and never reaches the detectors or
    the recent events; the batches after it are handled as usual."""
    now = 50 * S
    got: list[tuple[np.ndarray, Columns]] = []
    recent = RecentEvents(lambda: 10 * S, mono=lambda: now)
    d = Dispatcher(ring=None, recent=recent, on_batch=lambda b, c: got.append((b, c)),  # type: ignore[arg-type]
                   mono=lambda: now)
    poison = ev(3, now + FUTURE_TOLERANCE_NS + 1, "WRITE")
    ok = ev(2, now - S, "READ")
    d.handle(np.concatenate([poison[:1], ok, poison[1:]]))
    assert d.future == 3 and d.records == 2
    (b, cols), = got
    assert list(b["ts_ns"]) == list(cols.ts_ns) == [now - S, now - S + 1]
    d.handle(ev(1, now + FUTURE_TOLERANCE_NS, "READ"))  # at the tolerance: kept
    d.handle(ev(4, now - 100, "READ"))
    assert d.future == 3 and d.records == 7 and recent.size == 7 and len(got) == 3
    d.handle(ev(2, 2**62, "READ"))  # only future ones: nothing handed on
    assert d.future == 5 and len(got) == 3


def test_dispatcher_hands_its_columns_to_on_batch() -> None:
    batch = ev(4, 0, "WRITE")
    calls: list[tuple[Any, ...]] = []
    stop = threading.Event()

    class OneBatchRing:
        bad_records = 0
        sent = False

        def wait(self, timeout: float) -> bool:
            return not self.sent

        def drain(self, max_bytes: Any = None) -> np.ndarray:
            self.sent = True
            stop.set()
            return batch

    recent = RecentEvents(lambda: 10 * S, mono=lambda: 0)
    Dispatcher(OneBatchRing(), recent, lambda *a: calls.append(a), mono=lambda: 0).run(stop, lambda: None)
    (b, cols), = calls
    assert b is batch and isinstance(cols, Columns) and cols is recent.columns[0]
    assert list(cols.command) == [C["WRITE"]] * 4


class FakeTime:
    """Monotonic clock for Watcher.run plus a stop event whose wait() advances that clock instead
    of sleeping; batches scheduled at a clock time reach the detector as the clock passes them."""

    def __init__(self, feed: Any, t0: int, drains: list[tuple[int, np.ndarray]], stop_at: int) -> None:
        self.feed, self.now, self.drains, self.stop_at = feed, t0, sorted(drains, key=lambda d: d[0]), stop_at
        self.stopped = False

    def mono(self) -> int:
        return self.now

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, timeout: float) -> bool:
        self.now += max(int(timeout * 1e9), 1)
        while self.drains and self.drains[0][0] <= self.now:
            self.feed(self.drains.pop(0)[1])  # what the dispatcher drained by now
        self.stopped = self.now >= self.stop_at
        return self.stopped


def slow_ev(n: int, ts0: int, step: int = 1) -> np.ndarray:
    e = ev(n, ts0, "WRITE")
    e["latency_ns"] = 600 * MS  # over the 500 ms default threshold, under the emergency one
    e["ts_ns"] = ts0 + step * np.arange(n)
    return e


def test_run_loop_closes_windows_and_the_share_rule_fires_there() -> None:
    """Watcher.run on a fake clock: one slow WRITE a second, among one completion a second. The
    count rule (10 within 10 s) never fires; the share rule (>= 50 % over 10 s, >= 5 of them)
    fires at the close of the window holding the 5th, and carries the histograms of its horizon."""
    fc = FakeCounters()
    w, tallied, found = watcher(fc, acceptable_count=10, share=0.5, share_min_count=5, horizon_sec=10.0)
    immediate: list[Any] = []

    def feed(batch: np.ndarray) -> None:  # the dispatcher's part
        tallied.add(batch)
        immediate.extend(w.detector.immediate(batch))
        fc.add(C["WRITE"], len(batch))

    drains = [(k * S + 900 * MS, slow_ev(1, k * S + 800 * MS)) for k in range(11, 20)]
    clock = FakeTime(feed, 10 * S + 100 * MS, drains, stop_at=19 * S + 500 * MS)
    w.mono = clock.mono
    beats: list[int] = []
    w.run(clock, lambda: beats.append(clock.now))  # type: ignore[arg-type]
    assert immediate == []
    got = [(a.type, a.count, a.details["trigger"], a.window_end_ns) for a in found]
    assert got == [("latency", 5, "share", 16 * S)]
    stats = found[0].stats()  # read now, after the run: every window from its start on
    assert found[0].commands == (C["WRITE"],) and stats is not None and int(stats["hist"].sum()) == 8
    assert w.rates.windows == 9 and w.rates.ring_records == 8
    assert len(beats) >= 9  # beats while idle between windows


def test_event_buffer_overflow_is_told_once(records: list[logging.LogRecord]) -> None:
    over = [0]
    w = Watcher(Tally(), Detector(Config()), None, lambda: 1.0, lambda a: None, overflow=lambda: over[0])
    w.close_window(0, S)
    over[0] = 7
    w.close_window(S, 2 * S)
    over[0] = 9
    w.close_window(2 * S, 3 * S)
    told = [r for r in records if getattr(r, "MESSAGE_ID", "") == log.MESSAGE_IDS["overflow"]]
    assert len(told) == 1 and "7 events" in told[0].getMessage()


def test_drops_are_followed_apart_from_cmd_stats() -> None:
    """A failed read of one map neither resets nor re-reports the other: drops read 12, then
    unreadable, then 13 is one new drop (not 13); drops while cmd_stats is unreadable still count."""
    fc = FakeCounters()
    w, _, _ = watcher(fc)
    seq: list[Any] = [12, None, 13]
    fc.drops = lambda: seq.pop(0) if seq else 20  # type: ignore[method-assign]
    w._read_counters()  # the baseline, 12
    assert w._read_counters()[1] == 0  # unreadable: nothing
    assert w._read_counters()[1] == 1 and w.rates.drops_total == 13
    fc.available = False  # cmd_stats gone (a tracer restarting), drops go on
    stats, d = w._read_counters()
    assert stats is None and d == 7 and w.rates.drops_total == 20
    fc.available = True
    assert w._read_counters()[0] is None  # the stats baseline again; drops unchanged
    assert w._read_counters()[1] == 0


def test_pairs_group_runs_and_interleaved_rows_alike() -> None:
    """watch._pairs: grouped by runs (the usual batch) or by a sort (interleaved shares), the same groups."""
    from aod.watch import MAX_RUNS, _pairs

    rng = np.random.default_rng(5)
    for n_runs in (1, 7, MAX_RUNS * 3):
        ses = np.repeat(rng.integers(1, 4, n_runs), rng.integers(1, 9, n_runs)).astype(np.uint64)
        tid = (ses * np.uint64(7) + rng.integers(0, 2, len(ses)).astype(np.uint64)).astype(np.uint32)
        got = {k: sorted(np.arange(len(ses))[rows].tolist()) for k, rows in _pairs(ses, tid)}
        want: dict[tuple[int, int], list[int]] = {}
        for i, (s, t) in enumerate(zip(ses.tolist(), tid.tolist())):
            want.setdefault((s, t), []).append(i)
        assert got == want
    big = np.array([2**64 - 1, 2**63, 5] * 300, np.uint64)  # interleaved, ids over 2^63
    got = {k: len(np.arange(900)[rows]) for k, rows in _pairs(big, np.zeros(900, np.uint32))}
    assert got == {(2**64 - 1, 0): 300, (2**63, 0): 300, (5, 0): 300}
    assert _pairs(np.zeros(0, np.uint64), np.zeros(0, np.uint32)) == []
