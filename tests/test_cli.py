"""CLI: usage errors exit 2 with usage; check-config exits 0 or 2 with every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from aod import cli

BAD_ARGS = [
    [],
    ["nosuchverb"],
    ["run", "--bogus"],
    ["run", "--config"],
    ["demo", "--dir"],
    ["demo", "extra"],
    ["check-config", "a", "b"],
    ["version", "x"],
    ["status", "--bogus"],
    ["status", "extra"],
    ["collect", "--timeout", "0"],
    ["collect", "--reason"],
    ["show"],
    ["show", "a", "b"],
    ["list", "extra"],
    ["list", "--dir"],
    ["evidence", "extra"],
    ["evidence", "--pin-dir"],
    ["stop-hook", "a", "b"],
    ["recorder"],
    ["recorder", "bogus"],
    ["recorder", "trace", "--bogus"],
]


def test_every_verb_has_a_bad_arguments_case() -> None:
    sub = next(a for a in cli._parser()._actions if a.dest == "verb")
    covered = {a[0] for a in BAD_ARGS if a}
    assert set(sub.choices) - {"tracer"} <= covered  # type: ignore[arg-type]  # tracer: test_tracer.py


@pytest.mark.parametrize("argv", BAD_ARGS, ids=lambda a: " ".join(a) or "<none>")
def test_wrong_arguments_print_usage_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: aodv2" in err and "Traceback" not in err


def test_check_config_ok_and_errors(tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["check-config", str(repo_root / "etc/aodv2/config.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("watch_interval_sec: -1\nlatency:\n  thresholds_ms: {WRTIE: 5}\nnope: 1\n")
    assert cli.main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    for key in ("watch_interval_sec", "latency.thresholds_ms.WRTIE", "nope"):
        assert key in err
    assert str(bad) in err and "3 error(s)" in err
    assert cli.main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith("aodv2 ")
