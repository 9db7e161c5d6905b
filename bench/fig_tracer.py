"""Figure 6: tracer overhead on a real kernel (read from the VM run, never measured here).

The number comes from tests/vm/scenarios/tracer.sh, step 8: the SMB workload
(tests/vm/guest/workload.py, 60 files, twice) on a CIFS mount in the Debian 12 VM,
without and with the smb tracer attached (default thresholds: histograms only).
It writes `FACT throughput_seconds= off=.. on=.. off=.. on=..` to <share>/results.txt
and, in newer runs, <share>/tracer-overhead.json with the kernel's own accounting of the
BPF programs' run time (kernel.bpf_stats_enabled), reported as row 6b.

Where we look, newest file first: $AOD_VM_BENCH_RESULTS, dist/vm/tracer/results.txt
(`make vm-tracer`, alias `make vm-bench`), dist/vm-bench/results.txt,
/tmp/vmshare-tracer/results.txt (the share named in tracer.sh's header).
Throughput ratio with/without = off_seconds / on_seconds; loss = 1 - that ratio. Verdict: PASS
if every round's loss is <= 3%, MISS if every round's is above, otherwise inconclusive (-).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import List, Optional

from .common import ROOT, Row

CANDIDATES = (os.path.join(ROOT, "dist", "vm", "tracer", "results.txt"),
              os.path.join(ROOT, "dist", "vm-bench", "results.txt"), "/tmp/vmshare-tracer/results.txt")
NOT_MEASURED = "not measured (needs `make vm-bench`)"


def find_results() -> Optional[str]:
    env = os.environ.get("AOD_VM_BENCH_RESULTS")
    paths = ([env] if env else []) + list(CANDIDATES)
    found = [p for p in paths if os.path.isfile(p) and "throughput_seconds=" in open(p, errors="replace").read()]
    return max(found, key=os.path.getmtime) if found else None


def run(quick: bool) -> List[Row]:
    path = find_results()
    if path is None:
        return [Row("6", "tracer overhead, SMB workload on a real kernel", NOT_MEASURED, "tracer off", "-",
                    "<= 3% loss", None)]
    text = open(path, errors="replace").read()
    m = re.search(r"^FACT throughput_seconds=(.*)$", text, re.M)
    pairs = re.findall(r"(off|on)=([0-9.]+)", m.group(1)) if m else []
    off = sum(float(v) for k, v in pairs if k == "off")
    on = sum(float(v) for k, v in pairs if k == "on")
    if not (off > 0 and on > 0):
        return [Row("6", "tracer overhead, SMB workload on a real kernel", f"{NOT_MEASURED}; {path} has no "
                    "usable throughput_seconds", "tracer off", "-", "<= 3% loss", None)]
    # per round (off then on, in order): the spread between rounds says what the VM can resolve
    offs = [float(v) for k, v in pairs if k == "off"]
    ons = [float(v) for k, v in pairs if k == "on"]
    round_loss = [1 - a / b for a, b in zip(offs, ons)]
    kern = re.search(r"^FACT kernel=(.*)$", text, re.M)
    ratio = off / on  # throughput with / without
    loss = 1 - ratio
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(path)))
    raw = {"results_file": path, "mtime": when, "kernel": kern.group(1) if kern else "?", "runs": pairs,
           "off_s": off, "on_s": on, "throughput_ratio": ratio, "loss": loss, "round_loss": round_loss}
    spread = (": the round-to-round noise under TCG is larger than the 3% target"
              if round_loss and max(round_loss) - min(round_loss) > 0.03 else "")
    # the two tracer-off runs of the same workload say how much the VM itself varies: a wall-time
    # verdict is only given when that noise is below the 3% the target is about
    noise = (max(offs) - min(offs)) / (sum(offs) / len(offs)) if len(offs) > 1 else 1.0
    raw["off_noise"] = noise
    if noise > 0.03:
        ok = None
        spread = f": tracer-off runs differ by {100 * noise:.0f}%, so wall time cannot resolve 3% (see 6b)"
    else:  # PASS only if every round is within the target, MISS if every round misses
        ok = True if all(x <= 0.03 for x in round_loss) else False if all(x > 0.03 for x in round_loss) else None
    rows = [Row("6", "tracer overhead, SMB workload, VM", f"{on:.1f} s with tracer ({100 * loss:+.1f}% loss)",
                f"tracer off: {off:.1f} s", f"throughput {ratio:.3f}x", "<= 3% loss", ok, raw,
                note=f"from {path} ({when}, kernel {raw['kernel']}; tests/vm/scenarios/tracer.sh step 8: "
                     f"{' '.join(k + '=' + v for k, v in pairs)} s; loss per round "
                     f"{', '.join(f'{100 * x:+.1f}%' for x in round_loss)}{spread})")]
    rows += bpf_share_row(os.path.join(os.path.dirname(path), "tracer-overhead.json"))
    return rows


def bpf_share_row(path: str) -> List[Row]:
    """6b: BPF run time / traced workload wall time, from tracer-overhead.json (if the run wrote it)."""
    try:
        with open(path) as f:
            d = json.load(f)
        share = float(d["bpf_cpu_share_of_workload"])
        runs, ns = int(d["bpf_runs"]), int(d["bpf_run_time_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return [Row("6b", "tracer BPF CPU, share of workload time", "not measured (VM run without "
                    "tracer-overhead.json)", "-", "-", "report", None)]
    return [Row("6b", "tracer BPF CPU, share of workload time", f"{100 * share:.3f}% ({runs} runs, "
                f"{ns / max(runs, 1):.0f} ns/run)", "traced workload wall time", f"{share:.5f}",
                "<= 3% (in-kernel bound)", share <= 0.03,
                dict(d, file=path), note=f"6b from {path}: kernel.bpf_stats_enabled run_time_ns of the tracer's "
                "programs; in-kernel cost only (not the user-space tracer process)")]


if __name__ == "__main__":
    for row in run(False):
        print(row)
