"""The core end to end on a file-backed ring: `aodv2 run` as a real process with a
real notify socket; SIGHUP with a good and a bad config, SIGUSR1, SIGTERM; and the
watchdog withheld while a worker is stuck."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from faultkit import watchdog_pings

from aod import config as config_mod
from aod import ringfile, smb2
from aod.bundle import list_bundles, read_bundle
from aod.counters import FileCounters
from aod.daemon import Core
from aod.record import empty
from aod.ring import RingReader
from aod.ringfile import FileRingWriter

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000


def write_config(path: Path, out: Path, threshold_ms: float, extra: str = "") -> None:
    path.write_text(
        f"""
watch_interval_sec: 0.5
output_dir: {out}
latency:
  mode: all
  default_threshold_ms: {threshold_ms}
  acceptable_count: 3
capture:
  cooldown_sec: 0
  action_timeout_sec: 2
actions:
  latency: [mounts]
  error: [mounts]
  emergency: [mounts]
  reconnect: [mounts]
  manual: [mounts]
{extra}"""
    )


def slow(n: int, lat_ms: float, cmd: str = "WRITE") -> np.ndarray:
    e = empty(n)
    e["kind"] = 1
    e["command"] = smb2.COMMANDS[cmd]
    e["latency_ns"] = int(lat_ms * MS)
    e["ts_ns"] = time.monotonic_ns()
    return e


def wait_until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Daemon:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sock_path = str(tmp / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.settimeout(0.2)
        self.cfg = tmp / "config.yaml"
        self.out = tmp / "out"
        self.ring = tmp / "ring"
        self.stderr = open(tmp / "stderr.log", "w+")  # noqa: SIM115
        self.msgs: list[str] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
        env.update(NOTIFY_SOCKET=self.sock_path, WATCHDOG_USEC="2000000", PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aod.cli", "run", "--config", str(self.cfg), "--ring-file", str(self.ring),
             "--state-dir", str(self.tmp / "run")],
            env=env, stdout=subprocess.DEVNULL, stderr=self.stderr,
        )

    def wait_msg(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                assert self.proc.poll() is None, f"daemon exited: {self.log()}"
                continue
            self.msgs.append(m)
            if m.startswith(prefix):
                return m
        raise AssertionError(f"no {prefix!r} in {self.msgs[-10:]}; log: {self.log()}")

    def wait_status(self, text: str, timeout: float = 10.0) -> str:
        """The first STATUS= datagram (alone or after READY=1) that contains `text`."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.wait_msg("", max(deadline - time.monotonic(), 0.0))
            status = [ln[len("STATUS="):] for ln in m.splitlines() if ln.startswith("STATUS=")]
            if status and text in status[0]:
                return status[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no STATUS= with {text!r} in {self.msgs[-10:]}")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return self.log()
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in log: {self.log()}")

    def log(self) -> str:
        self.stderr.flush()
        return (self.tmp / "stderr.log").read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.stderr.close()


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Daemon(tmp_path)
    yield d
    d.close()


def test_run_reload_capture_and_stop(daemon: Daemon) -> None:
    write_config(daemon.cfg, daemon.out, threshold_ms=100)
    daemon.start()
    assert "READY=1" in daemon.wait_msg("READY=1")
    daemon.wait_msg("WATCHDOG=1")
    w = FileRingWriter(str(daemon.ring))

    # 300 ms is over 100 ms: latency anomaly
    w.write(slow(5, 300))
    daemon.wait_log("AOD detected anomaly: latency with 5 events")
    wait_until(lambda: list_bundles(str(daemon.out)), "the first bundle")
    (first,) = list_bundles(str(daemon.out))
    name = os.path.basename(first)
    status = daemon.wait_status(name)  # STATUS= goes out every second
    assert re.search(r"\d+ events/s, drops 0, bad records 0, overflow 0, anomalies 1 \(suppressed 0\), bundles 1, "
                     r"last bundle ", status), status
    assert status.endswith(f"last bundle {name}"), status

    # reload to 500 ms: 300 ms no longer fires, 600 ms does
    write_config(daemon.cfg, daemon.out, threshold_ms=500)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_msg("RELOADING=1")
    daemon.wait_msg("READY=1")
    daemon.wait_log("config reloaded")
    w.write(slow(5, 300))
    time.sleep(1.5)
    assert daemon.log().count("AOD detected anomaly: latency") == 1
    w.write(slow(4, 600))
    daemon.wait_log("AOD detected anomaly: latency with 4 events")

    # a bad config is rejected, naming the key; the old one keeps running
    daemon.cfg.write_text(daemon.cfg.read_text().replace("acceptable_count: 3", "acceptable_count: -1"))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("reload rejected")
    assert "latency.acceptable_count" in daemon.log()
    assert daemon.proc.poll() is None
    time.sleep(0.6)  # a rule fires at most once a window (0.5 s): the 600 ms one above just fired
    w.write(slow(3, 600))
    daemon.wait_log("AOD detected anomaly: latency with 3 events")

    # SIGUSR1: manual capture
    daemon.proc.send_signal(signal.SIGUSR1)
    daemon.wait_log("AOD detected anomaly: manual")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("_manual_" in p for p in list_bundles(str(daemon.out))):
        time.sleep(0.1)
    manual = [p for p in list_bundles(str(daemon.out)) if "_manual_" in p]
    assert manual, daemon.log()
    summary = json.loads(read_bundle(manual[0])["summary.json"])
    assert summary["anomaly"]["type"] == "manual"

    # SIGTERM: graceful, exit 0 (wait raises TimeoutExpired if it takes more than a few seconds)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(8) == 0
    assert any(m.startswith("STOPPING=1") for m in daemon.msgs) or "STOPPING=1" in daemon.wait_msg("STOPPING")
    assert "Traceback" not in daemon.log()


def test_sigint_stops_like_sigterm(daemon: Daemon) -> None:
    """Ctrl-C on `aodv2 run` in a terminal: the same graceful stop as SIGTERM, exit 0 (not 130
    from an unhandled KeyboardInterrupt), STOPPING=1 sent, the bundle written before intact."""
    write_config(daemon.cfg, daemon.out, threshold_ms=100)
    daemon.start()
    daemon.wait_msg("READY=1")
    FileRingWriter(str(daemon.ring)).write(slow(5, 300))
    wait_until(lambda: list_bundles(str(daemon.out)), "a bundle")
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(8) == 0
    daemon.wait_msg("STOPPING=1", timeout=2)
    text = daemon.log()
    assert "core stopping" in text and "Traceback" not in text and "KeyboardInterrupt" not in text
    (b,) = list_bundles(str(daemon.out))
    assert json.loads(read_bundle(b)["summary.json"])["anomaly"]["type"] == "latency"


def test_invalid_config_at_start_exits_78_without_traceback(daemon: Daemon) -> None:
    daemon.cfg.write_text("watch_interval_sec: -3\nbogus: 1\n")
    daemon.start()
    assert daemon.proc.wait(10) == 78
    text = daemon.log()
    assert "watch_interval_sec" in text and "bogus" in text and "Traceback" not in text


def test_run_without_root_refuses_kernel_ring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    from aod import cli

    cfg = tmp_path / "c.yaml"
    write_config(cfg, tmp_path / "out", 100)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert cli.main(["run", "--config", str(cfg), "--state-dir", str(tmp_path / "run")]) == 77
    err = capsys.readouterr().err
    assert "needs root" in err and "--ring-file" in err


def test_watchdog_withheld_while_a_worker_is_stuck(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = str(tmp_path / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = config_mod.load_text(f"output_dir: {tmp_path / 'out'}\nwatch_interval_sec: 0.5\n")
    ring_path = str(tmp_path / "ring")
    ringfile.create(ring_path, 64 * 1024)
    reader = RingReader.open_file(ring_path)
    release = threading.Event()
    real_wait = reader.wait

    def stuck_wait(timeout: float) -> bool:
        if stuck.is_set():
            release.wait(30)
        return real_wait(timeout)

    stuck = threading.Event()
    monkeypatch.setattr(reader, "wait", stuck_wait)
    core = Core(cfg, reader, FileCounters(ring_path), heartbeat_timeout=2.5)  # workers beat each second
    t = threading.Thread(target=core.run, kwargs={"tick": 0.02})
    t.start()

    try:
        assert watchdog_pings(sock, 1.0) >= 3
        stuck.set()
        time.sleep(3.5)  # heartbeat goes stale after 2.5 s
        watchdog_pings(sock, 0.3)  # drain pings sent before it went stale
        assert watchdog_pings(sock, 1.0) == 0
        stuck.clear()
        release.set()
        assert watchdog_pings(sock, 2.5) >= 3  # the dispatcher beats again within its 1 s wait
    finally:
        release.set()
        core.request("stop")
        t.join(10)
        sock.close()
    assert not t.is_alive()


def test_status_names_tracers(tmp_path: Path) -> None:
    from aod import tracerstate

    cfg = config_mod.load_text(f"output_dir: {tmp_path / 'out'}\ntracers: [smb]\n")
    ring_path = str(tmp_path / "ring")
    ringfile.create(ring_path, 64 * 1024)
    run_dir = str(tmp_path / "run")
    core = Core(cfg, RingReader.open_file(ring_path), FileCounters(ring_path), tracer_dir=run_dir)
    assert core.status_text().startswith("no tracer attached (smb down);")
    tracerstate.write_state(run_dir, "smb", "attached")
    assert core.status_text().startswith("tracers attached: smb;")


def test_alerted_anomalies_go_to_the_jsonl_history(tmp_path: Path) -> None:
    from aod import history
    from aod.anomaly import Anomaly

    out = tmp_path / "out"
    cfg = config_mod.load_text(f"output_dir: {out}\n")
    ring_path = str(tmp_path / "ring")
    ringfile.create(ring_path, 64 * 1024)
    core = Core(cfg, RingReader.open_file(ring_path), FileCounters(ring_path))
    a = Anomaly(type="latency", rule="r", count=12, detected_wall=1_800_000_000.25, detected_mono_ns=1,
                window_start_ns=0, window_end_ns=1, commands=(9,), details={"x": 1})
    assert core.raise_anomaly(a)
    assert not core.raise_anomaly(a)  # cooldown: held for the window's refused record
    lines = (out / history.FILENAME).read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["time"] == "2027-01-15T08:00:00.250Z" and rec["captured"] is True
    assert (rec["type"], rec["count"], rec["commands"], rec["details"]) == ("latency", 12, ["WRITE"], {"x": 1})
    assert os.stat(out / history.FILENAME).st_mode & 0o777 == 0o600
    assert core.policy.flush() == 1  # the window closes
    refused = json.loads((out / history.FILENAME).read_text().splitlines()[1])
    assert (refused["captured"], refused["reason"], refused["anomalies"], refused["count"]) == (
        False, "cooldown", 1, 12)
    assert refused["covered_by"] is None and refused["covered_by_state"] == "in progress"  # not written yet
    (out / history.FILENAME).unlink()
    os.mkdir(out / history.FILENAME)  # unwritable: reported, not raised
    assert history.append(str(out), history.record(a)) is not None


def test_error_alert_names_the_nt_status(tmp_path: Path) -> None:
    import logging

    from aod import log
    from aod.anomaly import Anomaly

    got: list[logging.LogRecord] = []

    class H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    h = H()
    log.logger.addHandler(h)
    cfg = config_mod.load_text(f"output_dir: {tmp_path / 'out'}\n")
    ring_path = str(tmp_path / "ring")
    ringfile.create(ring_path, 64 * 1024)
    core = Core(cfg, RingReader.open_file(ring_path), FileCounters(ring_path))
    core.raise_anomaly(Anomaly(type="error", rule="access_denied", count=25, detected_wall=1.0, detected_mono_ns=1,
                               window_start_ns=0, window_end_ns=1, commands=(5,),
                               details={"statuses": {"STATUS_ACCESS_DENIED": 25}}))
    log.logger.removeHandler(h)
    (alert,) = [r for r in got if getattr(r, "MESSAGE_ID", "") == log.MESSAGE_IDS["anomaly"]]
    assert alert.getMessage() == "AOD detected anomaly: error with 25 events"
    assert alert.__dict__["AOD_STATUS"] == "STATUS_ACCESS_DENIED"
    assert alert.__dict__["AOD_RULE"] == "access_denied"


def _core_for_batches(tmp_path: Path, extra: str = "") -> Core:
    cfg = config_mod.load_text(f"output_dir: {tmp_path / 'out'}\nwatch_interval_sec: 1.0\n"
                               "latency: {default_threshold_ms: 250, emergency_threshold_ms: 3000, "
                               f"acceptable_count: 10, horizon_sec: 10}}\n{extra}")
    ring_path = str(tmp_path / "ring")
    ringfile.create(ring_path, 64 * 1024)
    return Core(cfg, RingReader.open_file(ring_path), FileCounters(ring_path))


def test_alert_within_the_drained_batch_of_the_crossing_event(tmp_path: Path, records: list) -> None:
    """Batch by batch through the dispatcher: nothing until the batch that holds the 10th slow
    completion, and the journal alert before that batch's handling returns (no window to wait for)."""
    from aod import log

    core = _core_for_batches(tmp_path)
    now = time.monotonic_ns()
    alerts = lambda: [r for r in records if getattr(r, "MESSAGE_ID", "") == log.MESSAGE_IDS["anomaly"]]  # noqa: E731
    for i in range(9):  # one slow WRITE per batch, 100 ms apart
        b = slow(1, 800)
        b["ts_ns"] = now - (9 - i) * 100 * MS
        core.dispatcher.handle(b)
        assert alerts() == [], i
    crossing = slow(3, 800)  # the 10th slow completion and two more, in one batch
    crossing["ts_ns"] = now
    core.dispatcher.handle(crossing)
    (a,) = alerts()
    assert a.AOD_ANOMALY == "latency" and a.AOD_COUNT == "12" and a.AOD_RULE == "over_threshold>=10 in 10s"
    line = json.loads((tmp_path / "out" / "anomalies.jsonl").read_text())
    assert line["details"]["crossing_mono_ns"] == now and line["captured"] is True


def test_burst_straddling_a_window_edge_fires_through_the_core(tmp_path: Path, records: list) -> None:
    """18 WRITEs of 800 ms within 2 ms, 9 on each side of a window edge, drained as two batches:
    one latency anomaly with all 18 (per aligned window, 9 + 9 raised nothing)."""
    from aod import log
    from aod.watch import window_bounds

    core = _core_for_batches(tmp_path)
    _, edge = window_bounds(time.monotonic_ns() - 2 * 10**9, 10**9)
    burst = slow(18, 800)
    burst["ts_ns"] = edge - 9 * 110_000 + 110_000 * np.arange(18)
    core.dispatcher.handle(burst[:9])
    core.dispatcher.handle(burst[9:])
    (a,) = [r for r in records if getattr(r, "MESSAGE_ID", "") == log.MESSAGE_IDS["anomaly"]]
    assert (a.AOD_ANOMALY, a.AOD_COUNT) == ("latency", "18")
