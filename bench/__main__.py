"""`python -m bench [--quick] [--only 1,3] [--json FILE] [--markdown FILE] [--profile DIR]`.

Runs the aodv2 benchmark figures and prints one table: each figure measured side by
side with a named baseline in the same run (these machines are noisy, so ratios are
what to compare across runs). See bench/RESULTS.md for the last full run.

  1 ring drain throughput        4 sustained load / idle (core in its own process)
  2 detection cost, 1M events    5 capture to .tar.zst
  3 detection latency            6 tracer overhead (from the VM run; never measured here)

Exit status: 0 when every figure ran (missed targets are reported, not fatal), 1 when a
figure crashed. --quick shortens everything (for CI: it checks the bench runs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from typing import List

from .common import Row, loadavg, machine, table

FIGURES = {
    "1": ("fig_ring", "ring drain throughput"),
    "2": ("fig_detect", "detection cost"),
    "3": ("fig_latency", "detection latency"),
    "4": ("fig_load", "sustained load and idle"),
    "5": ("fig_capture", "capture"),
    "6": ("fig_tracer", "tracer overhead"),
    "7": ("fig_hung", "hung requests"),
}


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[2])
    p.add_argument("--quick", action="store_true", help="short mode (seconds, not minutes): checks it runs")
    p.add_argument("--only", default="", help="comma-separated figure numbers (default: all)")
    p.add_argument("--json", metavar="FILE", help="also write rows and raw numbers as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the table and machine as markdown")
    p.add_argument("--profile", metavar="DIR",
                   help="after the table: cProfile of figures 2 and 5, py-spy of the core under figure 4")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()] or list(FIGURES)
    bad = [x for x in only if x not in FIGURES]
    if bad:
        p.error(f"unknown figure(s) {','.join(bad)}; choose from {','.join(FIGURES)}")
    mach = machine()
    cmd = "python -m bench" + (" " + " ".join(argv) if argv else "")
    print(f"aodv2 bench{' (quick)' if args.quick else ''}: {mach['nproc']} CPUs, {mach['cpu']}, "
          f"python {mach['python']}, numpy {mach['numpy']}, load {mach['loadavg_start']}", flush=True)
    rows: List[Row] = []
    failed = []
    t0 = time.monotonic()
    for fig in only:
        mod, what = FIGURES[fig]
        t = time.monotonic()
        print(f"  figure {fig}: {what} ...", end="", flush=True)
        try:
            got = importlib.import_module(f"bench.{mod}").run(args.quick)
            rows += got
            print(f" {time.monotonic() - t:.0f} s", flush=True)
        except Exception as e:  # one broken figure must not hide the others
            failed.append(fig)
            print(f" FAILED: {e!r}", flush=True)
            traceback.print_exc()
            rows.append(Row(fig, what, f"FAILED: {e!r}"[:120], "-", "-", "-", False))
    mach["loadavg_end"] = loadavg()
    mach["duration_s"] = f"{time.monotonic() - t0:.0f}"
    print()
    print(table(rows))
    for r in rows:
        if r.note:
            print(f"  [{r.fig}] {r.note}")
    print(f"\nload average: {mach['loadavg_start']} at start, {mach['loadavg_end']} at end; "
          f"{mach['duration_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "machine": mach,
                       "rows": [dict(r.__dict__, verdict=r.verdict) for r in rows]}, f, indent=1, default=str)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Command: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  \n")
            f.write("Machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()) + "\n\n")
            f.write(table(rows, markdown=True) + "\n")
            f.write("".join(f"\n- [{r.fig}] {r.note}" for r in rows if r.note) + "\n")
    if args.profile:
        from . import profiles

        os.makedirs(args.profile, exist_ok=True)
        print("\n" + profiles.run(args.profile, args.quick, only))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
