"""Faults injected into a running core (issue 7, host level): ring full, corrupt records,
disk full and read-only output dir (real tmpfs as root), a hanging quick action, a crash in
each worker thread, repeated crashes vs the watchdog, wall-clock jumps and a reload during a
capture. Each test checks the defined behaviour and that nothing already captured is lost.
Docstrings ("fault: / expected:") and record_property numbers feed docs/faults.md."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from faultkit import CoreRun, LogTap, config_text, fake_host, freeze, slow, tool, wait_for, watchdog_pings

from aod import bundle, log, ringfile
from aod.bundle import BUNDLE_RE, list_bundles, read_bundle
from aod.ringfile import FileRingWriter

ROOT = Path(__file__).resolve().parent.parent
ALL_ACTIONS = "[kernel_log, journal, syslog, cifs_debug, cifs_stats, cifs_open_files, mounts, smbinfo]"


@pytest.fixture
def tap() -> Iterator[LogTap]:
    t = LogTap().attach()
    yield t
    t.detach()


@pytest.fixture(autouse=True)
def _no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID"):
        monkeypatch.delenv(k, raising=False)


def anomaly_counts(tap: LogTap, type_: str = "latency") -> list[int]:
    pat = re.compile(rf"AOD detected anomaly: {type_} with (\d+) events")
    return [int(m.group(1)) for m in (pat.match(x) for x in tap.messages()) if m]


def restarts(tap: LogTap) -> list[logging.LogRecord]:
    return [r for r in tap.snapshot() if getattr(r, "MESSAGE_ID", "") == log.MESSAGE_IDS["component_restart"]]


# --- ring full ------------------------------------------------------------------------------


def test_ring_full_while_core_process_is_stopped(tmp_path: Path, record_property: Any) -> None:
    """fault: the core process is frozen (SIGSTOP) while a producer writes 5000 slow records into
    a 64 KiB file ring (room for 819).
    expected: the producer never blocks or crashes, the overflow is counted as drops in the ring's
    counters; after SIGCONT the core drains every record that fit, detects them, logs
    "AOD ring full: N events dropped" with N equal to the producer's count, keeps running, and
    exits 0 on SIGTERM; the bundle captured before the stop is intact."""
    out, ring = tmp_path / "out", tmp_path / "ring"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(out, interval=0.2, acceptable=1, actions="[cifs_stats]"))
    ringfile.create(str(ring), 64 * 1024)
    err_path = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = str(ROOT)
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "aod.cli", "run", "--config", str(cfg),
                                 "--ring-file", str(ring), "--state-dir", str(tmp_path / "run")],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
    text = lambda: err_path.read_text()  # noqa: E731
    try:
        wait_for(lambda: "core ready" in text(), 15, "core ready")
        w = FileRingWriter(str(ring))
        w.write(slow(5, 300))
        wait_for(lambda: "AOD bundle written" in text(), 15, "first bundle")
        first = list_bundles(str(out))
        assert len(first) == 1
        time.sleep(0.3)  # the next window (0.2 s): the rule fired for the first records in this one
        freeze(proc.pid)
        written = dropped = 0
        for _ in range(50):
            n = w.write(slow(100, 300))
            written, dropped = written + n, dropped + 100 - n
        assert written == 64 * 1024 // 80 and dropped == 5000 - written
        with open(ring, "rb") as f:  # the counters region of the file ring
            f.seek(ringfile.layout(64 * 1024).counters_off)
            assert int.from_bytes(f.read(8), "little") == dropped
        proc.send_signal(signal.SIGCONT)
        pat = re.compile(r"AOD ring full: (\d+) events dropped")
        wait_for(lambda: sum(int(n) for n in pat.findall(text())) >= dropped, 15, "drop report")
        reported = sum(int(n) for n in pat.findall(text()))
        # the records that fit are detected: a rule fires once a window, so one anomaly for them
        wait_for(lambda: len(re.findall(r"anomaly: latency with (\d+) events", text())) >= 2, 15,
                 "the records that fit detected")
        with open(ring, "rb") as f:
            raw = f.read(2 * 4096 + 8)
        cons, prod = int.from_bytes(raw[0:8], "little"), int.from_bytes(raw[4096:4104], "little")
        assert cons == prod  # everything in the ring was consumed
        assert proc.poll() is None
        time.sleep(0.3)  # the next window (0.2 s): the rule fired for the drained records in this one
        w.write(slow(4, 300))
        wait_for(lambda: "latency with 4 events" in text(), 15, "detection after the stall")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "Traceback" not in text()
        assert read_bundle(first[0])["summary.json"]  # captured before the fault: still there
        record_property("records_written", written)
        record_property("drops_counted", dropped)
        record_property("drops_reported", reported)
        w.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert reported == dropped


def test_drops_before_core_starts_are_reported(tmp_path: Path, tap: LogTap, record_property: Any) -> None:
    """fault: the ring fills up and overflows before any core reads it (core not started yet).
    expected: at start the core logs "AOD ring full: N events dropped ... before this core started"
    with the counted N (before the fix they vanished into the baseline), then reads and detects
    every record that fit."""
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=1), ring_kb=64, start=False)
    try:
        written = r.writer.write(slow(1000, 300))
        dropped = 1000 - written
        assert dropped > 0
        r.start()
        recs = tap.wait("before this core started")
        assert recs[0].levelno == logging.WARNING and int(recs[0].AOD_DROPS) == dropped  # type: ignore[attr-defined]
        assert f", drops {dropped}, " in r.core.status_text()  # systemctl status shows them too
        wait_for(lambda: sum(anomaly_counts(tap)) >= written, 10, "records that fit detected", tap)
        assert sum(anomaly_counts(tap)) == written
        record_property("drops_reported_at_start", dropped)
    finally:
        r.stop()


# --- corrupt records --------------------------------------------------------------------------


def test_corrupt_and_foreign_records_while_core_runs(tmp_path: Path, tap: LogTap, record_property: Any) -> None:
    """fault: garbage in the ring while the core runs: 3 records of a foreign length, 2 with an
    unknown event version, 1 with a wrong size field, 2 stamped an hour in the future, 1 discarded,
    between 10 valid slow records.
    expected: the 8 bad ones are skipped and counted by reason ("AOD skipped 8 corrupt, foreign or
    future-stamped ring records"; corrupt 3, foreign 3, future 2), the discarded one is ignored
    silently, all 10 valid records are detected, and the ones after them too: a record from
    the future is never held, so nothing waits behind it."""
    # the first burst is written before the core reads, so its 10 valid records are one batch: a rule
    # that fires ignores the rest of its window, and a read between them would make the count race
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=1, interval=0.5), start=False)
    try:
        good = slow(5, 300)
        bad_version = slow(1, 300)
        bad_version["version"] = 99
        bad_size = slow(1, 300)
        bad_size["size"] = 64
        w = r.writer
        assert w.write(good) == 5
        for _ in range(3):
            assert w.write_raw(b"\x01" * 40)
        for _ in range(2):
            assert w.write_raw(bad_version.tobytes())
        assert w.write_raw(bad_size.tobytes())
        assert w.write_raw(slow(1, 300).tobytes(), discard=True)
        future = slow(2, 300)
        future["ts_ns"] += 3600 * 10**9
        assert w.write(future) == 2
        assert w.write(slow(5, 300)) == 5
        r.start()
        wait_for(lambda: sum(anomaly_counts(tap)) >= 10, 10, "valid records detected", tap)
        skipped = re.compile(r"AOD skipped (\d+) corrupt, foreign or future-stamped ring records")
        wait_for(lambda: sum(int(m.group(1)) for m in map(skipped.match, tap.messages()) if m) >= 8, 10,
                 "skip report", tap)
        assert r.core.bad_records() == {"corrupt": 3, "foreign": 3, "future": 2, "total": 8}
        r.next_window()
        assert w.write(slow(5, 300)) == 5  # after them, while the core runs: detected as usual
        wait_for(lambda: sum(anomaly_counts(tap)) >= 15, 10, "records after the future ones detected", tap)
        time.sleep(0.6)  # one more window: nothing else reported
        n = sum(int(m.group(1)) for m in map(skipped.match, tap.messages()) if m)
        assert n == 8 and sum(anomaly_counts(tap)) == 15
        assert r.reader.discarded == 1 and r.alive() == dict.fromkeys(r.alive(), True)
        record_property("skipped_reported", n)
        record_property("valid_detected", sum(anomaly_counts(tap)))
    finally:
        r.stop()


# --- disk full / read-only output dir (real filesystem errors) --------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> int:
    n = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (65536, 4096, 512, 1):
            while True:
                try:
                    n += f.write(b"\0" * chunk)
                except OSError as e:
                    assert e.errno == 28  # ENOSPC
                    break
    return n


@pytest.mark.usefixtures("zstd_backend")
@pytest.mark.parametrize("fault", ["enospc", "erofs"])
def test_output_dir_full_or_read_only_during_capture(
    fault: str, small_fs: Path, tmp_path: Path, tap: LogTap, record_property: Any
) -> None:
    """fault: the output dir is a real 256 KiB tmpfs; it is filled to ENOSPC (enospc) or
    remounted read-only (erofs), then an anomaly fires.
    expected: that capture fails with one clear capture_failed journal message naming the path
    and the OS error, no partial file or stage dir is left, retention keeps running, no worker
    restarts, the bundle captured before the fault stays readable, and once space (or rw) is
    back the next capture succeeds."""
    env, _ = fake_host(tmp_path)
    r = CoreRun(tmp_path, config_text(small_fs, acceptable=1), env=env)
    filler = small_fs / "filler"
    try:
        r.writer.write(slow(5, 300))
        first = r.wait_results(1, tap=tap)[0]
        assert first.ok and first.path
        if fault == "enospc":
            record_property("filled_bytes", _fill(filler))
            want = "No space left on device"
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
            want = "Read-only file system"
        runs = r.core.retention.runs
        r.next_window()
        r.writer.write(slow(5, 300))
        failed = r.wait_results(2, tap=tap)[1]
        assert not failed.ok and want in failed.error, failed.error
        errs = [x for x in tap.snapshot() if x.levelno == logging.ERROR]
        assert len(errs) == 1 and errs[0].MESSAGE_ID == log.MESSAGE_IDS["capture_failed"]  # type: ignore[attr-defined]
        assert want in errs[0].getMessage() and str(small_fs) in errs[0].getMessage()
        wait_for(lambda: r.core.retention.runs > runs, 5, "a retention pass after the failure", tap)
        assert not [n for n in os.listdir(small_fs) if n.startswith(".")]  # no stage, no partial
        assert list_bundles(str(small_fs)) == [first.path]
        assert "summary.json" in read_bundle(first.path)
        assert r.alive() == dict.fromkeys(r.alive(), True) and not restarts(tap)
        if fault == "enospc":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
        r.next_window()
        r.writer.write(slow(5, 300))
        again = r.wait_results(3, tap=tap)[2]
        assert again.ok and again.path and os.path.exists(again.path)
        assert list_bundles(str(small_fs)) == [first.path, again.path]
        record_property("error", failed.error)
        record_property("retention_runs_during_fault", r.core.retention.runs - runs)
    finally:
        assert r.stop() == 0


# --- a hanging quick action -------------------------------------------------------------------


def test_hanging_action_times_out_others_complete(tmp_path: Path, tap: LogTap, record_property: Any) -> None:
    """fault: smbinfo hangs forever (a fake that sleeps, as on a dead server) during a capture
    with all 8 quick actions and action_timeout_sec 2.
    expected: smbinfo is reported "timeout" and its process is killed, the 7 other actions are
    "ok", the bundle is written, the core keeps running."""
    env, host = fake_host(tmp_path)
    pidfile = tmp_path / "smbinfo.pid"
    tool(host["bin"], "smbinfo", f'echo $$ > "{pidfile}"; exec sleep 1000')
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=1, actions=ALL_ACTIONS), env=env)
    try:
        r.writer.write(slow(5, 300))
        res = r.wait_results(1, timeout=30, tap=tap)[0]
        st = {a["name"]: a["status"] for a in res.actions}
        assert res.ok and res.path and os.path.exists(res.path)
        assert st.pop("smbinfo") == "timeout" and set(st.values()) == {"ok"}
        pid = int(pidfile.read_text())
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                 open(f"/proc/{pid}/stat").read().split()[2] == "Z", 5, "smbinfo killed")
        assert any("AOD action smbinfo timeout" in m for m in tap.messages())
        record_property("capture_seconds", res.duration_s)
        record_property("actions", json.dumps({a["name"]: a["status"] for a in res.actions}))
    finally:
        r.stop()


# --- worker crashes ---------------------------------------------------------------------------


class Once:
    """Wraps a callable; raises RuntimeError on the first call after arm()."""

    def __init__(self, fn: Callable[..., Any], always: bool = False) -> None:
        self.fn, self.armed, self.fired, self.always = fn, False, 0, always

    def arm(self) -> None:
        self.armed = True

    def __call__(self, *a: Any, **kw: Any) -> Any:
        if self.armed:
            self.fired += 1
            if not self.always:
                self.armed = False
            raise RuntimeError("injected crash")
        return self.fn(*a, **kw)


def _inject(r: CoreRun, worker: str, always: bool = False) -> Once:
    c = r.core
    if worker == "dispatcher":  # Dispatcher.run -> ring.wait
        o = Once(r.reader.wait, always)
        r.reader.wait = o  # type: ignore[method-assign]
    elif worker == "watcher":  # Watcher.run -> interval()
        o = Once(c.watcher.interval, always)
        c.watcher.interval = o
    elif worker == "collector":  # Collector._main -> queue.get_nowait
        o = Once(c.collector._queue.get_nowait, always)
        c.collector._queue.get_nowait = o  # type: ignore[method-assign]
    else:  # Retention.run -> prune_now
        o = Once(c.retention.prune_now, always)
        c.retention.prune_now = o  # type: ignore[method-assign]
    return o


@pytest.mark.parametrize("worker", ["dispatcher", "watcher", "collector", "retention"])
def test_crash_in_each_worker_restarts_and_detection_continues(
    worker: str, tmp_path: Path, tap: LogTap, record_property: Any
) -> None:
    """fault: one unexpected exception inside a worker thread of a running core (dispatcher:
    ring.wait, watcher: its interval callback, collector: its queue, retention: prune_now).
    expected: the worker is restarted, "AOD component <name> restarted due to unexpected exit"
    is logged at warning priority, and a latency anomaly written afterwards is still detected
    and captured into a bundle; a bundle captured before the crash is still there."""
    env, _ = fake_host(tmp_path)
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=1), env=env)
    try:
        r.writer.write(slow(5, 300))
        before = r.wait_results(1, tap=tap)[0]
        o = _inject(r, worker)
        o.arm()
        recs = tap.wait(f"AOD component {worker} restarted due to unexpected exit")
        assert recs[0].levelno == logging.WARNING and recs[0].AOD_COMPONENT == worker  # type: ignore[attr-defined]
        assert "injected crash" in recs[0].getMessage()
        wait_for(lambda: r.alive()[worker], 5, "worker alive again", tap)
        r.next_window()  # a crash soon after the first anomaly: the rule still ignores its window
        r.writer.write(slow(4, 300))
        tap.wait("AOD detected anomaly: latency with 4 events")
        after = r.wait_results(2, tap=tap)[1]
        assert before.ok and after.ok and after.path and before.path
        assert list_bundles(str(tmp_path / "out")) == [before.path, after.path]
        assert r.core.supervisor.failed is None and len(restarts(tap)) == 1
        record_property("restarts_logged", len(restarts(tap)))
    finally:
        assert r.stop() == 0


def test_repeated_crashes_withhold_watchdog(tmp_path: Path, tap: LogTap, monkeypatch: pytest.MonkeyPatch,
                                            record_property: Any) -> None:
    """fault: the dispatcher crashes on every run (more than max_restarts=2 times) under systemd
    with a watchdog (real notify socket, WATCHDOG_USEC=400000).
    expected: each crash is restarted and logged; once over the limit the core logs that it
    gives up and stops sending WATCHDOG=1 (so systemd kills and restarts it); on stop it exits 1."""
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")

    r = CoreRun(tmp_path, config_text(tmp_path / "out"), start=False)
    r.core.supervisor.max_restarts = 2
    try:
        r.start()
        healthy = watchdog_pings(sock, 1.0)
        assert healthy >= 3
        _inject(r, "dispatcher", always=True).arm()
        tap.wait("giving up so systemd restarts the core")
        watchdog_pings(sock, 0.3)  # drain pings sent before
        withheld = watchdog_pings(sock, 1.0)
        assert withheld == 0
        assert any("AOD withholding watchdog ping" in m for m in tap.messages())
        record_property("pings_per_s_healthy", healthy)
        record_property("pings_per_s_after_giving_up", withheld)
        record_property("restarts_logged", len(restarts(tap)))
    finally:
        rc = r.stop()
        sock.close()
    assert rc == 1


def test_repeated_crashes_without_watchdog_exit_nonzero(tmp_path: Path, tap: LogTap, record_property: Any) -> None:
    """fault: the watcher crashes on every run, more than max_restarts=2 times, with no systemd
    watchdog to restart the core.
    expected: the core stops by itself and run() returns 1 (non-zero exit), no hang."""
    r = CoreRun(tmp_path, config_text(tmp_path / "out"), start=False)
    r.core.supervisor.max_restarts = 2
    r.start()
    _inject(r, "watcher", always=True).arm()
    assert r.thread is not None
    r.thread.join(15)
    assert not r.thread.is_alive() and r.rc == 1
    assert len(restarts(tap)) >= 3
    record_property("exit_code", r.rc)
    r.writer.close()


# --- clock jumps and reload during a capture --------------------------------------------------


@pytest.mark.parametrize("jump_h", [6, -6], ids=["forward", "backward"])
def test_wall_clock_jump_during_capture(jump_h: int, tmp_path: Path, tap: LogTap,
                                        monkeypatch: pytest.MonkeyPatch, record_property: Any) -> None:
    """fault: the wall clock (time.time) jumps 6 hours forwards or backwards while a capture runs.
    expected: the capture is not dropped; bundle name and summary timestamps come from the
    detection time (sane, window start <= end <= detected_at), the journal window passed to
    journalctl has since < until (it did not for a backward jump before the fix), every action's
    file is in the bundle (before the fix a forward jump made retention delete the running
    capture's stage dir as "stale"), windows keep closing on the monotonic clock and the next
    anomaly is captured too."""
    env, host = fake_host(tmp_path)
    started = tmp_path / "started"
    tool(host["bin"], "smbinfo", f'touch "{started}"; sleep 1; echo "smbinfo $*"')
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=1, actions=ALL_ACTIONS), env=env)
    for d in r.core.detector.all:  # the detectors' clock was bound at import time
        d.clock = time.time
    try:
        r.writer.write(slow(5, 300))
        wait_for(started.exists, 10, "capture running", tap)
        windows = r.core.watcher.rates.windows
        offset[0] = jump_h * 3600.0
        res = r.wait_results(1, timeout=20, tap=tap)[0]
        assert res.ok and res.path
        a = res.anomaly
        m = BUNDLE_RE.match(os.path.basename(res.path))
        assert m and m.group(2) == bundle.utc_stamp(a.detected_wall)
        assert abs(a.detected_wall - real()) < 60  # detected before the jump
        files = read_bundle(res.path)
        assert {x["name"]: x["status"] for x in res.actions} == dict.fromkeys(
            [x["name"] for x in res.actions], "ok"), res.actions
        s = json.loads(files["summary.json"])
        assert s["window"]["start"] <= s["window"]["end"] <= s["detected_at"]
        assert 0 <= s["window"]["seconds"] < 0.01  # the count rule's 5 matches, written at once
        assert "journal.log" in files, (sorted(files), res.actions)
        since, until = map(int, re.search(rb"--since @(\d+) --until @(\d+)", files["journal.log"]).groups())
        assert since < until, (since, until)
        wait_for(lambda: r.core.watcher.rates.windows >= windows + 5, 5, "windows keep closing", tap)
        r.writer.write(slow(4, 300))
        res2 = r.wait_results(2, timeout=20, tap=tap)[1]
        assert res2.ok and abs(res2.anomaly.detected_wall - (real() + offset[0])) < 60
        record_property("journal_window_s", until - since)
        record_property("bundle", os.path.basename(res.path))
    finally:
        r.stop()


def test_reload_during_capture_keeps_capture(tmp_path: Path, tap: LogTap, record_property: Any) -> None:
    """fault: SIGHUP-style reload with a changed config file (threshold 100 -> 500 ms, actions
    all -> cifs_stats) while a capture is running.
    expected: the running capture completes with the config it started with (all 8 actions,
    threshold 100 in its summary); the new config applies to detection and captures after it."""
    env, host = fake_host(tmp_path)
    started = tmp_path / "started"
    tool(host["bin"], "smbinfo", f'touch "{started}"; sleep 1; echo "smbinfo $*"')
    out = tmp_path / "out"
    r = CoreRun(tmp_path, config_text(out, acceptable=1, actions=ALL_ACTIONS), env=env)
    try:
        r.writer.write(slow(5, 300))
        wait_for(started.exists, 10, "capture running", tap)
        r.config_path.write_text(config_text(out, acceptable=1, threshold_ms=500, actions="[cifs_stats]"))
        r.core.request("reload")
        tap.wait("config reloaded")
        assert not r.results  # the capture was still running during the reload
        res = r.wait_results(1, timeout=20, tap=tap)[0]
        assert res.ok and len(res.actions) == 8
        s = json.loads(read_bundle(res.path or "")["summary.json"])
        assert s["thresholds"]["latency"]["default_threshold_ms"] == 100
        r.writer.write(slow(5, 300))
        r.writer.write(slow(4, 600))
        tap.wait("latency with 4 events")
        res2 = r.wait_results(2, timeout=20, tap=tap)[1]
        assert res2.ok and [a["name"] for a in res2.actions] == ["cifs_stats"]
        assert 5 not in anomaly_counts(tap)[1:] and 9 not in anomaly_counts(tap)
        record_property("captures", len(r.ok_results()))
    finally:
        r.stop()




def test_reload_changing_output_dir_waits_for_restart(tmp_path: Path, tap: LogTap) -> None:
    """fault: a reload whose config changes output_dir (documented to take effect on restart).
    expected: the warning is logged and captures keep going to the running output_dir."""
    env, _ = fake_host(tmp_path)
    out, other = tmp_path / "out", tmp_path / "other"
    r = CoreRun(tmp_path, config_text(out, acceptable=1), env=env)
    try:
        r.config_path.write_text(config_text(other, acceptable=1))
        r.core.request("reload")
        tap.wait("take effect on restart")
        r.writer.write(slow(5, 300))
        res = r.wait_results(1, tap=tap)[0]
        assert res.ok and res.path and os.path.dirname(res.path) == str(out)
    finally:
        r.stop()
