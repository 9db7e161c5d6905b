"""Detectors: exact boundaries (count == acceptable_count, threshold edge, window edge),
emergency, reconnect, error rules, cooldown and hourly cap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aod import smb2
from aod.config import Config, ErrorRule, LatencyConfig, ReconnectConfig
from aod.detect import Detector, Throttle, window_bounds
from aod.dispatch import Columns, Events, WindowBuffer
from aod.record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, empty

C = smb2.COMMANDS
MS = 1_000_000


def ev(n: int, cmd: str = "WRITE", lat_ms: float = 1.0, kind: int = KIND_COMPLETION, ts0: int = 10**9,
       status: int = 0, err: int = 0) -> np.ndarray:
    e = empty(n)
    e["command"] = C[cmd]
    e["latency_ns"] = int(lat_ms * MS)
    e["kind"] = kind
    e["ts_ns"] = ts0 + np.arange(n)
    e["nt_status"] = status
    e["err"] = err
    return e


def cfg(**lat: object) -> Config:
    base = LatencyConfig(mode="all", default_threshold_ms=100.0, acceptable_count=5, emergency_threshold_ms=1000.0)
    return Config(latency=dataclasses.replace(base, **lat), errors=())


def test_latency_fires_at_exactly_acceptable_count() -> None:
    d = Detector(cfg())
    assert d.window(ev(4, lat_ms=150), 0, 2 * 10**9) == []
    (a,) = d.window(ev(5, lat_ms=150), 0, 2 * 10**9)
    assert a.type == "latency" and a.count == 5 and a.commands == (C["WRITE"],)


def test_latency_at_threshold_is_not_over() -> None:
    d = Detector(cfg())
    assert d.window(ev(10, lat_ms=100.0), 0, 2 * 10**9) == []
    assert len(d.window(ev(10, lat_ms=100.000001), 0, 2 * 10**9)) == 1


def test_per_command_threshold_and_modes() -> None:
    d = Detector(cfg(thresholds_ms={C["WRITE"]: 500.0}))
    assert d.window(ev(10, "WRITE", 300), 0, 1) == []
    assert len(d.window(ev(10, "READ", 300), 0, 1)) == 1
    d = Detector(cfg(mode="trackonly", track=(C["READ"],)))
    assert d.window(ev(10, "WRITE", 300), 0, 1) == []
    assert len(d.window(ev(10, "READ", 300), 0, 1)) == 1
    d = Detector(cfg(mode="excludeonly", exclude=(C["CHANGE_NOTIFY"],)))
    assert d.window(ev(10, "CHANGE_NOTIFY", 60_000), 0, 1) == []
    assert d.immediate(ev(1, "CHANGE_NOTIFY", 60_000)) == []
    assert len(d.window(ev(10, "READ", 300), 0, 1)) == 1


def test_emergency_fires_immediately_on_one_event() -> None:
    d = Detector(cfg())
    assert d.immediate(ev(3, lat_ms=1000.0)) == []  # at threshold: not over
    batch = np.concatenate([ev(50, lat_ms=2.0), ev(1, "CREATE", 2000.0)])
    (a,) = d.immediate(batch)
    assert a.type == "emergency" and a.count == 1 and a.commands == (C["CREATE"],)
    assert a.details["command"] == "CREATE" and abs(a.details["max_latency_ms"] - 2000.0) < 1e-3


def test_error_rules_status_errno_and_command_filter() -> None:
    io = smb2.NT_STATUS["STATUS_IO_TIMEOUT"]
    rules = (
        ErrorRule(name="timeouts", statuses=frozenset({io}), errnos=frozenset({110}), acceptable_count=3),
        ErrorRule(name="denied_on_create", statuses=frozenset({smb2.NT_STATUS["STATUS_ACCESS_DENIED"]}),
                  commands=frozenset({C["CREATE"]}), acceptable_count=1),
    )
    d = Detector(dataclasses.replace(cfg(), errors=rules))
    assert d.window(ev(2, kind=KIND_ERROR, status=io), 0, 1) == []
    mixed = np.concatenate([ev(2, kind=KIND_ERROR, status=io), ev(1, kind=KIND_ERROR, err=110)])
    (a,) = d.window(mixed, 0, 1)
    assert (a.type, a.rule, a.count) == ("error", "timeouts", 3)
    # a completion carrying a status is not an error record
    assert d.window(ev(5, kind=KIND_COMPLETION, status=io), 0, 1) == []
    denied = smb2.NT_STATUS["STATUS_ACCESS_DENIED"]
    assert d.window(ev(4, "READ", kind=KIND_ERROR, status=denied), 0, 1) == []
    (b,) = d.window(ev(1, "CREATE", kind=KIND_ERROR, status=denied), 0, 1)
    assert b.rule == "denied_on_create" and b.details["statuses"] == {"STATUS_ACCESS_DENIED": 1}


def test_reconnect_records_and_statuses_fire_at_once() -> None:
    d = Detector(cfg())
    (a,) = d.immediate(ev(1, kind=KIND_RECONNECT))
    assert a.type == "reconnect"
    (b,) = d.immediate(ev(1, kind=KIND_ERROR, status=smb2.NT_STATUS["STATUS_NETWORK_SESSION_EXPIRED"]))
    assert b.type == "reconnect" and b.details["statuses"] == ["STATUS_NETWORK_SESSION_EXPIRED"]
    off = Detector(dataclasses.replace(cfg(), reconnect=ReconnectConfig(enabled=False)))
    assert off.immediate(ev(1, kind=KIND_RECONNECT)) == []


def test_window_edge_splits_events_by_completion_time() -> None:
    start, end = window_bounds(5 * 10**9 + 123, 10**9)
    assert (start, end) == (5 * 10**9, 6 * 10**9)
    buf = WindowBuffer()
    inside = ev(5, lat_ms=150, ts0=end - 5)  # ts end-5 .. end-1
    after = ev(5, lat_ms=150, ts0=end)  # ts end .. end+4: next window
    buf.add(np.concatenate([inside, after]))
    d = Detector(cfg())
    got = buf.take_until(end)
    assert len(got) == 5 and got["ts_ns"].max() == end - 1
    assert len(d.window(got, start, end)) == 1
    rest = buf.take_until(end + 10**9)
    assert len(rest) == 5 and rest["ts_ns"].min() == end


def test_window_buffer_is_bounded_and_counts_overflow() -> None:
    buf = WindowBuffer(capacity=10)
    buf.add(ev(7))
    buf.add(ev(7))
    assert buf.size == 10 and buf.overflow == 4 and buf.total == 14
    assert len(buf.take_until(2**62)) == 10 and buf.size == 0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_cooldown_per_type_and_suppressed_counts() -> None:
    clk = FakeClock()
    th = Throttle(cooldown_sec=60, max_per_hour=100, clock=clk)
    assert th.allow("latency")
    assert th.allow("error")  # other type: own cooldown
    clk.t += 59.999
    assert not th.allow("latency")
    assert th.suppressed == {"latency": 1}
    clk.t += 0.001
    assert th.allow("latency")  # exactly cooldown later
    assert th.take_unreported() == {"latency": 1} and th.take_unreported() == {}


def test_hourly_cap_and_manual_force() -> None:
    clk = FakeClock()
    th = Throttle(cooldown_sec=0, max_per_hour=3, clock=clk)
    assert [th.allow("latency") for _ in range(4)] == [True, True, True, False]
    assert th.allow("manual", force=True)
    clk.t += 3600
    assert th.allow("latency")


def test_suppressing_predicts_refusals_with_a_margin() -> None:
    clk = FakeClock()
    th = Throttle(cooldown_sec=60, max_per_hour=2, clock=clk)
    assert not th.suppressing("latency")  # nothing captured yet
    assert th.allow("latency")
    assert th.suppressing("latency") and not th.suppressing("error")
    clk.t += 59.5
    assert not th.suppressing("latency")  # the cooldown ends within the 1 s margin: keep events
    assert th.suppressed == {}  # no side effect
    assert th.allow("error")  # 2 of 2 this hour
    assert th.suppressing("reconnect")  # the hourly cap refuses every type


def test_suppressed_anomalies_carry_no_events_but_their_count() -> None:
    clk = FakeClock()
    th = Throttle(cooldown_sec=60, max_per_hour=100, clock=clk)
    d = Detector(cfg(), suppressing=th.suppressing)
    batch = ev(1000, lat_ms=2000)
    (a,) = d.immediate(batch)
    assert len(a.events) == 1000 and th.allow(a.type)
    (b,) = d.immediate(batch)  # in cooldown: this one will be suppressed
    assert b.count == 1000 and len(b.events) == 0 and b.details["events_in_window"] == 1000
    assert not th.allow(b.type)


def test_vectorised_paths_match_a_plain_reference() -> None:
    """The single-pass field reads and prefilters give the same answers as a naive per-field loop."""
    rng = np.random.default_rng(3)
    n = 20_000
    e = empty(n)
    e["kind"] = rng.choice([KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, 7], n, p=[0.9, 0.07, 0.01, 0.02])
    e["command"] = rng.integers(0, 21, n)
    e["latency_ns"] = rng.integers(0, 3 * 10**9, n, dtype=np.uint64)
    e["nt_status"] = rng.choice(list(smb2.NT_STATUS.values()), n)
    e["err"] = rng.integers(0, 120, n)
    e["ts_ns"] = np.sort(rng.integers(0, 10**9, n))
    rules = (ErrorRule(name="a", statuses=frozenset({smb2.NT_STATUS["STATUS_IO_TIMEOUT"]}), errnos=frozenset({5})),
             ErrorRule(name="b", statuses=frozenset({smb2.NT_STATUS["STATUS_ACCESS_DENIED"]}),
                       commands=frozenset({C["CREATE"], C["READ"]}), acceptable_count=2))
    c = dataclasses.replace(cfg(thresholds_ms={C["WRITE"]: 900.0}, mode="excludeonly", exclude=(C["ECHO"],)),
                            errors=rules)
    d = Detector(c)
    thr = {cmd: (900.0 if cmd == C["WRITE"] else 100.0) * MS for cmd in range(21)}
    slow = [i for i in range(n) if e["kind"][i] in (1, 2) and e["command"][i] != C["ECHO"]
            and e["latency_ns"][i] > thr[int(e["command"][i])]]
    (lat,) = [a for a in d.window(e, 0, 1) if a.type == "latency"]
    assert lat.count == len(slow)
    errs = {a.rule: a.count for a in d.window(e, 0, 1) if a.type == "error"}
    io, denied = smb2.NT_STATUS["STATUS_IO_TIMEOUT"], smb2.NT_STATUS["STATUS_ACCESS_DENIED"]
    ref_a = sum(1 for i in range(n) if e["kind"][i] == 2 and (e["nt_status"][i] == io or e["err"][i] == 5))
    ref_b = sum(1 for i in range(n) if e["kind"][i] == 2 and e["nt_status"][i] == denied
                and e["command"][i] in (C["CREATE"], C["READ"]))
    assert errs == {"a": ref_a, "b": ref_b}
    em = [i for i in range(n) if e["kind"][i] in (1, 2) and e["command"][i] != C["ECHO"]
          and e["latency_ns"][i] > 1000 * MS]
    imm = {a.type: a for a in d.immediate(e)}
    assert imm["emergency"].count == len(em)
    assert imm["emergency"].details["max_latency_ms"] == round(float(e["latency_ns"][em].max()) / 1e6, 3)
    rc = sum(1 for i in range(n)
             if e["kind"][i] == 3 or (e["kind"][i] == 2 and e["nt_status"][i] in smb2.RECONNECT_STATUSES))
    assert imm["reconnect"].count == rc


def test_anomaly_events_are_bounded_matches_first(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from aod import detect

    monkeypatch.setattr(detect, "MAX_ANOMALY_EVENTS", 100)
    e = np.concatenate([ev(500, lat_ms=1), ev(30, lat_ms=150, ts0=10**9 + 1000), ev(500, lat_ms=1, ts0=2 * 10**9)])
    (a,) = Detector(cfg()).window(e, 0, 3 * 10**9)
    assert a.count == 30 and len(a.events) == 100 and a.details["events_in_window"] == 1030
    assert (a.events["latency_ns"] == 150 * MS).sum() == 30  # every match kept
    assert (np.diff(a.events["ts_ns"].astype(np.int64)) >= 0).all()  # still in time order


def test_window_buffer_keeps_columns_and_splits_out_of_order_batches() -> None:
    buf = WindowBuffer()
    a = ev(6, lat_ms=150, ts0=100)
    b = ev(6, "READ", lat_ms=2, ts0=200)
    b["ts_ns"] = [200, 300, 201, 301, 202, 302]  # out of time order: split by mask
    buf.add(a)
    buf.add(b, Columns.of(b))
    got = buf.take(250)
    assert len(got) == 9 and [len(x) for x in got.batches] == [6, 3]
    rec = got.records()
    assert list(got.cols.ts_ns) == list(rec["ts_ns"]) == list(range(100, 106)) + [200, 201, 202]
    assert list(got.cols.command) == list(rec["command"]) and list(got.cols.kind) == list(rec["kind"])
    assert list(got.cols.latency_ns) == list(rec["latency_ns"])
    rest = buf.take_until(10**6)
    assert list(rest["ts_ns"]) == [300, 301, 302] and buf.size == 0
    assert len(buf.take(10**6)) == 0 and buf.take_until(10**6).dtype == rec.dtype


def test_events_find_and_gather_across_batches() -> None:
    parts = [ev(k, ts0=1000 * i, lat_ms=i) for i, k in enumerate((3, 1, 5, 2))]
    e = Events(parts, [Columns.of(p) for p in parts])
    whole = np.concatenate(parts)
    idx = np.array([0, 2, 3, 4, 9, 10])
    assert len(e) == 11 and (e.take(idx) == whole[idx]).all()
    assert (e.take(np.array([0, 4]), 8) == whole[[0, 4, 8, 9, 10]]).all()  # rows, then the newest from 8 on
    assert (e.take(np.zeros(0, np.intp), 3) == whole[3:]).all() and len(e.take(idx[:0])) == 0
    assert (e.records() == whole).all() and (e.cols.ts_ns == whole["ts_ns"]).all()
    slow = e.where(lambda c: c.latency_ns >= 2 * MS)
    assert list(slow) == list(np.flatnonzero(whole["latency_ns"] >= 2 * MS)) == list(range(4, 11))
    assert list(e.at("ts_ns", idx)) == list(whole["ts_ns"][idx])
    assert (np.concatenate(e.tail(7)) == whole[-7:]).all() and e.tail(0) == []
    empty_ev = Events([], [])
    assert len(empty_ev) == 0 and len(empty_ev.where(lambda c: c.kind == 1)) == 0 and len(empty_ev.records()) == 0


def test_window_on_batches_equals_window_on_one_array(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Detecting on a window's batches and columns gives what the concatenated records give,
    bounded anomaly events included (gathered across batches, each record once)."""
    from aod import detect

    monkeypatch.setattr(detect, "MAX_ANOMALY_EVENTS", 40)
    io = smb2.NT_STATUS["STATUS_IO_TIMEOUT"]
    rng = np.random.default_rng(5)
    e = ev(300, lat_ms=1)
    e["ts_ns"] = np.arange(300)
    e["mid"] = np.arange(300)
    slow = rng.choice(300, 30, replace=False)
    e["latency_ns"][slow] = 150 * MS
    errs = rng.choice(300, 12, replace=False)
    e["kind"][errs] = KIND_ERROR
    e["nt_status"][errs] = io
    d = Detector(dataclasses.replace(cfg(), errors=(ErrorRule(name="t", statuses=frozenset({io})),)))
    buf = WindowBuffer()
    for s in np.split(e, [7, 100, 101, 250]):
        buf.add(s)
    got = buf.take(10**9)
    one, many = d.window(e, 0, 10**9), d.window(got, 0, 10**9)
    assert [(a.type, a.count) for a in one] == [(a.type, a.count) for a in many] == [("latency", 30), ("error", 12)]
    for a, b in zip(one, many):
        assert (a.events == b.events).all() and a.details == b.details
        assert len(np.unique(b.events["mid"])) == len(b.events) <= 40


def test_bounded_events_have_no_duplicates_when_matches_are_recent(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from aod import detect

    monkeypatch.setattr(detect, "MAX_ANOMALY_EVENTS", 100)
    e = ev(1000, lat_ms=1)
    e["mid"] = np.arange(1000)
    e["latency_ns"][[10, 11, 930, 940, 990]] = 150 * MS  # 930, 940: in the older part, near the newest
    (a,) = Detector(cfg()).window(e, 0, 3 * 10**9)
    mids = a.events["mid"]
    assert len(np.unique(mids)) == len(mids) <= 100
    assert {10, 11, 930, 940, 990} <= set(mids.tolist()) and mids[-1] == 999


def test_immediate_with_columns_matches_without() -> None:
    batch = np.concatenate([ev(50, lat_ms=2.0), ev(2, "CREATE", 2000.0), ev(1, kind=KIND_RECONNECT)])
    d = Detector(cfg())
    plain, cols = d.immediate(batch), d.immediate(batch, Columns.of(batch))
    assert [(a.type, a.count, a.commands) for a in plain] == [(a.type, a.count, a.commands) for a in cols]
    assert [a.type for a in cols] == ["emergency", "reconnect"]


def test_network_name_deleted_fires_a_reconnect_at_once() -> None:
    """An error record with STATUS_NETWORK_NAME_DELETED (share gone, the client reconnects) is a
    reconnect anomaly on the batch it arrives in, not a windowed error count."""
    deleted = smb2.NT_STATUS["STATUS_NETWORK_NAME_DELETED"]
    d = Detector(cfg())
    batch = np.concatenate([ev(20, "READ", lat_ms=2.0), ev(1, "CREATE", kind=KIND_ERROR, status=deleted)])
    (a,) = d.immediate(batch)
    assert (a.type, a.rule, a.count) == ("reconnect", "reconnect", 1)
    assert a.details["statuses"] == ["STATUS_NETWORK_NAME_DELETED"] and a.commands == (C["CREATE"],)
    assert d.window(batch, 0, 2 * 10**9) == []  # no error rule matches it: nothing waits for the window
    assert d.immediate(ev(1, "CREATE", kind=KIND_COMPLETION, status=deleted)) == []  # not an error record


class ReloadDuringSearch(Events):
    """A window whose first row search reloads the detector, as a SIGHUP on the main thread can
    between two reads of the watcher thread."""

    def __init__(self, records: np.ndarray, d: Detector, new: Config) -> None:
        super().__init__([records], [Columns.of(records)])
        self.d, self.new = d, new

    def where(self, test):  # type: ignore[no-untyped-def]
        if self.new is not None:
            self.d.reconfigure(self.new)
            self.new = None
        return super().where(test)


def test_reconfigure_mid_window_keeps_the_old_config_for_that_window() -> None:
    """The detector reads its config once per window: a reload during a window applies from the
    next one. (Read attribute by attribute, this window saw the old 100 ms floor with the new
    trackonly table, so WRITE counted as untracked and nothing fired.)"""
    d = Detector(cfg())
    new = cfg(mode="trackonly", track=(C["READ"],), acceptable_count=1, emergency_threshold_ms=1500.0)
    slow_writes = ev(10, "WRITE", lat_ms=150)
    (a,) = d.window(ReloadDuringSearch(slow_writes, d, new), 0, 10**9)
    assert (a.type, a.rule, a.count) == ("latency", "over_threshold>=5", 10)
    assert a.details["thresholds_ms"] == {"WRITE": 100.0}
    assert d.cfg is new and d.window(slow_writes, 0, 10**9) == []  # the next window: new config
    assert len(d.window(ev(1, "READ", lat_ms=150), 0, 10**9)) == 1


def test_reconfigure_mid_batch_keeps_the_old_config_for_that_batch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from aod import detect

    d = Detector(cfg())
    new = cfg(mode="trackonly", track=(C["READ"],), emergency_threshold_ms=1500.0)
    real = detect._latency_kind
    calls: list[int] = []

    def reload_then(kind: np.ndarray) -> np.ndarray:  # reload between the batch's reads
        if not calls:
            d.reconfigure(new)
        calls.append(1)
        return real(kind)

    monkeypatch.setattr(detect, "_latency_kind", reload_then)
    (a,) = d.immediate(ev(1, "WRITE", lat_ms=1200))
    assert calls and (a.type, a.rule) == ("emergency", "latency>1000ms")
    assert a.details["emergency_threshold_ms"] == 1000.0
    assert d.immediate(ev(1, "WRITE", lat_ms=1200)) == []  # next batch: WRITE untracked, 1500 ms


def test_config_tables_are_immutable() -> None:
    """The published tables are frozen: a reload replaces them, nobody edits them in place."""
    d = Detector(cfg(mode="excludeonly", exclude=(C["ECHO"],)))
    t = d.tables
    assert not t.thresholds_ns.flags.writeable and not t.tracked.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.cfg = cfg()  # type: ignore[misc]
    d.reconfigure(cfg())
    assert d.tables is not t and t.thresholds_ns[C["ECHO"]] == np.iinfo(np.uint64).max  # old one untouched
