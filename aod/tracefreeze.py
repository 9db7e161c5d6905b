"""Trace recorder freeze: the instance's recent lines, with wall-clock times (collect layer).

ring -> dispatch -> detect -> **collect** (recorderstep.py runs this at a capture) -> retain.

Reads `instances/aodv2/trace` (not a consumer: the recording goes on, kernels >= 5.7), or, where
the kernel has no pause-on-trace option, `trace_pipe` without blocking (that consumes what it
reads: a later capture sees only newer lines). Read-only: the core never writes tracefs.
Bounded: at most READ_CAP bytes and the deadline are read; lines older than the window are
dropped as they stream by and at most cap_bytes of the newest lines are kept.

Each line's timestamp (seconds of the instance's trace clock) becomes local wall-clock time
(ISO 8601, microseconds, with the UTC offset, as journalctl -o short-iso-precise). The offset
between that clock and the wall clock is sampled at the freeze, from the tightest of a few
readings; the header says which clock, the offset and how exact it is.
"""

from __future__ import annotations

import collections
import datetime
import os
import re
import time
from dataclasses import dataclass, field
from typing import Optional

from .recordtrace import selected

MiB = 1024 * 1024
READ_CAP = 256 * MiB  # of trace text read per freeze (the newest cap_bytes of it are kept)
LINE_MAX = 4096  # a longer line is cut (an event with a huge string field)
_CHUNK = 256 * 1024
CLOCKS = {"boot": time.CLOCK_BOOTTIME, "mono": time.CLOCK_MONOTONIC}
# "<comm>-<pid> [(tgid)] [CPU] <flags> <seconds>: <event>: ..." The kernel prints the comm (at most
# 15 bytes, any of them chosen by the task: prctl(PR_SET_NAME)) right-aligned in 16 columns, so the
# comm is matched greedily within those 16 bytes: a comm that imitates "-1 [000] 1.0: " never
# supplies the timestamp (the real separator after it always matches first).
COMM_WIDTH = 16
_LINE = re.compile(rb"^(?P<pre>.{0,%d}-\d{1,10}\s+(?:\((?:\s*\d{1,10}|-+)\)\s+)?\[\d{3,}\]\s+(?:\S{1,8}\s+)?)"
                   rb"(?P<ts>\d{1,12}\.\d{1,9}):\s" % COMM_WIDTH)
_ENTRIES = re.compile(rb"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")


@dataclass
class TraceFreeze:
    data: bytes = b""  # header + lines, wall-clock times
    lines: int = 0
    first_wall: Optional[float] = None
    last_wall: Optional[float] = None
    older: int = 0  # lines before the window, dropped
    truncated: bool = False  # cap_bytes or READ_CAP cut lines (the oldest go)
    clock: str = ""
    source: str = ""
    lost: Optional[int] = None  # entries the overwrite ring dropped (written - in buffer), `trace` only
    notes: list[str] = field(default_factory=list)


def clock_offset(clock: str, samples: int = 5) -> tuple[float, float]:
    """(wall - clock, half the tightest sampling interval) in seconds."""
    cid = CLOCKS[clock]
    best: Optional[tuple[float, float]] = None
    for _ in range(samples):
        a = time.time()
        c = time.clock_gettime(cid)
        b = time.time()
        if best is None or (b - a) / 2 < best[1]:
            best = ((a + b) / 2 - c, (b - a) / 2)
    assert best is not None
    return best


def iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall).astimezone().isoformat(timespec="microseconds")


def selected_clock(inst: str) -> str:
    """The instance's selected trace clock ("" when unreadable: the lines are then left raw)."""
    try:
        with open(os.path.join(inst, "trace_clock"), encoding="ascii", errors="replace") as f:
            return selected(f.read(4096))
    except OSError:
        return ""


class _Keep:
    """The newest lines within cap bytes."""

    def __init__(self, cap: int) -> None:
        self.cap, self.size, self.cut = cap, 0, False
        self.lines: collections.deque[tuple[float, bytes]] = collections.deque()

    def add(self, wall: float, line: bytes) -> None:
        self.lines.append((wall, line))
        self.size += len(line) + 1
        while self.size > self.cap and self.lines:
            self.size -= len(self.lines.popleft()[1]) + 1
            self.cut = True


def _convert(line: bytes, offset: Optional[float], since: float, out: TraceFreeze, keep: _Keep) -> None:
    if line.startswith(b"#"):
        m = _ENTRIES.search(line) if out.lost is None else None  # the header's, not a look-alike later
        if m:
            out.lost = max(0, int(m.group(2)) - int(m.group(1)))
        return
    if len(line) > LINE_MAX:
        line = line[:LINE_MAX] + b" [cut]"
    m = _LINE.match(line)
    if m is None or offset is None:  # not an event line, or a clock we cannot convert: as it is
        if line.strip():
            keep.add(time.time(), inert(line))
        return
    wall = float(m.group("ts")) + offset
    if wall < since:
        out.older += 1
        return
    keep.add(wall, inert(m.group("pre")) + iso(wall).encode() + inert(line[m.end("ts"):]))


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def inert(b: bytes) -> bytes:
    """Control bytes (a process name or a string field is any bytes the kernel was given) as \\xNN:
    trace.txt stays safe to cat, and no such byte can start a line of its own."""
    return _CONTROL.sub(lambda m: b"\\x%02x" % m.group()[0], b)


def freeze(inst: str, since_wall: float, cap_bytes: int, deadline: float, pipe: Optional[bool] = None) -> TraceFreeze:
    """The instance's lines from since_wall on, newest cap_bytes of them. OSError propagates
    (the step says which file); a timeout keeps what was read and says so."""
    if pipe is None:
        pipe = not os.path.exists(os.path.join(inst, "options", "pause-on-trace"))
    out = TraceFreeze(clock=selected_clock(inst), source=os.path.join(inst, "trace_pipe" if pipe else "trace"))
    offset: Optional[float] = None
    err = 0.0
    if out.clock in CLOCKS:
        offset, err = clock_offset(out.clock)
    else:
        out.notes.append(f"trace_clock is {out.clock or 'unreadable'}, not boot or mono: times left as the "
                         "kernel wrote them")
    keep = _Keep(max(0, cap_bytes - 1024))  # room for the header
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if pipe else 0)
    fd = os.open(out.source, flags)
    read, rest = 0, b""
    try:
        while read < READ_CAP:
            if time.monotonic() >= deadline:
                out.notes.append(f"stopped reading at the action deadline after {read} bytes")
                out.truncated = True
                break
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:  # trace_pipe: nothing more buffered
                break
            if not chunk:
                break
            read += len(chunk)
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()[:LINE_MAX + 1]  # a line without end is kept bounded (cut at LINE_MAX)
            for line in parts:
                _convert(line, offset, since_wall, out, keep)
        else:
            out.notes.append(f"read the first {READ_CAP // MiB} MiB of the trace only")
            out.truncated = True
    finally:
        os.close(fd)
    if rest:
        _convert(rest, offset, since_wall, out, keep)
    while True:  # header + lines within cap_bytes, whatever the header's size: the oldest lines go
        out.truncated = out.truncated or keep.cut
        out.lines = len(keep.lines)
        header = _header(out, offset, err, since_wall, pipe, keep.cut)
        if not keep.lines or len(header) + keep.size <= cap_bytes:
            break
        keep.size -= len(keep.lines.popleft()[1]) + 1
        keep.cut = True
    if keep.lines:
        out.first_wall, out.last_wall = keep.lines[0][0], keep.lines[-1][0]
    out.data = header + b"".join(ln + b"\n" for _, ln in keep.lines)
    return out


def _header(out: TraceFreeze, offset: Optional[float], err: float, since: float, pipe: bool, cut: bool) -> bytes:
    lines = [f"# aodv2 trace recorder: {out.source}" + (" (consumed: this kernel has no pause-on-trace)"
                                                         if pipe else ""),
             f"# times: local wall clock from trace_clock {out.clock}" + (
                 f" + {offset:.6f} s (sampled within {err * 1e6:.0f} us at the freeze)" if offset is not None
                 else " (not converted)"),
             f"# window: from {iso(since)}; {out.lines} lines kept, {out.older} older dropped"
             + (", oldest cut by the size cap" if cut else "")]
    if out.lost:
        lines.append(f"# the overwrite ring dropped {out.lost} older events before this freeze")
    lines += [f"# note: {n}" for n in out.notes]
    lines.append("#           TASK-PID     CPU#  FLAGS  WALL-CLOCK TIME: EVENT")
    return ("\n".join(lines) + "\n").encode()
