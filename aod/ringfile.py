"""File-backed ring with the kernel BPF ring-buffer layout (ring layer: tests, bench, demo).

Stands in for the pinned kernel ring so the whole pipeline runs without root:
the synthetic tracer writes here, RingReader.open_file() reads it. File layout
(4096-byte pages, independent of the host page size):

  page 0      u64 consumer_pos @0; file header @HEADER_OFF (magic, data size, counters offset)
  page 1      u64 producer_pos @0
  data        `size` bytes (power of two, multiple of 4096) at DATA_OFF
  counters    page aligned: u64 drops, then CMD_STATS_DTYPE[CMD_SLOTS]
              (what the BPF tracer keeps in its pinned per-CPU maps)

One writer per file (FileRingWriter is not safe against a second writer); the
reader and the writer may be different processes and either may restart. Both
fstat() the file before touching their maps: a truncated ring file is an error
(writer) or let go until whole again (reader), not a SIGBUS, unless the shrink lands between
that fstat and the access (mmap cannot close that window; ringguard.py). A writer that finds
its producer position misaligned rounds it up to a record boundary, so a corrupt position
costs one resync, not every later record.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
import tempfile
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np

from aod.record import (
    CMD_SLOTS,
    CMD_STATS_DTYPE,
    EVENT_DTYPE,
    EVENT_SIZE,
    HIST_BUCKETS,
    KIND_COMPLETION,
    KIND_ERROR,
    cmd_slot,
    hist_bucket,
)
from aod.ring import BUSY_BIT, DISCARD_BIT, HDR_SIZE, LEN_MASK, REC_SIZE, RingError, round8

FILE_PAGE = 4096
CONS_OFF = 0
HEADER_OFF = 2048  # in page 0, away from consumer_pos
PROD_OFF = FILE_PAGE
DATA_OFF = 2 * FILE_PAGE
MAGIC = b"AODRING2"  # 2: counters hold CMD_STATS_DTYPE v2 (with `ignored`)
_HEADER = struct.Struct("<8sQQQ")  # magic, data size, counters offset, counters length
COUNTERS_USED = 8 + CMD_SLOTS * CMD_STATS_DTYPE.itemsize
COUNTERS_LEN = -(-COUNTERS_USED // FILE_PAGE) * FILE_PAGE
MIN_SIZE = FILE_PAGE
MAX_SIZE = 1 << 30


class Layout(NamedTuple):
    size: int
    counters_off: int
    counters_len: int
    total: int


def layout(size: int) -> Layout:
    if not (MIN_SIZE <= size <= MAX_SIZE) or size & (size - 1):
        raise ValueError(f"ring size {size} must be a power of two between {MIN_SIZE} and {MAX_SIZE}")
    off = DATA_OFF + size
    return Layout(size, off, COUNTERS_LEN, off + COUNTERS_LEN)


def _read_layout(fd: int, path: str) -> Layout:
    raw = os.pread(fd, _HEADER.size, HEADER_OFF)
    if len(raw) < _HEADER.size:
        raise RingError(errno.EINVAL, f"{path}: not an aodv2 ring file (too short)")
    magic, size, coff, clen = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise RingError(errno.EINVAL, f"{path}: not an aodv2 ring file (bad magic)")
    try:
        lay = layout(size)
    except ValueError as e:
        raise RingError(errno.EINVAL, f"{path}: corrupt ring header: {e}") from None
    if (coff, clen) != (lay.counters_off, lay.counters_len):
        raise RingError(errno.EINVAL, f"{path}: corrupt ring header (counters at {coff}+{clen})")
    if os.fstat(fd).st_size < lay.total:
        raise RingError(errno.EINVAL, f"{path}: ring file truncated (< {lay.total} bytes)")
    return lay


def open_ring_fd(path: str, write: bool) -> Tuple[int, Layout]:
    """Open and validate a ring file: regular, no symlink, ours (or root's), not group/world writable."""
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise RingError(e.errno, f"{path}: cannot open ring file: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RingError(errno.EINVAL, f"{path}: ring file is not a regular file")
        if st.st_mode & 0o022:
            raise RingError(errno.EPERM, f"{path}: ring file is group/world writable; refusing it")
        if st.st_uid not in (os.geteuid(), 0):
            raise RingError(errno.EPERM, f"{path}: ring file owned by uid {st.st_uid}; refusing it")
        return fd, _read_layout(fd, path)
    except BaseException:
        os.close(fd)
        raise


def existing_size(path: str) -> Optional[int]:
    """Data size of the ring file at path, None if there is none; RingError if not a ring."""
    try:
        fd, lay = open_ring_fd(path, write=False)
    except RingError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    os.close(fd)
    return lay.size


def create(path: str, size: int, replace: bool = False) -> None:
    """Create the ring file atomically (mode 0600). An existing ring of the same size is kept
    with its contents (either side may restart); a different size or a non-ring file is an
    error unless replace=True."""
    lay = layout(size)
    try:
        have = existing_size(path)
    except RingError:
        if not replace:
            raise
        have = -1
    if have == size:
        return
    if have is not None and not replace:
        raise RingError(errno.EEXIST, f"{path}: ring exists with size {have}, not {size}; pass replace")
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".aodring.", dir=d)  # 0600
    except OSError as e:
        raise RingError(e.errno, f"{path}: cannot create ring file: {e.strerror}") from None
    try:
        os.ftruncate(fd, lay.total)  # zero: positions 0, counters 0
        os.pwrite(fd, _HEADER.pack(MAGIC, size, lay.counters_off, lay.counters_len), HEADER_OFF)
        os.close(fd)
        fd = -1
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # never clobbers a ring another process just made
            except FileExistsError:
                if existing_size(path) != size:
                    msg = f"{path}: ring created concurrently with another size"
                    raise RingError(errno.EEXIST, msg) from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP) or os.path.lexists(path):
                    raise
                os.rename(tmp, path)  # filesystem without hard links
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


class FileRingWriter:
    """The single producer of a file ring. Writes whole records or counts them as drops."""

    def __init__(self, path: str) -> None:
        fd, lay = open_ring_fd(path, write=True)
        try:
            self._mm = mmap.mmap(fd, lay.total, access=mmap.ACCESS_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd: Optional[int] = fd  # kept open: fstat()ed before each access (see _check)
        self._total = lay.total
        self.path = path
        self.size = lay.size
        self._mask = lay.size - 1
        arr = np.frombuffer(self._mm, dtype=np.uint8)
        self._cons: Any = arr[CONS_OFF : CONS_OFF + 8].view("<u8")
        self._prod: Any = arr[PROD_OFF : PROD_OFF + 8].view("<u8")
        self._data: Any = arr[DATA_OFF : DATA_OFF + lay.size]
        self._data32: Any = self._data.view("<u4")
        c = lay.counters_off
        self._drops: Any = arr[c : c + 8].view("<u8")
        self._stats: Any = arr[c + 8 : c + COUNTERS_USED].view(CMD_STATS_DTYPE)
        self._pending: List[Tuple[int, int]] = []  # (pos, final header) left BUSY by write_raw
        self.recovered = self._recover()

    def _recover(self) -> int:
        """A writer that died between reserve and commit left a BUSY record that would stall
        the reader forever: mark such records DISCARD (we are the only writer)."""
        cons, prod = int(self._cons[0]), int(self._prod[0])
        fixed = 0
        if not 0 <= prod - cons <= self.size or cons % 8:
            return 0  # corrupt positions: the reader resyncs
        pos = cons
        while pos < prod:
            i = (pos & self._mask) >> 2
            h = int(self._data32[i])
            total = round8((h & LEN_MASK) + HDR_SIZE)
            if pos + total > prod:
                break
            if h & BUSY_BIT:
                self._data32[i] = (h & LEN_MASK) | DISCARD_BIT
                fixed += 1
            pos += total
        return fixed

    def _check(self) -> None:
        """Raise RingError if the file shrank: touching the map past its end would be a SIGBUS."""
        size = os.fstat(self._fd).st_size if self._fd is not None else -1
        if size < self._total:
            raise RingError(errno.EIO, f"{self.path}: ring file truncated to {max(size, 0)} bytes "
                            f"(needs {self._total}); writer stops")

    def free_bytes(self) -> int:
        self._check()
        prod = int(self._prod[0])
        if prod % 8:  # a corrupt position: realign (we are the only writer), the reader follows
            self._prod[0] = prod = (prod + 7) & ~7
        used = prod - int(self._cons[0])
        if not 0 <= used <= self.size:
            return 0  # corrupt positions: write nothing until the reader resyncs
        return self.size - used

    def free_records(self) -> int:
        return self.free_bytes() // REC_SIZE

    def _put(self, pos: int, block: np.ndarray) -> None:
        start = pos & self._mask
        first = min(len(block), self.size - start)
        self._data[start : start + first] = block[:first]
        if first < len(block):
            self._data[: len(block) - first] = block[first:]

    def write(self, events: np.ndarray) -> int:
        """Write as many events as fit; count the rest as drops. Returns the number written.
        Events are written verbatim: stamp version/size (record.empty does) or the reader
        counts them as bad records."""
        if events.dtype != EVENT_DTYPE:
            raise TypeError(f"events must be EVENT_DTYPE, not {events.dtype}")
        n = len(events)
        fit = min(n, self.free_records())
        if fit < n:
            self._drops[0] += n - fit
        if fit == 0:
            return 0
        block = np.zeros((fit, REC_SIZE), dtype=np.uint8)
        block.view("<u4")[:, 0] = EVENT_SIZE | BUSY_BIT  # reserved, not committed; pgoff 0
        block[:, HDR_SIZE:] = np.ascontiguousarray(events[:fit]).view(np.uint8).reshape(fit, EVENT_SIZE)
        prod = int(self._prod[0])
        self._put(prod, block.reshape(-1))
        self._prod[0] = prod + fit * REC_SIZE  # publish the reservation
        hdr = ((prod + np.arange(fit, dtype=np.int64) * REC_SIZE) & self._mask) >> 2
        self._data32[hdr] = EVENT_SIZE  # commit in order: clear BUSY
        return fit

    def write_raw(
        self, payload: bytes, busy: bool = False, discard: bool = False, hdr_len: Optional[int] = None
    ) -> bool:
        """One arbitrary record (tests): `hdr_len` overrides the header's len word verbatim;
        busy=True leaves it reserved until commit_pending(). False (and a drop) if it does not fit."""
        total = round8(len(payload) + HDR_SIZE)
        if total > self.free_bytes():
            self._drops[0] += 1
            return False
        final = (len(payload) | (DISCARD_BIT if discard else 0)) if hdr_len is None else hdr_len & 0xFFFFFFFF
        rec = np.zeros(total, dtype=np.uint8)
        rec[:4].view("<u4")[0] = (len(payload) & LEN_MASK) | BUSY_BIT
        rec[HDR_SIZE : HDR_SIZE + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        prod = int(self._prod[0])
        self._put(prod, rec)
        self._prod[0] = prod + total
        if busy:
            self._pending.append((prod, final))
        else:
            self._data32[(prod & self._mask) >> 2] = final
        return True

    def commit_pending(self) -> int:
        """Commit the records write_raw(busy=True) left reserved, in order."""
        self._check()
        for pos, final in self._pending:
            self._data32[(pos & self._mask) >> 2] = final
        n = len(self._pending)
        self._pending = []
        return n

    def record_stats(self, events: np.ndarray) -> None:
        """Add events to the per-command counters as the BPF tracer does for all traffic:
        completions and errors go into hist and latency_sum_ns; errors also count in errors;
        completions with a status (an ignored one, see SyntheticTracer) count in ignored."""
        self._check()
        kind = events["kind"]
        done = (kind == KIND_COMPLETION) | (kind == KIND_ERROR)
        slot = cmd_slot(events["command"][done])
        lat = events["latency_ns"][done].astype(np.uint64)
        flat = slot * HIST_BUCKETS + hist_bucket(lat)
        counts = np.bincount(flat, minlength=CMD_SLOTS * HIST_BUCKETS).astype(np.uint64)
        self._stats["hist"] += counts.reshape(CMD_SLOTS, HIST_BUCKETS)
        if len(slot):  # exact u64 sums per slot (bincount weights would be float)
            order = np.argsort(slot, kind="stable")
            slots, starts = np.unique(slot[order], return_index=True)
            sums = np.zeros(CMD_SLOTS, dtype=np.uint64)
            sums[slots] = np.add.reduceat(lat[order], starts)
            self._stats["latency_sum_ns"] += sums
        errs = np.bincount(cmd_slot(events["command"][kind == KIND_ERROR]), minlength=CMD_SLOTS)
        self._stats["errors"] += errs.astype(np.uint64)
        ign = (kind == KIND_COMPLETION) & (events["nt_status"] != 0)
        self._stats["ignored"] += np.bincount(cmd_slot(events["command"][ign]), minlength=CMD_SLOTS).astype(np.uint64)

    def add_drops(self, n: int) -> None:
        self._check()
        self._drops[0] += n

    def close(self) -> None:
        self._cons = self._prod = self._data = self._data32 = self._drops = self._stats = None
        try:
            self._mm.close()
        except BufferError:
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileRingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
