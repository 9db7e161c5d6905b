"""Hardening of the output and state directories, the stage, and the reads of a capture: another
user's directory, system paths, planted FIFOs and symlinks, umask 000, a read that hangs.

Every test keeps to tmp_path (never /run/aodv2 or /var/log/aodv2). We run as root: another user's
ownership is simulated with os.chown to uid 65534 (nobody).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Optional, Union

import pytest
from faultkit import CoreRun, config_text, fake_host, slow, wait_for

from aod import actionrun, bundle, cli, history, metrics, retain, safefs, stageio, status
from aod import config as config_mod
from aod.actions import ActionEnv, Step
from aod.anomaly import Anomaly
from aod.atomicfile import write_atomic
from aod.collect import capture
from aod.config import CaptureConfig, Config
from aod.daemon import EX_CONFIG
from aod.record import empty

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")
NOBODY = 65534
DEAD_PID = 999_999_999  # no kernel gives out this pid


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def anomaly(type_: str = "manual") -> Anomaly:
    now = time.monotonic_ns()
    return Anomaly(type_, "test", 1, time.time(), now, now - 1_000_000, now, events=empty(1))


def cfg(out: Union[str, Path], actions: tuple[str, ...] = ("mounts", "cifs_debug"), timeout: float = 2.0) -> Config:
    return Config(output_dir=str(out), capture=CaptureConfig(action_timeout_sec=timeout, concurrency=4),
                  actions=MappingProxyType({"manual": actions}))


def messages(records: list[logging.LogRecord], text: str) -> list[str]:
    return [r.getMessage() for r in records if text in r.getMessage()]


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def run_briefly(r: CoreRun, timeout: float = 5.0) -> Optional[int]:
    """Core.run() in a thread: its exit code, or None (after stopping it) if it was still running."""
    rc: list[int] = []
    th = threading.Thread(target=lambda: rc.append(r.core.run(tick=0.02)), daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        r.core.request("stop")
        th.join(15)
        return None
    return rc[0]


# --- 1. a directory another user owns or can write --------------------------------------------


def test_output_dir_of_another_user_is_refused(tmp_path: Path, records: list[logging.LogRecord],
                                               record_property: Any) -> None:
    """fault: output_dir belongs to another user (uid 65534), who could rename the stage and plant a symlink.
    expected: the core exits 78 (not restarted) with one line naming the path, owner, mode and what is
    expected; a capture is refused and writes nothing there."""
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    os.chown(out, NOBODY, NOBODY)
    env, _ = fake_host(tmp_path)
    r = CoreRun(tmp_path, config_text(out), env=env, start=False)
    try:
        rc = run_briefly(r)
    finally:
        r.writer.close()
    (line,) = messages(records, "AOD cannot start")
    assert rc == EX_CONFIG == cli.EX_CONFIG
    assert str(out) in line and "uid 65534 (nobody)" in line and "mode 0700" in line and "expected" in line
    assert "\n" not in line
    res = capture(anomaly(), cfg(out), env)
    assert not res.ok and "uid 65534" in res.error and os.listdir(out) == []
    record_property("refusal", line)


@pytest.mark.parametrize("case", ["parent_world_writable", "parent_of_another_user", "group_writable_dir",
                                  "symlink_of_another_user_in_sticky_dir"])
def test_unsafe_parents_are_refused(tmp_path: Path, case: str, record_property: Any) -> None:
    """fault: a parent of output_dir is writable by others (not sticky) or owned by another user, the dir
    is writable by a group other than root's, or the path goes through another user's symlink in /tmp-like
    dir. expected: BundleError naming the path and the culprit; nothing is created."""
    shared = tmp_path / "shared"
    shared.mkdir()
    out = shared / "out"
    if case == "parent_world_writable":
        os.chmod(shared, 0o777)
    elif case == "parent_of_another_user":
        os.chown(shared, NOBODY, NOBODY)
    elif case == "group_writable_dir":
        out.mkdir()
        os.chown(out, 0, NOBODY)
        os.chmod(out, 0o770)
    else:
        os.chmod(shared, 0o1777)
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        os.symlink(real, out)
        os.lchown(out, NOBODY, NOBODY)
    with pytest.raises(bundle.BundleError) as ei:
        bundle.ensure_output_dir(str(out))
    msg = str(ei.value)
    assert str(out) in msg and "expected" in msg
    culprit = {"parent_world_writable": f"its parent {shared} is writable by others",
               "parent_of_another_user": f"its parent {shared} is owned by another user (owner uid 65534",
               "group_writable_dir": "is writable by its group",
               "symlink_of_another_user_in_sticky_dir": "owned by uid 65534"}[case]
    assert culprit in msg
    if case.startswith("parent"):
        assert not out.exists()  # nothing created under the unsafe parent
    record_property("message", msg)


def test_sticky_root_parent_and_system_account_metrics_dir_are_fine(tmp_path: Path) -> None:
    """fault: none, the reasoned exceptions: output_dir inside a sticky root-owned dir (like /tmp), and a
    metrics directory owned by a system account (uid 1, nologin), as Debian's prometheus one is.
    expected: both are used; the output dir is created 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    bundle.ensure_output_dir(str(shared / "out"))
    assert mode(shared / "out") == 0o700
    prom_dir = tmp_path / "prometheus" / "node-exporter"
    prom_dir.mkdir(parents=True)
    os.chown(prom_dir.parent, 1, 1)
    os.chown(prom_dir, 1, 1)
    metrics.write(str(prom_dir / "aodv2.prom"), "a 1\n")
    assert (prom_dir / "aodv2.prom").read_text() == "a 1\n" and mode(prom_dir / "aodv2.prom") == 0o644


def test_state_dir_of_another_user_is_refused(tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """fault: --state-dir (status.json, control.sock) belongs to uid 65534.
    expected: the core exits 78 naming --state-dir, the path and the owner."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    r = CoreRun(tmp_path, config_text(tmp_path / "out"), start=False, state_dir=state)
    try:
        assert run_briefly(r) == EX_CONFIG
    finally:
        r.writer.close()
    (line,) = messages(records, "AOD cannot start")
    assert f"--state-dir {state}" in line and "uid 65534" in line
    assert os.listdir(state) == []


def test_metrics_dir_of_another_user_turns_metrics_off_not_the_core(
        tmp_path: Path, records: list[logging.LogRecord], record_property: Any) -> None:
    """fault: the metrics textfile's directory belongs to uid 65534 (not a system account).
    expected: nothing is written there, one warning says metrics are off and why; captures go on."""
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    os.chown(prom_dir, NOBODY, NOBODY)
    extra = f"metrics:\n  textfile_path: {prom_dir}/aodv2.prom\n  interval_sec: 0.1\n"
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=1, extra=extra))
    try:
        wait_for(lambda: messages(records, "metrics are off"), 10, "metrics-off warning")
        r.writer.write(slow(5, 300))
        assert r.wait_results(1)[0].ok
        time.sleep(0.3)
    finally:
        assert r.stop() == 0
    (line,) = messages(records, "metrics are off")
    assert str(prom_dir) in line and "uid 65534" in line
    assert os.listdir(prom_dir) == []
    record_property("warning", line)


def test_swapped_stage_and_planted_symlinks_redirect_nothing(tmp_path: Path) -> None:
    """fault: during a capture the stage is renamed and a symlink to another directory put in its place;
    inside the stage, `cifs` is a symlink to that directory and `leak` a symlink to a root-only file.
    expected: every write lands in the real stage (dir fd, O_NOFOLLOW, O_EXCL); the step through the
    `cifs` symlink fails; nothing in the other directory is created or changed; the bundle holds no
    file from it; removal follows no symlink."""
    env, host = fake_host(tmp_path)
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "kernel.log").write_text("precious")
    (victim / "shadow").write_text("root-only")
    os.chmod(victim / "shadow", 0o600)
    st = bundle.new_stage(str(out), "manual", time.time())
    moved = tmp_path / "moved"
    os.rename(os.fspath(st), moved)
    os.symlink(victim, os.fspath(st))
    os.symlink(victim, moved / "cifs")
    os.symlink(victim / "shadow", moved / "leak")
    bundle.write_member(st, "events.npy", b"x" * 10)
    bundle.write_member(st, "kernel.log", b"new")  # the victim's kernel.log must not be truncated
    mounts = Step("mounts", "mounts", files=(str(host["proc"] / "mounts"),), redact=True)
    debug = Step("cifs_debug", "cifs/DebugData", files=(str(host["proc"] / "fs/cifs/DebugData"),))
    res = [asyncio.run(actionrun.run_step(s, st, 2.0, env)) for s in (mounts, debug)]
    err = res[1].error.lower()
    assert res[0].status == "ok" and res[1].status == "failed" and ("symlink" in err or "too many levels" in err)
    path, _ = bundle.finalize(st, str(out), "manual", time.time())
    assert set(bundle.read_bundle(path)) == {"events.npy", "kernel.log", "mounts"}
    assert sorted(os.listdir(victim)) == ["kernel.log", "shadow"]
    assert (victim / "kernel.log").read_text() == "precious" and (victim / "shadow").read_text() == "root-only"
    assert sorted(os.listdir(moved)) == []  # emptied through its fd, symlinks unlinked, not followed


def test_stale_sweep_unlinks_a_symlinked_stage_name_only(tmp_path: Path) -> None:
    """fault: a `.stage-*` name of a dead process is a symlink to another directory.
    expected: the sweep removes the symlink, never what it points to."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir(mode=0o700)
    victim.mkdir()
    (victim / "f").write_text("keep")
    link = out / f".stage-manual_20260101T000000Z_{DEAD_PID}_1"
    os.symlink(victim, link)
    os.utime(link, (1, 1), follow_symlinks=False)
    retain.clean_stale(str(out), time.time())
    assert not os.path.lexists(link) and (victim / "f").read_text() == "keep"


# --- 2. system paths --------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,why", [
    ("output_dir", "/etc", "/etc is a system directory"),
    ("output_dir", "/tmp", "/tmp is a system directory"),
    ("output_dir", "/proc/self", "under /proc"),
    ("output_dir", "/dev/null", "under /dev"),
    ("output_dir", "/./etc/.", "/etc is a system directory"),
    ("output_dir", "/var/log", "/var/log is a system directory"),
    ("metrics.textfile_path", "/etc/shadow", "ending in .prom"),
    ("metrics.textfile_path", "/etc/aodv2.prom", "/etc is a system directory"),
])
def test_check_config_refuses_system_paths(tmp_path: Path, capsys: pytest.CaptureFixture, field: str, value: str,
                                           why: str, record_property: Any) -> None:
    """fault: output_dir or metrics.textfile_path names a system path (or one that is not .prom).
    expected: check-config exits 2 with one line naming the field, the value and what is expected."""
    p = tmp_path / "c.yaml"
    key, _, sub = field.partition(".")
    p.write_text(f"{key}:\n  {sub}: {value}\n" if sub else f"{key}: {value}\n")
    assert cli.main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err.splitlines()
    (line,) = [x for x in err if f": {field}: " in x]
    assert repr(value) in line and "expected" in line and why in line
    record_property("error", line)


def test_core_never_touches_a_system_dir_or_the_mode_of_an_existing_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Any) -> None:
    """fault: output_dir /./etc/. reaches the core without check-config (and an existing 0755 dir of root's).
    expected: no chmod, no mkdir, no write in /etc: the capture and the core's start are refused with the
    path and field; the 0755 dir is used and keeps its mode."""
    calls: list[str] = []
    for name in ("chmod", "fchmod", "mkdir"):
        monkeypatch.setattr(os, name, lambda *a, _n=name, **k: calls.append(f"{_n}{a[:1]}"))
    res = capture(anomaly(), cfg("/./etc/."), ActionEnv(proc_root=str(tmp_path)))
    monkeypatch.undo()
    assert not res.ok and "output_dir /./etc/." in res.error and "/etc is a system directory" in res.error
    assert calls == []
    r = CoreRun(tmp_path, config_text(tmp_path / "out"), start=False)
    try:
        r.core.cfg = dataclasses.replace(r.core.cfg, output_dir="/./etc/.")
        why = r.core.preflight()
    finally:
        r.writer.close()
    assert why.startswith("output_dir /./etc/.: /etc is a system directory")
    out = tmp_path / "mine"
    out.mkdir()
    os.chmod(out, 0o755)
    env, _ = fake_host(tmp_path)
    assert capture(anomaly(), cfg(out), env).ok and mode(out) == 0o755
    record_property("refusal", res.error)


# --- 3. FIFOs and symlinks where the core writes ----------------------------------------------


def test_fifos_at_history_status_and_metrics_temp_do_not_block_the_core(
        tmp_path: Path, records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch,
        record_property: Any) -> None:
    """fault: FIFOs planted at anomalies.jsonl, at the metrics temp name and at the status.json temp name
    (an open() for writing would block the thread forever).
    expected: captures go on; the history failure is logged naming the FIFO; the temp FIFOs are removed
    with a warning and the files written; stop returns within a few seconds."""
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(k, raising=False)
    out, prom_dir, state = tmp_path / "out", tmp_path / "prom", tmp_path / "state"
    for d in (out, prom_dir, state):
        d.mkdir(mode=0o700)
    os.mkfifo(out / history.FILENAME)
    os.mkfifo(prom_dir / f".aodv2.prom.{os.getpid()}.tmp")
    os.mkfifo(state / f".{status.STATUS_FILE}.{os.getpid()}.tmp")
    extra = f"metrics:\n  textfile_path: {prom_dir}/aodv2.prom\n  interval_sec: 0.1\n"
    env, _ = fake_host(tmp_path)
    r = CoreRun(tmp_path, config_text(out, acceptable=1, extra=extra), env=env, state_dir=state)
    try:
        r.writer.write(slow(5, 300))
        assert r.wait_results(1)[0].ok
        wait_for(lambda: messages(records, "anomaly history"), 10, "history error")
        wait_for(lambda: (prom_dir / "aodv2.prom").is_file() and (state / status.STATUS_FILE).is_file(), 10,
                 "metrics and status written")
    finally:
        t0 = time.monotonic()
        assert r.stop(timeout=10) == 0
        stop_s = time.monotonic() - t0
    assert stop_s < 5
    (hist,) = messages(records, "anomaly history")
    assert f"{out}/{history.FILENAME}" in hist and "FIFO" in hist
    removed = messages(records, "removed a FIFO found at its temp file name")
    assert len(removed) == 2
    assert stat.S_ISFIFO(os.lstat(out / history.FILENAME).st_mode)  # left as found, never opened
    record_property("stop_seconds", round(stop_s, 3))
    record_property("history_error", hist)


def test_symlink_at_a_temp_name_or_history_is_never_followed(tmp_path: Path) -> None:
    """fault: a symlink to a root-only file at the status temp name, and at anomalies.jsonl.
    expected: the target is never opened, truncated or replaced; the history append returns an error."""
    victim = tmp_path / "shadow"
    victim.write_text("root-only")
    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir(mode=0o700)
    out.mkdir(mode=0o700)
    os.symlink(victim, state / f".{status.STATUS_FILE}.{os.getpid()}.tmp")
    os.symlink(victim, out / history.FILENAME)
    write_atomic(str(state / status.STATUS_FILE), b"{}")
    err = history.append(str(out), {"x": 1})
    assert err is not None and "symlink" in err
    assert victim.read_text() == "root-only" and (state / status.STATUS_FILE).read_bytes() == b"{}"


# --- 4. missing parents under umask 000 -------------------------------------------------------


def test_missing_parents_get_explicit_modes_under_umask_0(tmp_path: Path, umask0: None,
                                                          record_property: Any) -> None:
    """fault: umask 000 while the core creates missing parents of output_dir, the state dir and the
    metrics path (os.makedirs would leave them 0777).
    expected: output and state levels 0700, metrics levels 0755 (node_exporter must get through), the
    metrics file 0644, status.json 0600; an existing parent keeps its mode."""
    os.chmod(tmp_path, 0o711)
    bundle.ensure_output_dir(str(tmp_path / "o1" / "o2" / "out"))
    status.write(str(tmp_path / "s1" / "state"), {"x": 1})
    metrics.write(str(tmp_path / "m1" / "m2" / "aodv2.prom"), "a 1\n")
    got = {p: f"{mode(tmp_path / p):04o}" for p in ("o1", "o1/o2", "o1/o2/out", "s1", "s1/state",
                                                    "s1/state/status.json", "m1", "m1/m2", "m1/m2/aodv2.prom")}
    assert got == {"o1": "0700", "o1/o2": "0700", "o1/o2/out": "0700", "s1": "0700", "s1/state": "0700",
                   "s1/state/status.json": "0600", "m1": "0755", "m1/m2": "0755", "m1/m2/aodv2.prom": "0644"}
    assert mode(tmp_path) == 0o711
    record_property("modes", json.dumps(got))


def plant_on_first_mkdir(monkeypatch: pytest.MonkeyPatch, shared: Path, name: str, target: Path,
                         kind: str) -> list[str]:
    """Win the race deterministically: right before the first mkdir (after every check by path), uid
    65534 plants `shared/name`: a symlink to `target`, or a directory of its own (0777)."""
    real_mkdir = os.mkdir
    planted: list[str] = []

    def mkdir(path: Any, mode: int = 0o777, **kw: Any) -> None:
        if not planted:
            spot = shared / name
            if kind == "symlink":
                os.symlink(target, spot)
                os.lchown(spot, NOBODY, NOBODY)
            else:
                real_mkdir(spot)
                os.chmod(spot, 0o777)
                os.chown(spot, NOBODY, NOBODY)
            planted.append(str(spot))
        real_mkdir(path, mode, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    return planted


@pytest.mark.parametrize("entry,kind", [("output_dir", "symlink"), ("state_dir", "symlink"),
                                        ("metrics", "symlink"), ("history", "symlink"), ("output_dir", "dir")])
def test_symlink_planted_between_the_check_and_the_mkdir_redirects_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, kind: str, record_property: Any) -> None:
    """fault: output_dir (state dir, metrics dir) is shared/foo/out, shared a root-owned sticky 01777 dir
    like /tmp, foo missing; after the checks by path and before the first mkdir, uid 65534 plants
    shared/foo: a symlink to a root-only directory, or a directory of its own (fs.protected_symlinks
    does not help root here when it is 0).
    expected: nothing is created at the symlink's target nor in the planted directory (the missing
    levels are created by a directory-fd walk that opens each level O_NOFOLLOW and checks it); a clear
    error names the path, the planted entry, its owner and what is expected."""
    shared, target = tmp_path / "shared", tmp_path / "target"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    target.mkdir(mode=0o700)
    d = shared / "foo" / "out"
    planted = plant_on_first_mkdir(monkeypatch, shared, "foo", target, kind)
    err = ""
    try:
        if entry == "output_dir":
            bundle.ensure_output_dir(str(d))
        elif entry == "state_dir":
            status.write(str(d), {"x": 1})
        elif entry == "metrics":
            metrics.write(str(d / "aodv2.prom"), "a 1\n")
        else:
            err = history.append(str(d), {"x": 1}) or ""
    except (bundle.BundleError, OSError) as e:  # OSError: safefs.UnsafePath
        err = str(e)
    monkeypatch.undo()
    assert planted == [str(shared / "foo")]  # the race was run
    assert os.listdir(target) == [] and os.listdir(shared) == ["foo"]
    if kind == "dir":
        assert os.listdir(shared / "foo") == []
    assert str(d) in err and "uid 65534" in err and "expected" in err and "\n" not in err
    assert (f"the symlink {shared}/foo in the shared directory {shared}" if kind == "symlink"
            else f"its parent {shared}/foo is owned by another user") in err
    record_property("error", err)


def test_missing_levels_through_a_trusted_symlink_are_created_at_its_target(tmp_path: Path,
                                                                           umask0: None) -> None:
    """fault: none, the legitimate case: output_dir goes through root's symlinks, like /var/run -> /run
    (absolute, in a root-owned 0755 dir), a relative one with `..` in a sticky dir (root's), and an
    existing output_dir that is itself a symlink to root's directory.
    expected: the symlinks are followed (they pass the check_dir rules); missing levels are created at
    their targets, 0700 under umask 000; makedirs_fd returns the final directory's fd; an existing
    directory keeps its mode."""
    sysdir, real, shared = tmp_path / "var", tmp_path / "real", tmp_path / "shared"
    for p, m in ((sysdir, 0o755), (real, 0o755), (shared, 0o1777)):
        p.mkdir()
        os.chmod(p, m)
    os.symlink(real, sysdir / "run")
    os.symlink("../real/sub", shared / "link")
    (real / "logs").mkdir()
    os.chmod(real / "logs", 0o750)
    os.symlink(real / "logs", sysdir / "log")
    bundle.ensure_output_dir(str(sysdir / "run" / "aodv2" / "out"))
    assert (mode(real / "aodv2"), mode(real / "aodv2" / "out")) == (0o700, 0o700)
    fd, created = safefs.makedirs_fd(str(shared / "link" / "x"), 0o700, "output_dir")
    try:
        assert os.fstat(fd).st_ino == os.stat(real / "sub" / "x").st_ino
    finally:
        os.close(fd)
    assert created == [str(real / "sub"), str(real / "sub" / "x")]
    assert (mode(real / "sub"), mode(real / "sub" / "x")) == (0o700, 0o700)
    bundle.ensure_output_dir(str(sysdir / "log"))
    assert safefs.makedirs(str(sysdir / "log"), 0o700) == [] and mode(real / "logs") == 0o750
    assert sorted(os.listdir(real)) == ["aodv2", "logs", "sub"] and sorted(os.listdir(sysdir)) == ["log", "run"]


# --- 5. a read that hangs, and stale stages ----------------------------------------------------


def test_hung_fifo_read_never_recreates_the_stage(tmp_path: Path, record_property: Any) -> None:
    """fault: /proc/fs/cifs/DebugData hangs (a FIFO nobody writes), then comes back after the bundle
    was written.
    expected: the action times out, the bundle is written, and nothing (no `.stage-*`) is left or
    re-created in the output dir, then or after the read resumes; no reader is stranded."""
    env, host = fake_host(tmp_path)
    debug = host["proc"] / "fs" / "cifs" / "DebugData"
    debug.unlink()
    os.mkfifo(debug)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = capture(anomaly(), cfg(out, timeout=0.5), env)
    took = time.monotonic() - t0
    assert res.ok and res.path
    (act,) = [a for a in res.actions if a["name"] == "cifs_debug"]
    assert act["status"] == "timeout" and "stranded" not in act["error"]
    wfd = os.open(debug, os.O_RDWR | os.O_NONBLOCK)  # the hang ends: data arrives, then EOF
    try:
        os.write(wfd, b"late data password=x\n")
    finally:
        os.close(wfd)
    time.sleep(0.5)
    assert os.listdir(out) == [os.path.basename(res.path)]
    assert stageio.stranded()["now"] == 0
    record_property("capture_seconds", round(took, 3))


def test_stuck_procfs_read_is_abandoned_counted_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            record_property: Any) -> None:
    """fault: a regular (procfs) file read blocks in the kernel past the action timeout (O_NONBLOCK does
    not apply; simulated by blocking the read until released), and more reads are stuck than the bound.
    expected: the step times out and says its reader is stranded; stageio.stranded() counts it while it
    is stuck; when it returns, nothing is written into the (gone) stage; past MAX_STRANDED stuck readers
    file steps are skipped instead of starting another thread."""
    env, host = fake_host(tmp_path)
    release = threading.Event()
    real = actionrun._read_capped

    def stuck(fd: int, step: Step, gate: stageio.ReadGate) -> tuple[bytes, int]:
        release.wait(20)
        return real(fd, step, gate)

    monkeypatch.setattr(actionrun, "_read_capped", stuck, raising=False)
    before = stageio.stranded()
    out = tmp_path / "out"
    res = capture(anomaly(), cfg(out, actions=("cifs_stats",), timeout=0.3), env)
    (act,) = res.actions
    assert res.ok and act["status"] == "timeout" and "stranded" in act["error"]
    now = stageio.stranded()
    assert now["now"] == before["now"] + 1 and now["total"] == before["total"] + 1
    gates = [stageio.ReadGate(0.0) for _ in range(actionrun.MAX_STRANDED)]
    for g in gates:
        g.abandon()  # stuck readers up to the bound
    res2 = capture(anomaly(), cfg(out, actions=("cifs_stats",), timeout=0.3), env)
    assert res2.actions[0]["status"] == "skipped" and "stuck in the kernel" in res2.actions[0]["error"]
    for g in gates:
        g.finished()
    release.set()
    wait_for(lambda: stageio.stranded()["now"] == before["now"], 5, "stranded reader returned")
    time.sleep(0.2)
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in (res.path or "", res2.path or ""))
    record_property("stranded", json.dumps(stageio.stranded()))


def test_stale_stages_are_removed_at_start_and_after_each_capture_and_counted(
        tmp_path: Path, records: list[logging.LogRecord], record_property: Any) -> None:
    """fault: `.stage-*` dirs left by a crash (dead pid, quiet) and by a leaked worker of this process.
    expected: removed at start and after a capture (not only after an hour), counted in status
    (`stale_removed`), logged; a live capture's stage and a young one of another live process stay."""
    out = tmp_path / "out"
    out.mkdir(mode=0o700)

    def plant(name: str, age: float) -> Path:
        d = out / name
        (d / "cifs").mkdir(parents=True)
        (d / "cifs" / "DebugData").write_text("x")
        for p in (d / "cifs" / "DebugData", d / "cifs", d):
            os.utime(p, (time.time() - age, time.time() - age))
        return d

    crashed = plant(f".stage-latency_20260101T000000Z_{DEAD_PID}_1", 120)  # > retain.QUIET_SEC
    leaked = plant(f".stage-manual_20260101T000000Z_{os.getpid()}_999999", 0)
    other = plant(".stage-latency_20260101T000000Z_1_1", 0)  # pid 1 lives: in use, young
    before = retain.stale_removed()["stages"]
    env, _ = fake_host(tmp_path)
    r = CoreRun(tmp_path, config_text(out, acceptable=1), env=env)
    try:
        wait_for(lambda: not crashed.exists() and not leaked.exists(), 10, "sweep at start")
        late = plant(f".stage-manual_20260101T000000Z_{os.getpid()}_999998", 0)  # leaked mid-run
        r.writer.write(slow(5, 300))
        assert r.wait_results(1)[0].ok
        wait_for(lambda: not late.exists(), 5, "sweep after the capture")
        snap = r.core.snapshot()
    finally:
        assert r.stop() == 0
    assert other.exists()
    assert snap["stale_removed"]["stages"] - before >= 3 and "stranded_reads" in snap
    assert len(messages(records, "(stale)")) >= 3
    record_property("stale_removed", json.dumps(snap["stale_removed"]))


def test_config_load_normalizes_the_paths() -> None:
    """fault: output_dir and metrics.textfile_path spelled with /./ and trailing /. .
    expected: the config holds the normalized paths (what the core checks is what it uses)."""
    c = config_mod.load_text("output_dir: /srv/./aod/.\nmetrics:\n  textfile_path: /srv//m/./x.prom\n")
    assert (c.output_dir, c.metrics.textfile_path) == ("/srv/aod", "/srv/m/x.prom")
    assert safefs.normalize("//etc/.") == "/etc"
