#!/usr/bin/env python3
"""Run the fault, bad-input and security tests and write docs/faults.md from what they did.

    python tests/faultreport.py [--out docs/faults.md] [--json FILE] [--storm-sec 60] [--no-unit]

The main tests (test_faults.py, test_security.py, test_storm.py) each carry a docstring
"fault: ... expected: ..." and record what they measured with pytest's `record_property`;
a small pytest plugin collects docstring, outcome, duration and those numbers, and this
script renders them. The unit-test files that also inject faults (corrupt ring records,
bad configs, injection strings, ENOSPC, usage errors, crashing workers) are run too and
listed compactly. Exit status is pytest's (0 when everything passed); the document is
written either way and marks failures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAIN = ["tests/test_faults.py", "tests/test_storm.py", "tests/test_security.py", "tests/test_harden_dirs.py",
        "tests/test_harden_ring.py", "tests/test_harden_view.py", "tests/test_harden_core.py",
        "tests/test_harden_matrix_pins.py", "tests/test_harden_matrix_zstd.py"]
UNIT = ["tests/test_unitstop.py", "tests/test_ring.py", "tests/test_config.py", "tests/test_actions.py",
        "tests/test_collect.py", "tests/test_retain.py", "tests/test_upload.py", "tests/test_cli.py",
        "tests/test_supervisor.py"]


class Collect:
    """pytest plugin: one dict per test (nodeid, file, doc, outcome, seconds, properties, error)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        for it in items:
            fn = getattr(it, "function", None)
            doc = (fn.__doc__ or "") if fn is not None else ""
            self.items[it.nodeid] = {"nodeid": it.nodeid, "file": it.nodeid.split("::")[0], "doc": doc,
                                     "outcome": "not run", "seconds": 0.0, "properties": {}, "error": ""}

    def pytest_runtest_logreport(self, report: Any) -> None:
        d = self.items.setdefault(report.nodeid, {"nodeid": report.nodeid, "file": report.nodeid.split("::")[0],
                                                  "doc": "", "properties": {}, "error": "", "seconds": 0.0})
        d["seconds"] = round(d.get("seconds", 0.0) + report.duration, 2)
        for k, v in report.user_properties:
            d["properties"][k] = v
        if hasattr(report, "wasxfail"):
            d["outcome"] = "xfail" if report.skipped else "xpass"
            d["error"] = str(report.wasxfail)
        elif report.failed:
            d["outcome"] = "failed" if report.when == "call" else f"failed ({report.when})"
            d["error"] = _first_error(report)
        elif report.skipped:
            d["outcome"], d["error"] = "skipped", _first_error(report)
        elif report.when == "call" and d.get("outcome", "not run") == "not run":
            d["outcome"] = "passed"


def _first_error(report: Any) -> str:
    text = str(report.longrepr or "")
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    return (lines[0] if lines else text.strip().splitlines()[-1] if text.strip() else "")[:400]


def split_doc(doc: str) -> tuple[str, str]:
    """(fault, expected) from a "fault: ... expected: ..." docstring; the whole text as fault otherwise."""
    text = " ".join(doc.split())
    m = re.match(r"(?is)\s*fault:\s*(.*?)\s*expected:\s*(.*)$", text)
    return (m.group(1), m.group(2)) if m else (text, "")


_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfail": "XFAIL (known gap)", "xpass": "XPASS"}


def _mark(outcome: str) -> str:
    return _MARK.get(outcome.split(" ")[0], outcome.upper())


def _name(nodeid: str) -> str:
    return nodeid.split("::", 1)[1]


def render_items(results: list[dict[str, Any]]) -> list[str]:
    """The hardening review's items (tests/hardening_items.py), each with its tests' outcomes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hardening_items import ITEMS

    marks: dict[str, set[str]] = {}
    for r in results:
        marks.setdefault(r["nodeid"].split("[", 1)[0], set()).add(_mark(r["outcome"]))
    out = ["## Hardening review (issue 14) and the issue-15 matrix: every item and its tests", "",
           "VM parts are in the VM section at the end (`make vm-faults`, tests/vm/guest/faults_harden.py).", "",
           "| # | item | tests (result on this run) | VM part |", "|---|---|---|---|"]
    for i, it in enumerate(ITEMS, 1):
        tests = "<br>".join(f"`{t.split('::')[1]}` {', '.join(sorted(marks.get(t, {'NOT RUN'})))}" for t in it.tests)
        out.append(f"| {i} | **{it.section}:** {it.text} | {tests} | {', '.join(it.vm) or '-'} |")
    return out + [""]


def render(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    main = [r for r in results if r["file"] in MAIN]
    unit = [r for r in results if r["file"] not in MAIN]
    counts: dict[str, int] = {}
    for r in results:
        counts[_mark(r["outcome"])] = counts.get(_mark(r["outcome"]), 0) + 1
    groups: dict[str, list[dict[str, Any]]] = {}  # one section per test function, params inside
    for r in main:
        groups.setdefault(r["nodeid"].split("[", 1)[0], []).append(r)
    out = [
        "# Faults, bad input and hardening: what was tried and what happened",
        "",
        "Generated by `tests/faultreport.py` from the tests themselves (do not edit by hand):",
        "each fault test's docstring says what it injects and what it expects, and the numbers",
        "under *observed* are what the test measured on this run.",
        "",
        f"- run: {env['date']} on {env['host']}, kernel {env['kernel']}, Python {env['python']}, "
        f"{'root' if env['root'] else 'not root'}",
        f"- storm length: {env['storm_sec']:g} s at watch_interval_sec 0.1 (time compressed 10x: "
        f"{env['storm_sec'] * 10:g} s of 1 s windows)",
        "- result: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
        "",
        *render_items(results),
        "## Faults injected into a running core, security and bad-input checks",
        "",
        "| # | test | result | seconds |",
        "|---|---|---|---|",
    ]
    for i, (key, rs) in enumerate(groups.items(), 1):
        marks = sorted({_mark(r["outcome"]) for r in rs})
        secs = sum(r["seconds"] for r in rs)
        label = _name(key) + (f" ({len(rs)} cases)" if len(rs) > 1 else "")
        out.append(f"| {i} | [{label}](#f{i}) | {', '.join(marks)} | {secs:.1f} |")
    for i, (key, rs) in enumerate(groups.items(), 1):
        fault, expected = split_doc(rs[0]["doc"])
        marks = ", ".join(sorted({_mark(r["outcome"]) for r in rs}))
        out += ["", f"<a id=\"f{i}\"></a>", f"### {i}. `{_name(key)}` — {marks}", "",
                f"- file: `{rs[0]['file']}`"]
        out.append(f"- **fault:** {fault or '(no docstring)'}")
        if expected:
            out.append(f"- **expected:** {expected}")
        for r in rs:
            case = r["nodeid"][len(key):]
            head = f"- case `{case}`: {_mark(r['outcome'])}" if case else "- **observed:**"
            props = "; ".join(f"{k} = `{v}`" for k, v in r["properties"].items())
            if case or props:
                out.append(f"{head} {props}".rstrip())
            if r["error"]:
                label = "known gap" if r["outcome"] == "xfail" else "failure"
                out.append(f"  - **{label}:** {r['error']}")
    out += ["", "## Also covered by unit tests (fault and bad-input cases among them)", "",
            "| file | test | result | what it checks |", "|---|---|---|---|"]
    for r in unit:
        first = " ".join(r["doc"].split()).split(". ")[0][:160] if r["doc"] else ""
        out.append(f"| `{r['file']}` | `{_name(r['nodeid'])[:90]}` | {_mark(r['outcome'])} | {first} |")
    if not unit:
        out.append("| - | (not run: --no-unit) | | |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="faultreport", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "faults.md"), help="markdown to write")
    ap.add_argument("--json", help="also write the raw results as JSON here")
    ap.add_argument("--storm-sec", type=float, default=60.0,
                    help="storm length (default 60 = ten minutes of 1 s windows)")
    ap.add_argument("--no-unit", action="store_true", help="only the fault/security/storm tests")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    a = ap.parse_args(argv)
    os.chdir(ROOT)
    os.environ["AOD_STORM_SEC"] = f"{a.storm_sec:g}"
    plugin = Collect()
    files = MAIN + ([] if a.no_unit else UNIT)
    rc = int(pytest.main(["-q", "-p", "no:cacheprovider", *files, *a.pytest_args], plugins=[plugin]))
    results = [plugin.items[k] for k in plugin.items]
    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
           "kernel": platform.release(), "python": platform.python_version(), "root": os.geteuid() == 0,
           "storm_sec": a.storm_sec, "pytest_exit": rc}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    text = render(results, env)
    old = Path(a.out).read_text() if Path(a.out).exists() else ""
    vm = re.search(r"<!-- vm-faults: begin -->.*<!-- vm-faults: end -->\n", old, re.S)
    if vm:  # the VM part is tests/vm/faults_doc.py's (written after `make vm-faults`): keep it
        text = text.rstrip("\n") + "\n\n" + vm.group(0)
    Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"env": env, "results": results}, indent=2, default=str) + "\n")
    print(f"faultreport: wrote {a.out} ({len(results)} tests, pytest exit {rc})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
