"""Security and bad input (issue 7, host level): no shell anywhere in aod/, shell-looking config
values stay literal, file modes of bundles, the ring file and tracer state under umask 0,
secrets redacted from whole bundles, and wrong arguments to every CLI verb."""

from __future__ import annotations

import ast
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import zstandard
from faultkit import CRED_FILE_SECRET, SECRET, CoreRun, config_text, fake_host, slow, tool

from aod import cli, ringfile, tracer, tracerstate
from aod.bundle import list_bundles, read_bundle

ROOT = Path(__file__).resolve().parent.parent
ALL_ACTIONS = "[kernel_log, journal, syslog, cifs_debug, cifs_stats, cifs_open_files, mounts, smbinfo]"

# --- no shell -----------------------------------------------------------------------------

_SUBPROCESS = {"run", "call", "check_call", "check_output", "Popen", "getoutput", "getstatusoutput"}
_ALWAYS_SHELL = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
                 ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell"),
                 ("os", "execl"), ("os", "execlp"), ("os", "spawnl"), ("os", "spawnlp")}


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _is_stringish(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(
        node, (ast.JoinedStr, ast.BinOp))


def shell_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every call that may run a shell: shell=True, os.system/popen, *_shell, or a subprocess
    call whose command is a string rather than an argv list."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{filename}:{node.lineno}"
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{where}: shell={ast.unparse(kw.value)}")
        if name[-2:] in _ALWAYS_SHELL or name[-1:] in (("system",), ("popen",), ("create_subprocess_shell",)):
            found.append(f"{where}: {'.'.join(name)}()")
        elif name and name[-1] in _SUBPROCESS | {"create_subprocess_exec"} and node.args:
            if _is_stringish(node.args[0]) and name[-1] != "create_subprocess_exec":
                found.append(f"{where}: {'.'.join(name)}() with a string command")
    return found


def test_scanner_catches_shell_uses() -> None:
    """Self-check: the scanner below finds each form of shell use it looks for."""
    bad = """
import os, subprocess, asyncio
os.system("ls")
os.popen("ls")
subprocess.run("ls -l", shell=True)
subprocess.Popen(f"rm {x}")
subprocess.check_output("a" + b)
asyncio.create_subprocess_shell("ls")
subprocess.run(["ls"], shell=flag)
"""
    assert {int(f.split(":")[1]) for f in shell_uses(bad)} == {3, 4, 5, 6, 7, 8, 9}
    assert shell_uses("import subprocess\nsubprocess.run(['ls', '-l'], shell=False)\n") == []


def test_no_shell_anywhere_in_aod(record_property: Any) -> None:
    """fault: code review as a test: any shell use in the daemon's package (it runs as root).
    expected: no shell=True, os.system, os.popen, *_shell or string-command subprocess call in
    any aod/*.py (parsed with ast, so comments and strings do not count)."""
    files = sorted((ROOT / "aod").glob("*.py"))
    found = [f for p in files for f in shell_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert files and found == []
    record_property("files_scanned", len(files))


# --- shell-looking config values stay literal ---------------------------------------------


def test_shell_metacharacters_in_output_dir_stay_literal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Any
) -> None:
    """fault: output_dir in the config file is `out; rm -rf / $(touch X) `touch Y` && touch Z`
    (plus a mount point with `$(touch M)` in /proc/mounts, passed to smbinfo).
    expected: a real capture writes its bundle into a directory literally named that;
    X, Y, Z and M are never created (no shell ever sees the value)."""
    monkeypatch.chdir(tmp_path)
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(k, raising=False)
    env, host = fake_host(tmp_path)
    evil = tmp_path / "out; rm -rf / $(touch X) `touch Y` && touch Z"
    with open(host["proc"] / "mounts", "a") as f:
        f.write("//fs01/x /mnt/$(touch\\040M) cifs rw,vers=3.0 0 0\n")
    yaml_dir = json.dumps(str(evil))  # a JSON string is a valid YAML double-quoted scalar
    r = CoreRun(tmp_path, config_text(yaml_dir, acceptable=1, actions=ALL_ACTIONS), env=env)
    try:
        assert r.core.cfg.output_dir == str(evil)
        r.writer.write(slow(5, 300))
        res = r.wait_results(1, timeout=20)[0]
    finally:
        r.stop()
    assert res.ok and res.path and os.path.dirname(res.path) == str(evil)
    assert list_bundles(str(evil)) == [res.path]
    for name in ("X", "Y", "Z", "M", "touch"):
        assert not (tmp_path / name).exists() and not Path(name).exists()
    files = read_bundle(res.path)
    smb = [v for k, v in files.items() if k.startswith("smbinfo/")]
    assert any(b"/mnt/$(touch M)" in v for v in smb)  # reached smbinfo as one literal argument
    record_property("bundle_dir", str(evil))


# --- file modes ---------------------------------------------------------------------------


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_modes_under_umask_0(tmp_path: Path, umask0: None, monkeypatch: pytest.MonkeyPatch,
                             record_property: Any) -> None:
    """fault: the daemon runs with umask 0 (so nothing is private by luck).
    expected: output dir 0700, bundles 0600 (and 0600/0700 inside the tar), the file ring
    0600, tracer state files 0600 in a 0700 directory, anomaly history 0600."""
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(k, raising=False)
    env, _ = fake_host(tmp_path)
    out = tmp_path / "out"
    r = CoreRun(tmp_path, config_text(out, acceptable=1, actions=ALL_ACTIONS), env=env)
    try:
        r.writer.write(slow(5, 300))
        res = r.wait_results(1, timeout=20)[0]
    finally:
        r.stop()
    assert res.ok and res.path
    modes = {"output_dir": stat.S_IMODE(os.stat(out).st_mode),
             "bundle": stat.S_IMODE(os.stat(res.path).st_mode),
             "ring_file": stat.S_IMODE(os.stat(r.ring_path).st_mode)}
    with open(res.path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as zr:
        with tarfile.open(fileobj=zr, mode="r|") as tar:
            members = {(m.type, m.mode) for m in tar}
    assert members == {(tarfile.DIRTYPE, 0o700), (tarfile.REGTYPE, 0o600)}
    for name in os.listdir(out):  # e.g. anomalies.jsonl
        assert stat.S_IMODE(os.stat(out / name).st_mode) & 0o077 == 0, name
    run_dir = tmp_path / "run" / "aodv2"
    assert tracerstate.write_state(str(run_dir), "smb", "attached") is None
    modes["tracer_state_dir"] = stat.S_IMODE(os.stat(run_dir).st_mode)
    modes["tracer_state"] = stat.S_IMODE(os.stat(tracerstate.state_path(str(run_dir), "smb")).st_mode)
    ring2 = tmp_path / "ring2"
    ringfile.create(str(ring2), 4096)
    modes["ring_file_created"] = stat.S_IMODE(os.stat(ring2).st_mode)
    assert modes == {"output_dir": 0o700, "bundle": 0o600, "ring_file": 0o600, "tracer_state_dir": 0o700,
                     "tracer_state": 0o600, "ring_file_created": 0o600}
    record_property("modes", json.dumps({k: f"{v:04o}" for k, v in modes.items()}))


def test_forged_ring_file_is_refused(tmp_path: Path) -> None:
    """fault: the ring file is world-writable (anyone could forge or flood events, as with the
    prototype's 0666 /dev/shm ring).
    expected: the reader refuses to open it with a message naming the path."""
    p = tmp_path / "ring"
    ringfile.create(str(p), 4096)
    os.chmod(p, 0o666)
    with pytest.raises(OSError, match="group/world writable"):
        ringfile.open_ring_fd(str(p), write=False)


# --- redaction: no secret anywhere in a bundle ----------------------------------------------


def test_no_password_or_credentials_value_in_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    record_property: Any) -> None:
    """fault: secrets on the host: password=/pass=/credentials= in /proc/mounts, in cifs
    DebugData, in syslog, in the journal and kernel log (sudo mount lines).
    expected: the whole bundle (every byte of the decompressed tar, headers included) contains
    neither the password nor the credentials file path; each is replaced by `***`."""
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(k, raising=False)
    env, host = fake_host(tmp_path)
    line = f"sudo: COMMAND=/bin/mount -t cifs -o username=alice,password={SECRET},credentials={CRED_FILE_SECRET}"
    tool(host["bin"], "journalctl", f'echo "{line}"; echo "journal $*"')
    tool(host["bin"], "dmesg", f'echo "CIFS: mount options pass={SECRET}"')
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=1, actions=ALL_ACTIONS), env=env)
    try:
        r.writer.write(slow(5, 300))
        res = r.wait_results(1, timeout=20)[0]
    finally:
        r.stop()
    assert res.ok and res.path
    with open(res.path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    assert SECRET.encode() not in raw and CRED_FILE_SECRET.encode() not in raw
    files = read_bundle(res.path)
    for name in ("mounts", "cifs/DebugData", "syslog.log", "journal.log"):
        assert b"password=***" in files[name] or b"pass=***" in files[name], name
    assert b"credentials=***" in files["mounts"] and b"username=alice" in files["mounts"]
    record_property("bytes_searched", len(raw))
    record_property("redacted_members", "mounts, cifs/DebugData, syslog.log, journal.log, kernel.log")


# --- bad command lines ------------------------------------------------------------------------

TRACER_BAD = [
    ["--bogus"],
    [],
    ["nosuchtracer"],
    ["smb", "--pid", "5"],
    ["smb", "--unknown-flag"],
    ["synthetic", "--pid", "-1"],
    ["synthetic", "--kind", "bogus"],
    ["synthetic", "--latency-ms", "nan"],
    ["synthetic", "--command", "0x10000"],
    ["synthetic", "--status", "abc"],
    ["synthetic", "--force-kprobes"],
]


@pytest.mark.parametrize("argv", TRACER_BAD, ids=lambda a: " ".join(a) or "<none>")
def test_tracer_wrong_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """fault: `aodv2 tracer` with wrong arguments (unknown flag, unknown tracer, synthetic-only
    flags on smb, out-of-range or non-numeric values).
    expected: exit code 2, one error line naming the problem on stderr, no traceback, nothing
    loaded."""
    assert tracer.main(list(argv)) == 2
    try:  # via the CLI: a leading option is the top-level parser's (usage, SystemExit 2)
        rc = cli.main(["tracer", *argv])
    except SystemExit as e:
        rc = e.code  # type: ignore[assignment]
    assert rc == 2
    err = capsys.readouterr().err
    assert "aodv2 tracer" in err and "Traceback" not in err


def test_tracer_wrong_arguments_print_usage(capsys: pytest.CaptureFixture) -> None:
    """Like every other verb, `aodv2 tracer --bogus` should print its usage line too."""
    assert tracer.main(["--bogus"]) == 2
    assert "usage: aodv2 tracer" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["dir", "binary", "devzero", "symlink-loop", "missing"])
def test_unusable_config_file_is_a_clear_error(target: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """fault: the config path is a directory, binary garbage, /dev/zero (endless), a symlink
    loop, or missing, for `check-config` and `run`.
    expected: check-config exits 2 and run exits 78, each naming the path, no traceback, no hang."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    p = tmp_path / "c.yaml"
    if target == "dir":
        p.mkdir()
    elif target == "binary":
        p.write_bytes(os.urandom(4096) + b"\0\xff")
    elif target == "devzero":
        p = Path("/dev/zero")
    elif target == "symlink-loop":
        p.symlink_to(p)
    assert cli.main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "Traceback" not in err
    assert cli.main(["run", "--config", str(p), "--ring-file", str(tmp_path / "ring"),
                     "--state-dir", str(tmp_path / "run")]) == 78
    err = capsys.readouterr().err
    assert str(p) in err and "Traceback" not in err and not (tmp_path / "ring").exists()


# --- the evidence helper (root, CAP_SYS_ADMIN + CAP_SYS_PTRACE) -------------------------------

_AUDIT: list[tuple[str, str]] = []
_AUDITING = [False]


def _audit(event: str, args: tuple) -> None:
    if _AUDITING[0] and event in ("open", "os.listdir", "os.scandir", "subprocess.Popen"):
        if isinstance(args[0], (str, bytes)):  # not an fd (pipes of the subprocess)
            _AUDIT.append((event, os.fsdecode(args[0])))


@pytest.mark.parametrize("extra", ['"proc": "/etc"', '"pin_dir": "/tmp"', '"path": "/mnt/x"', '"argv": ["sh"]'])
def test_evidence_request_cannot_name_paths_or_commands(extra: str) -> None:
    """fault: a request (from whoever reaches the 0600 root socket) tries to steer the helper to
    other paths or commands. expected: refused as an unknown key, nothing read."""
    import io

    from aod import evidence

    out = io.BytesIO()
    line = ('{"want": ["stacks"], ' + extra + "}\n").encode()
    assert evidence.serve(io.BytesIO(line), out, proc="/nonexistent", pin_dir="/nonexistent") == 2
    assert "unknown request keys" in json.loads(out.getvalue())["error"]


def test_evidence_helper_reads_only_proc_and_pins_and_runs_only_ss(tmp_path: Path) -> None:
    """fault: the helper runs as root with CAP_SYS_ADMIN; a hung mount blocks any stat of it.
    expected: a full answer opens files only under /proc (here a fake one with hostile comms)
    and the pin dir, and runs only ss (argv list); comms stay literal text."""
    import sys

    from evidencekit import CIFS_STACK, add_task

    from aod import evidence

    proc, pins = tmp_path / "proc", tmp_path / "pins"
    add_task(proc, 7, 7, "$(touch PWNED)\n; rm", "D", CIFS_STACK)
    pins.mkdir()
    sys.addaudithook(_audit)
    _AUDIT.clear()
    _AUDITING[0] = True
    try:
        resp = evidence.answer({"want": list(evidence.SECTIONS), "pids": [1], "budget_ms": 5000},
                               proc=str(proc), pin_dir=str(pins))
    finally:
        _AUDITING[0] = False
    opened = [p for e, p in _AUDIT if e != "subprocess.Popen"]
    ran = [p for e, p in _AUDIT if e == "subprocess.Popen"]
    allowed = (str(proc), str(pins), "/proc/fs/cifs/DebugData", "/dev/null")
    assert opened and [p for p in opened if not p.startswith(allowed)] == []
    assert all(os.path.basename(p) == "ss" for p in ran), ran
    assert resp["stacks"][0]["comm"] == "$(touch PWNED)\n; rm" and not (tmp_path / "PWNED").exists()
