"""`aodv2 demo` end to end, as the README runs it (console script via the CLI)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from aod import demo
from aod.bundle import list_bundles, read_bundle

ROOT = Path(__file__).resolve().parent.parent


def test_demo_detects_all_three_and_writes_bundles(tmp_path: Path) -> None:
    out = io.StringIO()
    assert demo.run(workdir=str(tmp_path), out=out) == 0, out.getvalue()
    text = out.getvalue()
    for kind in ("latency", "error", "emergency"):
        assert f"AOD detected anomaly: {kind} with" in text
    bundles = list_bundles(str(tmp_path / "bundles"))
    types = sorted(os.path.basename(b).split("_")[1] for b in bundles)
    assert types == ["emergency", "error", "latency"]
    for b in bundles:
        assert stat.S_IMODE(os.stat(b).st_mode) == 0o600
        files = read_bundle(b)
        assert "summary.json" in files and "events.npy" in files
    lat = next(b for b in bundles if "_latency_" in b)
    summary = json.loads(read_bundle(lat)["summary.json"])
    assert summary["per_command"]["WRITE"]["max_ms"] >= 600
    err = next(b for b in bundles if "_error_" in b)
    assert "STATUS_IO_TIMEOUT" in json.dumps(json.loads(read_bundle(err)["summary.json"]))
    assert "WRITE" in text and "p50 ms" in text  # the latency table


def test_demo_via_cli_exits_0(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "aod.cli", "demo", "--dir", str(tmp_path)],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "aodv2 demo: OK, 3 bundles" in r.stdout and "Traceback" not in r.stderr
