#!/usr/bin/env python3
"""Print a VM driver's JSON report (tests/vm/guest/guestkit.run_scenarios writes it for e2e_run.py
and faults_run.py) into the CI log, one line per scenario: PASS/FAIL/SKIP, seconds and the measured
times. Under a FAIL line come its failed checks, the aodv2 journal tail and `systemctl status` of the
aodv2 units (indented, capped), so a red CI says why. Used by tests/run.

Exit 0 iff the run finished (a "_run" record), had at least one scenario, and every scenario ran
and passed; 1 otherwise (a skipped scenario counts as a failure: none may be skipped silently).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List

MAX_JOURNAL = 40  # lines printed per failed scenario
MAX_STATUS = 60
MAX_LINE = 300  # characters per printed line


def _block(title: str, lines: Any, cap: int, tail: bool) -> List[str]:
    """`title:` then up to `cap` of `lines` (the last ones if `tail`), indented."""
    if not isinstance(lines, list) or not lines:
        return []
    shown = lines[-cap:] if tail else lines[:cap]
    more = f" ({len(lines) - cap} more lines in the report)" if len(lines) > cap else ""
    return [f"    {title}{more}:"] + [f"      {str(ln)[:MAX_LINE]}" for ln in shown]


def scenario_lines(name: str, r: Dict[str, Any]) -> List[str]:
    """The printed lines of one report entry."""
    if r.get("skipped"):
        return [f"SKIP {name} (not run: every scenario must run; --only/E2E_ARGS selected others)"]
    times = {k: v for k, v in r.items() if k not in ("pass", "detail", "journal_tail") and not isinstance(v, dict)}
    detail = r.get("detail") or {}
    failed = [k for k, ok in detail.get("checks", {}).items() if not ok]
    out = [f"{'PASS' if r.get('pass') else 'FAIL'} {name} {json.dumps(times)}"
           + (f" failed checks: {failed}" if failed else "")]
    if not r.get("pass"):
        out += _block("journal since the scenario began", detail.get("journal_tail"), MAX_JOURNAL, tail=True)
        out += _block("systemctl status", detail.get("unit_status"), MAX_STATUS, tail=False)
    return out


def main(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print(f"e2e report: cannot read {path}: {e}")
        return 1
    if not isinstance(report, dict):
        print(f"e2e report: {path}: expected a JSON object of scenarios, got {type(report).__name__}")
        return 1
    entries = {k: v for k, v in report.items() if isinstance(v, dict) and k != "_run"}
    for name, r in entries.items():
        print("\n".join(scenario_lines(name, r)))
    run = report.get("_run")
    if isinstance(run, dict):
        print(f"RUN {'PASS' if run.get('pass') else 'FAIL'} {json.dumps(run)}")
    else:
        print("RUN INCOMPLETE: no _run record (the driver did not finish; later scenarios did not run)")
    skipped = [k for k, r in entries.items() if r.get("skipped")]
    if not entries:
        print(f"e2e report: {path} has no scenario")
    elif skipped:
        print(f"e2e report: {len(skipped)} scenario(s) skipped: {', '.join(skipped)}")
    print(f"full report: {path}")
    ok = bool(entries) and isinstance(run, dict) and bool(run.get("pass")) \
        and all(r.get("pass") and not r.get("skipped") for r in entries.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dist/vm/e2e/e2e-report.json"))
