"""tests/vm/kernels_table.py: README's supported-kernels table from the VM reports."""
from __future__ import annotations

import json
import sys
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
if str(VM_DIR) not in sys.path:
    sys.path.insert(0, str(VM_DIR))

import kernels_table as kt  # noqa: E402


def _matrix(dist: Path, suite: str, passed: bool = True, kprobe: bool = True) -> None:
    d = dist / f"vm-{suite}" / "matrix"
    (d / "facts").mkdir(parents=True)
    (d / "facts" / "facts.txt").write_text("kernel=5.10.0-46-amd64\nbcc=0.18.0\npython=3.9.2\nsystemd=247\n")
    (d / "results.txt").write_text("PASS samba up\n" + ("" if passed else "FAIL matrix scenarios all passed\n"))
    rep = {"1_install_enable": {"pass": True, "seconds": 40.0},
           "2_tracepoint": {"pass": True, "seconds": 1.0},
           "3_latency": {"pass": passed, "seconds": 30.0},
           "4_kprobe": {"pass": kprobe, "seconds": 50.0},
           "5_purge": {"pass": True, "seconds": 9.0},
           "_run": {"pass": passed and kprobe, "seconds": 130.0}}
    (d / "matrix-report.json").write_text(json.dumps(rep))


def _bookworm(dist: Path) -> None:
    for name in kt.FULL:
        d = dist / "vm" / name
        d.mkdir(parents=True)
        (d / "results.txt").write_text("FACT kernel=6.1.0-57-amd64\nFACT bcc_version=0.26.0\nPASS x\n")
        if name == "tracer":
            (d / "facts").mkdir()
            (d / "facts" / "facts.txt").write_text("kernel=6.1.0-57-amd64\nbcc=0.26.0\npython=3.11.2\nsystemd=252\n")
        if name in ("e2e", "faults"):
            (d / f"{name}-report.json").write_text(json.dumps({"1_a": {"pass": True, "seconds": 3},
                                                               "_run": {"pass": True, "seconds": 3}}))


def test_rows_from_reports_and_the_check(tmp_path: Path, capsys) -> None:
    _bookworm(tmp_path)
    _matrix(tmp_path, "bullseye")
    _matrix(tmp_path, "trixie", kprobe=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{kt.BEGIN}\nold\n{kt.END}\n\nrest\n")
    assert kt.main(["--dist", str(tmp_path), "--readme", str(readme)]) == 0  # no --check: writes anyway
    text = readme.read_text()
    assert "old" not in text and text.endswith("rest\n") and text.count(kt.BEGIN) == 1
    rows = [ln for ln in text.splitlines() if ln.startswith("| 1")]
    assert rows[0].startswith("| 11 bullseye | 5.10.0-46-amd64 | 0.18.0 | 3.9.2 | 247 | tracepoint, kprobe | smoke 5/5")
    assert rows[0].endswith("| PASS |")
    assert "| 12 bookworm | 6.1.0-57-amd64 | 0.26.0 | 3.11.2 | 252 |" in text and "e2e 1/1" in text
    trixie = next(r for r in rows if "trixie" in r)
    assert "| tracepoint |" in trixie and "FAIL: 4_kprobe" in trixie
    assert kt.main(["--dist", str(tmp_path), "--check"]) == 1  # a failed suite fails CI
    assert kt.main(["--dist", str(tmp_path), "--check", "--suites", "bullseye,bookworm"]) == 0


def test_a_missing_report_is_a_failure(tmp_path: Path) -> None:
    _bookworm(tmp_path)
    assert kt.main(["--dist", str(tmp_path), "--check", "--suites", "bookworm,trixie"]) == 1
    row = kt.row_matrix(tmp_path, "trixie")
    assert "no report" in row["failed"]


def test_markers_appended_when_missing() -> None:
    out = kt.splice("# t\n", "| a |")
    assert out == f"# t\n\n{kt.BEGIN}\n| a |\n{kt.END}\n"
