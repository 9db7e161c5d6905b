"""Collector: captures end to end against a fake tree, bundle atomicity, disk errors, the worker."""

from __future__ import annotations

import datetime
import errno
import io
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Optional

import numpy as np
import pytest
from evidencekit import fake_helper

from aod import bundle
from aod.actions import ACTION_NAMES, ActionEnv
from aod.anomaly import Anomaly
from aod.bundle import BUNDLE_RE, list_bundles, read_bundle
from aod.collect import BundleResult, Collector, capture
from aod.config import CaptureConfig, Config, RingConfig
from aod.record import KIND_COMPLETION, KIND_ERROR, empty


def tool(bindir: Path, name: str, body: str) -> None:
    p = bindir / name
    p.write_text('#!/bin/sh\nPATH="$PATH:/usr/bin:/bin"\n' + body + "\n")
    p.chmod(0o755)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[dict[str, Any]]:
    proc, var_log, bindir, journal = (tmp_path / n for n in ("proc", "log", "bin", "journal"))
    for d in (proc / "fs" / "cifs", var_log, bindir, journal):
        d.mkdir(parents=True)
    (proc / "fs" / "cifs" / "DebugData").write_bytes(b"CIFS Version 2.40\npassword=hunter2\n")
    (proc / "fs" / "cifs" / "Stats").write_bytes(b"Resources in use\n")
    (proc / "fs" / "cifs" / "open_files").write_bytes(b"# Format:\n")
    (proc / "mounts").write_bytes(b"//srv/share /mnt/s\\040x cifs rw,password=pw,vers=3.1.1 0 0\n")
    (var_log / "syslog").write_bytes(b"Nov 27 kernel: CIFS: VFS: \\\\srv has not responded in 180 seconds\n")
    tool(bindir, "journalctl", 'echo "journal $*"')
    tool(bindir, "dmesg", 'echo "dmesg $*"')
    tool(bindir, "smbinfo", 'echo "smbinfo $*"')
    (proc / "self").mkdir()  # the NFS actions' sources
    (proc / "self" / "mountstats").write_bytes(b"device srv:/export mounted on /mnt/n with fstype nfs4 statvers=1.1\n")
    (proc / "1" / "net" / "rpc").mkdir(parents=True)
    (proc / "1" / "net" / "rpc" / "nfs").write_bytes(b"net 0 0 0 0\nrpc 12 0 0\n")
    tool(bindir, "nfsstat", 'echo "nfsstat $*"')
    inst = tmp_path / "tracefs" / "instances" / "aodv2"  # the trace recorder's instance, as tracefs shows it
    (inst / "options").mkdir(parents=True)
    (inst / "options" / "pause-on-trace").write_bytes(b"0\n")
    (inst / "trace_clock").write_bytes(b"local global counter uptime perf mono mono_raw [boot] tai\n")
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    (inst / "trace").write_bytes(
        b"# tracer: nop\n#\n# entries-in-buffer/entries-written: 2/2   #P:2\n"
        + f"   kworker/0:1-12      [000] .....  {boot - 3600:.6f}: smb3_cmd_done: old\n".encode()
        + f"            dd-42      [001] .....  {boot - 1:.6f}: smb3_cmd_done: sid=0x1 tid=0x2 cmd=9 mid=7\n".encode())
    helper = fake_helper(tmp_path)  # the evidence helper on tmp/evidence.sock, over a fake /proc
    env = ActionEnv(proc_root=str(proc), var_log=str(var_log), path=str(bindir), journal_dir=str(journal),
                    evidence_socket=str(helper.path), tracefs=(str(tmp_path / "tracefs"),),
                    run_dir=str(tmp_path / "run"))
    try:
        yield {"env": env, "bin": bindir, "proc": proc, "out": tmp_path / "out", "tmp": tmp_path,
               "helper": helper}
    finally:
        helper.close()


def cfg(out: Path, timeout: float = 10.0, actions: Optional[dict[str, tuple[str, ...]]] = None) -> Config:
    return Config(output_dir=str(out), capture=CaptureConfig(action_timeout_sec=timeout, concurrency=4),
                  actions=MappingProxyType(actions or {}),
                  ring=RingConfig(path=str(out.parent / "pins" / "events")))  # never the host's pins


def anomaly(type_: str = "latency") -> Anomaly:
    ev = empty(4)
    ev["kind"] = [KIND_COMPLETION, KIND_COMPLETION, KIND_ERROR, KIND_COMPLETION]
    ev["command"] = [9, 9, 5, 8]
    ev["latency_ns"] = [600_000_000, 900_000_000, 0, 700_000_000]
    ev["nt_status"] = [0, 0, 0xC00000B5, 0]
    ev["comm"] = b"dd"
    ev["pid"] = 42
    now = time.monotonic_ns()
    return Anomaly(type_, "latency>500ms", 3, time.time(), now, now - 2_000_000_000, now, events=ev,
                   commands=(9, 8))


def state(out: Path) -> list[str]:
    return sorted(os.listdir(out)) if out.exists() else []


@pytest.mark.usefixtures("zstd_backend")
def test_full_capture_bundle_contents_and_modes(
    fake: dict[str, Any], records: list[logging.LogRecord]
) -> None:
    a = anomaly()
    r = capture(a, cfg(fake["out"]), fake["env"])
    assert r.ok and r.path and r.error == "" and r.bytes == os.path.getsize(r.path)
    assert BUNDLE_RE.match(os.path.basename(r.path))
    assert stat.S_IMODE(os.stat(r.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(fake["out"]).st_mode) == 0o700
    assert state(fake["out"]) == [os.path.basename(r.path)]  # no stage, no partial left
    assert [x["name"] for x in r.actions] == list(ACTION_NAMES)
    # no tracer pinned its maps here: the in-flight table is missing, not failed
    # the packet recorder is off by default
    want = {**dict.fromkeys(ACTION_NAMES, "ok"), "inflight": "missing", "packet_recorder": "skipped"}
    assert {x["name"]: x["status"] for x in r.actions} == want
    files = read_bundle(r.path)
    evidence = {f"evidence/{n}.{x}" for n in ("stacks", "inflight", "connections") for x in ("txt", "json")}
    assert set(files) == {"summary.json", "events.npy", "kernel.log", "journal.log", "syslog.log", "mounts",
                          "cifs/DebugData", "cifs/Stats", "cifs/open_files", "smbinfo/mnt_s%20x.txt",
                          "nfs/mountstats", "nfs/rpc_nfs", "nfs/nfsstat-m.txt",
                          "recorder/trace.txt"} | evidence
    trace = files["recorder/trace.txt"].decode().splitlines()
    lines = [ln for ln in trace if not ln.startswith("#")]
    assert len(lines) == 1 and "cmd=9 mid=7" in lines[0] and "old" not in lines[0], trace  # an hour ago: outside
    wall = datetime.datetime.fromisoformat(lines[0].split()[3].rstrip(":")).timestamp()
    assert abs(wall - (time.time() - 1)) < 2, lines[0]  # boot seconds became wall-clock time
    assert b"SMB2_write" in files["evidence/stacks.txt"] and b"cifsd" in files["evidence/stacks.txt"]
    assert len(fake["helper"].requests) == 1  # one request for the three evidence actions
    assert files["kernel.log"].startswith(b"journal -k --no-pager")
    assert b"hunter2" not in files["cifs/DebugData"] and b"password=***" in files["mounts"]
    assert b"smbinfo fileallinfo /mnt/s x" in files["smbinfo/mnt_s%20x.txt"]
    assert files["nfs/mountstats"].startswith(b"device srv:/export") and files["nfs/rpc_nfs"].startswith(b"net ")
    assert files["nfs/nfsstat-m.txt"].startswith(b"nfsstat -m")
    ev = np.load(io.BytesIO(files["events.npy"]), allow_pickle=False)
    assert ev.dtype == a.events.dtype and np.array_equal(ev, a.events)
    summary = json.loads(files["summary.json"])
    assert summary["anomaly"]["type"] == "latency" and summary["events_in_bundle"] == 4
    assert summary["per_status"] == {"STATUS_IO_TIMEOUT": 1}
    assert [x["status"] for x in summary["actions"]] == list(want.values())
    done = [x for x in records if x.getMessage().startswith("AOD bundle written")]
    assert len(done) == 1 and done[0].AOD_BUNDLE == r.path and done[0].AOD_ANOMALY == "latency"  # type: ignore[attr-defined]
    assert int(done[0].AOD_BYTES) == r.bytes  # type: ignore[attr-defined]


def test_failing_slow_and_missing_actions_do_not_stop_the_others(
    fake: dict[str, Any], records: list[logging.LogRecord]
) -> None:
    tool(fake["bin"], "journalctl", 'echo "Failed to get journal access" >&2; exit 1')
    tool(fake["bin"], "smbinfo", "sleep 30")
    (fake["proc"] / "fs" / "cifs" / "open_files").unlink()
    (fake["bin"] / "dmesg").unlink()
    r = capture(anomaly("error"), cfg(fake["out"], timeout=0.5), fake["env"])
    st = {x["name"]: x for x in r.actions}
    assert r.ok and r.path
    assert st["journal"]["status"] == "failed" and "journal access" in st["journal"]["error"]
    assert st["kernel_log"]["status"] == "failed"  # journalctl failed, dmesg not installed
    assert st["smbinfo"]["status"] == "timeout" and "/mnt/s x" in st["smbinfo"]["error"]
    assert st["cifs_open_files"]["status"] == "missing"
    for name in ("syslog", "cifs_debug", "cifs_stats", "mounts"):
        assert st[name]["status"] == "ok" and st[name]["bytes"] > 0
    assert "cifs/DebugData" in read_bundle(r.path)
    warned = {x.AOD_ACTION for x in records if hasattr(x, "AOD_ACTION")}  # type: ignore[attr-defined]
    assert warned == {"journal", "kernel_log", "smbinfo"}


def test_configured_action_subset_and_unknown_name(fake: dict[str, Any]) -> None:
    c = cfg(fake["out"], actions={"latency": ("cifs_stats", "bogus")})
    r = capture(anomaly(), c, fake["env"])
    assert [(x["name"], x["status"]) for x in r.actions] == [("cifs_stats", "ok"), ("bogus", "failed")]
    assert set(read_bundle(r.path or "")) == {"summary.json", "events.npy", "cifs/Stats"}


class _DiskFullWriter(io.RawIOBase):
    """Stands in for the zstd stream: passes some bytes, then the disk is full."""

    def __init__(self, raw: Any, out: Path, seen: list[list[str]]) -> None:
        self.raw, self.out, self.seen, self.n = raw, out, seen, 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.seen.append(state(self.out))
        if self.n > 10_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.raw.write(bytes(b))
        self.n += len(b)
        return len(b)


def test_failure_midway_leaves_nothing_and_next_capture_works(
    fake: dict[str, Any], records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    (fake["proc"] / "fs" / "cifs" / "DebugData").write_bytes(os.urandom(200_000))
    seen: list[list[str]] = []

    monkeypatch.setattr(bundle, "_writer", lambda raw: _DiskFullWriter(raw, fake["out"], seen))
    r = capture(anomaly(), cfg(fake["out"]), fake["env"])
    assert not r.ok and r.path is None and "No space left on device" in r.error
    assert seen and all(not any(BUNDLE_RE.match(n) for n in names) for names in seen)
    assert any(n.endswith(".partial") for n in seen[-1])  # it was being written under the partial name
    assert state(fake["out"]) == []  # partial and stage removed
    failed = [x for x in records if x.levelno == logging.ERROR]
    assert len(failed) == 1 and "No space left on device" in failed[0].getMessage()
    assert str(fake["out"]) in failed[0].getMessage() and ".partial" in failed[0].getMessage()
    monkeypatch.undo()
    r2 = capture(anomaly(), cfg(fake["out"]), fake["env"])
    assert r2.ok and list_bundles(str(fake["out"])) == [r2.path]


def test_read_only_output_dir_is_capture_failed(
    fake: dict[str, Any], records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdir = os.mkdir

    def erofs(path: Any, mode: int = 0o777, **kw: Any) -> None:
        if os.path.basename(str(path)).startswith(".stage-"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_mkdir(path, mode, **kw)

    monkeypatch.setattr(os, "mkdir", erofs)
    r = capture(anomaly(), cfg(fake["out"]), fake["env"])
    assert not r.ok and "Read-only file system" in r.error and ".stage-" in r.error
    assert [x.MESSAGE_ID for x in records if x.levelno == logging.ERROR] == [  # type: ignore[attr-defined]
        "a0d20007c0de4b1a9f0e7d6c5b4a3921"
    ]
    monkeypatch.undo()
    assert capture(anomaly(), cfg(fake["out"]), fake["env"]).ok


def test_output_dir_not_a_directory(fake: dict[str, Any], records: list[logging.LogRecord]) -> None:
    fake["out"].write_text("oops")
    r = capture(anomaly(), cfg(fake["out"]), fake["env"])
    assert not r.ok and "not a directory" in r.error and str(fake["out"]) in r.error


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701], ids=lambda m: f"{m:04o}")
def test_readable_output_dir_is_used_as_it_is_with_one_warning(
        fake: dict[str, Any], records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    """Group/other bits that are not write bits (bundle names visible): used, one warning, and the
    mode is never changed (the core does not chmod a directory it did not create)."""
    fake["out"].mkdir(mode=mode)
    os.chmod(fake["out"], mode)
    chmods: list[Any] = []
    real_chmod = os.chmod

    def chmod(p: Any, *a: Any, **k: Any) -> None:
        chmods.append(p)
        real_chmod(p, *a, **k)

    monkeypatch.setattr(os, "chmod", chmod)
    assert capture(anomaly(), cfg(fake["out"]), fake["env"]).ok
    assert stat.S_IMODE(os.stat(fake["out"]).st_mode) == mode and str(fake["out"]) not in map(str, chmods)
    (msg,) = [x.getMessage() for x in records if "output directory" in x.getMessage()]
    assert f"{fake['out']} is mode {mode:04o}" in msg
    records.clear()
    assert capture(anomaly(), cfg(fake["out"]), fake["env"]).ok  # said once
    assert not any("output directory" in x.getMessage() for x in records)


def test_world_writable_output_dir_is_refused(fake: dict[str, Any]) -> None:
    """Another user could swap the stage or plant names: no capture, the reason names path and mode."""
    fake["out"].mkdir(mode=0o777)
    os.chmod(fake["out"], 0o777)
    r = capture(anomaly(), cfg(fake["out"]), fake["env"])
    assert not r.ok and str(fake["out"]) in r.error and "writable by others" in r.error and "0777" in r.error
    assert stat.S_IMODE(os.stat(fake["out"]).st_mode) == 0o777 and state(fake["out"]) == []


def test_names_unique_in_one_second_and_never_clobber(fake: dict[str, Any]) -> None:
    a = anomaly()
    c = cfg(fake["out"], actions={"latency": ()})
    first = capture(a, c, fake["env"])
    assert first.path
    # a file from a "previous run" sitting on the next names
    m = BUNDLE_RE.match(os.path.basename(first.path))
    assert m
    for seq in range(int(m.group(3)) + 1, int(m.group(3)) + 4):
        (fake["out"] / f"aod_latency_{m.group(2)}_{seq}.tar.zst").write_bytes(b"old")
    paths = [capture(a, c, fake["env"]).path for _ in range(3)]
    assert len({first.path, *paths}) == 4
    olds = [p for p in fake["out"].iterdir() if p.stat().st_size == 3]
    assert len(olds) == 3 and all(p.read_bytes() == b"old" for p in olds)


# --- the worker ---------------------------------------------------------------


def start(col: Collector) -> tuple[threading.Thread, threading.Event, list[float]]:
    stop, beats = threading.Event(), []
    th = threading.Thread(target=col.run, args=(stop, lambda: beats.append(time.monotonic())), daemon=True)
    th.start()
    return th, stop, beats


def wait_for(cond: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.02)


def test_queue_full_submit_returns_false(fake: dict[str, Any]) -> None:
    col = Collector(lambda: cfg(fake["out"]), env=fake["env"], queue_size=2)
    assert col.submit(anomaly()) and col.submit(anomaly())
    assert col.submit(anomaly()) is False and col.rejected == 1


def test_worker_captures_and_beats(fake: dict[str, Any]) -> None:
    results: list[BundleResult] = []
    col = Collector(lambda: cfg(fake["out"]), env=fake["env"], on_result=results.append)
    th, stop, beats = start(col)
    try:
        assert col.submit(anomaly()) and col.submit(anomaly("error"))
        wait_for(lambda: len(results) == 2)
    finally:
        stop.set()
        th.join(10)
    assert not th.is_alive() and beats
    assert [r.ok for r in results] == [True, True] and len(list_bundles(str(fake["out"]))) == 2


def test_stop_during_capture_still_writes_bundle(
    fake: dict[str, Any], records: list[logging.LogRecord]
) -> None:
    started = fake["tmp"] / "started"
    tool(fake["bin"], "smbinfo", f"touch '{started}'; sleep 60")
    results: list[BundleResult] = []
    col = Collector(lambda: cfg(fake["out"], timeout=120), env=fake["env"], on_result=results.append)
    th, stop, beats = start(col)
    try:
        assert col.submit(anomaly())
        wait_for(started.exists)
        assert col.submit(anomaly("error"))  # still queued when we stop
        n_beats = len(beats)
        wait_for(lambda: len(beats) > n_beats + 1)  # beating while the capture runs
        stop.set()
        th.join(15)
    finally:
        stop.set()
    assert not th.is_alive()
    assert len(results) == 1 and results[0].ok and results[0].path and os.path.exists(results[0].path)
    st = {x["name"]: x for x in results[0].actions}
    assert st["smbinfo"]["status"] == "timeout" and "shutting down" in st["smbinfo"]["error"]
    assert st["cifs_stats"]["status"] == "ok"
    assert col.dropped == 1 and any("1 queued captures dropped" in x.getMessage() for x in records)
    assert not any(n.startswith(".") for n in state(fake["out"]))


def test_config_provider_error_is_logged_and_worker_continues(
    fake: dict[str, Any], records: list[logging.LogRecord]
) -> None:
    calls: list[int] = []

    def provider() -> Config:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("config gone")
        return cfg(fake["out"])

    results: list[BundleResult] = []
    col = Collector(provider, env=fake["env"], on_result=results.append)
    th, stop, _ = start(col)
    try:
        col.submit(anomaly())
        col.submit(anomaly())
        wait_for(lambda: len(results) == 2)
    finally:
        stop.set()
        th.join(10)
    assert [r.ok for r in results] == [False, True] and "config gone" in results[0].error
    assert any(x.levelno == logging.ERROR and "config gone" in x.getMessage() for x in records)


@pytest.mark.usefixtures("zstd_backend")
def test_read_bundle_is_safe_and_list_bundles_only_finished(tmp_path: Path) -> None:
    import tarfile

    import zstandard

    evil = tmp_path / "aod_manual_20260101T000000Z_1.tar.zst"
    with open(evil, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as zw:
        with tarfile.open(fileobj=zw, mode="w|") as tar:
            for name, data in (("top/ok.txt", b"fine"), ("../escape", b"x"), ("/abs", b"y")):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            link = tarfile.TarInfo("top/link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
            tar.addfile(link)
    assert read_bundle(str(evil)) == {"ok.txt": b"fine"}
    with pytest.raises(bundle.BundleError, match="inflates to more than"):
        read_bundle(str(evil), limit=2)
    (tmp_path / ".aod_manual_20260101T000001Z_2.tar.zst.partial").write_bytes(b"")
    (tmp_path / "aod_manual_20260101T000001Z_2.tar.zst.tmp").write_bytes(b"")
    newer = tmp_path / "aod_error_20260101T000002Z_3.tar.zst"
    newer.write_bytes(b"")
    os.utime(evil, (1, 1))
    assert list_bundles(str(tmp_path)) == [str(evil), str(newer)]
    with pytest.raises(bundle.BundleError, match="cannot read bundle"):
        read_bundle(str(newer))


# --- evidence while it hangs: urgency, the helper, the mount guard --------------------------


def test_debugdata_and_evidence_start_first_behind_slow_actions(fake: dict[str, Any]) -> None:
    """concurrency 1 and two slow commands ahead of it in the list: DebugData and the evidence
    steps still start at once (urgent, outside the semaphore), within 1 s of the capture."""
    tool(fake["bin"], "journalctl", "sleep 5")
    c = Config(output_dir=str(fake["out"]), capture=CaptureConfig(action_timeout_sec=1.5, concurrency=1),
               actions=MappingProxyType({"hung": ("kernel_log", "journal", "cifs_debug", "task_stacks",
                                                  "inflight", "connections")}))
    r = capture(anomaly("hung"), c, fake["env"])
    st = {x["name"]: x for x in r.actions}
    assert st["kernel_log"]["status"] == "timeout"  # the slow one really was slow
    for name in ("cifs_debug", "task_stacks", "inflight", "connections"):
        assert st[name]["started_s"] is not None and st[name]["started_s"] < 1.0, (name, st[name])
    assert st["cifs_debug"]["status"] == "ok" and st["cifs_debug"]["duration_s"] < 1.0
    assert st["journal"]["started_s"] >= 1.4  # queued behind kernel_log: what urgency avoids
    assert len(fake["helper"].requests) == 1


def test_a_hung_capture_does_not_wait_for_a_running_one(fake: dict[str, Any]) -> None:
    """A latency capture stuck in a slow journalctl (up to action_timeout_sec) is running when a
    hung anomaly comes: the hung capture starts beside it, its DebugData within 1 s of the
    submit; a second latency capture still waits its turn."""
    tool(fake["bin"], "journalctl", "sleep 60")
    c = Config(output_dir=str(fake["out"]), capture=CaptureConfig(action_timeout_sec=6.0, concurrency=4),
               actions=MappingProxyType({"latency": ("journal",), "hung": ("cifs_debug", "task_stacks")}))
    results: list[BundleResult] = []
    col = Collector(lambda: c, env=fake["env"], on_result=results.append)
    th, stop, _ = start(col)
    try:
        assert col.submit(anomaly("latency"))
        wait_for(lambda: col.busy)
        time.sleep(0.3)
        assert col.submit(anomaly("latency")) and col.submit(anomaly("hung"))
        t_sub = time.monotonic()
        wait_for(lambda: any(r.anomaly.type == "hung" for r in results), 10)
        hung = next(r for r in results if r.anomaly.type == "hung")
        waited = time.monotonic() - t_sub - hung.duration_s  # from the submit to the capture's start
        st = {x["name"]: x for x in hung.actions}
        assert hung.ok and waited + st["cifs_debug"]["started_s"] < 1.0, (waited, st["cifs_debug"])
        assert [r.anomaly.type for r in results] == ["hung"]  # the latency ones are still running/queued
        assert col.pending() == 1  # the second latency capture waits for the first
        wait_for(lambda: len(results) == 3, 30)
        assert [r.anomaly.type for r in results] == ["hung", "latency", "latency"]
    finally:
        stop.set()
        th.join(15)


def test_no_evidence_helper_is_skipped_not_failed(fake: dict[str, Any], records: list[logging.LogRecord]) -> None:
    fake["helper"].close()
    r = capture(anomaly("hung"), cfg(fake["out"], actions={"hung": ("cifs_stats", "task_stacks", "inflight",
                                                                     "connections")}), fake["env"])
    st = {x["name"]: x for x in r.actions}
    assert r.ok and st["cifs_stats"]["status"] == "ok"
    for name in ("task_stacks", "inflight", "connections"):
        assert st[name]["status"] == "skipped"
        assert st[name]["error"].startswith("skipped: evidence helper not available (")
    assert not [x for x in records if hasattr(x, "AOD_ACTION")]  # no warning storm
    summary = json.loads(read_bundle(r.path or "")["summary.json"])
    assert {a["name"]: a["status"] for a in summary["actions"]}["inflight"] == "skipped"


def hung_anomaly(details: Optional[dict[str, Any]] = None) -> Anomaly:
    ev = empty(2)
    ev["kind"] = 4  # KIND_HUNG
    ev["command"] = 9
    ev["session_id"] = 0x1234
    ev["tree_id"] = 5
    ev["pid"] = [100, 250]
    now = time.monotonic_ns()
    return Anomaly("hung", "hung>30s", 2, time.time(), now, now - 1_000_000_000, now, events=ev,
                   commands=(9,), details=MappingProxyType(details or {}))


@pytest.fixture
def hung_mounts(fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Two cifs mounts; smbinfo blocks 'forever' on /mnt/dead; any Python stat/list/open of
    /mnt/dead fails the test."""
    (fake["proc"] / "mounts").write_bytes(b"//srv/dead /mnt/dead cifs rw 0 0\n//other/live /mnt/live cifs rw 0 0\n")
    calls = fake["tmp"] / "smbinfo.calls"
    tool(fake["bin"], "smbinfo", f'echo "$2" >> "{calls}"\ncase "$2" in /mnt/dead) sleep 60;; esac\necho ok')
    touched: list[str] = []

    def guard(fn: Any) -> Any:
        def wrapper(path: Any, *a: Any, **k: Any) -> Any:
            if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith("/mnt/dead"):
                touched.append(f"{fn.__name__}({os.fsdecode(path)})")
                raise AssertionError(f"touched the hung mount: {fn.__name__}")
            return fn(path, *a, **k)
        return wrapper

    for name in ("stat", "lstat", "statvfs", "listdir", "scandir", "open", "access"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    return {"calls": calls, "touched": touched}


def smb_calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_hung_mount_is_never_touched_and_skip_is_in_summary(
    fake: dict[str, Any], hung_mounts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hung request's share is named (\\\\srv\\dead): smbinfo skips /mnt/dead and runs on
    /mnt/live; the capture ends well inside the 60 s smbinfo would block."""
    from aod import mountguard

    monkeypatch.setattr(mountguard, "names_resolver",
                        lambda pin: lambda ses, tree: "\\\\SRV\\dead" if (ses, tree) == (0x1234, 5) else None)
    t0 = time.monotonic()
    r = capture(hung_anomaly(), cfg(fake["out"], timeout=30, actions={"hung": ("smbinfo", "mounts")}), fake["env"])
    assert r.ok and time.monotonic() - t0 < 10
    assert smb_calls(hung_mounts["calls"]) == ["/mnt/live", "/mnt/live"] and hung_mounts["touched"] == []
    summary = json.loads(read_bundle(r.path or "")["summary.json"])
    smb = {a["name"]: a for a in summary["actions"]}["smbinfo"]
    assert "/mnt/dead: skipped: mount /mnt/dead has hung requests (\\\\srv\\dead)" in smb["error"]
    assert summary["guarded_mounts"] == {"/mnt/dead": "mount /mnt/dead has hung requests (\\\\srv\\dead)"}


def test_unnamed_hung_share_guards_every_cifs_mount(fake: dict[str, Any], hung_mounts: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from aod import mountguard

    monkeypatch.setattr(mountguard, "names_resolver", lambda pin: None)  # no names yet
    r = capture(hung_anomaly(), cfg(fake["out"], timeout=30, actions={"hung": ("smbinfo",)}), fake["env"])
    assert r.ok and smb_calls(hung_mounts["calls"]) == []
    assert r.actions[0]["status"] == "skipped" and "may have hung requests" in r.actions[0]["error"]
    # the detector may name the shares itself (details.hung_shares): then only those
    r = capture(hung_anomaly({"hung_shares": ["\\\\srv\\dead"]}), cfg(fake["out"], timeout=30,
                actions={"hung": ("smbinfo",)}), fake["env"])
    assert smb_calls(hung_mounts["calls"]) == ["/mnt/live", "/mnt/live"]


def test_guard_removed_the_capture_blocks_on_the_hung_mount(
    fake: dict[str, Any], hung_mounts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests above can fail: without the guard smbinfo runs on /mnt/dead and blocks until
    the action timeout."""
    from aod import collect

    monkeypatch.setattr(collect.mountguard, "plan_guard", lambda *a, **k: {})
    t0 = time.monotonic()
    r = capture(hung_anomaly(), cfg(fake["out"], timeout=1.0, actions={"hung": ("smbinfo",)}), fake["env"])
    assert "/mnt/dead" in smb_calls(hung_mounts["calls"]) and r.actions[0]["status"] == "timeout"
    assert time.monotonic() - t0 >= 1.0
