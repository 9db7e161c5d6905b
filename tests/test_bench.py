"""Smoke test of the benchmark command: `python -m bench --quick` runs and prints every figure.

Not a performance test: no timing asserts (targets are judged in bench/RESULTS.md, from
full runs). The quick run takes about 30 s of wall time (it starts the core three times);
AOD_BENCH_SKIP=1 skips it for a fast local loop.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# every row the table must have: figure 1 (a, b, c) ... figure 6
ROWS = ("1a", "1b", "1c", "2", "3a", "3b", "4a.cpu", "4a.rss", "4b.cpu", "4b.rss", "4c.cpu", "4c.rss",
        "5a", "5b", "6")


@pytest.mark.skipif(bool(os.environ.get("AOD_BENCH_SKIP")), reason="AOD_BENCH_SKIP is set")
@pytest.mark.timeout(300)
def test_bench_quick_runs_and_prints_every_figure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(ROOT)
    out_json = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out_json)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for row in ROWS:
        assert re.search(rf"^{re.escape(row)}\s+\S", p.stdout, re.M), f"row {row} missing:\n{p.stdout}"
    assert "FAILED" not in p.stdout
    line6 = next(ln for ln in p.stdout.splitlines() if ln.startswith("6 "))
    assert "not measured" in line6 or "with tracer" in line6  # a VM number or the honest 'not measured'
    assert out_json.stat().st_size > 0


def test_bench_usage_error_exits_2() -> None:
    p = subprocess.run([sys.executable, "-m", "bench", "--only", "9"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 2 and "unknown figure" in p.stderr
