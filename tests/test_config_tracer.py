"""Config key tracer.mode: parse, errors with path and what is expected, round trip, check-config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aod import cli
from aod import config as C


def test_default_and_each_mode() -> None:
    assert C.defaults().tracer.mode == "auto" and C.load_text("{}").tracer == C.TracerConfig()
    for mode in C.TRACER_MODES:
        assert C.load_text(f"tracer: {{mode: {mode}}}\n").tracer.mode == mode
    assert C.load_text("tracer:\n").tracer.mode == "auto"  # null section: defaults
    assert C.load_text("tracer: {}\n").tracer.mode == "auto"


@pytest.mark.parametrize("text,want", [
    ("tracer: {mode: kprobes}\n", "<t>: tracer.mode: expected one of: auto, tracepoint, kprobe, got 'kprobes' "
                                  "(string); did you mean 'kprobe'?"),
    ("tracer: {mode: 1}\n", "<t>: tracer.mode: expected one of: auto, tracepoint, kprobe, got 1 (integer)"),
    ("tracer: {mode: [auto]}\n", "<t>: tracer.mode: expected one of: auto, tracepoint, kprobe, got a list"),
    ("tracer: {mode: AUTO}\n", "<t>: tracer.mode: expected one of: auto, tracepoint, kprobe, got 'AUTO' "
                               "(string); did you mean 'auto'?"),
    ("tracer: kprobe\n", "<t>: tracer: expected a mapping, got 'kprobe' (string)"),
    ("tracer: {mod: kprobe}\n", "<t>: tracer.mod: unknown key, expected one of: mode; did you mean 'mode'?"),
])
def test_bad_values_name_the_path_and_what_is_expected(text: str, want: str) -> None:
    with pytest.raises(C.ConfigError) as ei:
        C.load_text(text, "<t>")
    assert ei.value.errors == [want]


def test_round_trip_and_the_shipped_default() -> None:
    cfg = C.load_text("tracer: {mode: tracepoint}\n")
    assert C.to_dict(cfg)["tracer"] == {"mode": "tracepoint"}
    assert C.load_text(yaml.safe_dump(C.to_dict(cfg))) == cfg
    shipped = Path(__file__).resolve().parent.parent / "etc" / "aodv2" / "config.yaml"
    assert yaml.safe_load(shipped.read_text())["tracer"] == {"mode": "auto"}


def test_check_config_reports_a_bad_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tracer: {mode: tracepoints}\n")
    assert cli.main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: tracer.mode: expected one of: auto, tracepoint, kprobe, got 'tracepoints'" in err
    good = tmp_path / "good.yaml"
    good.write_text("tracer: {mode: kprobe}\n")
    assert cli.main(["check-config", str(good)]) == 0
