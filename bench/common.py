"""Shared bench helpers: result rows, the table, the machine description, process stats.

Every figure returns a list of `Row`s. A row is one measured number next to a
baseline measured in the same run, their ratio, the target and a verdict.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    fig: str  # "1a", "3b", ...: figure number + sub-row
    name: str
    value: str  # aodv2's number, with unit
    baseline: str  # "<name>: <number>" measured in the same run, or "-"
    ratio: str  # value / baseline (or the quantity the target is stated on)
    target: str
    ok: Optional[bool]  # None: informational or not measured
    raw: Dict[str, Any] = field(default_factory=dict)  # numbers for --json
    note: str = ""  # printed under the table (sources, caveats)

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "-"}[self.ok]


COLS = ("fig", "name", "value", "baseline", "ratio", "target", "verdict")


def table(rows: List[Row], markdown: bool = False) -> str:
    cells = [[r.fig, r.name, r.value, r.baseline, r.ratio, r.target, r.verdict] for r in rows]
    if markdown:
        out = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
        return "\n".join(out)
    w = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(COLS)]
    line = lambda c: "  ".join(x.ljust(w[i]) for i, x in enumerate(c)).rstrip()  # noqa: E731
    return "\n".join([line(COLS), line(["-" * x for x in w])] + [line(c) for c in cells])


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine() -> Dict[str, str]:
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "loadavg_start": loadavg(),
    }


# ---- timing helpers --------------------------------------------------------------------------

def median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: List[float], q: float) -> float:
    """Percentile q (0..100), linear interpolation; nan when empty."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else float("nan")


def fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f} M/s" if x >= 1e6 else f"{x / 1e3:.1f} k/s"


def now() -> float:
    return time.perf_counter()


# ---- process stats from /proc -----------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of pid (all threads) in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)


def status_kb(pid: int, key: str) -> int:
    """A 'kB' line of /proc/PID/status (VmRSS, VmHWM); 0 when absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def thread_stats(pid: int) -> Dict[int, tuple]:
    """tid -> (cpu seconds, voluntary + involuntary context switches) for every thread of pid."""
    out: Dict[int, tuple] = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            cpu = cpu_seconds_path(f"/proc/{pid}/task/{tid}/stat")
            sw = status_kb_path(f"/proc/{pid}/task/{tid}/status", "voluntary_ctxt_switches") + \
                status_kb_path(f"/proc/{pid}/task/{tid}/status", "nonvoluntary_ctxt_switches")
        except OSError:
            continue
        out[tid] = (cpu, sw)
    return out


def cpu_seconds_path(path: str) -> float:
    with open(path) as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb_path(path: str, key: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0
