"""Worker supervision for the core (daemon.py): each component (dispatch, watch, collect, ...) runs
in its own thread; one that raises or returns is restarted with a warning, too many restarts in
the window withhold the watchdog so systemd restarts the core, and heartbeats show a hung one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from . import log

WARNING = logging.WARNING


@dataclass
class _Slot:
    worker: Any
    thread: Optional[threading.Thread] = None
    last_beat: float = field(default_factory=time.monotonic)
    error: Optional[BaseException] = None
    restarts: deque = field(default_factory=deque)


class Supervisor:
    """Runs workers in threads, restarts crashed ones, tracks heartbeats."""

    def __init__(self, workers: list, stop: threading.Event, heartbeat_timeout: float = 10.0,
                 max_restarts: int = 5, restart_window: float = 600.0) -> None:
        self.stop = stop
        self.slots = {w.name: _Slot(w) for w in workers}
        self.heartbeat_timeout = heartbeat_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.failed: Optional[str] = None  # component that crashed too often

    def _spawn(self, slot: _Slot) -> None:
        def target() -> None:
            try:
                slot.worker.run(self.stop, lambda: setattr(slot, "last_beat", time.monotonic()))
            except BaseException as e:  # noqa: B036 - any escape is a crash to report
                slot.error = e

        slot.error = None
        slot.last_beat = time.monotonic()
        slot.thread = threading.Thread(target=target, name=f"aodv2-{slot.worker.name}", daemon=True)
        slot.thread.start()

    def start(self) -> None:
        for slot in self.slots.values():
            self._spawn(slot)

    def check(self) -> None:
        """Restart workers that died. Call from the main thread."""
        if self.stop.is_set():
            return
        now = time.monotonic()
        for name, slot in self.slots.items():
            if slot.thread is None or slot.thread.is_alive():
                continue
            reason = repr(slot.error) if slot.error else "returned early"
            while slot.restarts and now - slot.restarts[0] > self.restart_window:
                slot.restarts.popleft()
            slot.restarts.append(now)
            log.emit("component_restart", WARNING,
                     f"AOD component {name} restarted due to unexpected exit: {reason}",
                     AOD_COMPONENT=name, AOD_REASON=reason, AOD_RESTARTS=len(slot.restarts))
            if len(slot.restarts) > self.max_restarts and self.failed is None:
                self.failed = name
                log.emit("watchdog_withheld", logging.ERROR,
                         f"AOD component {name} crashed {len(slot.restarts)} times in "
                         f"{self.restart_window:.0f}s; giving up so systemd restarts the core",
                         AOD_COMPONENT=name)
            self._spawn(slot)

    def stale(self) -> list[str]:
        now = time.monotonic()
        return [n for n, s in self.slots.items() if now - s.last_beat > self.heartbeat_timeout]

    def healthy(self) -> bool:
        return self.failed is None and not self.stale()

    def join(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        for slot in self.slots.values():
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
        return [n for n, s in self.slots.items() if s.thread is not None and s.thread.is_alive()]
