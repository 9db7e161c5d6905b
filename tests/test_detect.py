"""Detectors: count rules at the crossing (sliding horizon, no window edge), share rules at the
window close, exact boundaries, emergency, reconnect, error rules, evidence from the recent events."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aod import smb2
from aod.config import Config, ErrorRule, LatencyConfig, ReconnectConfig
from aod.counters import zero_stats
from aod.detect import LATENCY, Detector
from aod.dispatch import Columns, Events, RecentEvents
from aod.record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, empty
from aod.watch import window_bounds

C = smb2.COMMANDS
ST = smb2.NT_STATUS
MS = 1_000_000
S = 1_000_000_000


def ev(n: int, cmd: str = "WRITE", lat_ms: float = 1.0, kind: int = KIND_COMPLETION, ts0: int = S,
       status: int = 0, err: int = 0, step: int = 1) -> np.ndarray:
    e = empty(n)
    e["command"] = C[cmd]
    e["latency_ns"] = int(lat_ms * MS)
    e["kind"] = kind
    e["ts_ns"] = ts0 + step * np.arange(n)
    e["nt_status"] = status
    e["err"] = err
    return e


def cfg(**lat: object) -> Config:
    base = LatencyConfig(mode="all", default_threshold_ms=100.0, acceptable_count=5, emergency_threshold_ms=1000.0,
                         horizon_sec=10.0, share=0.0)
    return Config(latency=dataclasses.replace(base, **lat), errors=())


def types(found: list) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    return [(a.type, a.count) for a in found]


# ---------------------------------------------------------------- count rules: at the crossing

def test_latency_fires_at_exactly_acceptable_count() -> None:
    d = Detector(cfg())
    assert d.immediate(ev(4, lat_ms=150)) == []
    (a,) = d.immediate(ev(1, lat_ms=150, ts0=S + 10))  # the 5th within the horizon
    assert (a.type, a.count, a.commands) == ("latency", 1 + 4, (C["WRITE"],))
    assert a.details["trigger"] == "count" and a.details["crossing_mono_ns"] == S + 10
    assert a.rule == "over_threshold>=5 in 10s"
    assert d.immediate(ev(4, lat_ms=150, ts0=S + 20)) == []  # it starts afresh after firing


def test_a_rule_fires_at_most_once_a_window() -> None:
    """A sustained storm gives one anomaly per rule and window (watch_interval_sec), not one per
    drained batch: after firing, a rule ignores the rest of that window, then counts afresh."""
    d = Detector(cfg(acceptable_count=5))
    fired = [len(d.immediate(ev(10, lat_ms=1500, ts0=S + k * 100 * MS))) for k in range(25)]  # 2.5 s
    assert [k for k, n in enumerate(fired) if n] == [0, 10, 20]  # 1.0 s, 2.0 s, 3.0 s windows
    assert all(n == 2 for n in fired if n)  # latency and emergency, each once a window
    io = ST["STATUS_IO_TIMEOUT"]
    e = Detector(dataclasses.replace(cfg(), errors=(ErrorRule(name="t", statuses=frozenset({io})),)))
    got = [len(e.immediate(ev(1, kind=KIND_ERROR, status=io, ts0=S + k * 300 * MS))) for k in range(7)]
    assert got == [1, 0, 0, 0, 1, 0, 0]  # 1.0, 1.3, 1.6, 1.9 s: one window; 2.2 s: the next


def test_latency_at_threshold_is_not_over() -> None:
    d = Detector(cfg())
    assert d.immediate(ev(10, lat_ms=100.0)) == []
    assert len(d.immediate(ev(10, lat_ms=100.000001))) == 1


def test_horizon_is_sliding_and_strict() -> None:
    """acceptable_count matches fire when newest - oldest < horizon_sec, wherever windows fall."""
    d = Detector(cfg(acceptable_count=3, horizon_sec=2.0))
    assert d.immediate(ev(1, lat_ms=150, ts0=10 * S)) == []
    assert d.immediate(ev(1, lat_ms=150, ts0=11 * S)) == []
    assert d.immediate(ev(1, lat_ms=150, ts0=12 * S)) == []  # 10 s .. 12 s: exactly 2 s apart, not within
    (a,) = d.immediate(ev(1, lat_ms=150, ts0=12 * S + 999 * MS))  # 11 .. 12.999: within
    assert a.count == 3 and (a.window_start_ns, a.window_end_ns) == (11 * S, 12 * S + 999 * MS + 1)


def test_burst_straddling_a_window_boundary_fires() -> None:
    """The issue's case: 18 WRITEs of 800 ms within 2 ms, split across a window edge, acceptable_count
    10. Counting per aligned 1 s window saw 9 + 9 and raised nothing."""
    c = dataclasses.replace(cfg(acceptable_count=10, emergency_threshold_ms=3000.0), watch_interval_sec=1.0)
    d = Detector(c)
    _, edge = window_bounds(41 * S + 500 * MS, S)
    burst = ev(18, lat_ms=800, ts0=edge - 9 * 110_000, step=110_000)  # 18 in 1.9 ms, 9 each side of the edge
    before, after = burst[burst["ts_ns"] < edge], burst[burst["ts_ns"] >= edge]
    assert (len(before), len(after)) == (9, 9)
    assert d.immediate(before) == []
    (a,) = d.immediate(after)
    assert (a.type, a.count) == ("latency", 18) and a.details["crossing_mono_ns"] == int(after["ts_ns"][0])
    assert d.window(edge, zero_stats(), *d.take_matched()) == []  # and nothing more at the window close


def test_matches_out_of_order_across_batches() -> None:
    d = Detector(cfg(acceptable_count=3, horizon_sec=1.0))
    late = ev(1, lat_ms=150, ts0=5 * S + 100 * MS)
    assert d.immediate(ev(1, lat_ms=150, ts0=6 * S)) == []
    assert d.immediate(late) == []  # older, yet within 1 s of the first
    (a,) = d.immediate(ev(1, lat_ms=150, ts0=6 * S + 50 * MS))
    assert a.count == 3 and a.window_start_ns == 5 * S + 100 * MS


def test_count_state_keeps_only_what_a_crossing_can_need() -> None:
    """The last acceptable_count - 1 matches at most, and only those younger than the horizon plus
    the 1 s a record may arrive late by (several CPUs write the ring)."""
    d = Detector(cfg(acceptable_count=4000, horizon_sec=1.0))
    assert d.immediate(ev(5000, lat_ms=150, step=2 * MS)) == []  # 10 s of matches, 500 a second: no crossing
    assert len(d._counts[LATENCY][1]) == 1000  # those of the last 1 s + 1 s
    d = Detector(cfg(acceptable_count=1000, horizon_sec=1.0))
    assert d.immediate(ev(1000, lat_ms=150, ts0=20 * S, step=MS // 2)) != []  # 1000 in 0.5 s: a crossing
    assert len(d._counts[LATENCY][1]) == 0  # the anomaly took them all
    assert d.immediate(ev(3000, lat_ms=150, ts0=40 * S, step=3 * MS // 2)) == []
    assert len(d._counts[LATENCY][1]) == 999  # never more than acceptable_count - 1


def test_a_late_match_still_counts() -> None:
    """A record that reaches the ring after a newer one (another CPU's) still pairs with the older ones."""
    d = Detector(cfg(acceptable_count=2, horizon_sec=0.1))
    assert d.immediate(ev(1, lat_ms=150, ts0=S)) == []
    assert d.immediate(ev(1, lat_ms=150, ts0=S + 500 * MS)) == []
    assert len(d.immediate(ev(1, lat_ms=150, ts0=S + 50 * MS))) == 1  # late, within 0.1 s of the first


def test_a_huge_acceptable_count_counts_in_bounded_buckets() -> None:
    """Above EXACT_MAX the count rule keeps per-bucket counts (horizon / 1024 wide), not every match:
    bounded memory and time, the horizon exact to one bucket."""
    from aod import sliding

    d = Detector(cfg(acceptable_count=20_000, horizon_sec=10.0, emergency_threshold_ms=10_000.0))
    state = lambda: d._counts[LATENCY][1]  # noqa: E731
    for k in range(19):  # 19,000 matches in 9.5 s
        assert d.immediate(ev(1000, lat_ms=150, ts0=S + k * 500 * MS, step=100_000)) == [], k
    assert state().bucketed and len(state().buckets) <= sliding.BUCKETS + 200 and len(state()) == 19_000
    (a,) = d.immediate(ev(1000, lat_ms=150, ts0=S + 19 * 500 * MS, step=100_000))
    assert a.count == 20_000 and a.details["over_threshold_by_command"] == {"WRITE": 20_000}
    assert len(state()) == 0
    d2 = Detector(cfg(acceptable_count=20_000, horizon_sec=10.0, emergency_threshold_ms=10_000.0))
    for k in range(40):  # the same rate spread over 20 s: never 20,000 within 10 s
        assert d2.immediate(ev(500, lat_ms=150, ts0=S + k * 500 * MS, step=100_000)) == [], k


def test_per_command_threshold_and_modes() -> None:
    d = Detector(cfg(thresholds_ms={C["WRITE"]: 500.0}))
    assert d.immediate(ev(10, "WRITE", 300)) == []
    assert len(d.immediate(ev(10, "READ", 300))) == 1
    d = Detector(cfg(mode="trackonly", track=(C["READ"],)))
    assert d.immediate(ev(10, "WRITE", 300)) == []
    assert len(d.immediate(ev(10, "READ", 300))) == 1
    d = Detector(cfg(mode="excludeonly", exclude=(C["CHANGE_NOTIFY"],)))
    assert d.immediate(ev(10, "CHANGE_NOTIFY", 60_000)) == []
    assert len(d.immediate(ev(10, "READ", 300))) == 1


def test_emergency_fires_immediately_on_one_event() -> None:
    d = Detector(cfg())
    assert d.immediate(ev(3, lat_ms=1000.0)) == []  # at threshold: not over; 3 < acceptable_count
    batch = np.concatenate([ev(50, lat_ms=2.0), ev(1, "CREATE", 2000.0)])
    (a,) = d.immediate(batch)
    assert a.type == "emergency" and a.count == 1 and a.commands == (C["CREATE"],)
    assert a.details["command"] == "CREATE" and abs(a.details["max_latency_ms"] - 2000.0) < 1e-3


def test_error_rules_status_errno_command_filter_and_horizon() -> None:
    io = ST["STATUS_IO_TIMEOUT"]
    denied = ST["STATUS_ACCESS_DENIED"]
    rules = (
        ErrorRule(name="timeouts", statuses=frozenset({io}), errnos=frozenset({110}), acceptable_count=3),
        ErrorRule(name="denied_on_create", statuses=frozenset({denied}), commands=frozenset({C["CREATE"]}),
                  acceptable_count=2, horizon_sec=1.0),
    )
    d = Detector(dataclasses.replace(cfg(), errors=rules))
    assert d.immediate(ev(2, kind=KIND_ERROR, status=io)) == []
    (a,) = d.immediate(ev(1, kind=KIND_ERROR, err=110, ts0=3 * S))  # the third within 10 s
    assert (a.type, a.rule, a.count) == ("error", "timeouts", 3)
    assert a.details["statuses"] == {"STATUS_IO_TIMEOUT": 2}  # the third matched by its errno
    assert d.immediate(ev(5, kind=KIND_COMPLETION, status=io)) == []  # a completion with a status is no error
    assert d.immediate(ev(4, "READ", kind=KIND_ERROR, status=denied)) == []  # other command
    assert d.immediate(ev(1, "CREATE", kind=KIND_ERROR, status=denied, ts0=5 * S)) == []
    assert d.immediate(ev(1, "CREATE", kind=KIND_ERROR, status=denied, ts0=6 * S)) == []  # 1 s apart: not within
    (b,) = d.immediate(ev(1, "CREATE", kind=KIND_ERROR, status=denied, ts0=6 * S + 500 * MS))
    assert b.rule == "denied_on_create" and b.details["statuses"] == {"STATUS_ACCESS_DENIED": 2}


def test_reconnect_records_and_statuses_fire_at_once() -> None:
    d = Detector(cfg())
    (a,) = d.immediate(ev(1, kind=KIND_RECONNECT))
    assert a.type == "reconnect"
    assert d.immediate(ev(3, kind=KIND_RECONNECT, ts0=S + 500 * MS)) == []  # the same window: once
    (b,) = d.immediate(ev(1, kind=KIND_ERROR, status=ST["STATUS_NETWORK_SESSION_EXPIRED"], ts0=2 * S))
    assert b.type == "reconnect" and b.details["statuses"] == ["STATUS_NETWORK_SESSION_EXPIRED"]
    off = Detector(dataclasses.replace(cfg(), reconnect=ReconnectConfig(enabled=False)))
    assert off.immediate(ev(1, kind=KIND_RECONNECT)) == []


def test_network_name_deleted_fires_a_reconnect_at_once() -> None:
    deleted = ST["STATUS_NETWORK_NAME_DELETED"]
    d = Detector(cfg())
    batch = np.concatenate([ev(20, "READ", lat_ms=2.0), ev(1, "CREATE", kind=KIND_ERROR, status=deleted)])
    (a,) = d.immediate(batch)
    assert (a.type, a.rule, a.count) == ("reconnect", "reconnect", 1)
    assert a.details["statuses"] == ["STATUS_NETWORK_NAME_DELETED"] and a.commands == (C["CREATE"],)
    assert d.immediate(ev(1, "CREATE", kind=KIND_COMPLETION, status=deleted)) == []  # not an error record


def test_vectorised_paths_match_a_plain_reference() -> None:
    """Count rules with acceptable_count 1 count every match of the batch: compare with a per-event loop."""
    rng = np.random.default_rng(3)
    n = 20_000
    e = empty(n)
    e["kind"] = rng.choice([KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, 7], n, p=[0.9, 0.07, 0.01, 0.02])
    e["command"] = rng.integers(0, 21, n)
    e["latency_ns"] = rng.integers(0, 3 * S, n, dtype=np.uint64)
    e["nt_status"] = rng.choice(list(ST.values()), n)
    e["err"] = rng.integers(0, 120, n)
    e["ts_ns"] = rng.integers(0, S, n)  # not in time order
    rules = (ErrorRule(name="a", statuses=frozenset({ST["STATUS_IO_TIMEOUT"]}), errnos=frozenset({5})),
             ErrorRule(name="b", statuses=frozenset({ST["STATUS_ACCESS_DENIED"]}),
                       commands=frozenset({C["CREATE"], C["READ"]})))
    c = dataclasses.replace(cfg(thresholds_ms={C["WRITE"]: 900.0}, mode="excludeonly", exclude=(C["ECHO"],),
                                acceptable_count=1), errors=rules)
    got = {(a.type, a.rule): a for a in Detector(c).immediate(e)}
    thr = {cmd: (900.0 if cmd == C["WRITE"] else 100.0) * MS for cmd in range(21)}
    slow = [i for i in range(n) if e["kind"][i] in (1, 2) and e["command"][i] != C["ECHO"]
            and e["latency_ns"][i] > thr[int(e["command"][i])]]
    assert got[("latency", "over_threshold>=1 in 10s")].count == len(slow)
    io, denied = ST["STATUS_IO_TIMEOUT"], ST["STATUS_ACCESS_DENIED"]
    ref_a = sum(1 for i in range(n) if e["kind"][i] == 2 and (e["nt_status"][i] == io or e["err"][i] == 5))
    ref_b = sum(1 for i in range(n) if e["kind"][i] == 2 and e["nt_status"][i] == denied
                and e["command"][i] in (C["CREATE"], C["READ"]))
    assert (got[("error", "a")].count, got[("error", "b")].count) == (ref_a, ref_b)
    em = [i for i in slow if e["latency_ns"][i] > 1000 * MS]
    assert got[("emergency", "latency>1000ms")].count == len(em)
    assert got[("emergency", "latency>1000ms")].details["max_latency_ms"] == round(
        float(e["latency_ns"][em].max()) / 1e6, 3)
    rc = sum(1 for i in range(n)
             if e["kind"][i] == 3 or (e["kind"][i] == 2 and e["nt_status"][i] in smb2.RECONNECT_STATUSES))
    assert got[("reconnect", "reconnect")].count == rc


def test_immediate_with_columns_matches_without() -> None:
    batch = np.concatenate([ev(50, lat_ms=2.0), ev(2, "CREATE", 2000.0), ev(1, kind=KIND_RECONNECT)])
    plain, cols = Detector(cfg()).immediate(batch), Detector(cfg()).immediate(batch, Columns.of(batch))
    assert [(a.type, a.count, a.commands) for a in plain] == [(a.type, a.count, a.commands) for a in cols]
    assert [a.type for a in cols] == ["emergency", "reconnect"]


# ---------------------------------------------------------------- share rules: at the window close

def stats_with(slot_counts: dict[int, int]) -> np.ndarray:
    s = zero_stats()
    for slot, n in slot_counts.items():
        s["hist"][slot][10] = n
    return s


def test_low_rate_slowdown_fires_the_share_rule() -> None:
    """One process, about 1 request a second, each 800 ms: the count rule (10 within 10 s) needs 9 s
    or more; the share rule (>= 50 % slow, >= 5 of them) fires at the 5th slow one's window close."""
    d = Detector(cfg(acceptable_count=10, horizon_sec=10.0, share=0.5, share_min_count=5,
                     emergency_threshold_ms=3000.0))
    found = []
    for sec in range(1, 8):
        found += d.immediate(ev(1, "WRITE", 800, ts0=sec * S))
        found += d.window((sec + 1) * S, stats_with({C["WRITE"]: 1, C["CREATE"]: 0}), *d.take_matched())
        if found:
            break
    (a,) = found
    assert (a.type, a.count, sec) == ("latency", 5, 5)
    assert a.details["trigger"] == "share" and a.details["observed_share"] == 1.0
    assert a.commands == (C["WRITE"],) and a.rule == "over_threshold_share>=0.5 in 60s"


def test_share_rule_quiet_when_slow_ones_are_a_small_share() -> None:
    d = Detector(cfg(acceptable_count=1000, share=0.5, share_min_count=5))
    for sec in range(20):  # 6 slow of 20 completions each second: 30 %
        assert d.immediate(ev(6, "READ", 150, ts0=sec * S)) == []
        assert d.window((sec + 1) * S, stats_with({C["READ"]: 20}), *d.take_matched()) == []


def test_share_rule_needs_its_denominator_and_its_minimum() -> None:
    d = Detector(cfg(acceptable_count=1000, share=0.5, share_min_count=5))
    d.immediate(ev(4, "READ", 150))
    assert d.window(2 * S, stats_with({C["READ"]: 4}), *d.take_matched()) == []  # 100 %, but 4 < 5
    d.immediate(ev(3, "READ", 150, ts0=2 * S))
    assert d.window(3 * S, None, *d.take_matched()) == []  # counters unreadable: no share rule
    d.immediate(ev(5, "READ", 150, ts0=3 * S))
    assert len(d.window(4 * S, stats_with({C["READ"]: 5}), *d.take_matched())) == 1


def test_count_and_share_of_one_rule_do_not_both_fire_on_the_same_matches() -> None:
    d = Detector(cfg(acceptable_count=8, share=0.5, share_min_count=5))
    (a,) = d.immediate(ev(8, "READ", 150))
    assert a.details["trigger"] == "count"
    assert d.window(2 * S, stats_with({C["READ"]: 8}), *d.take_matched()) == []  # those 8 are an anomaly already
    d.immediate(ev(4, "READ", 150, ts0=2 * S))
    assert d.window(3 * S, stats_with({C["READ"]: 4}), *d.take_matched()) == []  # 4 < share_min_count
    d.immediate(ev(1, "READ", 150, ts0=3 * S))
    (c,) = d.window(4 * S, stats_with({C["READ"]: 1}), *d.take_matched())
    assert c.details["trigger"] == "share" and c.count == 5 and c.details["completions"] == 5
    assert d.immediate(ev(7, "READ", 150, ts0=4 * S)) == []  # the share fire reset the count rule: 7 < 8


def test_error_share_rule_over_the_rules_commands() -> None:
    denied = ST["STATUS_ACCESS_DENIED"]
    rule = ErrorRule(name="denied", statuses=frozenset({denied}), commands=frozenset({C["CREATE"]}),
                     acceptable_count=20, share=0.5, share_min_count=3)
    d = Detector(dataclasses.replace(cfg(), errors=(rule,)))
    d.immediate(ev(3, "CREATE", kind=KIND_ERROR, status=denied))
    (a,) = d.window(2 * S, stats_with({C["CREATE"]: 4, C["READ"]: 500}), *d.take_matched())  # 3 of 4 CREATEs
    assert (a.type, a.rule, a.count) == ("error", "denied", 3) and a.details["completions"] == 4
    assert a.details["statuses"] == {"STATUS_ACCESS_DENIED": 3} and a.commands == (C["CREATE"],)


# ---------------------------------------------------------------- evidence

def recent_for(d: Detector, now: int) -> RecentEvents:
    r = RecentEvents(d.keep_ns, mono=lambda: now)
    d.recent = r
    return r


def feed(d: Detector, r: RecentEvents, batch: np.ndarray) -> list:  # type: ignore[type-arg]
    cols = Columns.of(batch)
    r.add(batch, cols)
    return d.immediate(batch, cols)


def test_anomaly_carries_the_ring_events_of_its_horizon() -> None:
    d = Detector(cfg(acceptable_count=3, horizon_sec=2.0))
    r = recent_for(d, 20 * S)
    feed(d, r, ev(4, "READ", 2.0, ts0=16 * S))  # too old for the horizon
    feed(d, r, ev(2, "READ", 2.0, ts0=18 * S + 500 * MS))
    feed(d, r, ev(2, lat_ms=150, ts0=19 * S))
    (a,) = feed(d, r, ev(1, lat_ms=150, ts0=19 * S + 10 * MS))
    assert len(a.records()) == 5 and int(a.records()["ts_ns"].min()) == 18 * S + 500 * MS


def test_anomaly_events_are_bounded_matches_first(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from aod import detect

    monkeypatch.setattr(detect, "MAX_ANOMALY_EVENTS", 100)
    d = Detector(cfg(acceptable_count=30, horizon_sec=5.0))
    r = recent_for(d, 10 * S)
    feed(d, r, ev(500, lat_ms=1, ts0=8 * S))
    feed(d, r, ev(29, lat_ms=150, ts0=8 * S + 1000))
    feed(d, r, ev(500, lat_ms=1, ts0=9 * S))
    (a,) = feed(d, r, ev(1, lat_ms=150, ts0=9 * S + 10**6))
    assert a.count == 30 and len(a.records()) == 100 and a.details["events_in_horizon"] == 1030
    assert (a.records()["latency_ns"] == 150 * MS).sum() == 30  # every match kept
    assert (np.diff(a.records()["ts_ns"].astype(np.int64)) >= 0).all()  # still in time order
    assert len(np.unique(a.records()["mid"] + a.records()["ts_ns"])) == 100  # each record once


def test_refused_anomalies_carry_no_events_but_their_count() -> None:
    refusing = {"latency": False}
    d = Detector(cfg(), suppressing=lambda t: refusing.get(t, False))
    r = recent_for(d, 2 * S)
    (a,) = feed(d, r, ev(1000, lat_ms=150))
    assert len(a.records()) == 1000
    refusing["latency"] = True
    (b,) = feed(d, r, ev(1000, lat_ms=150, ts0=2 * S))  # the next window (one anomaly a rule and window)
    assert b.count == 1000 and len(b.records()) == 0 and b.details["events_not_kept"] == "suppressed"


def test_recent_events_keep_the_horizon_and_count_what_they_let_go() -> None:
    now = [10 * S]
    r = RecentEvents(lambda: 2 * S, capacity=10, mono=lambda: now[0])
    for ts in (5 * S, 8 * S + 100, 9 * S):
        b = ev(4, ts0=ts)
        r.add(b, Columns.of(b))
    assert r.size == 8 and r.overflow == 0  # the 5 s batch was older than the horizon: let go, not counted
    b = ev(4, ts0=9 * S + 500)
    r.add(b, Columns.of(b))
    assert r.size == 10 and r.overflow == 2  # over capacity: two events still inside the horizon
    assert list(r.events(9 * S).records()["ts_ns"]) == [9 * S + i for i in range(4)] + [9 * S + 500 + i
                                                                                        for i in range(4)]
    now[0] = 100 * S
    b = ev(1, ts0=50 * S)  # a backlog drained late: the newest batch stays, old as it is
    r.add(b, Columns.of(b))
    assert r.size == 1 and len(r.events().records()) == 1


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
    empty_ev = Events([], [])
    assert len(empty_ev) == 0 and len(empty_ev.where(lambda c: c.kind == 1)) == 0 and len(empty_ev.records()) == 0


# ---------------------------------------------------------------- reload

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


def test_a_reload_that_leaves_a_rule_alone_keeps_its_count() -> None:
    """A reload of anything else (retention, capture, another rule) keeps a rule's matches: a
    rule of 5 timeouts an hour must not forget 4 of them because retention changed."""
    io = ST["STATUS_IO_TIMEOUT"]
    rules = (ErrorRule(name="t", statuses=frozenset({io}), acceptable_count=5, horizon_sec=3600.0),)
    base = dataclasses.replace(cfg(), errors=rules)
    d = Detector(base)
    assert d.immediate(ev(4, kind=KIND_ERROR, status=io, step=60 * S)) == []  # 4 in 3 min
    d.reconfigure(dataclasses.replace(base, capture=dataclasses.replace(base.capture, cooldown_sec=10.0)))
    (a,) = d.immediate(ev(1, kind=KIND_ERROR, status=io, ts0=600 * S))
    assert (a.rule, a.count) == ("t", 5)
    d.immediate(ev(4, kind=KIND_ERROR, status=io, ts0=700 * S, step=60 * S))
    d.reconfigure(dataclasses.replace(base, errors=(dataclasses.replace(rules[0], acceptable_count=6),)))
    assert d.immediate(ev(1, kind=KIND_ERROR, status=io, ts0=1200 * S)) == []  # the rule changed: afresh


def test_reconfigure_starts_the_counts_afresh() -> None:
    """Matches counted under the old thresholds do not count under the new ones."""
    d = Detector(cfg(acceptable_count=5))
    d.immediate(ev(4, lat_ms=150))
    d.reconfigure(cfg(acceptable_count=5, default_threshold_ms=120.0))
    assert d.immediate(ev(1, lat_ms=150, ts0=S + 100)) == []
    assert len(d.immediate(ev(4, lat_ms=150, ts0=S + 200))) == 1


def test_config_tables_are_immutable() -> None:
    """The published tables are frozen: a reload replaces them, nobody edits them in place."""
    d = Detector(cfg(mode="excludeonly", exclude=(C["ECHO"],)))
    t = d.tables
    assert not t.thresholds_ns.flags.writeable and not t.tracked.flags.writeable and not t.hung_codes.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.cfg = cfg()  # type: ignore[misc]
    d.reconfigure(cfg())
    assert d.tables is not t and t.thresholds_ns[C["ECHO"]] == np.iinfo(np.uint64).max  # old one untouched
