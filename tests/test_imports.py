"""`aod` imports on a machine without bcc or systemd-python (both come from the distribution,
not from pyproject's dependencies), and logging falls back to stderr there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("bcc", "systemd")

# Runs in a fresh interpreter: refuse the blocked packages whether or not they are installed,
# import every aod module, then set up logging as under systemd and as in a terminal.
CHILD = textwrap.dedent(
    """
    import importlib, json, os, pkgutil, sys

    BLOCKED = {blocked!r}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked by test_imports")
            return None

    sys.meta_path.insert(0, Refuse())
    import aod
    names = sorted("aod." + m.name for m in pkgutil.iter_modules(aod.__path__))
    for n in names:
        importlib.import_module(n)
    from aod import log

    os.environ["JOURNAL_STREAM"] = "8:1234"  # as under systemd: the journal handler is wanted
    under_systemd = log.setup()
    log.emit("ready", log.logging.WARNING, "journal-fallback-line", AOD_RING="r")
    del os.environ["JOURNAL_STREAM"]
    os.environ.pop("INVOCATION_ID", None)
    terminal = log.setup()
    log.emit("ready", log.logging.WARNING, "terminal-line")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({{"modules": names, "under_systemd": under_systemd, "terminal": terminal,
                      "leaked": leaked}}))
    """
).format(blocked=set(BLOCKED))


def test_every_module_imports_without_bcc_or_systemd_and_logs_to_stderr() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    expected = sorted("aod." + f.stem for f in (ROOT / "aod").glob("*.py") if f.stem != "__init__")
    assert out["modules"] == expected and len(expected) > 20  # every module really was imported
    assert out["under_systemd"] == "stderr-journal" and out["terminal"] == "stderr"
    assert out["leaked"] == []
    # under systemd: a <priority> prefix journald understands; in a terminal: plain text
    assert re.search(r"^<4>journal-fallback-line \[AOD_RING=r\]$", p.stderr, re.M), p.stderr
    assert re.search(r"^aodv2 warning: terminal-line$", p.stderr, re.M), p.stderr


def _project_dependencies(text: str) -> list[str]:
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # 3.9/3.10: the [project] dependencies array, parsed by hand
        section = re.search(r"^\[project\]\s*$(.*?)(?=^\[)", text, re.M | re.S)
        assert section, "no [project] table in pyproject.toml"
        deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", section.group(1), re.M | re.S)
        return re.findall(r"""["']([^"']+)["']""", deps.group(1)) if deps else []
    return list(tomllib.loads(text)["project"].get("dependencies", []))


def test_runtime_dependencies_need_neither_bcc_nor_systemd_python() -> None:
    """bcc on PyPI is an unrelated package and systemd-python needs libsystemd-dev to build:
    neither may be a hard dependency (systemd-python is only the optional 'journald' extra)."""
    deps = _project_dependencies((ROOT / "pyproject.toml").read_text())
    names = {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    assert {"numpy", "pyyaml", "zstandard", "sdnotify"} <= names  # the parse found the real list
    assert not names & {"bcc", "systemd-python", "systemd", "pybcc"}, deps
