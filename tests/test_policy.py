"""Anomaly policy: cooldown and hourly cap; every anomaly on record: alerted ones in the journal
and the history, refused ones coalesced per type and window with their reason and the bundle
that covers them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aod import config as config_mod
from aod import log
from aod.anomaly import Anomaly
from aod.policy import Policy, Throttle


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def anomaly(type_: str = "latency", count: int = 12, rule: str = "r", commands: tuple[int, ...] = (9,),
            wall: float = 1_800_000_000.0) -> Anomaly:
    return Anomaly(type=type_, rule=rule, count=count, detected_wall=wall, detected_mono_ns=1,
                   window_start_ns=0, window_end_ns=1, commands=commands)


def policy(tmp_path: Path, cooldown: float = 60, cap: int = 100, queue_ok: bool = True) -> tuple[Policy, FakeClock,
                                                                                                    list[Anomaly]]:
    cfg = config_mod.load_text(f"output_dir: {tmp_path / 'out'}\ncapture: {{cooldown_sec: {cooldown}, "
                               f"max_per_hour: {cap}}}\n")
    clk, submitted = FakeClock(), []

    def submit(a: Anomaly) -> bool:
        submitted.append(a)
        return queue_ok

    return Policy(lambda: cfg, submit, clock=clk), clk, submitted


def history(tmp_path: Path) -> list[dict[str, Any]]:
    p = tmp_path / "out" / "anomalies.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def of(records: list[logging.LogRecord], kind: str) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "MESSAGE_ID", "") == log.MESSAGE_IDS[kind]]


# ---------------------------------------------------------------- throttle

def test_cooldown_per_type_and_suppressed_counts() -> None:
    clk = FakeClock()
    th = Throttle(cooldown_sec=60, max_per_hour=100, clock=clk)
    assert th.refusal("latency") == ""
    assert th.refusal("error") == ""  # other type: own cooldown
    clk.t += 59.999
    assert th.refusal("latency") == "cooldown"
    assert th.suppressed == {"latency": 1}
    clk.t += 0.001
    assert th.refusal("latency") == ""  # exactly cooldown later


def test_hourly_cap_and_manual_force() -> None:
    clk = FakeClock()
    th = Throttle(cooldown_sec=0, max_per_hour=3, clock=clk)
    assert [th.refusal("latency") for _ in range(4)] == ["", "", "", "hourly_cap"]
    assert th.refusal("manual", force=True) == ""
    clk.t += 3600
    assert th.refusal("latency") == ""


def test_suppressing_predicts_refusals_with_a_margin() -> None:
    clk = FakeClock()
    th = Throttle(cooldown_sec=60, max_per_hour=2, clock=clk)
    assert not th.suppressing("latency")  # nothing captured yet
    assert th.refusal("latency") == ""
    assert th.suppressing("latency") and not th.suppressing("error")
    clk.t += 59.5
    assert not th.suppressing("latency")  # the cooldown ends within the 1 s margin: keep events
    assert th.suppressed == {}  # no side effect
    assert th.refusal("error") == ""  # 2 of 2 this hour
    assert th.suppressing("reconnect")  # the hourly cap refuses every type


# ---------------------------------------------------------------- on record

def test_an_alerted_anomaly_is_in_the_journal_and_the_history(tmp_path: Path,
                                                              records: list[logging.LogRecord]) -> None:
    p, _, submitted = policy(tmp_path)
    a = anomaly(type_="error", rule="access_denied", commands=(5,))
    a = Anomaly(**{**a.__dict__, "details": {"statuses": {"STATUS_ACCESS_DENIED": 12}}})
    assert p.raise_(a) and submitted == [a]
    (alert,) = of(records, "anomaly")
    assert alert.levelno == log.ALERT and alert.getMessage() == "AOD detected anomaly: error with 12 events"
    assert (alert.AOD_RULE, alert.AOD_STATUS, alert.AOD_COMMAND) == (  # type: ignore[attr-defined]
        "access_denied", "STATUS_ACCESS_DENIED", "CREATE")
    (line,) = history(tmp_path)
    assert (line["type"], line["rule"], line["count"], line["captured"]) == ("error", "access_denied", 12, True)
    assert p.snapshot()["anomalies"] == {"error": 1}


def test_a_refused_anomaly_is_on_record_with_the_bundle_that_covers_it(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    p, clk, submitted = policy(tmp_path, cooldown=300)
    first = anomaly()
    assert p.raise_(first)
    clk.t += 20
    assert not p.raise_(anomaly(count=30, rule="over_threshold_share>=0.5 in 10s", commands=(8,)))
    assert len(submitted) == 1 and of(records, "suppressed") == []  # held until the window closes
    p.on_result(first, "/var/log/aodv2/aod_latency_1.tar.zst", True)
    assert p.flush() == 1
    (rec,) = of(records, "suppressed")
    assert rec.levelno == log.NOTICE and log.priority(rec.levelno) == 5
    f = rec.__dict__
    assert (f["AOD_ANOMALY"], f["AOD_SUPPRESSED"], f["AOD_COUNT"], f["AOD_REASON"], f["AOD_BUNDLE"], f["AOD_RULE"],
            f["AOD_COMMAND"]) == ("latency", "1", "30", "cooldown", "/var/log/aodv2/aod_latency_1.tar.zst",
                                  "over_threshold_share>=0.5 in 10s", "READ")
    msg = rec.getMessage()
    assert "refused by the cooldown" in msg and "covered by /var/log/aodv2/aod_latency_1" in msg
    captured, refused = history(tmp_path)
    assert captured["captured"] is True
    assert (refused["captured"], refused["reason"], refused["anomalies"], refused["count"], refused["covered_by"],
            refused["covered_by_state"], refused["commands"]) == (
        False, "cooldown", 1, 30, "/var/log/aodv2/aod_latency_1.tar.zst", "written", ["READ"])
    assert p.suppressed == {"latency": 1} and p.snapshot()["refused"] == {"cooldown": 1}
    assert p.flush() == 0 and len(of(records, "suppressed")) == 1  # nothing new: nothing written


def test_a_storm_is_coalesced_to_one_record_per_type_and_window(tmp_path: Path,
                                                                records: list[logging.LogRecord]) -> None:
    p, clk, _ = policy(tmp_path, cooldown=300, cap=2)
    assert p.raise_(anomaly("latency"))
    assert p.raise_(anomaly("error", rule="timeouts"))  # the cap (2) is reached
    for i in range(500):
        clk.t += 0.001
        assert not p.raise_(anomaly("latency", count=10 + i % 3))
        assert not p.raise_(anomaly("emergency", count=1, rule="latency>1000ms", commands=(5,)))
    assert p.flush() == 2  # window 1
    for _ in range(7):
        assert not p.raise_(anomaly("latency"))
    assert p.flush() == 1  # window 2
    recs = of(records, "suppressed")
    assert [(r.AOD_ANOMALY, r.AOD_SUPPRESSED, r.AOD_REASON) for r in recs] == [  # type: ignore[attr-defined]
        ("emergency", "500", "hourly_cap"), ("latency", "500", "cooldown"), ("latency", "7", "cooldown")]
    assert recs[0].AOD_BUNDLE == "" and "no bundle covers it" in recs[0].getMessage()  # type: ignore[attr-defined]
    assert "its covering capture is in progress" in recs[1].getMessage()  # the latency capture is not written yet
    lines = [x for x in history(tmp_path) if not x["captured"]]
    assert [(x["type"], x["anomalies"], x["count"]) for x in lines] == [
        ("emergency", 500, 500), ("latency", 500, sum(10 + i % 3 for i in range(500))), ("latency", 7, 84)]
    assert p.suppressed == {"latency": 507, "emergency": 500}


def test_a_full_collector_queue_is_recorded_as_not_captured(tmp_path: Path,
                                                           records: list[logging.LogRecord]) -> None:
    p, _, _ = policy(tmp_path, queue_ok=False)
    assert not p.raise_(anomaly())
    assert len(of(records, "anomaly")) == 1 and len(of(records, "capture_failed")) == 1
    (line,) = history(tmp_path)
    assert (line["captured"], line["reason"]) == (False, "queue_full")
    assert p.snapshot()["capture_failures"] == 1 and p.snapshot()["refused"] == {"queue_full": 1}


def test_a_manual_capture_is_never_refused_by_the_limits(tmp_path: Path) -> None:
    p, _, submitted = policy(tmp_path, cooldown=300, cap=1)
    assert p.raise_(anomaly("latency"))
    assert p.raise_(anomaly("manual", rule="SIGUSR1")) and p.raise_(anomaly("manual", rule="again"))
    assert [a.type for a in submitted] == ["latency", "manual", "manual"]


def test_refused_hung_anomalies_keep_each_request_on_record(tmp_path: Path) -> None:
    """A hung group refused by the cooldown still lists its requests (bounded) in anomalies.jsonl,
    so every hung request is on record once, captured or not."""
    p, clk, _ = policy(tmp_path, cooldown=300)

    def hung(mids: range) -> Anomaly:
        return Anomaly(type="hung", rule="in_flight>3000ms", count=len(mids), detected_wall=1_800_000_000.0,
                       detected_mono_ns=1, window_start_ns=0, window_end_ns=1, commands=(9,),
                       details={"requests": [{"command": "WRITE", "mid": m, "session_id": "0x1"} for m in mids]})

    assert p.raise_(hung(range(1, 3)))
    clk.t += 1
    assert not p.raise_(hung(range(3, 5)))
    assert not p.raise_(hung(range(5, 6)))
    p.flush()
    lines = history(tmp_path)
    assert [x["captured"] for x in lines] == [True, False]
    mids = [r["mid"] for r in lines[0]["details"]["requests"]] + [r["mid"] for r in lines[1]["requests"]]
    assert mids == [1, 2, 3, 4, 5]
    assert not p.raise_(hung(range(6, 6 + 600)))  # bounded per line
    p.flush()
    assert len(history(tmp_path)[-1]["requests"]) == 500
