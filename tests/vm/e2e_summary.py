#!/usr/bin/env python3
"""Print the e2e report (tests/vm/guest/e2e_run.py writes it) as one line per scenario:
pass/fail, seconds and the measured times, then the raw JSON path. Used by tests/run."""

from __future__ import annotations

import json
import sys


def main(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print(f"e2e report: cannot read {path}: {e}")
        return 1
    for name, r in report.items():
        if not isinstance(r, dict):
            continue
        times = {k: v for k, v in r.items() if k not in ("pass", "detail", "journal_tail") and not isinstance(v, dict)}
        failed = [k for k, ok in (r.get("detail") or {}).get("checks", {}).items() if not ok]
        print(f"{'PASS' if r.get('pass') else 'FAIL'} {name} {json.dumps(times)}"
              + (f" failed checks: {failed}" if failed else ""))
    print(f"full report: {path}")
    return 0 if all(r.get("pass") for r in report.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dist/vm/e2e/e2e-report.json"))
