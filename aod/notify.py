"""sd_notify (main thread of the core): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A no-op without NOTIFY_SOCKET. The watchdog interval is half of WATCHDOG_USEC,
and only applies when WATCHDOG_PID is unset or names this process.
"""

from __future__ import annotations

import os
import time
from typing import Optional


class Notifier:
    def __init__(self) -> None:
        env = os.environ
        self.socket = env.get("NOTIFY_SOCKET")
        self._n = None
        if self.socket:
            import sdnotify

            self._n = sdnotify.SystemdNotifier()
        self.watchdog_sec: Optional[float] = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if self.socket and usec and usec.isdigit() and int(usec) > 0:
            if not pid or (pid.isdigit() and int(pid) == os.getpid()):
                self.watchdog_sec = int(usec) / 1e6
        self.sent: list[str] = []  # last messages, for tests and `status`

    @property
    def enabled(self) -> bool:
        return self._n is not None

    def _send(self, msg: str) -> None:
        if self._n is None:
            return
        self._n.notify(msg)
        self.sent = (self.sent + [msg])[-20:]

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={mono}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def ping_interval(self) -> Optional[float]:
        return self.watchdog_sec / 2 if self.watchdog_sec else None
