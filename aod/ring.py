"""Ring reader: BPF ring-buffer layout -> numpy EVENT_DTYPE batches (start of the data flow).

ring -> dispatch -> detect -> collect -> retain. One code path reads both the
kernel ring pinned in bpffs (`open_pinned`) and a file-backed ring of identical
layout (`open_file`, see ringfile.py). Layout, as the kernel maps it:

  consumer page (RW): u64 consumer_pos @0      producer page (RO): u64 producer_pos @0
  data (RO, `size` bytes, power of two): records at pos & (size - 1)
  record = u32 len (bit31 BUSY, bit30 DISCARD) + u32 pgoff + payload, padded to 8 bytes

The kernel double-maps the data pages; we ignore that and handle wrap explicitly
so the file ring needs no double mapping. Parsing is vectorised over runs of
standard 80-byte records; only odd records (BUSY, DISCARD of another length,
foreign length, garbage) and their immediate neighbours take a Python step each.

Faults the kernel never makes but a file ring (or a dead writer) can, each bounded,
counted and logged at most once a minute per kind (ringguard.py): positions
misaligned, reversed or more than the ring apart (resync to the producer); a record
left BUSY at the same position for STALL_SEC (skipped); a truncated ring file (let go
before any access could SIGBUS, reopened once it is a whole ring again).

Memory ordering: positions are read and written with single aligned 8-byte
loads/stores. x86_64 (TSO) gives the load->load and load->store order the
protocol needs; on arm64 we rely on the microseconds of interpreter work
between the steps (no barrier is available from Python).
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from aod import bpfsys
from aod.record import EVENT_DTYPE, EVENT_SIZE, EVENT_VERSION
from aod.ringguard import REOPEN_EVERY_SEC, Reporter, RingError, RingMaps, StallClock, map_file

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LEN_MASK = 0xFFFFFFFF & ~(BUSY_BIT | DISCARD_BIT)
HDR_SIZE = 8
_NOT_DISCARD = np.uint32(0xFFFFFFFF ^ DISCARD_BIT)


def round8(n: int) -> int:
    return (n + 7) & ~7


REC_SIZE = round8(HDR_SIZE + EVENT_SIZE)  # 80: one standard record in the ring
REC_DTYPE = np.dtype([("len", "<u4"), ("pgoff", "<u4"), ("ev", EVENT_DTYPE)])
assert REC_DTYPE.itemsize == REC_SIZE

_LOOK0 = 256  # first numpy look-ahead (records)
_STREAK = 16  # standard records in a row before going back to numpy
FILE_POLL_SEC = 0.005  # file ring (and BUSY head) poll interval: no busy spin
FILE_IDLE_POLL_SEC = 0.05  # after FILE_IDLE_AFTER_SEC without data the file ring is polled this slowly
FILE_IDLE_AFTER_SEC = 1.0
_EMPTY, _BUSY, _READY, _LOST = 0, 1, 2, 3  # head states (_LOST: file ring truncated)


class RingReader(RingMaps):
    """Single consumer of one ring. Not thread-safe; one reader per ring at a time."""

    def __init__(
        self,
        path: str,
        size: int,
        cons_map: mmap.mmap,
        prod_map: mmap.mmap,
        prod_off: int,
        data_off: int,
        fd: Optional[int] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # monotonic seconds: stall bound, report rate, reopen pace
        self._last_data = time.monotonic()
        self.path = path
        self._fd = fd
        self._init_maps()
        self._attach(size, cons_map, prod_map, prod_off, data_off)
        self._epoll: Optional[select.epoll] = None
        self.wakeup = "poll"
        if fd is not None:
            try:  # BPF ringbuf maps support poll; level-triggered on "data available"
                ep = select.epoll()
                try:
                    ep.register(fd, select.EPOLLIN)
                except OSError:
                    ep.close()
                    raise
                self._epoll = ep
                self.wakeup = "epoll"
            except OSError:
                self._epoll = None
        self._stall = StallClock(clock)
        self.report = Reporter(path, clock)  # rate-limited lines about faults of this ring
        # cumulative counters; callers log them (the reader itself logs only ring faults, rate-limited)
        self.records_read = 0
        self.bytes_read = 0
        self.bad_records = 0  # unknown version / wrong size / garbage framing / bad positions / stalled
        self.foreign = 0  # well-framed records of another length (skipped)
        self.discarded = 0  # records the producer discarded
        self.resyncs = 0  # corrupt positions or garbage len: skipped to producer_pos
        self.stalled = 0  # records left BUSY for STALL_SEC and skipped (also in bad_records)
        self.reopens = 0  # file ring truncated and read again once whole

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open_file(cls, path: str) -> RingReader:
        """A file-backed ring made by ringfile.create(). Its fd stays open: every wait and drain
        fstat()s it first, so a truncated file is let go, never read (that would be a SIGBUS)."""
        from aod import ringfile

        fd, size, need, cons, rest = map_file(path)
        try:
            r = cls(path, size, cons, rest, ringfile.PROD_OFF, ringfile.DATA_OFF)
        except BaseException:
            os.close(fd)
            raise
        r._watch_fd, r._need = fd, need
        return r

    @classmethod
    def open_pinned(cls, path: str) -> RingReader:
        """The kernel BPF ring buffer pinned at `path` (needs root / CAP_BPF)."""
        fd = bpfsys.obj_get(path)
        try:
            info = bpfsys.map_info(fd, path)
            if info.type != bpfsys.BPF_MAP_TYPE_RINGBUF:
                raise RingError(errno.EINVAL, f"{path}: BPF map type {info.type} is not a ring buffer")
            size, page = info.max_entries, mmap.PAGESIZE
            try:
                cons = mmap.mmap(fd, page, access=mmap.ACCESS_WRITE, offset=0)
                prod = mmap.mmap(fd, page + 2 * size, access=mmap.ACCESS_READ, offset=page)
            except (OSError, ValueError) as e:
                code = getattr(e, "errno", None) or errno.EIO
                raise RingError(code, f"{path}: cannot mmap ring: {e}") from None
            return cls(path, size, cons, prod, 0, page, fd=fd)
        except BaseException:
            os.close(fd)
            raise

    # ---- reading -------------------------------------------------------------------------
    def pending(self) -> int:
        """Bytes between consumer and producer (ring fill level); 0 while a file ring is lost."""
        if not self._usable():
            return 0
        return int(self._prod[0]) - int(self._cons[0])

    def _copy(self, pos: int, n: int) -> np.ndarray:
        """Owned copy of n ring bytes starting at absolute position pos, unwrapped."""
        start = pos & self._mask
        if start + n <= self.size:
            return np.array(self._data[start : start + n])
        out = np.empty(n, dtype=np.uint8)
        first = self.size - start
        out[:first] = self._data[start:]
        out[first:] = self._data[: n - first]
        return out

    def drain(self, max_bytes: Optional[int] = None) -> np.ndarray:
        """Consume committed records (about max_bytes of ring at most); owned EVENT_DTYPE array."""
        if not self._usable():
            return np.empty(0, dtype=EVENT_DTYPE)
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        avail = prod - cons
        if avail == 0:
            return np.empty(0, dtype=EVENT_DTYPE)
        if avail < 0 or avail > self.size or (cons | prod) & 7:
            self._resync(cons, prod)
            return np.empty(0, dtype=EVENT_DTYPE)
        window = avail if max_bytes is None else min(avail, max(REC_SIZE, max_bytes & ~7))
        # pass 1: find the committed prefix; pass 2: re-copy it, so no payload byte can
        # predate its header's commit whatever order memcpy used
        segments, end, data_end, busy = self._scan(self._copy(cons, window), avail)
        events = self._extract(self._copy(cons, data_end), segments) if segments else None
        if busy and self._stall.expired(cons + end, prod):
            end = self._skip_stalled(cons, end, avail)
        if end:
            self._cons[0] = cons + end  # after the copy-out: the producer may reuse the space
            self.bytes_read += end
        if events is None:
            return np.empty(0, dtype=EVENT_DTYPE)
        self.records_read += len(events)
        return events

    def _skip_stalled(self, cons: int, end: int, avail: int) -> int:
        """The record at cons + end stayed BUSY for STALL_SEC: skip it, and the BUSY records right
        behind it reserved before it was first seen (BUSY as long). Count, report, return the new end."""
        limit = min(self._stall.limit - cons, avail)
        first, held = cons + end, self._stall.held()
        self._stall.reset()
        n, how = 0, ""
        while end < limit:
            h = int(self._data32[((cons + end) & self._mask) >> 2])
            if not h & BUSY_BIT:
                break  # committed (maybe just now): the next drain reads it
            n += 1
            total = round8((h & LEN_MASK) + HDR_SIZE)
            if total > self.size or end + total > avail:
                self.resyncs += 1
                how, end = "; then skipped to the producer (a garbage length)", avail
                break
            end += total
        if n:
            self.stalled += n
            self.bad_records += n
            self.report("stalled", f"{n} record(s) reserved from position {first:#x} were not committed for "
                        f"{held:.1f}s (writer dead or stuck?); skipped them{how}, counted as bad records")
        return end

    def _scan(self, buf: np.ndarray, avail: int) -> Tuple[List[Tuple[int, int]], int, int, bool]:
        """Walk headers. Returns runs (offset, count) of standard records, consumable end, data
        end, and whether the walk stopped at a reserved (BUSY) record at the consumable end.

        Long runs of standard records are checked with numpy (look-ahead growing x4 from
        _LOOK0); after an odd record, headers are stepped one by one in Python until
        _STREAK standard ones in a row switch back, so odd records cost O(1) each."""
        u32 = buf.view("<u4")
        hdr = buf.data.cast("I")  # fast scalar reads (little-endian hosts only)
        window = len(buf)
        step = REC_SIZE // 4
        segments: List[Tuple[int, int]] = []
        off = data_end = 0
        look, streak = _LOOK0, 0

        def add(k: int) -> None:
            if segments and segments[-1][0] + segments[-1][1] * REC_SIZE == off:
                segments[-1] = (segments[-1][0], segments[-1][1] + k)
            else:
                segments.append((off, k))

        while off < window:
            n = min((window - off) // REC_SIZE, look)
            if n:  # vector step
                lens = u32[off // 4 : off // 4 + n * step : step]
                odd = np.flatnonzero((lens & _NOT_DISCARD) != EVENT_SIZE)  # BUSY is odd too
                k = int(odd[0]) if odd.size else n
                if k:
                    add(k)
                    off += k * REC_SIZE
                    data_end = off
                if k == n:
                    look *= 4
                    continue
                look = 0
            h = hdr[off >> 2]  # scalar step
            if h & BUSY_BIT:
                return segments, off, data_end, True  # not committed yet: do not advance past it
            total = round8((h & LEN_MASK) + HDR_SIZE)
            if total > self.size or off + total > avail:
                # the kernel never writes this: corrupt file ring; skip all that is published
                self.bad_records += 1
                self.resyncs += 1
                self.report("length", f"record length {h & LEN_MASK} runs past the producer or the ring; "
                            "skipped to the producer, counted as a bad record")
                off = avail
                break
            if (h & LEN_MASK) == EVENT_SIZE:
                if off + REC_SIZE > window:
                    break  # cut by max_bytes: next drain
                add(1)
                off += REC_SIZE
                data_end = off
                streak += 1
                if streak >= _STREAK:
                    look, streak = _LOOK0, 0
                continue
            streak = 0
            if h & DISCARD_BIT:
                self.discarded += 1
            else:
                self.foreign += 1
            off += total
        return segments, off, data_end, False

    def _extract(self, buf: np.ndarray, segments: List[Tuple[int, int]]) -> np.ndarray:
        if len(segments) == 1:  # common case: one contiguous run of records
            off, k = segments[0]
            recs = buf[off : off + k * REC_SIZE].reshape(k, REC_SIZE)
        else:  # runs split by odd records: gather them in one step
            seg = np.array(segments, dtype=np.int64)
            k = int(seg[:, 1].sum())
            first = np.repeat(seg[:, 0] - (np.cumsum(seg[:, 1]) - seg[:, 1]) * REC_SIZE, seg[:, 1])
            starts = first + np.arange(k, dtype=np.int64) * REC_SIZE
            recs = buf[starts[:, None] + np.arange(REC_SIZE)]
        rec = recs.view(REC_DTYPE).reshape(k)
        ev = rec["ev"]
        keep = (rec["len"] & DISCARD_BIT) == 0
        good = keep & (ev["version"] == EVENT_VERSION) & (ev["size"] == EVENT_SIZE)
        n_keep = int(np.count_nonzero(keep))
        n_good = int(np.count_nonzero(good))
        self.discarded += k - n_keep
        self.bad_records += n_keep - n_good
        if n_good == k:  # one strided block copy of the payloads
            return np.ascontiguousarray(recs[:, HDR_SIZE:]).view(EVENT_DTYPE).reshape(k)
        return ev[good]

    # ---- waiting -------------------------------------------------------------------------
    def _head(self) -> int:
        if not self._usable():
            return _LOST
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        if prod == cons:
            return _EMPTY
        if 0 < prod - cons <= self.size and not (cons | prod) & 7:
            if int(self._data32[(cons & self._mask) >> 2]) & BUSY_BIT:
                # stuck past STALL_SEC: ready, so drain() skips it
                return _READY if self._stall.expired(cons, prod) else _BUSY
        return _READY  # committed data, or corruption that drain() resyncs

    def wait(self, timeout: float) -> bool:
        """Block until a committed record (or something to skip) is at the head, or timeout."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            state = self._head()
            if state == _LOST and self._reopen():
                continue
            if state == _READY:
                self._last_data = time.monotonic()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if state == _EMPTY and self._epoll is not None:
                self._epoll.poll(remaining)
            elif state == _LOST:
                time.sleep(min(REOPEN_EVERY_SEC, remaining))
            else:  # file ring, or a BUSY head (the kernel commits within microseconds)
                idle = state == _EMPTY and time.monotonic() - self._last_data > FILE_IDLE_AFTER_SEC
                time.sleep(min(FILE_IDLE_POLL_SEC if idle else FILE_POLL_SEC, remaining))

    # ---- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        self._detach()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> Dict[str, int]:
        return {
            "records_read": self.records_read,
            "bytes_read": self.bytes_read,
            "bad_records": self.bad_records,
            "foreign": self.foreign,
            "discarded": self.discarded,
            "resyncs": self.resyncs,
            "stalled": self.stalled,
            "reopens": self.reopens,
        }
