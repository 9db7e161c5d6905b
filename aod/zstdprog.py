"""The zstd program as a bundle stream: run, fed, read and reaped (collect -> retain: the bundle's compression).

ring -> dispatch -> detect -> **collect** -> retain. zstdcodec.py (the public face: backend choice,
writer(), reader()) uses this module when the zstandard module is missing (Debian 11 has zstd 1.4.8
but no python3-zstandard) or AOD_ZSTD_BACKEND=cli: CliWriter compresses the tar bundle.py writes,
CliReader inflates what bundle.py and bundleread.py read. The program (the path zstdcodec.py chose)
runs with a fixed argv (never a shell), in its own session, stdin a pipe this process feeds, stdout
the `.partial` file (writer) or a pipe (reader). It is registered with the core's reaper like
actions and uploads (reaper.py: reserve before the fork, started after), so no sweep takes it for
an orphan; on every error it is killed and reaped, and after `stall` seconds without progress
(zstdcodec.STALL_SEC) it is killed (CodecError): a stalled program never hangs a capture or a viewer.
Frames walks what the reader feeds, so the program inflates only what the module would.

CodecError and Stream are defined here, below zstdcodec.py (which imports this module and
re-exports CodecError): no import cycle.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from types import TracebackType
from typing import IO, Any, Optional

from . import reaper

CHUNK = 128 * 1024  # compressed input fed to the program per read
ERR_KEEP = 2048  # tail of the program's stderr kept for the message
_CHILD_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
_CLI_WORDS = {"unknown header": "Unknown frame descriptor", "unsupported format": "Unknown frame descriptor"}


class CodecError(Exception):
    """zstd failed. corrupt: the data is bad (truncated, garbled); else the backend is missing,
    or the program failed, stalled or was killed (nothing is known about the data).
    Raised by both backends; aod.zstdcodec.CodecError is this class."""

    def __init__(self, message: str, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


class Stream:
    """Context manager: a clean exit close()s (the writer ends its frame and checks the program's
    exit), an exception abort()s (the program killed and reaped, no check)."""

    pid: Optional[int] = None  # the zstd program's (cli), for tests

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, t: Optional[type], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        (self.close if e is None else self.abort)()


class _Child(Stream):
    """The zstd program: stdin and stderr pipes of ours, stdout a file (writer) or a pipe (reader)."""

    def __init__(self, path: str, stall: float, args: list[str], stdout: Any) -> None:
        self.stall = stall  # seconds without progress before the program is killed
        try:  # live for the reaper before the fork: no sweep takes it for an orphan (reaper.py)
            self.proc, tag = reaper.popen_tagged([path, *args], _CHILD_ENV, bufsize=0, stdin=subprocess.PIPE,
                                                 stdout=stdout, stderr=subprocess.PIPE)
        except OSError as e:
            raise CodecError(f"cannot run {path}: {e.strerror or e}") from e
        self._tag, self.pid = tag, self.proc.pid
        self._in: Optional[IO[bytes]] = self.proc.stdin
        self._out: Optional[IO[bytes]] = self.proc.stdout
        self._errp: Optional[IO[bytes]] = self.proc.stderr
        for f in (self._in, self._out, self._errp):
            if f is not None:
                os.set_blocking(f.fileno(), False)
        self._tail = bytearray()
        self._done = False

    def _poll(self, deadline: float, write: bool, read: bool) -> None:
        """Until stdin takes input (write), stdout has data (read) or stderr says something. Past
        the deadline the program is killed and reaped: CodecError."""
        p = select.poll()
        for f, on, ev in ((self._in, write, select.POLLOUT), (self._out, read, select.POLLIN),
                          (self._errp, True, select.POLLIN)):
            if f is not None and on:
                p.register(f.fileno(), ev)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.abort()
                raise CodecError(f"the zstd program (pid {self.pid}) made no progress for {self.stall:g}s: killed")
            ready = p.poll(left * 1000)
            if ready:
                break
        if self._errp is not None and any(fd == self._errp.fileno() for fd, _ in ready):
            self._drain_err()

    def _drain_err(self) -> None:
        while self._errp is not None:
            try:
                chunk = os.read(self._errp.fileno(), 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._errp.close()
                self._errp = None
                return
            self._tail.extend(chunk)
            del self._tail[:-ERR_KEEP]

    def _close_in(self) -> None:
        if self._in is not None:
            try:
                self._in.close()
            except OSError:
                pass
            self._in = None

    def _reap(self, timeout: float) -> Optional[int]:
        """Wait for the exit, reading stderr to its end meanwhile; None if it did not come in time."""
        deadline = time.monotonic() + timeout
        while self._errp is not None:
            p = select.poll()
            p.register(self._errp.fileno(), select.POLLIN)
            left = deadline - time.monotonic()
            if left <= 0 or not p.poll(left * 1000):
                break
            self._drain_err()
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def _release(self) -> None:
        """Every pipe closed; the program is not live for the reaper any more."""
        if not self._done:
            self._done = True
            self._close_in()
            for f in (self._out, self._errp):
                if f is not None:
                    f.close()
            self._out = self._errp = None
            reaper.REAPER.forget(self._tag)

    def abort(self) -> None:
        """Kill and reap the program (one stuck in D state is left to subprocess's own cleanup)."""
        if self._done:
            return
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        self._close_in()
        if self._out is not None:
            self._out.close()
            self._out = None
        self._reap(reaper.KILL_WAIT_SEC)
        self._release()

    close = abort

    def _finish(self) -> str:
        """stdin closed (writer) or stdout at its end (reader): reap the program. Returns its error
        ('' on exit 0); raises CodecError when it was killed or does not exit."""
        rc = self._reap(self.stall)
        if rc is None:
            self.abort()
            raise CodecError(f"the zstd program (pid {self.pid}) did not exit within {self.stall:g}s: killed")
        self._release()
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.valid_signals() else f"signal {-rc}"
            raise CodecError(f"the zstd program was killed by {name}")
        if rc == 0:
            return ""
        # "/*stdin*\\ : Decoding error (36) : Data corruption detected": the last part, in the
        # module's words where they differ
        lines = [ln.strip() for ln in self._tail.decode("utf-8", "replace").splitlines() if ln.strip()]
        msg = (lines[-1] if lines else "").rsplit(" : ", 1)[-1].replace("/*stdin*\\", "").strip()
        msg = msg[len("zstd:"):].strip(" :") if msg.startswith("zstd:") else msg.strip(" :")
        return _CLI_WORDS.get(msg, msg) or f"exit status {rc}"


class CliWriter(_Child):
    """One zstd frame of what is written, to raw (an open file, at its offset)."""

    def __init__(self, raw: IO[bytes], level: int, path: str, stall: float) -> None:
        raw.flush()  # the program writes at the fd's offset, behind Python's buffer
        super().__init__(path, stall, [f"-{int(level)}", "-q", "-c"], raw.fileno())

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        deadline = time.monotonic() + self.stall
        while view:
            if self._in is None:
                raise CodecError("zstd compress error: the stream is closed")
            try:
                k = os.write(self._in.fileno(), view[:CHUNK * 8])
            except BlockingIOError:
                self._poll(deadline, write=True, read=False)
                continue
            except BrokenPipeError:  # the program exited: say why
                self._close_in()
                raise CodecError(f"zstd compress error: {self._finish() or 'the zstd program exited early'}") from None
            view = view[k:]
            deadline = time.monotonic() + self.stall
        return n

    def close(self) -> None:  # type: ignore[override]
        """End the frame: stdin closed, the program's exit awaited and checked. Raises CodecError."""
        if self._done:
            return
        self._close_in()
        err = self._finish()
        if err:
            raise CodecError(f"zstd compress error: {err}")


class Frames:
    """Walks the frames of what the program is fed. The program also inflates gzip, xz, lzma and
    lz4 frames (as built by Debian), the module zstd and skippable frames only: feed() returns
    the offset in `data` where anything else starts (-1: none), so both read the same bundles."""

    def __init__(self) -> None:
        self.skip, self.want, self.buf, self.state, self.check = 0, 4, b"", "magic", False

    def feed(self, data: bytes) -> int:
        i = 0
        while i < len(data):
            if self.skip:
                k = min(self.skip, len(data) - i)
                self.skip, i = self.skip - k, i + k
                continue
            if self.state == "block" and not self.buf:  # the common case, fast: whole block headers
                i = self._blocks(data, i)
                if i >= len(data) or self.skip or self.state != "block":
                    continue
            k = min(self.want - len(self.buf), len(data) - i)
            self.buf, i = self.buf + data[i:i + k], i + k
            if len(self.buf) == self.want:
                if not self._step(int.from_bytes(self.buf, "little")):  # a foreign magic (from earlier chunks too)
                    return max(0, i - len(self.buf))
                self.buf = b""
        return -1

    def _blocks(self, data: bytes, i: int) -> int:
        """Block headers and their blocks wholly in data from i on; returns where it stopped."""
        n = len(data)
        while i + 3 <= n:
            v = data[i] | data[i + 1] << 8 | data[i + 2] << 16
            size = 1 if v >> 1 & 3 == 1 else v >> 3
            i += 3
            if v & 1:
                self.state, self.want = ("check", 4) if self.check else ("magic", 4)
            if i + size > n:
                self.skip = i + size - n
                return n
            i += size
            if v & 1:
                break
        return i

    def _step(self, v: int) -> bool:
        if self.state == "magic":
            if v == 0xFD2FB528:
                self.state, self.want = "fhd", 1
            elif v & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame: its size next
                self.state = "skipsize"
            else:
                return False
        elif self.state == "skipsize":
            self.skip, self.state = v, "magic"
        elif self.state == "fhd":  # frame header descriptor: the rest of the header is skipped
            single = v >> 5 & 1
            self.skip = (1 - single) + (0, 1, 2, 4)[v & 3] + (single, 2, 4, 8)[v >> 6]
            self.check, self.state, self.want = bool(v >> 2 & 1), "block", 3
        elif self.state == "block":
            btype = v >> 1 & 3
            self.skip = 1 if btype == 1 else v >> 3  # RLE: one byte; raw and compressed: the size
            if v & 1:  # the last block: its checksum, then the next frame
                self.state, self.want = ("check", 4) if self.check else ("magic", 4)
        else:  # check
            self.state = "magic"
        return True


class CliReader(_Child):
    """What raw holds (from its offset on) inflated, across frames; a foreign frame reads as corrupt."""

    def __init__(self, raw: IO[bytes], path: str, stall: float) -> None:
        super().__init__(path, stall, ["-d", "-q", "-c"], subprocess.PIPE)
        self._raw = raw
        self._pending = b""
        self._frames: Optional[Frames] = Frames()
        self._foreign = False  # raw goes on with something the module would refuse

    def _feed(self) -> bool:
        """Give the program what its stdin takes of raw without blocking; True if it took any."""
        took = False
        while self._in is not None:
            if not self._pending:
                self._pending = self._raw.read(CHUNK) if self._frames is not None else b""
                cut = self._frames.feed(self._pending) if self._frames is not None else -1
                if cut >= 0:  # the program gets the frames before it only; read() then says corrupt
                    self._pending, self._frames, self._foreign = self._pending[:cut], None, True
                if not self._pending:
                    self._close_in()
                    break
            try:
                k = os.write(self._in.fileno(), self._pending)
            except BlockingIOError:
                break
            except BrokenPipeError:  # it stopped reading: its exit status tells why, at the end
                self._close_in()
                self._pending = b""
                break
            self._pending = self._pending[k:]
            took = True
        return took

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(CHUNK * 8), b""))
        deadline = time.monotonic() + self.stall
        while n and self._out is not None:
            if self._feed():
                deadline = time.monotonic() + self.stall
            try:
                data = os.read(self._out.fileno(), n)
            except BlockingIOError:
                self._poll(deadline, write=self._in is not None, read=True)
                continue
            if data:
                return data
            self._out.close()
            self._out = None
            self._close_in()
            err = self._finish()
            err = "Unknown frame descriptor" if self._foreign else err  # also what the module says
            if err and "premature end" not in err:  # truncated input just ends, as with the module
                raise CodecError(f"zstd decompress error: {err}", corrupt=True)
        return b""
