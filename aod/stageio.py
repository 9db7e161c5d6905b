"""Stage files and blocking work for the capture loop (collect layer, under actionrun.py).

ring -> dispatch -> detect -> **collect**: `CappedSink` keeps a stage file within its cap
(head or tail); `in_thread` runs blocking I/O in a daemon thread so a read stuck on a lock
never blocks the event loop or process exit.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Awaitable, Callable, TypeVar

MiB = 1024 * 1024


class CappedSink:
    """A stage file that keeps at most cap bytes: the head, or the tail (trimmed in place)."""

    def __init__(self, path: str, cap: int, keep: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.cap, self.keep = cap, keep
        self.size = 0  # bytes in the file
        self.seen = 0  # bytes offered

    def write(self, data: bytes) -> None:
        self.seen += len(data)
        if self.keep == "head":
            data = data[: max(0, self.cap - self.size)]
            if data:
                os.pwrite(self.fd, data, self.size)
                self.size += len(data)
            return
        os.pwrite(self.fd, data, self.size)
        self.size += len(data)
        if self.size >= 2 * self.cap:
            self._trim()

    def _trim(self) -> None:
        """Move the last cap bytes to the front (chunked, memory bounded)."""
        src, dst = self.size - self.cap, 0
        while src < self.size:
            chunk = os.pread(self.fd, min(MiB, self.size - src), src)
            if not chunk:
                break
            os.pwrite(self.fd, chunk, dst)
            src, dst = src + len(chunk), dst + len(chunk)
        os.ftruncate(self.fd, dst)
        self.size = dst

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self.size = self.seen = 0

    @property
    def truncated(self) -> bool:
        return self.seen > self.size

    def close(self) -> int:
        if self.keep == "tail" and self.size > self.cap:
            self._trim()
        os.close(self.fd)
        return self.size


T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any) -> Awaitable[T]:
    """Run blocking fn in a daemon thread (a read stuck on a lock never blocks process exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def done(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def work() -> None:
        try:
            r: Any = fn(*args)
            ok = True
        except BaseException as e:  # noqa: B036 - handed to the awaiting coroutine
            r, ok = e, False
        try:
            loop.call_soon_threadsafe(done, ok, r)
        except RuntimeError:  # loop already closed: nobody is waiting
            pass

    threading.Thread(target=work, name="aod-io", daemon=True).start()
    return fut
