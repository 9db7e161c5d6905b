"""summary.json: histogram percentiles, exact event stats, JSON safety."""

from __future__ import annotations

import json
import math
from datetime import datetime
from types import MappingProxyType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aod.anomaly import Anomaly
from aod.config import Config, ErrorRule, LatencyConfig
from aod.record import (
    CMD_STATS_DTYPE,
    HIST_BUCKETS,
    KIND_COMPLETION,
    KIND_ERROR,
    STATS_ROWS,
    empty,
    hist_bucket,
)
from aod.summary import bucket_bounds_us, build_summary, jsonable, percentiles_from_hist


def hist_of(lat_ns: np.ndarray) -> np.ndarray:
    return np.bincount(hist_bucket(lat_ns), minlength=HIST_BUCKETS)


def within_bucket_resolution(est_ms: float, true_ns: float) -> bool:
    """est lies in the true value's log2 bucket or a neighbouring one."""
    b = int(hist_bucket(np.array([int(true_ns)]))[0])
    lo = bucket_bounds_us(max(b - 1, 0))[0]
    hi = bucket_bounds_us(min(b + 1, HIST_BUCKETS - 1))[1]
    return lo <= est_ms * 1000.0 <= hi


def test_percentiles_vs_numpy_on_lognormal() -> None:
    rng = np.random.default_rng(7)
    lat = (rng.lognormal(mean=math.log(2e6), sigma=1.2, size=50_000)).astype(np.uint64)  # ~2 ms median
    qs = (1, 50, 90, 99, 99.9)
    est = percentiles_from_hist(hist_of(lat), qs)
    true = np.percentile(lat.astype(np.float64), qs)
    for q, e, t in zip(qs, est, true):
        assert e is not None and within_bucket_resolution(e, t), (q, e, t / 1e6)
    # and the interpolation is much better than "bucket upper bound" for the median
    assert abs(est[1] - true[1] / 1e6) / (true[1] / 1e6) < 0.35  # type: ignore[operator]


def test_single_bucket_and_empty() -> None:
    lat = np.full(100, 3_000_000, dtype=np.uint64)  # 3 ms -> bucket [2048, 4096) us
    p50, p99 = percentiles_from_hist(hist_of(lat), (50, 99))
    assert p50 is not None and p99 is not None and 2.048 <= p50 <= p99 <= 4.096
    assert percentiles_from_hist(np.zeros(HIST_BUCKETS, dtype=np.uint64), (50, 99)) == [None, None]
    sub_us = np.full(10, 500, dtype=np.uint64)  # < 1 us: bucket 0
    assert percentiles_from_hist(hist_of(sub_us), (100,))[0] == pytest.approx(0.001)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=300),
       st.sampled_from([0, 10, 50, 90, 99, 100]))
def test_percentile_property(lat: list[int], q: float) -> None:
    """The estimate lies between the buckets of the order statistics around the rank."""
    arr = np.array(lat, dtype=np.uint64)
    est = percentiles_from_hist(hist_of(arr), (q,))[0]
    assert est is not None
    lower, higher = (int(np.percentile(arr, q, method=m)) for m in ("lower", "higher"))
    lo = bucket_bounds_us(int(hist_bucket(np.array([lower]))[0]))[0]
    hi = bucket_bounds_us(int(hist_bucket(np.array([higher]))[0]))[1]
    assert lo <= est * 1000.0 <= hi


def make_anomaly(with_stats: bool) -> Anomaly:
    ev = empty(6)
    ev["kind"] = [KIND_COMPLETION, KIND_COMPLETION, KIND_COMPLETION, KIND_ERROR, KIND_ERROR, KIND_COMPLETION]
    ev["command"] = [9, 9, 9, 5, 5, 8]
    ev["latency_ns"] = [600_000_000, 800_000_000, 1_200_000_000, 0, 0, 700_000_000]
    ev["nt_status"] = [0, 0, 0, 0xC00000B5, 0xC0000203, 0]
    ev["err"] = [0, 0, 0, 0, -0, 0]
    ev["comm"] = [b"dd", b"dd", b"cp", b"ls", b"ls", b"dd"]
    ev["pid"] = [10, 10, 11, 12, 12, 10]
    stats = None
    if with_stats:
        stats = np.zeros(STATS_ROWS, dtype=CMD_STATS_DTYPE)
        fast = np.full(1000, 2_000_000, dtype=np.uint64)  # 1000 WRITEs at 2 ms, plus the 3 slow ones
        allw = np.concatenate([fast, ev["latency_ns"][:3]])
        stats[9]["hist"] = hist_of(allw)
        stats[9]["latency_sum_ns"] = int(allw.sum())
        stats[5]["errors"] = 2
        stats[16]["hist"][5] = 7  # QUERY_INFO: traffic without events
    mono = 5_000_000_000_000
    return Anomaly("latency", "latency>500ms", 3, 1_700_000_000.25, mono, mono - 1_000_000_000, mono,
                   events=ev, commands=(9,), window_stats=stats,
                   details=MappingProxyType({"threshold_ms": np.float64(500.0), "count": np.int64(3),
                                             "statuses": frozenset({1, 2}), "raw": b"x"}))


def test_summary_with_histograms() -> None:
    cfg = Config(latency=LatencyConfig(thresholds_ms=MappingProxyType({9: 250.0})),
                 errors=(ErrorRule("timeouts", statuses=frozenset({0xC00000B5}), errnos=frozenset({110})),))
    actions = [{"name": "journal", "status": "timeout", "duration_s": 15.0, "bytes": 10, "error": "slow"}]
    s = build_summary(make_anomaly(True), cfg, actions)
    text = json.dumps(s, allow_nan=False)  # plain JSON, no numpy types
    assert json.loads(text) == s
    w = s["per_command"]["WRITE"]
    assert w["source"] == "histogram" and w["count"] == 1003
    assert 2.048 > w["p50_ms"] >= 1.024 and w["max_ms"] == 1200.0  # max exact from the events
    assert w["mean_ms"] == pytest.approx((1000 * 2.0 + 600 + 800 + 1200) / 1003, rel=1e-3)
    assert s["per_command"]["CREATE"]["errors"] == 2
    assert s["per_command"]["QUERY_INFO"]["count"] == 7 and s["per_command"]["QUERY_INFO"]["max_ms"] == 0.032
    assert s["per_status"] == {"STATUS_IO_TIMEOUT": 1, "STATUS_USER_SESSION_DELETED": 1}
    assert s["top_processes"][0] == {"comm": "dd", "pid": 10, "events": 3}
    assert s["detected_at"] == "2023-11-14T22:13:20.250Z"
    start, end = (datetime.fromisoformat(s["window"][k].replace("Z", "+00:00")) for k in ("start", "end"))
    assert (end - start).total_seconds() == pytest.approx(1.0) and s["window"]["end"] == s["detected_at"]
    assert s["thresholds"]["latency"]["thresholds_ms"] == {"WRITE": 250.0}
    assert s["thresholds"]["errors"][0]["statuses"] == ["STATUS_IO_TIMEOUT"]
    assert s["thresholds"]["errors"][0]["errnos"] == ["ETIMEDOUT"]
    assert s["anomaly"]["details"] == {"threshold_ms": 500.0, "count": 3, "statuses": [1, 2], "raw": "x"}
    assert s["actions"][0]["status"] == "timeout" and s["events_in_bundle"] == 6
    assert s["host"] and s["kernel"] and s["aodv2_version"]


def test_summary_from_events_only_is_exact() -> None:
    s = build_summary(make_anomaly(False), Config(), [])
    w = s["per_command"]["WRITE"]
    assert w["source"] == "events" and w["count"] == 3
    assert w["p50_ms"] == 800.0 and w["max_ms"] == 1200.0 and w["mean_ms"] == pytest.approx(866.667)
    assert w["p99_ms"] == pytest.approx(float(np.percentile([600, 800, 1200], 99)))
    assert s["per_command"]["CREATE"] == {"count": 0, "errors": 2, "p50_ms": None, "p99_ms": None,
                                          "mean_ms": None, "max_ms": None, "source": "events",
                                          "slow_events": 0, "error_events": 2}
    json.dumps(s, allow_nan=False)


def test_jsonable_handles_numpy_and_odd_values() -> None:
    v = jsonable({1: np.uint64(5), "a": np.array([1.5, np.nan]), "s": {3, 1}, "o": object})
    assert json.loads(json.dumps(v, allow_nan=False))["1"] == 5
    assert v["a"] == [1.5, None] and v["s"] == [1, 3] and isinstance(v["o"], str)
