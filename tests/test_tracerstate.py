"""Tracer state files and the core's "no tracer attached" STATUS text."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from aod import tracerstate as ts


def test_write_read_and_dead_pid(tmp_path: Path) -> None:
    d = str(tmp_path / "run")
    assert ts.write_state(d, "smb", "attached") is None
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ts.state_path(d, "smb")).st_mode) == 0o600
    assert ts.read_states(d, ["smb", "nfs"]) == {"smb": "attached", "nfs": "down"}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    Path(ts.state_path(d, "smb")).write_text(json.dumps({"pid": int(dead.stdout), "state": "attached"}))
    assert ts.read_states(d, ["smb"]) == {"smb": "down"}
    Path(ts.state_path(d, "smb")).write_text("{garbage")
    assert ts.read_states(d, ["smb"]) == {"smb": "down"}


def test_describe() -> None:
    assert ts.describe({"smb": "down"}) == "no tracer attached (smb down)"
    assert ts.describe({"smb": "waiting"}) == "no tracer attached (smb waiting)"
    assert ts.describe({"smb": "attached", "x": "down"}) == "tracers attached: smb (x down)"


def test_write_failure_is_reported_not_raised(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    err = ts.write_state(str(f), "smb", "waiting")
    assert err is not None and "tracer-smb.json" in err


def test_corrupt_pid_reads_as_down(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from aod import tracerstate

    for pid in (2**40, -1, True, "12"):
        (tmp_path / "tracer-smb.json").write_text(json.dumps({"name": "smb", "pid": pid, "state": "attached"}))
        assert tracerstate.read_states(str(tmp_path), ["smb"]) == {"smb": "down"}, pid
