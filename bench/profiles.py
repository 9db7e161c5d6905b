"""`python -m bench --profile DIR`: the profiles behind missed targets (RESULTS.md quotes them).

  2  cProfile of figure 2's pipeline (columns, immediate per drain batch, window) on the
     1M-event window (single thread).
  4  per-thread CPU and wakeups of the core process (from /proc/PID/task; thread names from
     `py-spy dump`), idle and under the all-through-ring load, plus py-spy samples.
  5  py-spy record of figure 5 in a subprocess (the capture uses worker threads, so
     cProfile of the main thread alone would miss them).
py-spy is optional (`pip install py-spy`); without it those parts say so.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

from .common import ROOT


def collapsed_summary(path: str, top: int = 15, prefix: str = "aod/") -> str:
    """py-spy raw stacks -> top self (leaf) frames and top inclusive frames under `prefix`."""
    leaves: Dict[str, int] = {}
    incl: Dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            k = int(n)
            total += k
            frames = stack.split(";")
            leaves[frames[-1]] = leaves.get(frames[-1], 0) + k
            for fr in {x.split(" (")[0] + " (" + x.split(" (")[1].split(":")[0] + ")"
                       for x in frames if prefix in x and " (" in x}:
                incl[fr] = incl.get(fr, 0) + k

    def lines(d: Dict[str, int]) -> List[str]:
        top_n = sorted(d.items(), key=lambda x: -x[1])[:top]
        return [f"  {n:6d} {100 * n / max(total, 1):5.1f}%  {x}" for x, n in top_n]

    return "\n".join([f"{total} samples; self (leaf):", *lines(leaves), f"inclusive, {prefix} frames:", *lines(incl)])


def detect_profile(out_dir: str) -> str:
    from aod.counters import zero_stats

    from .fig_detect import detector, pipeline, window_events

    ev = window_events()
    e = int(ev["ts_ns"][-1]) + 1
    stats = zero_stats()
    pipeline(detector(e), ev, e, stats)
    dets = [detector(e) for _ in range(5)]
    pr = cProfile.Profile()
    pr.enable()
    for det in dets:
        pipeline(det, ev, e, stats)
    pr.disable()
    pr.dump_stats(os.path.join(out_dir, "detect.prof"))
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(12)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    head = ("figure 2, cProfile, 5 x the pipeline (columns, recent events, tally, rules per batch, window) "
            "on 1M events:\n")
    return head + "\n".join(lines[2:])


def capture_profile(out_dir: str) -> str:
    if not shutil.which("py-spy"):
        return "figure 5: py-spy not installed (pip install py-spy)"
    path = os.path.join(out_dir, "capture.collapsed")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(["py-spy", "record", "--rate", "250", "--format", "raw", "--output", path, "--",
                    sys.executable, "-m", "bench.fig_capture"], cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if not os.path.exists(path):
        return "figure 5: py-spy produced no profile"
    return f"figure 5, py-spy (all threads, active samples; includes the CLI baseline's waits) {path}:\n" + \
        collapsed_summary(path)


def load_profile(out_dir: str, quick: bool) -> str:
    from . import fig_load

    secs = 5.0 if quick else 20.0
    out: List[str] = []
    root = tempfile.mkdtemp(prefix="aodbench-prof-")
    try:
        for mode in ("idle", "stress"):
            r = fig_load.scenario(mode, secs, os.path.join(root, "plain"))  # unsampled: per-thread CPU
            th = ", ".join(f"{k} {v['cpu_pct']:.2f}% {v['switches_per_s']:.0f} wakeups/s"
                           for k, v in r["threads"].items())
            out.append(f"figure 4 {mode}, {secs:g} s: core CPU {r['cpu_pct']:.2f}%, RSS HWM "
                       f"{r['vmhwm_kb'] / 1024:.1f} MB; per thread: {th}")
            if shutil.which("py-spy"):
                rs = fig_load.scenario(mode, secs, os.path.join(root, "spy"), profile_dir=out_dir)
                if os.path.exists(rs.get("profile", "")):
                    out.append(f"py-spy of the core, {mode} (sampling slows it; CPU not comparable):\n"
                               + collapsed_summary(rs["profile"]))
            shutil.rmtree(os.path.join(root, "plain"), ignore_errors=True)
            shutil.rmtree(os.path.join(root, "spy"), ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join(out)


def run(out_dir: str, quick: bool, only: List[str]) -> str:
    parts = []
    if "2" in only:
        parts.append(detect_profile(out_dir))
    if "4" in only:
        parts.append(load_profile(out_dir, quick))
    if "5" in only:
        parts.append(capture_profile(out_dir))
    return "\n\n".join(parts)
