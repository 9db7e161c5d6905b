"""Hung requests and the kernel's health events in the core: one anomaly per group of hung records,
fired by the group's deadline (not a window end), a later group refused on record, hung wins over
emergency, health records mapped to credits/connect/auth."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from aod import smb2
from aod.anomaly import Anomaly
from aod.config import Config, HealthConfig, HealthTypeConfig, LatencyConfig
from aod.detect import Detector
from aod.dispatch import Dispatcher, RecentEvents
from aod.hung import HUNG_KEYS_MAX, RecentHung
from aod.names import Names
from aod.policy import Policy
from aod.record import (
    HEALTH_CONNECT_DONE,
    HEALTH_CONNECT_ERR,
    HEALTH_CREDIT_TIMEOUT,
    HEALTH_KERBEROS_AUTH,
    HEALTH_SLOW_RSP,
    KIND_COMPLETION,
    KIND_HEALTH,
    KIND_HUNG,
    empty,
)

C = smb2.COMMANDS
MS = 1_000_000
S = 1_000_000_000


class Clock:
    def __init__(self, t: int = 10 * S) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def cfg(**lat: Any) -> Config:
    base = LatencyConfig(mode="all", default_threshold_ms=100.0, acceptable_count=5, emergency_threshold_ms=1000.0,
                         horizon_sec=10.0, share=0.0, hung_threshold_ms=1000.0, hung_group_ms=100.0)
    return Config(latency=dataclasses.replace(base, **lat), errors=())


def hung(n: int, ses: int = 0x11, tid: int = 5, cmd: str = "WRITE", mid0: int = 100, ts: int = 9 * S,
         age_ms: float = 1500.0) -> np.ndarray:
    e = empty(n)
    e["kind"] = KIND_HUNG
    e["tracer_id"] = 1
    e["command"] = C[cmd]
    e["mid"] = mid0 + np.arange(n)
    e["session_id"] = ses
    e["tree_id"] = tid
    e["ts_ns"] = ts
    e["latency_ns"] = int(age_ms * MS)
    e["pid"] = 4242
    e["comm"] = b"writer"
    return e


def done(rows: np.ndarray, lat_ms: float, ts: int) -> np.ndarray:
    """The completions of these requests (same tracer, session, mid, command)."""
    e = rows.copy()
    e["kind"] = KIND_COMPLETION
    e["latency_ns"] = int(lat_ms * MS)
    e["ts_ns"] = ts
    return e


def names() -> Names:
    shares = {(0x11, 5): "\\\\fs1\\data", (0x22, 7): "\\\\fs1\\home"}
    return Names("/pins", debugdata="/nonexistent", pinned=lambda _d: ({3: "fs1"}, shares))


# ---------------------------------------------------------------- grouping


def test_many_hung_records_within_the_delay_are_one_anomaly_at_the_deadline() -> None:
    clock = Clock()
    d = Detector(cfg(), mono=clock, names=names())
    assert d.immediate(hung(3)) == []  # the group opens: nothing yet
    assert d.next_deadline() == clock.t + 100 * MS
    clock.t += 60 * MS
    assert d.immediate(hung(2, ses=0x22, tid=7, cmd="READ", mid0=200)) == []  # another mount joins
    assert d.tick() == []  # 60 ms: not yet
    clock.t += 40 * MS
    (a,) = d.tick()  # at the deadline, with no record and no window close
    assert (a.type, a.count, a.rule) == ("hung", 5, "in_flight>1000ms")
    assert a.commands == (C["READ"], C["WRITE"])
    det = a.details
    assert det["requests_total"] == 5 and len(det["requests"]) == 5
    assert sorted(det["shares"]) == ["\\\\fs1\\data", "\\\\fs1\\home"] and det["servers"] == ["fs1"]
    r = next(x for x in det["requests"] if x["mid"] == 200)
    assert r == {"command": "READ", "mid": 200, "age_ms": 1500.0, "pid": 4242, "comm": "writer",
                 "session_id": "0x22", "tree_id": "0x7", "share": "\\\\fs1\\home", "server": "fs1"}
    assert d.next_deadline() is None and d.tick() == []
    # a later hung record opens a second group: a second anomaly
    d.immediate(hung(1, mid0=300))
    clock.t += 100 * MS
    (b,) = d.tick()
    assert (b.type, b.count) == ("hung", 1)


def test_group_ms_zero_fires_in_the_batch_and_aging_off_ignores_hung_records() -> None:
    clock = Clock()
    (a,) = Detector(cfg(hung_group_ms=0.0), mono=clock).immediate(hung(2))
    assert (a.type, a.count) == ("hung", 2)
    off = Detector(cfg(hung_threshold_ms=0.0), mono=clock)
    assert off.immediate(hung(2)) == [] and off.next_deadline() is None


def test_hung_exclude_is_honoured_by_the_core_too() -> None:
    clock = Clock()
    d = Detector(cfg(hung_group_ms=0.0, hung_exclude=(C["LOCK"],)), mono=clock)
    assert d.immediate(hung(3, cmd="LOCK")) == []
    assert [a.type for a in d.immediate(hung(1, cmd="WRITE"))] == ["hung"]


class FakeRing:
    """A ring that never has records: only the deadline can end the dispatcher's waits."""

    bad_records = 0

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        threading.Event().wait(min(timeout, 0.01))
        return False

    def drain(self, max_bytes: Optional[int] = None) -> np.ndarray:
        return empty(0)


def test_dispatcher_wakes_for_the_hung_deadline() -> None:
    """The ring wait ends by the group's deadline (not wait_sec later), and on_tick runs then."""
    d = Detector(cfg(hung_group_ms=50.0))
    raised: list[Anomaly] = []
    ring = FakeRing()
    disp = Dispatcher(ring, RecentEvents(lambda: 10 * S), lambda b, c: raised.extend(d.immediate(b, c)),
                      wait_sec=30.0, deadline=d.next_deadline, on_tick=lambda: raised.extend(d.tick()))
    now = d.mono()
    disp.handle(hung(2, ts=now))
    assert raised == [] and disp.wait_for() <= 0.05
    stop = threading.Event()
    t = threading.Thread(target=disp.run, args=(stop, lambda: None))
    t.start()
    try:
        for _ in range(200):
            if raised:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        t.join(5)
    assert [a.type for a in raised] == ["hung"]
    assert ring.waits[0] <= 0.05  # the first wait was cut to the deadline, not 30 s


def test_a_second_group_within_the_cooldown_is_refused_on_record(tmp_path: Path) -> None:
    clock = Clock()
    c = dataclasses.replace(cfg(hung_group_ms=0.0), output_dir=str(tmp_path))
    submitted: list[Anomaly] = []
    pol = Policy(lambda: c, lambda a: submitted.append(a) or True, clock=lambda: clock.t / 1e9)
    d = Detector(c, mono=clock, names=names(), suppressing=pol.suppressing)
    from faultkit import LogTap

    tap = LogTap().attach()
    try:
        for a in d.immediate(hung(2)):
            pol.raise_(a)
        clock.t += 2 * S
        for a in d.immediate(hung(1, mid0=500)):
            pol.raise_(a)
        assert [a.type for a in submitted] == ["hung"]
        assert pol.snapshot()["anomalies"] == {"hung": 2} and pol.snapshot()["refused"] == {"cooldown": 1}
        pol.flush()
    finally:
        tap.detach()
    (alert,) = tap.find("detected anomaly: hung")
    assert alert.getMessage().endswith("on \\\\fs1\\data") and alert.AOD_SHARE == "\\\\fs1\\data"  # type: ignore[attr-defined]
    (notice,) = tap.find("not captured")
    assert notice.getMessage().startswith("AOD 1 hung anomaly on \\\\fs1\\data not captured")
    assert alert.MESSAGE_ID != notice.MESSAGE_ID  # type: ignore[attr-defined]
    lines = [json.loads(x) for x in (tmp_path / "anomalies.jsonl").read_text().splitlines()]
    assert [(x["type"], x["captured"]) for x in lines] == [("hung", True), ("hung", False)]
    assert lines[0]["shares"] == ["\\\\fs1\\data"] and lines[1]["shares"] == ["\\\\fs1\\data"]
    assert lines[1]["count"] == 1 and lines[1]["reason"] == "cooldown"


# ---------------------------------------------------------------- dedupe: hung wins


def test_a_hung_request_that_completes_over_the_emergency_threshold_is_no_emergency() -> None:
    clock = Clock()
    d = Detector(cfg(hung_group_ms=0.0), mono=clock)
    h = hung(3, ts=clock.t)
    assert [a.type for a in d.immediate(h)] == ["hung"]
    clock.t += S
    comp = done(h, 2500.0, clock.t)
    got = d.immediate(comp)
    assert "emergency" not in [a.type for a in got]
    assert d.emergencies_deduplicated == 3
    # a request never seen hung, over the emergency threshold: an emergency only
    other = done(hung(1, mid0=900), 2500.0, clock.t + 1)
    assert [a.type for a in d.immediate(other)] == ["emergency"]


def test_hung_and_done_in_one_batch_is_hung_only_and_still_a_latency_sample() -> None:
    clock = Clock()
    d = Detector(cfg(hung_group_ms=0.0, acceptable_count=3), mono=clock)
    h = hung(3, ts=clock.t)
    got = d.immediate(np.concatenate([h, done(h, 2500.0, clock.t + 1)]))
    assert sorted(a.type for a in got) == ["hung", "latency"]  # the completions count as latency samples


def test_recent_hung_is_bounded() -> None:
    r = RecentHung(cap=4)
    r.add(hung(6))
    assert len(r) == 4
    assert r.contains(hung(6)).tolist() == [False, False, True, True, True, True]
    assert HUNG_KEYS_MAX >= 4096  # at least the tracer's hung map


# ---------------------------------------------------------------- health


def health(codes: list[int], conn: int = 3, ts: int = 9 * S, err: int = 0) -> np.ndarray:
    e = empty(len(codes))
    e["kind"] = KIND_HEALTH
    e["command"] = codes
    e["session_id"] = conn
    e["ts_ns"] = ts
    e["err"] = err
    return e


def test_health_codes_map_to_credits_connect_auth_and_name_the_server() -> None:
    d = Detector(cfg(), names=names())
    got = d.immediate(health([HEALTH_CREDIT_TIMEOUT, HEALTH_CONNECT_ERR, HEALTH_CONNECT_DONE, HEALTH_SLOW_RSP],
                             err=111))
    by = {a.type: a for a in got}
    assert sorted(by) == ["connect", "credits"]
    assert by["credits"].rule == "credit_timeout" and by["credits"].commands == ()
    assert by["connect"].details["errnos"] == ["ECONNREFUSED"]
    assert by["connect"].details["servers"] == ["fs1"]  # conn_id 3 -> fs1
    assert d.health_counts == {"credit_timeout": 1, "connect_err": 1, "connect_done": 1, "slow_rsp": 1}
    (a,) = d.immediate(health([HEALTH_KERBEROS_AUTH], conn=0x11, ts=12 * S))
    assert a.type == "auth" and a.details["servers"] == ["fs1"]  # session 0x11 -> its share's server


def test_health_types_can_be_turned_off() -> None:
    off = HealthConfig(credits=HealthTypeConfig(False), connect=HealthTypeConfig(True))
    d = Detector(dataclasses.replace(cfg(), health=off))
    assert [a.type for a in d.immediate(health([HEALTH_CREDIT_TIMEOUT, HEALTH_CONNECT_ERR]))] == ["connect"]


# ---------------------------------------------------------------- the core, end to end


def test_the_core_raises_hung_by_the_deadline_not_the_window_end(tmp_path: Path) -> None:
    """A real Core on a file ring, 5 s windows: the hung anomaly is in the journal within the
    grouping delay (plus scheduling), one for all the hung records written meanwhile."""
    import time

    from faultkit import CoreRun, LogTap, config_text

    text = config_text(tmp_path / "out", interval=5.0, actions="[]",
                       extra="  hung: []\n").replace("  acceptable_count: 3\n",
                                                     "  acceptable_count: 3\n  hung_group_ms: 500\n")
    tap = LogTap().attach()
    run = CoreRun(tmp_path, text)
    try:
        run.next_window()
        t0 = time.monotonic()
        run.writer.write(hung(3, ts=time.monotonic_ns()))
        time.sleep(0.05)
        run.writer.write(hung(2, ses=0x22, mid0=200, ts=time.monotonic_ns()))
        (rec,) = tap.wait("detected anomaly: hung", timeout=4.0)
        took = rec.mono - t0  # type: ignore[attr-defined]
        assert 0.45 <= took < 1.2, took  # the 500 ms deadline (a ring wait lasts 1 s); the window: 5 s
        assert "with 5 events" in rec.getMessage()
        assert run.core.snapshot()["hung"]["records"] == 5
    finally:
        run.stop()
        tap.detach()


def test_reconnect_names_the_server_and_every_anomaly_names_its_shares() -> None:
    from aod.record import CMD_NONE, KIND_RECONNECT
    from aod.summary import build_summary

    clock = Clock()
    d = Detector(cfg(hung_group_ms=0.0), mono=clock, names=names())
    rc = empty(1)
    rc["kind"] = KIND_RECONNECT
    rc["command"] = CMD_NONE
    rc["session_id"] = 3  # smb3_reconnect: the conn_id
    rc["ts_ns"] = clock.t
    (a,) = d.immediate(rc)
    assert a.type == "reconnect" and a.details["servers"] == ["fs1"] and a.details["shares"] == []
    slow = done(hung(1, mid0=7000, ts=clock.t), 2500.0, clock.t + 1)  # never hung: an emergency
    (e,) = d.immediate(slow)
    assert e.type == "emergency" and e.details["shares"] == ["\\\\fs1\\data"]
    (h,) = d.immediate(hung(1, ses=0x22, tid=7, mid0=8000, ts=clock.t + 2))
    s = build_summary(h, Config(), [])
    assert s["anomaly"]["shares"] == ["\\\\fs1\\home"] and s["anomaly"]["servers"] == ["fs1"]


def test_hung_and_health_records_pass_the_dispatcher_and_future_stamps_still_drop() -> None:
    clock = Clock()
    d = Detector(cfg(hung_group_ms=0.0), mono=clock)
    raised: list[Anomaly] = []
    disp = Dispatcher(FakeRing(), RecentEvents(lambda: 10 * S, mono=clock), lambda b, c: raised.extend(
        d.immediate(b, c)), mono=clock)
    disp.handle(np.concatenate([hung(1, ts=clock.t + 5 * S), health([HEALTH_CONNECT_ERR], ts=clock.t + 5 * S)]))
    assert disp.future == 2 and raised == [] and disp.records == 0  # stamped 5 s ahead: dropped, counted
    disp.handle(np.concatenate([hung(1, ts=clock.t), health([HEALTH_CONNECT_ERR], ts=clock.t)]))
    assert sorted(a.type for a in raised) == ["connect", "hung"] and disp.records == 2
