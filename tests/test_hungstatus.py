"""What the core shows of hung requests and health events: status.json / `aodv2 status` (the
tracer's health events offered and attached, aging counters), the metrics, and the warning when
the core's latency threshold is below what a tracer emits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from aod import metrics, status, tracerstate
from aod.config import Config, LatencyConfig

DETAIL = {"emit_min_ns": 500_000_000, "emit_cmd_mask": 0xFFFF7BFF, "hung_threshold_ns": 1_000_000_000,
          "health": {"offered": ["smb3_credit_timeout", "smb3_connect_err", "smb3_slow_rsp"],
                     "attached": ["smb3_credit_timeout", "smb3_slow_rsp"]},
          "aging": {"scans": 40, "inflight": 12, "hung": 3, "hung_records": 3, "hung_full": 1, "unpaired": 7,
                    "scan_ms_max": 0.8}}


def test_tracer_details_come_from_the_state_file_and_leave_malformed_values_out(tmp_path: Path) -> None:
    assert tracerstate.write_state(str(tmp_path), "smb", "attached", extra={**DETAIL, "aging": [1]}) is None
    got = status.tracer_details(str(tmp_path), ["smb", "nfs"])
    assert got["smb"]["health"] == DETAIL["health"] and "aging" not in got["smb"]
    assert got["nfs"] == {}  # no state file: nothing to show
    assert status.tracer_details(None, ["smb"]) == {}


def snap() -> dict:
    cfg = Config()
    return {"thresholds": status.thresholds(cfg), "tracer_detail": {"smb": DETAIL},
            "hung": {"records": 5, "open_group": 0, "emergencies_deduplicated": 2},
            "health_events": {"credit_timeout": 2, "slow_rsp": 4},
            "names": {"servers": 1, "shares": 2, "features": ["DFS", "STATS2"]},
            "share_labels": {"errors": {"\\\\fs1\\data|9|3221225653": 3},
                             "slow": {"\\\\fs1\\data": {"hist": [0] * 20 + [2] + [0] * 11, "sum_ns": 1_200_000_000}}},
            "started": 1.0}


def test_status_text_shows_hung_health_and_aging() -> None:
    text = status.format_text(snap(), "running", "pid 1")
    assert "hung: threshold 1000 ms, group 100 ms, excluded LOCK; hung records 5, deduplicated emergencies 2" \
        in text
    assert "tracer smb health events: attached smb3_credit_timeout,smb3_slow_rsp; offered but not attached " \
           "smb3_connect_err (3 offered by the kernel)" in text
    assert "tracer smb aging: in flight 12, hung 3 (records 3), unpaired 7, hung_full 1" in text
    assert "kernel health events seen: credit_timeout 2, slow_rsp 4" in text
    assert "CIFS STATS2 (smb3_slow_rsp fires) on" in text
    assert "tracer smb emits completions >= 500 ms" in text


def test_metrics_of_hung_health_aging_and_shares() -> None:
    fams = {f.name: f for f in text_string_to_metric_families(metrics.render(snap(), None))}
    val = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert val[("aodv2_hung_requests_total", ())] == 5
    assert val[("aodv2_emergencies_deduplicated_total", ())] == 2
    assert val[("aodv2_kernel_slow_responses_total", ())] == 4
    assert val[("aodv2_kernel_health_events_total", (("event", "credit_timeout"),))] == 2
    assert val[("aodv2_tracer_unpaired_total", (("tracer", "smb"),))] == 7
    assert val[("aodv2_tracer_inflight", (("tracer", "smb"),))] == 12
    assert val[("aodv2_smb_errors_total", (("command", "WRITE"), ("share", "\\\\fs1\\data"),
                                           ("status", "STATUS_IO_TIMEOUT")))] == 3
    assert val[("aodv2_smb_share_slow_latency_seconds_count", (("share", "\\\\fs1\\data"),))] == 2
    assert val[("aodv2_smb_share_slow_latency_seconds_bucket", (("le", "0.524288"), ("share", "\\\\fs1\\data")))] == 0
    assert val[("aodv2_smb_share_slow_latency_seconds_bucket", (("le", "1.048576"), ("share", "\\\\fs1\\data")))] == 2


def test_emit_check_warns_once_per_gap_and_again_after_reload() -> None:
    check = status.EmitCheck()
    low = dataclasses.replace(Config(), latency=dataclasses.replace(LatencyConfig(), default_threshold_ms=200.0))
    (msg,) = check.check(low, {"smb": DETAIL})
    assert msg[0] == "smb" and "200 ms is below what tracer smb emits (500 ms)" in msg[1]
    assert check.check(low, {"smb": DETAIL}) == []  # once
    assert check.check(Config(), {"smb": DETAIL}) == []  # 500 ms: no gap
    check.reset()  # a reload
    assert len(check.check(low, {"smb": DETAIL})) == 1
    assert check.check(low, {"smb": {}}) == []  # a tracer that publishes nothing: nothing to compare
