"""Supervisor: crashed workers restart with a warning; repeated crashes give up;
a stuck worker makes the core unhealthy (so the watchdog is withheld)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from aod import log
from aod.supervisor import Supervisor


class Crashy:
    name = "crashy"

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        while not stop.is_set():
            beat()
            stop.wait(0.01)


class Stuck:
    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        beat()
        self.release.wait(10)  # hangs without beating
        while not stop.is_set():
            beat()
            stop.wait(0.01)


def _settle(sup: Supervisor, cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        sup.check()
        time.sleep(0.02)


def test_crashed_worker_restarts_with_warning(records: list[logging.LogRecord]) -> None:
    stop = threading.Event()
    w = Crashy(crashes=2)
    sup = Supervisor([w], stop, max_restarts=5)
    sup.start()
    _settle(sup, lambda: w.runs >= 3)
    stop.set()
    assert sup.join(2) == []
    assert w.runs == 3 and sup.failed is None
    warn = [r for r in records if r.levelno == logging.WARNING]
    assert len(warn) == 2
    assert warn[0].getMessage().startswith("AOD component crashy restarted due to unexpected exit")
    assert warn[0].MESSAGE_ID == log.MESSAGE_IDS["component_restart"]
    assert warn[0].AOD_COMPONENT == "crashy"


def test_repeated_crashes_mark_failed(records: list[logging.LogRecord]) -> None:
    stop = threading.Event()
    w = Crashy(crashes=100)
    sup = Supervisor([w], stop, max_restarts=3)
    sup.start()
    _settle(sup, lambda: sup.failed is not None)
    stop.set()
    sup.join(2)
    assert sup.failed == "crashy" and not sup.healthy()
    assert any(getattr(r, "MESSAGE_ID", "") == log.MESSAGE_IDS["watchdog_withheld"] for r in records)


def test_stuck_worker_is_stale_then_recovers() -> None:
    stop = threading.Event()
    w = Stuck()
    sup = Supervisor([w], stop, heartbeat_timeout=0.3)
    sup.start()
    assert sup.healthy()
    time.sleep(0.5)
    assert sup.stale() == ["stuck"] and not sup.healthy()
    w.release.set()
    time.sleep(0.1)
    assert sup.healthy()
    stop.set()
    assert sup.join(2) == []
