"""Tracer counters beside the ring: drops and per-command latency stats (ring layer -> detect).

The tracer counts every completion into log2 histograms and counts ring-full
drops; only slow/error/reconnect records travel through the ring. The core reads
the cumulative values each window and works on deltas (`delta`). Two sources:
pinned per-CPU arrays in bpffs (kernel tracer) and the counters region of a
file ring (synthetic tracer). Reads never raise: a missing source gives zeros
with `available = False` and a `reason` (a truncated file ring too: it is let go,
never read past its end, and mapped again once it is whole).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from typing import Any, Optional, Protocol

import numpy as np

from aod import bpfsys
from aod.pins import CMD_STATS, CMD_STATS_V1
from aod.record import CMD_SLOTS, CMD_STATS_DTYPE, CMD_STATS_V1_DTYPE, cmd_stats_from_v1


class Counters(Protocol):
    available: bool
    reason: str
    source: str  # which map or region the last read came from; a change means counting starts again

    def drops(self) -> Optional[int]: ...

    def cmd_stats(self) -> np.ndarray: ...

    def close(self) -> None: ...


def zero_stats() -> np.ndarray:
    return np.zeros(CMD_SLOTS, dtype=CMD_STATS_DTYPE)


def delta(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """cur - prev for CMD_STATS arrays. Any counter going backwards means the tracer
    restarted (its maps were recreated), so the whole of cur is new."""
    p = np.ascontiguousarray(prev).view(np.uint64)
    c = np.ascontiguousarray(cur).view(np.uint64)
    if p.shape != c.shape or bool(np.any(c < p)):
        return np.array(cur, dtype=CMD_STATS_DTYPE)
    return (c - p).view(CMD_STATS_DTYPE)


def delta_count(prev: int, cur: int) -> int:
    """Same rule for a scalar counter such as drops."""
    return cur - prev if cur >= prev else cur


class FileCounters:
    """The counters region of a file ring (see ringfile.py)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.available = False
        self.reason = "not opened yet"
        self.source = path
        self._mm: Optional[mmap.mmap] = None
        self._fd: Optional[int] = None  # kept open: fstat()ed before each read of the map
        self._need = 0
        self._drops: Any = None
        self._stats: Any = None

    def _open(self) -> bool:
        if self._mm is not None:
            try:  # a truncated file would SIGBUS on the next read of the map: let it go first
                size = os.fstat(self._fd).st_size if self._fd is not None else -1
            except OSError:
                size = -1
            if size >= self._need:
                return True
            self.close()
            self.available, self.reason = False, f"{self.path}: ring file truncated to {max(size, 0)} bytes"
            return False
        from aod import ringfile

        try:
            fd, lay = ringfile.open_ring_fd(self.path, write=False)
        except OSError as e:
            self.available, self.reason = False, str(e)
            return False
        try:
            self._mm = mmap.mmap(fd, lay.total, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            os.close(fd)
            self.available, self.reason = False, f"{self.path}: cannot map counters: {e}"
            return False
        self._fd, self._need = fd, lay.total
        c = lay.counters_off
        self._drops = np.frombuffer(self._mm, dtype="<u8", count=1, offset=c)
        self._stats = np.frombuffer(self._mm, dtype=CMD_STATS_DTYPE, count=CMD_SLOTS, offset=c + 8)
        self.available, self.reason = True, ""
        return True

    def drops(self) -> Optional[int]:
        return int(self._drops[0]) if self._open() else None

    def cmd_stats(self) -> np.ndarray:
        return np.array(self._stats) if self._open() else zero_stats()

    def close(self) -> None:
        self._drops = self._stats = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PinnedCounters:
    """Pinned per-CPU arrays `<dir>/drops` (u32 0 -> u64) and `<dir>/cmd_stats_v2`
    (u32 slot -> struct aod_cmd_stats). Opened afresh on each read, so a tracer that
    re-pins its maps is followed. Until a tracer of this version has pinned its
    cmd_stats, the previous layout (`<dir>/cmd_stats`, pinned by an aodv2 0.1 tracer
    still running after an upgrade) is read instead, with `ignored` zero."""

    def __init__(self, pin_dir: str) -> None:
        self.dir = pin_dir
        self.available = False
        self.reason = "not read yet"
        self.source = ""

    def _read(self, name: str, value_size: int, keys: int) -> Optional[np.ndarray]:
        """u64 matrix [keys, words] summed over CPUs, or None (available/reason set: the caller
        restores them when the map is not the one they stand for)."""
        path = os.path.join(self.dir, name)
        try:
            fd = bpfsys.obj_get(path, bpfsys.BPF_F_RDONLY)
        except OSError as e:
            why = "not pinned yet (tracer not started?)" if e.errno == errno.ENOENT else str(e)
            self.available, self.reason = False, f"{path}: {why}"
            return None
        try:
            info = bpfsys.map_info(fd, path)
            want = (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, value_size)
            if (info.type, info.key_size, info.value_size) != want or info.max_entries < keys:
                self.available = False
                self.reason = (
                    f"{path}: unexpected map (type {info.type}, key {info.key_size}, value "
                    f"{info.value_size}, entries {info.max_entries}); want percpu array of {value_size}"
                )
                return None
            ncpu = bpfsys.possible_cpus()
            stride = (value_size + 7) & ~7
            words = value_size // 8
            out = np.zeros((keys, words), dtype=np.uint64)
            for k in range(keys):
                raw = bpfsys.map_lookup(fd, struct.pack("<I", k), stride * ncpu, path)
                per_cpu = np.frombuffer(raw, dtype="<u8").reshape(ncpu, stride // 8)[:, :words]
                out[k] = per_cpu.sum(axis=0, dtype=np.uint64)
        except OSError as e:
            self.available, self.reason = False, str(e)
            return None
        finally:
            os.close(fd)
        self.available, self.reason = True, ""
        return out

    def drops(self) -> Optional[int]:
        """The ring-full drop count, None if unreadable; `available` stays about cmd_stats."""
        state = (self.available, self.reason)
        m = self._read("drops", 8, 1)
        self.available, self.reason = state
        return None if m is None else int(m[0, 0])

    def cmd_stats(self) -> np.ndarray:
        name, old = CMD_STATS, CMD_STATS_V1
        if not os.path.exists(os.path.join(self.dir, name)) and os.path.exists(os.path.join(self.dir, old)):
            m = self._read(old, CMD_STATS_V1_DTYPE.itemsize, CMD_SLOTS)
            self.source = old
            if m is None:
                return zero_stats()
            return cmd_stats_from_v1(np.ascontiguousarray(m).view(CMD_STATS_V1_DTYPE).reshape(CMD_SLOTS))
        m = self._read(name, CMD_STATS_DTYPE.itemsize, CMD_SLOTS)
        self.source = name
        if m is None:
            return zero_stats()
        return np.ascontiguousarray(m).view(CMD_STATS_DTYPE).reshape(CMD_SLOTS)

    def close(self) -> None:
        pass


def open_counters(ring_path: str, is_file: bool) -> Counters:
    """Counters that go with the ring at ring_path: its file region, or the maps pinned beside it."""
    if is_file:
        return FileCounters(ring_path)
    return PinnedCounters(os.path.dirname(ring_path))
