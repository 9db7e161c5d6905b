"""The quick-action table and single steps, against a fake /proc, /var/log and fake binaries."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from aod import actionrun, actions
from aod.actionrun import CappedSink, combine, run_step
from aod.actions import (
    ACTION_NAMES,
    ACTIONS,
    ActionEnv,
    Step,
    decode_mount_field,
    escape_mount_name,
    parse_cifs_mounts,
    plan,
    substitute,
)
from aod.redact import redact


def make_tool(bindir: Path, name: str, body: str) -> Path:
    p = bindir / name
    p.write_text('#!/bin/sh\nPATH="$PATH:/usr/bin:/bin"\n' + body + "\n")  # the step's PATH is only bindir
    p.chmod(0o755)
    return p


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    proc, var_log, bindir, journal = (tmp_path / n for n in ("proc", "log", "bin", "journal"))
    for d in (proc / "fs" / "cifs", var_log, bindir, journal):
        d.mkdir(parents=True)
    stage = tmp_path / "stage"
    stage.mkdir()
    return {"proc": proc, "log": var_log, "bin": bindir, "journal": journal, "stage": stage, "tmp": tmp_path}


def env_of(t: dict[str, Path], journal: bool = True) -> ActionEnv:
    return ActionEnv(proc_root=str(t["proc"]), var_log=str(t["log"]), path=str(t["bin"]),
                     journal_dir=str(t["journal"] if journal else t["tmp"] / "nojournal"),
                     tracefs=(str(t["tmp"] / "tracefs"),), run_dir=str(t["tmp"] / "run"))


def run(step: Step, t: dict[str, Path], timeout: float = 10.0) -> actionrun.StepResult:
    for d in {os.path.dirname(step.dest)} - {""}:
        (t["stage"] / d).mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_step(step, str(t["stage"]), timeout, env_of(t)))


def one(name: str, t: dict[str, Path], journal: bool = True) -> Step:
    steps = plan(ACTIONS[name], env_of(t, journal), 1700000000, 1700000100)
    assert len(steps) == 1
    return steps[0]


# --- the table --------------------------------------------------------------


def test_table_matches_stable_names_and_is_plain_data() -> None:
    assert tuple(ACTIONS) == ACTION_NAMES
    for spec in ACTIONS.values():
        assert [bool(spec.files), bool(spec.argv), bool(spec.evidence), bool(spec.recorder)].count(True) == 1, spec.name
        assert spec.keep in ("head", "tail") and spec.cap_bytes > 0
        for argv in spec.argv:
            assert all(isinstance(a, str) for a in argv)
            assert " " not in argv[0] and argv[0] not in ("sh", "bash", "/bin/sh")
    assert ACTIONS["syslog"].files == ("{var_log}/syslog", "{var_log}/messages")
    assert ACTIONS["mounts"].redact and ACTIONS["cifs_debug"].redact
    assert actions.EVIDENCE_ACTIONS == ("task_stacks", "inflight", "connections")
    assert {ACTIONS[n].evidence for n in actions.EVIDENCE_ACTIONS} == {"stacks", "inflight", "connections"}
    assert all(ACTIONS[n].urgent for n in (*actions.EVIDENCE_ACTIONS, "cifs_debug"))
    assert not any(ACTIONS[n].urgent for n in ("journal", "kernel_log", "smbinfo"))
    assert {ACTIONS[n].recorder for n in ("trace_recorder", "packet_recorder")} == {"trace", "pcap"}
    assert ACTIONS["trace_recorder"].urgent and ACTIONS["packet_recorder"].urgent  # their rings overwrite


def test_substitute_is_single_pass() -> None:
    vals = {"mount": "/mnt/{since}", "since": "1"}
    assert substitute("{mount}", vals) == "/mnt/{since}"
    assert substitute("@{since}", vals) == "@1"
    assert substitute("{unknown}", vals) == "{unknown}"


@pytest.mark.parametrize(
    "raw,want",
    [
        (b"rw,password=s3cr3t,uid=0", b"rw,password=***,uid=0"),
        (b"rw,pass=x,credentials=/root/.smbcred", b"rw,pass=***,credentials=***"),
        (b"password=a,,b,uid=1", b"password=***,uid=1"),  # ",," is an escaped comma in the value
        (b"password2=new vers=3.0", b"password2=*** vers=3.0"),
        (b"Password=UP,x", b"Password=***,x"),
        (b"mypassword=keep,bypass=keep", b"mypassword=keep,bypass=keep"),  # only whole option names
    ],
)
def test_redact(raw: bytes, want: bytes) -> None:
    assert redact(raw) == want


def test_mount_parsing_decodes_octal_and_filters_fstype() -> None:
    text = (
        b"//srv/a /mnt/a\\040b cifs rw,password=x 0 0\n"
        b"/dev/sda1 / ext4 rw 0 0\n"
        b"//srv/c /mnt/tab\\011x\\134y smb3 rw 0 0\n"
        b"//srv/a /mnt/a\\040b cifs rw 0 0\n"  # mounted twice: once
        b"garbage\n"
    )
    assert parse_cifs_mounts(text) == ["/mnt/a b", "/mnt/tab\tx\\y"]
    assert decode_mount_field(b"a\\012b") == b"a\nb"


def test_escape_mount_name_is_safe_and_unambiguous() -> None:
    names = [escape_mount_name(m) for m in ("/a_b", "/a/b", "/a b", "/", "/x/../y", "/" + "z" * 600)]
    assert len(set(names)) == len(names)
    for n in names:
        assert "/" not in n and n not in (".", "..") and len(n.encode()) < 240


# --- planning ---------------------------------------------------------------


def test_kernel_log_prefers_journal_then_dmesg(tree: dict[str, Path]) -> None:
    for tool in ("journalctl", "dmesg"):
        make_tool(tree["bin"], tool, "true")
    step = one("kernel_log", tree)
    assert [os.path.basename(a[0]) for a in step.argvs] == ["journalctl", "dmesg", "dmesg"]
    assert step.argvs[0][1:] == ("-k", "--no-pager", "-o", "short-iso-precise",
                                 "--since", "@1700000000", "--until", "@1700000100")
    no_journal = one("kernel_log", tree, journal=False)
    assert [a[1:] for a in no_journal.argvs] == [("--time-format", "iso"), ()]


def test_missing_binaries_and_journal(tree: dict[str, Path]) -> None:
    step = one("journal", tree)
    assert step.missing == "journalctl not found in PATH"
    make_tool(tree["bin"], "journalctl", "true")
    assert "no journal" in one("journal", tree, journal=False).missing
    assert run(one("journal", tree, journal=False), tree).status == "missing"
    assert "no cifs/smb3 mounts" in plan(ACTIONS["smbinfo"], env_of(tree), 0, 1)[0].missing


def test_syslog_first_existing_file_tail(tree: dict[str, Path]) -> None:
    assert run(one("syslog", tree), tree).status == "missing"
    lines = b"".join(b"line %06d\n" % i for i in range(100000))  # 1.2 MB
    (tree["log"] / "messages").write_bytes(lines)
    step = one("syslog", tree)
    small = Step(step.action, step.dest, files=step.files, cap_bytes=1000, keep="tail")
    r = run(small, tree)
    assert r.status == "ok" and r.truncated and r.source.endswith("/messages")
    got = (tree["stage"] / "syslog.log").read_bytes()
    assert lines.endswith(got) and got.startswith(b"line ") and len(got) <= 1000
    (tree["log"] / "syslog").write_bytes(b"from syslog\n")  # syslog wins when both exist
    (tree["stage"] / "syslog.log").unlink()
    r = run(one("syslog", tree), tree)
    assert r.source.endswith("/syslog") and (tree["stage"] / "syslog.log").read_bytes() == b"from syslog\n"


def test_proc_files_copied_and_redacted(tree: dict[str, Path]) -> None:
    cifs = tree["proc"] / "fs" / "cifs"
    (cifs / "DebugData").write_bytes(b"Shares:\n 1) \\\\srv\\a Mounts: 1 password=hunter2,vers=3.1.1\n")
    (cifs / "Stats").write_bytes(b"Resources in use\nCIFS Session: 1\n")
    (tree["proc"] / "mounts").write_bytes(b"//srv/a /mnt/a cifs rw,credentials=/etc/c,pass=p 0 0\n")
    for name in ("cifs_debug", "cifs_stats", "mounts"):
        r = run(one(name, tree), tree)
        assert r.status == "ok" and r.bytes > 0, r
    stage = tree["stage"]
    assert b"hunter2" not in (stage / "cifs/DebugData").read_bytes()
    assert b"password=***,vers=3.1.1" in (stage / "cifs/DebugData").read_bytes()
    assert (stage / "mounts").read_bytes() == b"//srv/a /mnt/a cifs rw,credentials=***,pass=*** 0 0\n"
    assert (stage / "cifs/Stats").read_bytes().startswith(b"Resources")
    assert run(one("cifs_open_files", tree), tree).status == "missing"
    assert oct((stage / "mounts").stat().st_mode & 0o777) == "0o600"


def test_unreadable_file_is_failed_not_fatal(tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    (tree["proc"] / "fs" / "cifs" / "Stats").write_bytes(b"x")

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(actionrun, "_read_file_into", denied)
    r = run(one("cifs_stats", tree), tree)
    assert r.status == "failed" and "Permission denied" in r.error


# --- commands ---------------------------------------------------------------


def test_fallback_when_journalctl_fails_then_iso_dmesg_fails(tree: dict[str, Path]) -> None:
    make_tool(tree["bin"], "journalctl", 'echo partial; echo "journal broken" >&2; exit 1')
    make_tool(tree["bin"], "dmesg", 'if [ "$1" = "--time-format" ]; then exit 1; fi\n'
                                    'echo "[1.0] plain dmesg"')
    r = run(one("kernel_log", tree), tree)
    assert r.status == "ok" and r.exit_code == 0 and r.source == "dmesg", r
    assert (tree["stage"] / "kernel.log").read_bytes() == b"[1.0] plain dmesg\n"


def test_command_failure_is_recorded(tree: dict[str, Path]) -> None:
    make_tool(tree["bin"], "journalctl", 'echo "Failed to open journal" >&2; exit 3')
    r = run(one("journal", tree), tree)
    assert r.status == "failed" and r.exit_code == 3 and "Failed to open journal" in r.error


def test_command_timeout_kills_the_process_group(tree: dict[str, Path]) -> None:
    pidfile = tree["tmp"] / "grandchild.pid"
    make_tool(tree["bin"], "journalctl", f'echo started; sleep 30 & echo $! > "{pidfile}"; wait')
    r = run(one("journal", tree), tree, timeout=0.5)
    assert r.status == "timeout" and "timed out" in r.error
    assert (tree["stage"] / "journal.log").read_bytes() == b"started\n"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # gone, or a zombie waiting for a reaper
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {pid} still running after the timeout kill")


def test_tail_cap_on_streamed_output(tree: dict[str, Path]) -> None:
    make_tool(tree["bin"], "journalctl", "i=0; while [ $i -lt 3000 ]; do echo \"entry $i\"; i=$((i+1)); done")
    step = one("journal", tree)
    r = run(Step(step.action, step.dest, argvs=step.argvs, cap_bytes=100, keep="tail"), tree)
    got = (tree["stage"] / "journal.log").read_bytes()
    assert r.status == "ok" and r.truncated and len(got) == 100 and got.endswith(b"entry 2999\n")


def test_capped_sink_head_and_tail(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    for keep, expect in (("head", data[:1000]), ("tail", data[-1000:])):
        s = CappedSink(str(tmp_path / keep), 1000, keep)
        for i in range(0, len(data), 77):
            s.write(data[i : i + 77])
        assert s.close() == 1000 and s.truncated
        assert (tmp_path / keep).read_bytes() == expect


def test_smbinfo_per_mount_with_hostile_names_stays_literal(tree: dict[str, Path]) -> None:
    argv_log = tree["tmp"] / "argv.log"
    pwned = tree["tmp"] / "PWNED"
    make_tool(tree["bin"], "smbinfo", f"printf '%s\\0' \"$@\" >> '{argv_log}'; printf '\\n' >> '{argv_log}'; "
                                      "echo \"info for $2\"")
    hostile = [
        "/mnt/a b",
        "/mnt/x; rm -rf /",
        f"/mnt/$(touch {pwned})",
        "/mnt/`touch " + str(pwned) + "`",
        "/mnt/{since}",
        "/mnt/q'\"",
    ]

    def esc(m: str) -> str:
        return m.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")

    (tree["proc"] / "mounts").write_text(
        "".join(f"//srv/s{i} {esc(m)} cifs rw 0 0\n" for i, m in enumerate(hostile))
        + "/dev/sda / ext4 rw 0 0\n"
    )
    steps = plan(ACTIONS["smbinfo"], env_of(tree), 1, 2)
    assert [s.label for s in steps] == hostile
    results = [run(s, tree) for s in steps]
    assert all(r.status == "ok" for r in results), results
    calls = [rec.split(b"\0") for rec in argv_log.read_bytes().split(b"\0\n") if rec]
    want = [[sub.encode(), m.encode()] for m in hostile for sub in actions.SMBINFO_SUBCOMMANDS]
    assert sorted(calls) == sorted(want)
    assert not pwned.exists()
    for m in hostile:
        out = (tree["stage"] / "smbinfo" / f"{escape_mount_name(m)}.txt").read_bytes()
        assert f"info for {m}".encode() in out and b"## exit 0" in out
    assert len(os.listdir(tree["stage"] / "smbinfo")) == len(hostile)


def test_smbinfo_dead_server_times_out_once_per_mount(tree: dict[str, Path]) -> None:
    calls = tree["tmp"] / "calls"
    make_tool(tree["bin"], "smbinfo", f"echo x >> '{calls}'\n"
                                      'case "$2" in /mnt/dead) sleep 30;; esac\necho ok')
    (tree["proc"] / "mounts").write_text("//a/x /mnt/dead cifs rw 0 0\n//b/y /mnt/live smb3 rw 0 0\n")
    steps = plan(ACTIONS["smbinfo"], env_of(tree), 1, 2)
    res = [run(s, tree, timeout=0.5) for s in steps]
    assert [r.status for r in res] == ["timeout", "ok"]
    assert len(calls.read_text().split()) == 3  # the dead mount's second command is skipped
    agg = combine("smbinfo", res)
    assert agg.status == "timeout" and "/mnt/dead" in agg.error and agg.bytes == sum(r.bytes for r in res)


def test_streamed_logs_are_redacted(tree: dict[str, Path]) -> None:
    make_tool(tree["bin"], "journalctl", "echo 'sudo[1]: root : COMMAND=/bin/mount -t cifs "
                                         "-o username=u,password=s3cret //srv/x /mnt'")
    r = run(one("journal", tree), tree)
    got = (tree["stage"] / "journal.log").read_bytes()
    assert r.status == "ok" and b"s3cret" not in got and b"username=u,password=*** //srv/x" in got
    assert r.bytes == len(got)
