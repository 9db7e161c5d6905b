#!/usr/bin/env python3
"""README's supported-kernels table, generated from the VM reports (issue 15).

Reads, per Debian suite, what the VM runs under dist/ left behind:
  bookworm  dist/vm/{tracer,package,e2e,faults}/  (the full suites: results.txt, *-report.json,
                                                   tracer/facts/facts.txt)
  bullseye, trixie  dist/vm-<suite>/matrix/       (the merged smoke run: results.txt,
                                                   matrix-report.json, facts/facts.txt)
and writes one row per suite (kernel, bcc, Python, systemd, tracer modes proven, scenario results)
between the markers in README.md. `make kernels-table` runs it; the developer commits the result,
as with docs/faults.md. tests/run runs it after the VM suites with --check: exit 1 when a suite has
no report or a failed scenario, so CI fails when a row of the table would say FAIL.

Usage: kernels_table.py [--dist DIR] [--readme README.md] [--check] [--suites a,b,c]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

BEGIN = "<!-- kernels-table: begin (make kernels-table; generated from the VM reports) -->"
END = "<!-- kernels-table: end -->"
SUITES = {"bullseye": "11", "bookworm": "12", "trixie": "13"}
FULL = ("tracer", "package", "e2e", "faults")  # bookworm's suites (dist/vm/<name>)


def facts(results: Path) -> Dict[str, str]:
    """FACT key=value lines of a results.txt (last one wins)."""
    out: Dict[str, str] = {}
    try:
        text = results.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("FACT ") and "=" in line:
            k, v = line[5:].split("=", 1)
            out[k.strip()] = v.strip()
    return out


def checks(results: Path) -> Tuple[int, int]:
    """(passed, failed) PASS/FAIL lines of a results.txt; (0, 0) when missing."""
    try:
        lines = results.read_text(errors="replace").splitlines()
    except OSError:
        return 0, 0
    return sum(x.startswith("PASS ") for x in lines), sum(x.startswith("FAIL ") for x in lines)


def report(path: Path) -> Optional[Dict[str, Any]]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def scenarios(rep: Optional[Dict[str, Any]]) -> Tuple[int, int, List[str]]:
    """(passed, total, failed names) of a driver report; a skipped scenario is a failure."""
    if not rep:
        return 0, 0, ["no report"]
    items = {k: v for k, v in rep.items() if not k.startswith("_") and isinstance(v, dict)}
    failed = [k for k, v in items.items() if not v.get("pass")]
    if not isinstance(rep.get("_run"), dict):
        failed.append("run did not finish")
    return len(items) - len([k for k in failed if k in items]), len(items), failed


def row_bookworm(dist: Path) -> Dict[str, Any]:
    vm = dist / "vm"
    f = {**facts(vm / "package" / "results.txt"), **facts(vm / "tracer" / "results.txt"),
         **facts_file(vm / "tracer" / "facts" / "facts.txt")}
    parts, failed, seconds = [], [], 0.0
    for name in FULL:
        p, n = checks(vm / name / "results.txt")
        rep = report(vm / name / f"{name}-report.json") if name in ("e2e", "faults") else None
        if rep is not None:
            sp, st, bad = scenarios(rep)
            parts.append(f"{name} {sp}/{st}")
            failed += [f"{name}: {b}" for b in bad]
            seconds += float((rep.get("_run") or {}).get("seconds") or 0)
        else:
            parts.append(f"{name} {p}/{p + n} checks")
            if n or not p:
                failed.append(f"{name}: {n} failed checks" if n else f"{name}: no results")
    modes = "tracepoint, kprobe" if checks(vm / "tracer" / "results.txt")[0] else "?"
    return {"suite": "bookworm", "kernel": f.get("kernel", "?"), "bcc": f.get("bcc") or f.get("bcc_version", "?"),
            "python": f.get("python", "?"), "systemd": f.get("systemd", "?"), "modes": modes,
            "results": ", ".join(parts), "failed": failed}


def row_matrix(dist: Path, suite: str) -> Dict[str, Any]:
    d = dist / f"vm-{suite}" / "matrix"
    f = {**facts(d / "results.txt"), **facts_file(d / "facts" / "facts.txt")}
    rep = report(d / "matrix-report.json")
    sp, st, bad = scenarios(rep)
    p, n = checks(d / "results.txt")
    if n:
        bad = bad + [f"{n} failed checks"]
    modes = [m for m, k in (("tracepoint", "2_tracepoint"), ("kprobe", "4_kprobe"))
             if rep and (rep.get(k) or {}).get("pass")]
    secs = ", ".join(f"{k.split('_', 1)[1]} {v.get('seconds')}s" for k, v in (rep or {}).items()
                     if not k.startswith("_") and isinstance(v, dict))
    return {"suite": suite, "kernel": f.get("kernel", "?"), "bcc": f.get("bcc", "?"), "python": f.get("python", "?"),
            "systemd": f.get("systemd", "?"), "modes": ", ".join(modes) or "none",
            "results": f"smoke {sp}/{st}" + (f" ({secs})" if secs else ""), "failed": bad}


def facts_file(path: Path) -> Dict[str, str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    return dict(x.split("=", 1) for x in lines if "=" in x)


def table(rows: List[Dict[str, Any]]) -> str:
    out = ["| Debian | kernel | bcc | Python | systemd | tracer modes proven | VM scenarios | result |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = "PASS" if not r["failed"] else "FAIL: " + "; ".join(r["failed"])[:200]
        out.append(f"| {SUITES[r['suite']]} {r['suite']} | {r['kernel']} | {r['bcc']} | {r['python']} | "
                   f"{r['systemd']} | {r['modes']} | {r['results']} | {res} |")
    return "\n".join(out)


def splice(readme: str, body: str) -> str:
    """README text with the block between the markers replaced (markers appended if missing)."""
    block = f"{BEGIN}\n{body}\n{END}"
    pat = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pat.search(readme):
        return pat.sub(lambda _m: block, readme)
    return readme.rstrip("\n") + "\n\n" + block + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dist", default="dist")
    ap.add_argument("--readme", default="", help="write the table into this file between the markers")
    ap.add_argument("--check", action="store_true", help="exit 1 when a suite failed or has no report")
    ap.add_argument("--suites", default=",".join(SUITES))
    a = ap.parse_args(argv)
    dist = Path(a.dist)
    rows = []
    for s in [x for x in a.suites.split(",") if x]:
        if s not in SUITES:
            print(f"kernels_table: unknown suite {s!r} (expected {', '.join(SUITES)})", file=sys.stderr)
            return 2
        rows.append(row_bookworm(dist) if s == "bookworm" else row_matrix(dist, s))
    body = table(rows)
    print(body)
    if a.readme:
        p = Path(a.readme)
        p.write_text(splice(p.read_text(), body))
    bad = [r for r in rows if r["failed"]]
    for r in bad:
        print(f"kernels_table: {r['suite']} failed: {'; '.join(r['failed'])}", file=sys.stderr)
    return 1 if a.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
