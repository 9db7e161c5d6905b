"""The attach plan on real kernels' files: every tests/fixtures/kernels/<suite>/ (README.md there
says the layout) is planned in each tracer.mode of its expected.json and compared.

A synthetic suite written by the test itself (tests/btfkit.py, the tracefs formats of
test_tracer.py) always runs too, through the same loader: the check is exercised, and never
reported as skipped, before any real fixture is added.
"""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
from pathlib import Path
from typing import Any

import btfkit
import pytest
from test_tracer import make_cifs_events

from aod import tracepoints

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kernels"
SUITES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []
SYNTHETIC = "synthetic-backported-6.1"
CASE_KEYS = {"mode", "tracepoints", "kprobes", "optional_kprobes", "release_symbol", "release_arg",
             "release_offset", "decided", "defines_contain", "notes_contain", "error"}


def write_synthetic(d: Path) -> Path:
    """A '6.1' kernel whose cifs has the 6.19 __release_mid(server, mid) backported: only BTF gets
    it right (the version says kref). BTF compressed, as a fixture may hold it."""
    make_cifs_events(d)
    (d / "available_filter_functions").write_text(
        "smb2_mid_entry_alloc [cifs]\n__smb2_find_mid [cifs]\nsmb2_find_mid [cifs]\n__release_mid [cifs]\n")
    k = btfkit.server_mid_kernel()
    (d / "btf").mkdir()
    (d / "btf" / "vmlinux.gz").write_bytes(gzip.compress(k.vmlinux.blob()))
    (d / "btf" / "cifs.xz").write_bytes(lzma.compress(k.cifs.blob()))
    (d / "expected.json").write_text(json.dumps({
        "release": "6.1.0-99-amd64",
        "modes": {
            "auto": {"mode": "tracepoint", "optional_kprobes": ["smb2_mid_entry_alloc", "__smb2_find_mid"],
                     "tracepoints": ["cifs:smb3_cmd_enter", "cifs:smb3_cmd_done", "cifs:smb3_cmd_err",
                                     "cifs:smb3_reconnect", "syscalls:sys_enter_getppid"],
                     "notes_contain": ["pairing key names the connection"]},
            "kprobe": {"mode": "kprobe", "kprobes": ["smb2_mid_entry_alloc", "smb2_mid_entry_alloc", "__release_mid"],
                       "release_symbol": "__release_mid", "release_arg": 1, "release_offset": 0,
                       "decided": "by BTF", "defines_contain": ["AOD_KPROBE_MODE=1"]},
            "tracepoint": {"mode": "tracepoint"},
        }}))
    return d


def unpack_btf(src: Path, dst: Path) -> Path:
    """The fixture's btf/ files, decompressed, laid out like /sys/kernel/btf (empty: no BTF)."""
    dst.mkdir()
    for f in sorted(src.glob("*")) if src.is_dir() else []:
        name, data = f.name, f.read_bytes()
        if name.endswith(".gz"):
            name, data = name[:-3], gzip.decompress(data)
        elif name.endswith(".xz"):
            name, data = name[:-3], lzma.decompress(data)
        (dst / name).write_bytes(data)
    return dst


def check(case: dict[str, Any], plan: Any, where: str) -> None:
    unknown = set(case) - CASE_KEYS
    assert not unknown, f"{where}: unknown keys {sorted(unknown)} (expected some of {sorted(CASE_KEYS)})"
    if "mode" in case:
        assert plan.mode == case["mode"], where
    if "tracepoints" in case:
        assert list(plan.tracepoints) == case["tracepoints"], where
    if "kprobes" in case:
        assert [s for _, s, _ in plan.kprobes] == case["kprobes"], where
    if "optional_kprobes" in case:
        assert [s for _, s, _ in plan.optional_kprobes] == case["optional_kprobes"], where
    if "release_symbol" in case:
        assert plan.kprobes and plan.kprobes[-1][1] == case["release_symbol"], where
    if "release_arg" in case:
        assert f"AOD_RELEASE_ARG={case['release_arg']}" in plan.defines, where
    if "release_offset" in case:
        assert f"AOD_RELEASE_OFF={case['release_offset']}" in plan.defines, where
    if "decided" in case:
        note = [n for n in plan.notes if n.startswith("kprobe fallback")]
        assert note and f"; {case['decided']}" in note[0], f"{where}: {note}"
    for d in case.get("defines_contain", []):
        assert any(d in x for x in plan.defines), f"{where}: no define {d!r} in {plan.defines}"
    for n in case.get("notes_contain", []):
        assert any(n in x for x in plan.notes), f"{where}: no note {n!r} in {plan.notes}"


@pytest.mark.parametrize("suite", [SYNTHETIC] + SUITES)
def test_plan_on_a_kernels_files(suite: str, tmp_path: Path) -> None:
    d = write_synthetic(tmp_path / suite) if suite == SYNTHETIC else FIXTURES / suite
    assert (d / "expected.json").is_file(), f"{d} has no expected.json: see {FIXTURES / 'README.md'}"
    expected = json.loads((d / "expected.json").read_text())
    assert set(expected) <= {"release", "modes"} and expected.get("modes"), f"{suite}: expected.json keys"
    release = expected.get("release") or facts(d).get("kernel")
    assert release, f"{suite}: no release in expected.json and no kernel= in facts.txt"
    btf_dir = unpack_btf(d / "btf", tmp_path / "sys-kernel-btf")
    events = d / "events" / "cifs"
    args = (str(events) if events.is_dir() else None, [str(d)], str(d / "no-kallsyms"), release)
    for mode, case in expected["modes"].items():
        where = f"{suite} tracer.mode {mode}"
        if "error" in case:
            assert set(case) == {"error"}, f"{where}: an error case checks the error only"
            with pytest.raises(tracepoints.SetupError) as ei:
                tracepoints.smb_plan(*args, mode, str(btf_dir))
            assert case["error"] in str(ei.value), where
            continue
        plan, health, notes = tracepoints.smb_plan(*args, mode, str(btf_dir))
        assert set(health) == {"offered", "attached"} and set(plan.notes) <= set(notes)
        check(case, plan, where)
        if plan.mode == "kprobe" and (btf_dir / "cifs").exists():  # a cifs blob given must be the one used
            note = [n for n in plan.notes if n.startswith("kprobe fallback")]
            assert note and "; by BTF" in note[0], f"{where}: the fixture's cifs BTF was not used: {note}"
    shutil.rmtree(btf_dir)


def facts(d: Path) -> dict[str, str]:
    """key=value lines of the fixture's facts.txt (kernel=, bcc=, btf_cifs=, ...), if any."""
    p = d / "facts.txt"
    lines = p.read_text().splitlines() if p.is_file() else []
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_the_synthetic_suite_needs_btf_to_pass(tmp_path: Path) -> None:
    """Without its BTF the synthetic kernel is planned by version (kref, arg 0): the fixture check
    above would then fail, so it really tests the BTF path."""
    d = write_synthetic(tmp_path / "s")
    plan, _, _ = tracepoints.smb_plan(str(d / "events" / "cifs"), [str(d)], "/none", "6.1.0-99-amd64", "kprobe",
                                      str(tmp_path / "empty"))
    with pytest.raises(AssertionError):
        check(json.loads((d / "expected.json").read_text())["modes"]["kprobe"], plan, "no BTF")
