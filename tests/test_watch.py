"""Watcher accounting: cumulative totals across windows and tracer restarts, error and
reconnect counts by status, snapshot copies, last-window bound; Dispatcher column hand-off."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from aod import smb2, watch
from aod.config import Config, LatencyConfig
from aod.counters import zero_stats
from aod.detect import Detector
from aod.dispatch import Columns, Dispatcher, WindowBuffer
from aod.record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, empty
from aod.watch import Watcher

C = smb2.COMMANDS
ST = smb2.NT_STATUS
S = 10**9


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


def watcher(counters: Any = None) -> tuple[Watcher, WindowBuffer, list[Any]]:
    cfg = Config(latency=LatencyConfig(acceptable_count=5), errors=())
    buf, found = WindowBuffer(), []
    w = Watcher(buf, Detector(cfg), counters, lambda: 1.0, found.append)
    return w, buf, found


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
    buf.add(ev(3, S + 10, "WRITE", KIND_ERROR, timeout))  # next window
    w.close_window(0, S)
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


def test_last_window_keeps_only_the_newest_events(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(watch, "LAST_WINDOW_KEEP", 5)
    w, buf, _ = watcher()
    assert len(w.last_window) == 0
    for i in range(3):
        buf.add(ev(3, 100 * i))
    w.close_window(0, S)
    assert list(w.last_window["ts_ns"]) == [101, 102, 200, 201, 202]


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

    buf = WindowBuffer()
    Dispatcher(OneBatchRing(), buf, lambda *a: calls.append(a), with_columns=True).run(stop, lambda: None)
    (b, cols), = calls
    assert b is batch and isinstance(cols, Columns) and cols is buf.columns[0]
    assert list(cols.command) == [C["WRITE"]] * 4
    stop.clear()
    Dispatcher(OneBatchRing(), buf, lambda *a: calls.append(a)).run(stop, lambda: None)
    assert len(calls[-1]) == 1 and buf.size == 8


class FakeTime:
    """Monotonic clock for Watcher.run plus a stop event whose wait() advances that clock instead
    of sleeping; drains scheduled at a clock time land in the buffer as the clock passes them."""

    def __init__(self, buf: WindowBuffer, t0: int, drains: list[tuple[int, np.ndarray]], stop_at: int) -> None:
        self.buf, self.now, self.drains, self.stop_at = buf, t0, sorted(drains, key=lambda d: d[0]), stop_at
        self.stopped = False

    def mono(self) -> int:
        return self.now

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, timeout: float) -> bool:
        self.now += max(int(timeout * 1e9), 1)
        while self.drains and self.drains[0][0] <= self.now:
            self.buf.add(self.drains.pop(0)[1])  # what the dispatcher drained by now
        self.stopped = self.now >= self.stop_at
        return self.stopped


def slow_ev(n: int, ts0: int, step: int = 1) -> np.ndarray:
    e = ev(n, ts0)
    e["latency_ns"] = 600 * 10**6  # over the 500 ms default threshold, under the emergency one
    e["ts_ns"] = ts0 + step * np.arange(n)
    return e


def test_run_loop_detects_per_window_not_per_batch() -> None:
    """Watcher.run on a fake clock: three drained batches in one window give one anomaly with
    their sum; a batch drained just after the edge (within the grace) is split by completion time
    between the two windows it straddles."""
    w, buf, found = watcher()
    ms = 10**6
    straddling = np.concatenate([slow_ev(2, 10 * S + 990 * ms), slow_ev(3, 11 * S + 5 * ms)])
    drains = [(10 * S + 210 * ms, slow_ev(2, 10 * S + 200 * ms)),
              (10 * S + 410 * ms, slow_ev(2, 10 * S + 400 * ms)),
              (10 * S + 610 * ms, slow_ev(2, 10 * S + 600 * ms)),
              (11 * S + 20 * ms, straddling),  # drained in the grace after the 11 s edge
              (11 * S + 510 * ms, slow_ev(3, 11 * S + 500 * ms))]
    clock = FakeTime(buf, 10 * S + 100 * ms, drains, stop_at=12 * S + 500 * ms)
    w.mono = clock.mono
    beats: list[int] = []
    w.run(clock, lambda: beats.append(clock.now))  # type: ignore[arg-type]
    assert [(a.type, a.count, a.window_start_ns, a.window_end_ns) for a in found] == [
        ("latency", 8, 10 * S, 11 * S), ("latency", 6, 11 * S, 12 * S)]
    assert sorted(found[0].events["ts_ns"])[-2:] == [10 * S + 990 * ms, 10 * S + 990 * ms + 1]
    assert int(found[1].events["ts_ns"].min()) == 11 * S + 5 * ms
    assert w.rates.windows == 2 and w.rates.ring_records == 14 and buf.size == 0
    assert len(beats) >= 3  # beats while idle between windows
