"""Shared helpers of the fault, security and storm tests (test_faults.py, test_security.py,
test_storm.py): a real `Core` run in-process on a file-backed ring, a fake host tree for the
quick actions, and a log tap. Not a test module itself.

Each fault test has a docstring "fault: ... / expected: ..." and records what it measured
with pytest's `record_property`; tests/faultreport.py turns both into docs/faults.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from aod import config as config_mod
from aod import log, ringfile, smb2
from aod.actions import ActionEnv
from aod.collect import BundleResult
from aod.counters import FileCounters
from aod.daemon import Core
from aod.record import KIND_COMPLETION, empty
from aod.ring import RingReader
from aod.ringfile import FileRingWriter

MS = 1_000_000
SECRET = "S3cr3t-pw-7781"  # must never appear in a bundle
CRED_FILE_SECRET = "/root/.smbcred-4411"


class LogTap(logging.Handler):
    """Keeps every aodv2 log record, with the monotonic time it was emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._mu = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        record.mono = time.monotonic()
        with self._mu:
            self.records.append(record)

    def attach(self) -> LogTap:
        log.logger.addHandler(self)
        log.logger.setLevel(logging.DEBUG)
        return self

    def detach(self) -> None:
        log.logger.removeHandler(self)

    def snapshot(self) -> list[logging.LogRecord]:
        with self._mu:
            return list(self.records)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.snapshot()]

    def find(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.snapshot() if text in r.getMessage()]

    def wait(self, text: str, timeout: float = 10.0, n: int = 1) -> list[logging.LogRecord]:
        wait_for(lambda: len(self.find(text)) >= n, timeout, f"{n} log line(s) with {text!r}", self)
        return self.find(text)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             tap: Optional[LogTap] = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tail = "\n".join(tap.messages()[-25:]) if tap else ""
            raise AssertionError(f"timed out waiting for {what}\nlast log lines:\n{tail}")
        time.sleep(0.02)


def watchdog_pings(sock: Any, seconds: float) -> int:
    """Count WATCHDOG=1 datagrams on a bound notify socket (with a short timeout) for `seconds`."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            n += sock.recv(4096) == b"WATCHDOG=1"
        except OSError:  # socket.timeout
            pass
    return n


def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP `pid` and wait until every thread is stopped: delivery is asynchronous, and a
    thread still running could drain the ring after the signal was sent."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        tasks = os.listdir(f"/proc/{pid}/task")
        for tid in tasks:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                    return False
        return True

    wait_for(stopped, timeout, f"pid {pid} stopped")


def tool(bindir: Path, name: str, body: str) -> Path:
    p = bindir / name
    p.write_text('#!/bin/sh\nPATH="$PATH:/usr/bin:/bin"\n' + body + "\n")  # the action's PATH is only bindir
    p.chmod(0o755)
    return p


def fake_host(tmp: Path) -> tuple[ActionEnv, dict[str, Path]]:
    """A fake /proc, /var/log, journal and tool dir. The cifs mount and DebugData carry secrets."""
    proc, var_log, bindir, journal = (tmp / n for n in ("proc", "log", "bin", "journal"))
    for d in (proc / "fs" / "cifs", var_log, bindir, journal):
        d.mkdir(parents=True, exist_ok=True)
    (proc / "fs" / "cifs" / "DebugData").write_text(
        "CIFS Version 2.40\nServers:\n1) ConnectionId: 0x1 Hostname: fs01.example.com\n"
        f"\tIP addr: 10.0.0.5 Session user: alice password={SECRET}\n"
        f"\tmount options: credentials={CRED_FILE_SECRET},pass={SECRET}\n")
    (proc / "fs" / "cifs" / "Stats").write_text("Resources in use\nCIFS Session: 1\n")
    (proc / "fs" / "cifs" / "open_files").write_text("# Format:\n")
    (proc / "mounts").write_text(
        "proc /proc proc rw 0 0\n"
        f"//fs01/share /mnt/share cifs rw,vers=3.1.1,username=alice,password={SECRET},"
        f"credentials={CRED_FILE_SECRET},uid=0 0 0\n")
    (var_log / "syslog").write_text(f"Nov 27 sudo: COMMAND=/bin/mount -o password={SECRET} //fs01/x /m\n")
    tool(bindir, "journalctl", 'echo "journal $*"')
    tool(bindir, "dmesg", 'echo "dmesg $*"')
    tool(bindir, "smbinfo", 'echo "smbinfo $*"')
    # the evidence helper's socket: absent here (a host with aodv2 installed has the real one)
    env = ActionEnv(proc_root=str(proc), var_log=str(var_log), path=str(bindir), journal_dir=str(journal),
                    evidence_socket=str(tmp / "evidence.sock"), tracefs=(str(tmp / "tracefs"),),
                    run_dir=str(tmp / "run"))
    return env, {"proc": proc, "log": var_log, "bin": bindir, "journal": journal}


def config_text(out: Any, interval: float = 0.2, threshold_ms: float = 100, cooldown: float = 0,
                max_per_hour: int = 3600, actions: str = "[mounts, cifs_stats]", acceptable: int = 3,
                extra: str = "") -> str:
    types = ("latency", "error", "emergency", "reconnect", "manual")
    acts = "".join(f"  {t}: {actions}\n" for t in types)
    return (f"watch_interval_sec: {interval}\noutput_dir: {out!s}\n"
            f"latency:\n  mode: all\n  default_threshold_ms: {threshold_ms}\n  acceptable_count: {acceptable}\n"
            f"capture:\n  cooldown_sec: {cooldown}\n  max_per_hour: {max_per_hour}\n  action_timeout_sec: 2\n"
            f"retention:\n  interval_sec: 1\nactions:\n{acts}{extra}")


def slow(n: int, lat_ms: float, cmd: str = "WRITE", comm: bytes = b"dd", pid: int = 4242) -> np.ndarray:
    e = empty(n)
    e["kind"] = KIND_COMPLETION
    e["command"] = smb2.COMMANDS[cmd]
    e["latency_ns"] = int(lat_ms * MS)
    e["ts_ns"] = time.monotonic_ns()
    e["comm"] = comm
    e["pid"] = pid
    return e


class CoreRun:
    """A real Core on a file ring in a thread: ring -> dispatch -> detect -> collect -> retain."""

    def __init__(self, tmp: Path, cfg_text: str, env: Optional[ActionEnv] = None, ring_kb: int = 256,
                 tick: float = 0.02, heartbeat_timeout: float = 10.0,
                 start: bool = True, state_dir: Optional[Path] = None) -> None:
        self.tmp = tmp
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(cfg_text)
        self.ring_path = str(tmp / "ring")
        if not os.path.exists(self.ring_path):
            ringfile.create(self.ring_path, ring_kb * 1024)
        self.writer = FileRingWriter(self.ring_path)
        self.reader = RingReader.open_file(self.ring_path)
        self.counters = FileCounters(self.ring_path)
        self.results: list[BundleResult] = []
        cfg = config_mod.load(str(self.config_path))
        cfg = dataclasses.replace(cfg, ring=dataclasses.replace(cfg.ring, path=self.ring_path))
        self.core = Core(cfg, self.reader, self.counters, config_path=str(self.config_path),
                         collector_env=env, on_result=self.results.append,
                         heartbeat_timeout=heartbeat_timeout, state_dir=str(state_dir) if state_dir else None)
        self.tick = tick
        self.rc: Optional[int] = None
        self.thread: Optional[threading.Thread] = None
        if start:
            self.start()

    def start(self) -> None:
        def main() -> None:
            self.rc = self.core.run(tick=self.tick)

        self.thread = threading.Thread(target=main, name="core-main", daemon=True)
        self.thread.start()
        wait_for(lambda: all(s.thread is not None for s in self.core.supervisor.slots.values()), 5, "core start")

    def next_window(self) -> None:
        """Sleep into the next window: a rule that just fired ignores the rest of its window."""
        iv = int(self.core.cfg.watch_interval_sec * 1e9)
        time.sleep((iv - time.monotonic_ns() % iv) / 1e9 + 0.01)

    def ok_results(self) -> list[BundleResult]:
        return [r for r in list(self.results) if r.ok]

    def wait_results(self, n: int, timeout: float = 15.0, tap: Optional[LogTap] = None) -> list[BundleResult]:
        wait_for(lambda: len(self.results) >= n, timeout, f"{n} capture result(s)", tap)
        return list(self.results)

    def alive(self) -> dict[str, bool]:
        return {n: bool(s.thread and s.thread.is_alive()) for n, s in self.core.supervisor.slots.items()}

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        if self.thread is not None:
            self.core.request("stop")
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "core did not stop"
        self.writer.close()
        return self.rc
