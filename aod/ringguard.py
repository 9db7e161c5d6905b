"""Ring maps and ring faults (ring layer, under ring.py's RingReader).

`RingMaps` holds the mappings of one ring and the cold paths of the reader: impossible
positions (resync), a file ring whose file shrank (let go before an access could raise
SIGBUS, mapped again once it is a whole ring), a file ring replaced under its path (let go,
the new file mapped). The hot path stays in ring.py. Limit: mmap cannot be made safe against a
shrink that lands between the fstat and the access (Python cannot catch SIGBUS); only root or
the ring's owner can truncate it, and the kernel's pinned ring never shrinks.

A producer reserves a record (BUSY), then commits it. The kernel does both in one BPF
program run, microseconds apart; only a file ring whose writer died or hangs between
the two keeps a record BUSY. `StallClock` measures, on the reader's monotonic clock
(never a time in the record), how long the record at one ring position has stayed
BUSY; past STALL_SEC the reader skips it. `Reporter` logs each kind of ring fault at
most once per REPORT_EVERY_SEC, with the count of the ones it held back.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from aod import log

# A record BUSY this long at the same position is abandoned. A live BPF producer commits
# within microseconds (reserve and commit in one program run), so 2 s only catches a dead
# or stopped writer of a file ring.
STALL_SEC = 2.0
REPORT_EVERY_SEC = 60.0  # one log line per fault kind per minute at most
REOPEN_EVERY_SEC = 1.0  # a truncated file ring is tried again this often


class RingError(OSError):
    """The ring cannot be opened or is not a ring (message names the path)."""


class StallClock:
    """How long the record at `pos` has been seen BUSY (first sighting to now), and the producer
    position at that first sighting: every record reserved below it and still BUSY when the
    bound expires has been BUSY at least as long."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.pos: Optional[int] = None
        self.since = 0.0
        self.limit = 0  # producer position at the first sighting

    def expired(self, pos: int, prod: int) -> bool:
        """Call on each sighting of a BUSY record at absolute position pos (positions only grow)."""
        now = self.clock()
        if pos != self.pos:
            self.pos, self.since, self.limit = pos, now, prod
            return False
        return now - self.since >= STALL_SEC

    def held(self) -> float:
        return self.clock() - self.since if self.pos is not None else 0.0

    def reset(self) -> None:
        self.pos = None


class Reporter:
    """Rate-limited WARNING lines about one ring, per fault kind ("positions", "stalled", ...)."""

    def __init__(self, path: str, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        self._last: Dict[str, Tuple[float, int]] = {}  # kind -> (time of last line, lines held since)
        self.lines = 0  # lines actually logged

    def __call__(self, kind: str, msg: str) -> None:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last[0] < REPORT_EVERY_SEC:
            self._last[kind] = (last[0], last[1] + 1)
            return
        held = last[1] if last else 0
        self._last[kind] = (now, 0)
        self.lines += 1
        more = f" ({held} more since the last report)" if held else ""
        log.emit("bad_records", logging.WARNING, f"AOD ring {self.path}: {msg}{more}",
                 AOD_RING=self.path, AOD_FAULT=kind)


def map_file(path: str) -> Tuple[int, int, int, mmap.mmap, mmap.mmap]:
    """(fd, data size, bytes mapped, consumer map, producer+data map) of a ring file."""
    from aod import ringfile  # ringfile imports ring, which imports this module

    fd, lay = ringfile.open_ring_fd(path, write=True)
    try:
        cons = mmap.mmap(fd, ringfile.FILE_PAGE, access=mmap.ACCESS_WRITE)
        rest = mmap.mmap(fd, lay.counters_off, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        os.close(fd)
        raise RingError(errno.EIO, f"{path}: cannot map ring file: {e}") from None
    return fd, lay.size, lay.counters_off, cons, rest


class RingMaps:
    """The mappings of one ring and the reader's fault paths (RingReader's base)."""

    path: str
    clock: Callable[[], float]
    report: Reporter
    _stall: StallClock
    bad_records: int
    resyncs: int
    reopens: int

    def _init_maps(self) -> None:
        self._watch_fd: Optional[int] = None  # file ring: fstat()ed before each access
        self._need = 0  # bytes the maps of a file ring cover
        self._lost_at: Optional[float] = None  # file ring truncated: maps let go (monotonic time)
        self._retry_at = 0.0
        self._ident_at = 0.0  # file ring: next check that the path still names the mapped file
        self._realign_from: Optional[int] = None  # a misaligned producer position we resynced to
        self._maps: List[mmap.mmap] = []

    def _attach(self, size: int, cons_map: mmap.mmap, prod_map: mmap.mmap, prod_off: int, data_off: int) -> None:
        if size <= 0 or size & (size - 1) or size % 8:
            raise RingError(errno.EINVAL, f"{self.path}: ring size {size} is not a power of two")
        self.size = size
        self._mask = size - 1
        self._maps = [cons_map, prod_map]
        self._cons: Any = np.frombuffer(cons_map, dtype="<u8", count=1, offset=0)
        self._prod: Any = np.frombuffer(prod_map, dtype="<u8", count=1, offset=prod_off)
        self._data: Any = np.frombuffer(prod_map, dtype=np.uint8, count=size, offset=data_off)
        self._data32: Any = self._data.view("<u4")

    def _detach(self) -> None:
        self._cons = self._prod = self._data = self._data32 = None  # drop buffer exports first
        for m in self._maps:
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        self._maps = []
        if self._watch_fd is not None:
            os.close(self._watch_fd)
            self._watch_fd = None

    def _resync(self, cons: int, prod: int) -> None:
        """Positions the kernel never writes (a corrupt or reset file ring): skip to the producer."""
        self.resyncs += 1
        up = (cons + 7) & ~7
        if cons == self._realign_from and not prod % 8 and up <= prod <= cons + self.size:
            # our last resync went to a misaligned producer, and the writer realigned it the same
            # way (ringfile.py): same fault, no record lost
            self._cons[0], self._realign_from = up, None
            return
        self.bad_records += 1
        self._cons[0] = prod
        self._realign_from = prod if prod % 8 else None
        self._stall.reset()
        self.report("positions", f"impossible positions (consumer {cons:#x}, producer {prod:#x}: misaligned, "
                    f"reversed or more than the ring size {self.size} apart); skipped to the producer, "
                    "counted as a bad record")

    # ---- a truncated file ring -------------------------------------------------------------
    def _usable(self) -> bool:
        """May the maps be touched now? Always for the kernel ring; for a file ring only while
        the file still covers them (one fstat). A shrunk file is let go here, before any access."""
        fd = self._watch_fd
        if fd is None:
            return self._lost_at is None
        try:
            st: Optional[os.stat_result] = os.fstat(fd)
            size = st.st_size if st else -1
        except OSError as e:
            st, size, why = None, -1, f"cannot stat it ({e.strerror})"
        if size >= self._need:
            why = self._replaced(st)
            if not why:
                return True
        elif size >= 0:
            why = f"truncated to {size} bytes (a ring of {self.size} needs {self._need})"
        self._detach()
        self._lost_at = self._retry_at = self.clock()
        self._stall.reset()
        self.report("lost", f"ring file {why}; stopped reading it until it is a whole ring again "
                    "(recreate it, e.g. restart its writer)")
        return False

    def _replaced(self, st: Optional[os.stat_result]) -> str:
        """At most once a REOPEN_EVERY_SEC: why the path no longer names the mapped file (a new
        ring renamed over it, e.g. ringfile.create(replace=True)), or ''. A removed path keeps the
        file we have: its writer may still be writing it."""
        now = self.clock()
        if st is None or now < self._ident_at:
            return ""
        self._ident_at = now + REOPEN_EVERY_SEC
        try:
            ps = os.stat(self.path)
        except OSError:
            return ""
        if (ps.st_dev, ps.st_ino) == (st.st_dev, st.st_ino):
            return ""
        return "replaced (the path now names another file)"

    def _reopen(self) -> bool:
        """At most once a REOPEN_EVERY_SEC while lost: map the file again if it is a whole ring now."""
        if self._lost_at is None or self.clock() < self._retry_at:
            return False
        self._retry_at = self.clock() + REOPEN_EVERY_SEC
        from aod import ringfile

        try:
            fd, size, need, cons, rest = map_file(self.path)
        except OSError:
            return False
        try:
            self._attach(size, cons, rest, ringfile.PROD_OFF, ringfile.DATA_OFF)
        except BaseException:
            os.close(fd)
            raise
        self._watch_fd, self._need = fd, need
        self._lost_at = None
        self.reopens += 1
        self.report("reopened", f"ring file is a whole ring again ({size} bytes of data); reading it")
        return True
