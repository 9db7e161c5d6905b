"""aodv2 stop-hook (aod/unitstop.py): the core's ExecStopPost stops the tracers on a stop job only.

The real thing runs in the VM (tests/vm/guest/faults_harden.py, part 4: SIGSTOP the core, the
watchdog restarts it and the tracer keeps its MainPID; `systemctl stop aodv2` stops both). Here a
fake `systemctl` on PATH answers `list-jobs` and records what the hook asked it to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aod import unitstop

ROOT = Path(__file__).resolve().parent.parent


def fake_systemctl(tmp: Path, jobs: str, stop_rc: int = 0) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    log = tmp / "calls"
    script = bindir / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'case "$1" in\n'
        f'  list-jobs) printf "%s" "{jobs}" ;;\n'
        f'  stop) exit {stop_rc} ;;\n'
        "esac\n")
    script.chmod(0o755)
    return log


def run_hook(tmp: Path, result: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{tmp / 'bin'}:{os.environ['PATH']}", SERVICE_RESULT=result,
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "aod.cli", "stop-hook", "aodv2.service"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("jobs,result,stops", [
    ("123 aodv2.service stop running\n", "success", True),          # systemctl stop / disable --now
    ("77 aodv2.service stop running\n", "timeout", True),           # a stop whose SIGTERM timed out
    ("124 aodv2.service restart running\n", "success", False),      # systemctl restart aodv2
    ("", "watchdog", False),                                        # watchdog kill, Restart=on-failure
    ("", "signal", False),                                          # crash
    ("9 aodv2-tracer@smb.service stop running\n", "exit-code", False),  # another unit's job
])
def test_stop_hook_stops_tracers_only_on_a_stop_job(tmp_path: Path, jobs: str, result: str, stops: bool) -> None:
    log = fake_systemctl(tmp_path, jobs.replace("\n", "\\n"))
    r = run_hook(tmp_path, result)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "list-jobs --no-legend --no-pager -- aodv2.service"
    assert (f"stop -- {unitstop.TRACERS} {unitstop.RECORDERS}" in calls) is stops, calls
    assert ("left running" in r.stderr) is (not stops), r.stderr
    assert "Traceback" not in r.stderr


def test_stop_hook_never_fails_the_stop(tmp_path: Path) -> None:
    """A failing `systemctl stop` is one line in the journal; the hook still exits 0."""
    log = fake_systemctl(tmp_path, "5 aodv2.service stop running\\n", stop_rc=5)
    r = run_hook(tmp_path, "success")
    assert r.returncode == 0 and "exited 5" in r.stderr and log.exists()


def test_stop_hook_without_systemctl_or_with_a_bad_unit() -> None:
    def missing(argv: Any, timeout: float) -> Any:
        raise FileNotFoundError(2, "No such file or directory", "systemctl")

    assert unitstop.main(["aodv2.service"], run=missing) == 0
    called: list[Any] = []
    assert unitstop.main(["aodv2.service; rm -rf /"], run=lambda a, t: called.append(a)) == 0
    assert not called, "a unit name that is not one never reaches systemctl"


def test_units_bind_the_tracers_to_the_core_by_the_hook_only() -> None:
    """fault: a watchdog restart of the core (systemd passes a restart's stop to PartOf=/BindsTo=).
    expected: the tracer unit has no PartOf=/BindsTo=/Requires= on the core; the core's ExecStopPost
    runs the stop-hook, and an enabled tracer is WantedBy= the core (so start still starts it)."""
    tracer = (ROOT / "systemd" / "aodv2-tracer@.service").read_text()
    core = (ROOT / "systemd" / "aodv2.service").read_text()
    lines = [ln.split("=", 1)[0] for ln in tracer.splitlines() if ln and not ln.startswith("#")]
    for key in ("PartOf", "BindsTo", "Requires", "Requisite", "StopPropagatedFrom"):
        assert key not in lines, key
    assert "\nWantedBy=aodv2.service\n" in tracer
    assert "\nExecStopPost=+/usr/bin/aodv2 stop-hook %n\n" in core


def test_decide() -> None:
    assert unitstop.decide(["stop"]) and not unitstop.decide(["restart"]) and not unitstop.decide([])
