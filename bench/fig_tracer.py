"""Figure 6: tracer overhead on a real kernel (read from the VM run, never measured here).

The number comes from tests/vm/scenarios/tracer.sh, step 8: the SMB workload
(tests/vm/guest/workload.py, 60 files, twice) on a CIFS mount in the Debian 12 VM,
without and with the smb tracer attached (default thresholds: histograms only).
It writes `FACT throughput_seconds= off=.. on=.. off=.. on=..` and
`FACT throughput_ratio_on_over_off=R` (on/off wall seconds) to <share>/results.txt.

Where we look, newest file first: $AOD_VM_BENCH_RESULTS, dist/vm-bench/results.txt
(`make vm-bench`), /tmp/vmshare-tracer/results.txt (the share named in tracer.sh's header).
Throughput ratio with/without = off_seconds / on_seconds; loss = 1 - that ratio.
"""

from __future__ import annotations

import os
import re
import time
from typing import List, Optional

from .common import ROOT, Row

CANDIDATES = (os.path.join(ROOT, "dist", "vm-bench", "results.txt"), "/tmp/vmshare-tracer/results.txt")
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
    kern = re.search(r"^FACT kernel=(.*)$", text, re.M)
    ratio = off / on  # throughput with / without
    loss = 1 - ratio
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(path)))
    raw = {"results_file": path, "mtime": when, "kernel": kern.group(1) if kern else "?", "runs": pairs,
           "off_s": off, "on_s": on, "throughput_ratio": ratio, "loss": loss}
    return [Row("6", "tracer overhead, SMB workload, VM", f"{on:.1f} s with tracer ({100 * loss:+.1f}% loss)",
                f"tracer off: {off:.1f} s", f"throughput {ratio:.3f}x", "<= 3% loss", loss <= 0.03, raw,
                note=f"from {path} ({when}, kernel {raw['kernel']}; tests/vm/scenarios/tracer.sh step 8: "
                     f"{' '.join(k + '=' + v for k, v in pairs)} s)")]


if __name__ == "__main__":
    for row in run(False):
        print(row)
