"""Stage files and blocking work for the capture loop (collect layer, under actionrun.py).

ring -> dispatch -> detect -> **collect**: `Stage` is an open stage directory; every file and
subdirectory in it is created relative to its fd (O_NOFOLLOW, O_EXCL), so renaming the stage or
planting a symlink cannot redirect a write. `CappedSink` keeps a stage file within its cap (head
or tail); `in_thread` runs blocking I/O in a daemon thread so a read stuck on a lock never blocks
the event loop or process exit. `ReadGate` hands a reader thread's result to the capture waiting
for it; a reader still stuck in the kernel when the capture gives up is counted as stranded
(`stranded()`), and it never touches the stage: only the capture writes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from typing import Any, Awaitable, Callable, Iterator, Optional, TypeVar, Union

from . import safefs

MiB = 1024 * 1024


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p]
    if any(p in (".", "..") for p in parts) or rel.startswith("/"):
        raise OSError(errno.EINVAL, "not a plain relative stage path", rel)
    return parts


class Stage(os.PathLike[str]):
    """An open stage directory. `os.fspath(stage)` is its path (for messages); the fd does the work."""

    def __init__(self, path: str, fd: int, name: str = "") -> None:
        self.path, self.fd = path, fd
        self.name = name  # its entry in the output dir (bundle.py's stages)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"Stage({self.path!r})"

    def dir_fd(self, rel_dir: str, create: bool = True) -> int:
        """A new fd for the subdirectory rel_dir (made 0700 if missing); the caller closes it."""
        fd = os.dup(self.fd)
        try:
            for part in _parts(rel_dir):
                made = False
                if create:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        made = True
                    except FileExistsError:
                        pass
                nfd = safefs.open_dir(part, dir_fd=fd)
                os.close(fd)
                fd = nfd
                if made:
                    os.fchmod(fd, 0o700)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def makedirs(self, rel_dir: str) -> None:
        os.close(self.dir_fd(rel_dir))

    def create(self, rel: str, flags: int = os.O_WRONLY, mode: int = 0o600) -> int:
        """Create the file rel (O_EXCL, never following a symlink); its parents are made 0700."""
        head, name = os.path.split(rel)
        _parts(name)
        dfd = self.dir_fd(head)
        try:
            return safefs.open_new(name, dfd, flags, mode)
        finally:
            os.close(dfd)

    def open_read(self, rel: str) -> int:
        """Open a regular stage file for reading (no symlink followed anywhere on the way)."""
        head, name = os.path.split(rel)
        dfd = self.dir_fd(head, create=False)
        try:
            return safefs.open_regular(name, dfd, os.O_RDONLY, shown=os.path.join(self.path, rel))
        finally:
            os.close(dfd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


StageLike = Union[str, Stage]


@contextlib.contextmanager
def opened(stage: StageLike) -> Iterator[Stage]:
    """A Stage as it is, or a stage path opened once (tests, tools) and closed after."""
    if isinstance(stage, Stage):
        yield stage
        return
    s = Stage(os.fspath(stage), safefs.open_dir(os.fspath(stage), follow=True))
    try:
        yield s
    finally:
        s.close()


class CappedSink:
    """A stage file that keeps at most cap bytes: the head, or the tail (trimmed in place).
    With fd, that already-created file; else `path` is created (O_EXCL, parents 0700)."""

    def __init__(self, path: str, cap: int, keep: str, fd: Optional[int] = None) -> None:
        if fd is None:
            parent = os.path.dirname(path) or "."
            safefs.makedirs(parent, 0o700)
            with opened(parent) as d:
                fd = safefs.open_new(os.path.basename(path), d.fd, os.O_RDWR)
        self.fd, self.path = fd, path
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

    def close(self, transform: Optional[Callable[[bytes], bytes]] = None) -> int:
        """Close; `transform` (redaction) rewrites the kept bytes through the fd first."""
        try:
            if self.keep == "tail" and self.size > self.cap:
                self._trim()
            if transform is not None and self.size:
                data = os.pread(self.fd, self.size, 0)
                clean = transform(data)
                if clean != data:
                    os.pwrite(self.fd, clean, 0)
                    os.ftruncate(self.fd, len(clean))
                    self.size = len(clean)
        finally:
            os.close(self.fd)
        return self.size


def stage_sink(stage: StageLike, rel: str, cap: int, keep: str) -> CappedSink:
    """A new CappedSink for stage/rel, created relative to the stage's fd."""
    with opened(stage) as s:
        fd = s.create(rel, os.O_RDWR)
    return CappedSink(os.path.join(os.fspath(stage), rel), cap, keep, fd=fd)


def write_capped(stage: StageLike, rel: str, data: bytes, cap: int) -> tuple[int, bool]:
    """Write data (its head, up to cap) to stage/rel: (bytes written, cut by the cap). An OSError
    names the stage file (ENOSPC, EROFS), not the source the data came from."""
    try:
        sink = stage_sink(stage, rel, cap, "head")
        try:
            sink.write(data)
        finally:
            size = sink.close()
    except OSError as e:
        raise OSError(e.errno, e.strerror, os.path.join(os.fspath(stage), rel)) from e
    return size, sink.truncated


# --- reads that may hang --------------------------------------------------------

_stranded_lock = threading.Lock()
_stranded: set[ReadGate] = set()
_stranded_total = 0


class ReadGate:
    """Between a reader thread and the capture waiting for it (deadline: time.monotonic())."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.running = True
        self.abandoned = False

    def finished(self) -> None:
        """The reader thread is out of its last syscall (called by the thread, always)."""
        with _stranded_lock:
            self.running = False
            _stranded.discard(self)

    def abandon(self) -> bool:
        """The capture stops waiting; True if the thread is still stuck (now counted as stranded)."""
        global _stranded_total
        with _stranded_lock:
            self.abandoned = True
            if self.running and self not in _stranded:
                _stranded.add(self)
                _stranded_total += 1
                return True
            return False


def stranded() -> dict[str, int]:
    """Reader threads abandoned while stuck in the kernel: now, and since start."""
    with _stranded_lock:
        return {"now": len(_stranded), "total": _stranded_total}


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
