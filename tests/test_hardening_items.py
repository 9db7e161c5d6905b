"""tests/hardening_items.py (docs/faults.md's item table) names real tests, and every hardening test is listed."""

from __future__ import annotations

import ast
from pathlib import Path

from hardening_items import ITEMS

ROOT = Path(__file__).resolve().parent.parent


def functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_listed_test_exists_and_every_hardening_test_is_listed() -> None:
    listed = {t for it in ITEMS for t in it.tests}
    for t in listed:
        file, name = t.split("::")
        assert name in functions(ROOT / file), f"{t}: no such test"
    for f in sorted((ROOT / "tests").glob("test_harden_*.py")):
        for name in functions(f):
            assert f"tests/{f.name}::{name}" in listed, f"{f.name}::{name} is in no item of hardening_items.py"


def test_vm_parts_exist() -> None:
    text = (ROOT / "tests" / "vm" / "guest" / "faults_harden.py").read_text()
    for it in ITEMS:
        for part in it.vm:
            assert f'("{part}", ' in text, part
