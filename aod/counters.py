"""Tracer counters beside the ring: drops and per-command latency stats (ring layer -> detect).

The tracers count every completion into log2 histograms and count ring-full
drops; only slow/error/reconnect records travel through the ring. The core reads
the cumulative values each window and works on deltas (`delta`). Two sources:
pinned per-CPU arrays in bpffs (kernel tracers) and the counters region of a
file ring (synthetic tracer). The statistics are one array of record.STATS_ROWS
rows in two blocks, each a map of its own followed apart (`BLOCKS`, `source`): the
smb tracer's cmd_stats_v2, then the nfs tracer's nfs_stats_v1. Reads never raise: a
missing source gives zeros with `available = False` and a `reason` (a truncated file
ring too: it is let go, never read past its end, and mapped again once it is whole).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from typing import Any, Optional, Protocol

import numpy as np

from aod import bpfsys
from aod.pins import CMD_STATS, CMD_STATS_V1, NFS_STATS
from aod.record import CMD_SLOTS, CMD_STATS_DTYPE, CMD_STATS_V1_DTYPE, NFS_SLOTS, STATS_ROWS, cmd_stats_from_v1

# the statistics' blocks, one per tracer map: (first row, end row)
BLOCKS = ((0, CMD_SLOTS), (CMD_SLOTS, STATS_ROWS))
Sources = tuple[str, ...]  # per block, the map (or region) its rows came from; "" when unread


class Counters(Protocol):
    available: bool
    reason: str
    source: Sources  # per block, which map the last read came from; a change means counting starts again

    def drops(self) -> Optional[int]: ...

    def cmd_stats(self) -> np.ndarray: ...

    def close(self) -> None: ...


def zero_stats() -> np.ndarray:
    return np.zeros(STATS_ROWS, dtype=CMD_STATS_DTYPE)


def delta(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """cur - prev for statistics arrays, block by block. Any counter of a block going backwards
    means its tracer restarted (its map was recreated), so the whole of that block of cur is new."""
    if prev.shape != cur.shape:
        return np.array(cur, dtype=CMD_STATS_DTYPE)
    out = np.array(cur, dtype=CMD_STATS_DTYPE)
    for a, b in BLOCKS:
        p = np.ascontiguousarray(prev[a:b]).view(np.uint64)
        c = np.ascontiguousarray(cur[a:b]).view(np.uint64)
        if not bool(np.any(c < p)):
            out[a:b] = (c - p).view(CMD_STATS_DTYPE)
    return out


def rebase(prev: np.ndarray, cur: np.ndarray, was: Sources, now: Sources) -> np.ndarray:
    """The previous read as the base for cur, block by block: a block whose map just appeared
    is a baseline (its counts are from before this reading), one whose map was replaced by
    another (a newer tracer's layout) starts from zero (all of it is new)."""
    out = np.array(prev, dtype=CMD_STATS_DTYPE)
    for i, (a, b) in enumerate(BLOCKS):
        w, n = (was[i] if i < len(was) else ""), (now[i] if i < len(now) else "")
        if w == n:
            continue
        out[a:b] = cur[a:b] if not w else 0
    return out


def delta_count(prev: int, cur: int) -> int:
    """Same rule for a scalar counter such as drops."""
    return cur - prev if cur >= prev else cur


class FileCounters:
    """The counters region of a file ring (see ringfile.py)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.available = False
        self.reason = "not opened yet"
        self.source: Sources = (path, "")
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
        out = zero_stats()
        if self._open():
            out[:CMD_SLOTS] = self._stats
        return out

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
    """Pinned per-CPU arrays `<dir>/drops` (u32 0 -> u64), `<dir>/cmd_stats_v2` (u32 slot ->
    struct aod_cmd_stats) of the smb tracer and `<dir>/nfs_stats_v1` (same struct) of the nfs
    tracer. Opened afresh on each read, so a tracer that re-pins its maps is followed; either
    map may be missing (that tracer is off). Until a tracer of this version has pinned its
    cmd_stats, the previous layout (`<dir>/cmd_stats`, pinned by an aodv2 0.1 tracer still
    running after an upgrade) is read instead, with `ignored` zero."""

    def __init__(self, pin_dir: str) -> None:
        self.dir = pin_dir
        self.available = False
        self.reason = "not read yet"
        self.source: Sources = ("", "")

    def _read(self, name: str, value_size: int, keys: int) -> tuple[Optional[np.ndarray], str]:
        """(u64 matrix [keys, words] summed over CPUs, "") or (None, why not)."""
        path = os.path.join(self.dir, name)
        try:
            fd = bpfsys.obj_get(path, bpfsys.BPF_F_RDONLY)
        except OSError as e:
            return None, f"{path}: " + ("not pinned yet (tracer not started?)" if e.errno == errno.ENOENT else str(e))
        try:
            info = bpfsys.map_info(fd, path)
            want = (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, value_size)
            if (info.type, info.key_size, info.value_size) != want or info.max_entries < keys:
                return None, (f"{path}: unexpected map (type {info.type}, key {info.key_size}, value "
                              f"{info.value_size}, entries {info.max_entries}); want percpu array of {value_size}")
            ncpu = bpfsys.possible_cpus()
            stride = (value_size + 7) & ~7
            words = value_size // 8
            out = np.zeros((keys, words), dtype=np.uint64)
            for k in range(keys):
                raw = bpfsys.map_lookup(fd, struct.pack("<I", k), stride * ncpu, path)
                per_cpu = np.frombuffer(raw, dtype="<u8").reshape(ncpu, stride // 8)[:, :words]
                out[k] = per_cpu.sum(axis=0, dtype=np.uint64)
        except OSError as e:
            return None, str(e)
        finally:
            os.close(fd)
        return out, ""

    def drops(self) -> Optional[int]:
        """The ring-full drop count, None if unreadable; `available` stays about the statistics."""
        m, _ = self._read("drops", 8, 1)
        return None if m is None else int(m[0, 0])

    def _stats(self, name: str, keys: int) -> tuple[Optional[np.ndarray], str, str]:
        """(rows, source, why not) of one statistics map; the old smb layout where it still stands."""
        if name == CMD_STATS and not os.path.exists(os.path.join(self.dir, name)) \
                and os.path.exists(os.path.join(self.dir, CMD_STATS_V1)):
            m, why = self._read(CMD_STATS_V1, CMD_STATS_V1_DTYPE.itemsize, keys)
            rows = None if m is None else \
                cmd_stats_from_v1(np.ascontiguousarray(m).view(CMD_STATS_V1_DTYPE).reshape(keys))
            return rows, CMD_STATS_V1 if rows is not None else "", why
        m, why = self._read(name, CMD_STATS_DTYPE.itemsize, keys)
        if m is None:
            return None, "", why
        return np.ascontiguousarray(m).view(CMD_STATS_DTYPE).reshape(keys), name, ""

    def cmd_stats(self) -> np.ndarray:
        """Both tracers' statistics; `available` when either map was read, `source` says which."""
        out, sources, why = zero_stats(), [], []
        for (a, b), (name, keys) in zip(BLOCKS, ((CMD_STATS, CMD_SLOTS), (NFS_STATS, NFS_SLOTS))):
            rows, src, reason = self._stats(name, keys)
            if rows is not None:
                out[a:b] = rows
            sources.append(src)
            why.append(reason)
        self.source = tuple(sources)
        self.available = any(sources)
        self.reason = "" if self.available else "; ".join(why)
        return out

    def close(self) -> None:
        pass


def open_counters(ring_path: str, is_file: bool) -> Counters:
    """Counters that go with the ring at ring_path: its file region, or the maps pinned beside it."""
    if is_file:
        return FileCounters(ring_path)
    return PinnedCounters(os.path.dirname(ring_path))
