"""Prometheus textfile: parsed with the real prometheus_client exposition parser."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Optional

import numpy as np
from faultkit import CoreRun, config_text, fake_host, slow, wait_for
from prometheus_client.parser import text_string_to_metric_families

from aod import metrics, smb2
from aod.config import MetricsConfig
from aod.record import CMD_STATS_DTYPE, KIND_ERROR, STATS_ROWS, hist_bucket

WRITE, READ = smb2.COMMANDS["WRITE"], smb2.COMMANDS["READ"]
TIMEOUT = smb2.NT_STATUS["STATUS_IO_TIMEOUT"]


def parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], sample: str, **labels: str) -> Optional[float]:
    for f in fams.values():
        for s in f.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _totals() -> dict[str, Any]:
    st = np.zeros(STATS_ROWS, dtype=CMD_STATS_DTYPE)
    lat_ms = {WRITE: [3] * 90 + [700] * 10, READ: [0.5] * 50}
    for cmd, ls in lat_ms.items():
        ns = (np.array(ls) * 1e6).astype(np.uint64)
        np.add.at(st["hist"][cmd], hist_bucket(ns), 1)
        st["latency_sum_ns"][cmd] = int(ns.sum())
    st["errors"][WRITE] = 4
    st["ignored"][READ] = 7
    return {"cmd_stats": st, "errors": {(WRITE, TIMEOUT): 4}, "reconnects": {0: 2}, "ring_records": 14}


SNAP = {"started": 1.7e9, "tracers": {"smb": "attached", "extra": "waiting"}, "ring_records": 14, "drops_total": 3,
        "bad_records": 3, "bad_records_by_reason": {"corrupt": 1, "foreign": 0, "future": 2},
        "event_buffer_overflow": 5, "refused": {"cooldown": 1},
        "anomalies": {"latency": 2, "error": 1}, "suppressed": {"latency": 1},
        "captures": {"latency": 1, "error": 1}, "capture_failures": 0, "bundle_bytes_written": 12345,
        "disk": {"used_bytes": 12000, "bundles": 2, "budget_bytes": 1 << 30},
        "last_bundle": {"time": 1.7e9 + 5}, "upload": {"ok": 1, "failed": 1, "attempts": 4, "pending": 0}}


def test_render_parses_and_carries_every_family() -> None:
    fams = parse(metrics.render(SNAP, _totals()))
    assert fams["aodv2_smb_command_latency_seconds"].type == "histogram"
    assert fams["aodv2_anomalies"].type == "counter"  # the parser strips _total
    assert value(fams, "aodv2_up") == 1
    assert value(fams, "aodv2_tracer_up", tracer="smb") == 1 and value(fams, "aodv2_tracer_up", tracer="extra") == 0
    assert value(fams, "aodv2_smb_commands_total", command="WRITE") == 100
    assert value(fams, "aodv2_smb_commands_total", command="READ") == 50
    assert value(fams, "aodv2_smb_command_errors_total", command="WRITE") == 4
    assert value(fams, "aodv2_smb_errors_total", command="WRITE", status="STATUS_IO_TIMEOUT") == 4
    assert value(fams, "aodv2_smb_reconnects_total", status="reconnect") == 2
    assert value(fams, "aodv2_ring_drops_total") == 3
    assert value(fams, "aodv2_anomalies_total", type="latency") == 2
    assert value(fams, "aodv2_anomalies_suppressed_total", type="latency") == 1
    assert value(fams, "aodv2_anomalies_refused_total", reason="cooldown") == 1
    assert value(fams, "aodv2_smb_command_ignored_statuses_total", command="READ") == 7
    assert value(fams, "aodv2_smb_command_ignored_statuses_total", command="WRITE") == 0
    assert value(fams, "aodv2_smb_command_errors_total", command="READ") == 0  # ignored ones are no errors
    assert value(fams, "aodv2_ring_bad_records_total", reason="future") == 2
    assert value(fams, "aodv2_ring_bad_records_total", reason="corrupt") == 1
    assert value(fams, "aodv2_event_buffer_overflow_total") == 5
    assert value(fams, "aodv2_captures_total", type="error") == 1
    assert value(fams, "aodv2_bundles_bytes") == 12000
    assert value(fams, "aodv2_uploads_total", result="failed") == 1
    # the histogram: cumulative, +Inf == count, the 3 ms / 700 ms split visible at the edges
    buckets = [(float(s.labels["le"]), s.value) for s in fams["aodv2_smb_command_latency_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["command"] == "WRITE"]
    assert [b for b, _ in buckets] == sorted(b for b, _ in buckets) and buckets[-1][0] == float("inf")
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert value(fams, "aodv2_smb_command_latency_seconds_bucket", command="WRITE", le="0.004096") == 90
    assert value(fams, "aodv2_smb_command_latency_seconds_bucket", command="WRITE", le="0.524288") == 90
    assert value(fams, "aodv2_smb_command_latency_seconds_bucket", command="WRITE", le="1.048576") == 100
    assert value(fams, "aodv2_smb_command_latency_seconds_count", command="WRITE") == 100
    assert abs(value(fams, "aodv2_smb_command_latency_seconds_sum", command="WRITE") - (0.27 + 7.0)) < 1e-6


def test_render_without_traffic_or_tracers_is_valid() -> None:
    fams = parse(metrics.render({}, None, up=False))
    assert value(fams, "aodv2_up") == 0
    assert fams["aodv2_smb_command_latency_seconds"].samples == []


def test_label_values_are_escaped() -> None:
    text = metrics.render({"anomalies": {'we"ird\\type\n': 1}}, None)
    assert value(parse(text), "aodv2_anomalies_total", type='we"ird\\type\n') == 1


def test_textfile_path_resolution(tmp_path: Path, monkeypatch: Any) -> None:
    assert metrics.textfile_path(MetricsConfig(textfile_path="")) is None
    assert metrics.textfile_path(MetricsConfig(textfile_path="/x/y.prom")) == "/x/y.prom"
    monkeypatch.setattr(metrics, "METRICS_DEFAULT_DIR", str(tmp_path / "absent"))
    assert metrics.textfile_path(MetricsConfig()) is None
    monkeypatch.setattr(metrics, "METRICS_DEFAULT_DIR", str(tmp_path))
    assert metrics.textfile_path(MetricsConfig()) == str(tmp_path / "aodv2.prom")


def test_write_is_atomic_and_world_readable(tmp_path: Path) -> None:
    p = tmp_path / "ne" / "aodv2.prom"
    metrics.write(str(p), "a 1\n")
    metrics.write(str(p), "a 2\n")
    assert p.read_text() == "a 2\n" and stat.S_IMODE(p.stat().st_mode) == 0o644
    assert sorted(os.listdir(p.parent)) == ["aodv2.prom"]  # no temp file left


def test_core_writes_metrics_after_an_anomaly(tmp_path: Path) -> None:
    """A real Core on a file ring: counters from the ring's counters region, an anomaly, a bundle."""
    env, _ = fake_host(tmp_path)
    prom = tmp_path / "textfile" / "aodv2.prom"
    extra = f"metrics:\n  textfile_path: {prom}\n  interval_sec: 0.2\n"
    r = CoreRun(tmp_path, config_text(tmp_path / "out", extra=extra), env=env)
    try:
        wait_for(prom.exists, 10, "metrics file")
        ev = slow(5, 300)
        err = slow(2, 50)
        err["kind"], err["nt_status"] = KIND_ERROR, TIMEOUT
        fast = slow(200, 2)
        for batch in (ev, err):
            r.writer.write(batch)
        for batch in (ev, err, fast):
            r.writer.record_stats(batch)
        r.wait_results(2)

        def fams() -> dict[str, Any]:
            return parse(prom.read_text())

        wait_for(lambda: value(fams(), "aodv2_captures_total", type="latency") == 1
                 and value(fams(), "aodv2_captures_total", type="error") == 1, 10, "captures in metrics")
        f = fams()
        assert value(f, "aodv2_smb_commands_total", command="WRITE") == 207
        assert value(f, "aodv2_smb_command_latency_seconds_count", command="WRITE") == 207
        assert value(f, "aodv2_smb_command_latency_seconds_bucket", command="WRITE", le="0.004096") == 200
        assert value(f, "aodv2_smb_errors_total", command="WRITE", status="STATUS_IO_TIMEOUT") == 2
        assert value(f, "aodv2_anomalies_total", type="latency") == 1
        assert value(f, "aodv2_bundles") == 2
        assert value(f, "aodv2_up") == 1
    finally:
        r.stop()
    assert value(parse(prom.read_text()), "aodv2_up") == 0  # a clean stop says so


def test_unwritable_metrics_path_is_logged_once(tmp_path: Path, records: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    extra = f"metrics:\n  textfile_path: {blocker}/sub/aodv2.prom\n  interval_sec: 0.1\n"
    r = CoreRun(tmp_path, config_text(tmp_path / "out", extra=extra))
    try:
        wait_for(lambda: any("cannot write" in m.getMessage() for m in records), 10, "metrics error")
        r.writer.write(slow(5, 300))
        r.wait_results(1)
    finally:
        assert r.stop() == 0
    assert sum("cannot write" in m.getMessage() and "aodv2.prom" in m.getMessage() for m in records) == 1

