"""Packet recorder freeze: the last window of the tcpdump ring as one pcap (collect layer).

ring -> dispatch -> detect -> **collect** -> retain.

The recorder (`tcpdump -U -C MB -W N -w DIR/smb.pcap`) keeps a ring smb.pcap0.. of classic
pcap files. freeze() reads it newest file first (by mtime), keeps the records stamped in
[now - window_sec, now + FUTURE_SKEW_SEC] sorted by time, and writes one pcap in the format of
the newest usable file, at most cap_bytes (the oldest records go first). Files are untrusted:
nothing is opened through a symlink, only regular files are read, reads are bounded
(READ_FILE_MAX a file; READ_TOTAL_FACTOR x cap_bytes, at least READ_TOTAL_MIN, in all), and
each problem is a line in `notes`, never an exception.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import List, Optional, Tuple, Union

from .configrecorder import is_ring_file

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
GHDR_LEN = 24
RHDR_LEN = 16
MAX_CAPLEN = 262144
FUTURE_SKEW_SEC = 5.0
READ_FILE_MAX = 256 * 1024 * 1024
READ_TOTAL_FACTOR = 4
READ_TOTAL_MIN = 64 * 1024 * 1024
_NS = 1_000_000_000
_GHDR_FMT, _RHDR_FMT = "IHHiIII", "IIII"  # after the byte-order character
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_Rec = Tuple[int, int, int, int]  # (ts in ns, file index, offset of the record header, end of its data)


@dataclass
class PcapFreeze:
    data: bytes  # a complete pcap file (global header + records), b"" if nothing
    packets: int
    first_ts: Optional[float]  # epoch seconds of the first/last kept record
    last_ts: Optional[float]
    files: list[str] = field(default_factory=list)  # ring file names that contributed
    truncated: bool = False  # the byte cap cut records (the oldest are dropped, the newest kept)
    notes: list[str] = field(default_factory=list)  # one line per problem


@dataclass(frozen=True)
class _Header:
    endian: str  # "<" or ">"
    nano: bool
    snaplen: int
    linktype: int
    caplen_max: int  # a larger record length is corrupt


@dataclass
class _Ring:
    hdr: Optional[_Header] = None  # of the newest usable file: the output's
    recs: List[_Rec] = field(default_factory=list)  # sorted by time
    future: int = 0  # records beyond the window's end
    names: list[str] = field(default_factory=list)  # by file index (newest first)
    srcs: dict[int, Tuple[memoryview, _Header]] = field(default_factory=dict)  # by file index


def ring_files(dirfd_or_path: Union[int, str], prefix: str = "smb.pcap") -> list[str]:
    """Names in the directory (an open fd or a path) that are prefix + digits, in ring-number
    order. Raises OSError if the directory cannot be listed."""
    names = [n for n in os.listdir(dirfd_or_path) if is_ring_file(n, prefix)]
    return sorted(names, key=lambda n: (int(n[len(prefix):]), n))


def _to_ns(t: float) -> int:
    sec = math.floor(t)
    return int(sec) * _NS + round((t - sec) * _NS)


def _parse_header(buf: memoryview) -> Optional[_Header]:
    if len(buf) < GHDR_LEN:
        return None
    for endian in ("<", ">"):
        magic, _maj, _min, _zone, _sig, snaplen, linktype = struct.unpack_from(endian + _GHDR_FMT, buf)
        if magic in (MAGIC_US, MAGIC_NS):
            return _Header(endian, magic == MAGIC_NS, snaplen, linktype, min(snaplen or MAX_CAPLEN, MAX_CAPLEN))
    return None


def _newest_first(dfd: int, names: list[str], notes: list[str]) -> list[Tuple[str, bool]]:
    """(name, is_regular) by lstat mtime, newest first; lstat only orders, fstat decides."""
    keyed = []
    for idx, name in enumerate(names):  # names in ring-number order: the tie-break
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            notes.append(f"{name}: skipped ({e.strerror})")
            continue
        keyed.append((st.st_mtime_ns, idx, name, stat.S_ISREG(st.st_mode)))
    keyed.sort(reverse=True)
    return [(name, reg) for _m, _n, name, reg in keyed]


def _read_file(dfd: int, name: str, budget: int, notes: list[str]) -> Optional[Tuple[memoryview, bool]]:
    """(the file's bytes, at most min(READ_FILE_MAX, budget); whether cut), or None with a note."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    except OSError as e:
        notes.append(f"{name}: skipped, cannot open without following links ({e.strerror})")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            notes.append(f"{name}: skipped, not a regular file")
            return None
        limit = min(st.st_size, READ_FILE_MAX, budget)
        if limit < st.st_size:
            notes.append(f"{name}: read only the first {limit} of {st.st_size} bytes (read bound)")
        view, got = memoryview(bytearray(limit)), 0
        while got < limit:
            n = os.readv(fd, [view[got:]])
            if n <= 0:
                break
            got += n
        return view[:got], limit < st.st_size
    except OSError as e:
        notes.append(f"{name}: skipped, read failed ({e.strerror})")
        return None
    finally:
        os.close(fd)


def _records(buf: memoryview, hdr: _Header, fidx: int, name: str, tail_ok: bool, window: Tuple[int, int],
             notes: list[str]) -> Tuple[List[_Rec], int]:
    """Records of one file inside window (lo, hi in ns), and how many lay beyond hi. A partial
    last record is noted unless tail_ok (the newest file, being written, or a bounded read)."""
    unpack = struct.Struct(hdr.endian + _RHDR_FMT).unpack_from
    limit = hdr.caplen_max
    mul, fmax = (1, _NS) if hdr.nano else (1000, 1_000_000)
    lo, hi = window
    out: List[_Rec] = []
    future, off, n = 0, GHDR_LEN, len(buf)
    while off + RHDR_LEN <= n:
        sec, frac, incl, orig = unpack(buf, off)
        if incl > limit or incl > orig or frac >= fmax:
            notes.append(f"{name}: corrupt record at offset {off}, rest of file skipped")
            return out, future
        end = off + RHDR_LEN + incl
        if end > n:
            break
        ts = sec * _NS + frac * mul
        if lo <= ts <= hi:
            out.append((ts, fidx, off, end))
        elif ts > hi:
            future += 1
        off = end
    if off < n and not tail_ok:
        notes.append(f"{name}: partial record at offset {off} dropped")
    return out, future


def _cap(recs: List[_Rec], cap_bytes: int) -> Tuple[List[_Rec], bool]:
    """The newest records that fit cap_bytes with the global header."""
    size, keep = GHDR_LEN, 0
    for _ts, _f, off, end in reversed(recs):
        size += end - off
        if size > cap_bytes:
            break
        keep += 1
    return recs[len(recs) - keep:], keep < len(recs)


def _write(out: _Header, recs: List[_Rec], srcs: dict[int, Tuple[memoryview, _Header]], used: list[int]) -> bytes:
    """The pcap: records of a file in the output's format are copied as they are (adjacent ones
    in one slice), the others get a converted record header. snaplen grows to the largest caplen."""
    big = {f for f in used if srcs[f][1].caplen_max > out.snaplen}
    snaplen = max([out.snaplen] + [end - off - RHDR_LEN for _t, f, off, end in recs if f in big])
    ghdr = struct.pack(out.endian + _GHDR_FMT, MAGIC_NS if out.nano else MAGIC_US, 2, 4, 0, 0, snaplen, out.linktype)
    parts: list[Union[bytes, memoryview]] = [ghdr]
    pack = struct.Struct(out.endian + _RHDR_FMT).pack
    div = 1 if out.nano else 1000
    same = {f: (h.endian, h.nano) == (out.endian, out.nano) for f, (_b, h) in srcs.items()}
    run_f, run_off, run_end = -1, 0, 0
    for ts, f, off, end in recs:
        if f == run_f and off == run_end and same[f]:
            run_end = end
            continue
        if run_f >= 0:
            parts.append(srcs[run_f][0][run_off:run_end])
        buf, hdr = srcs[f]
        if not same[f]:
            incl, orig = struct.unpack_from(hdr.endian + "II", buf, off + 8)
            sec, rem = divmod(ts, _NS)
            parts.append(pack(sec, rem // div, incl, orig))
            off += RHDR_LEN
        run_f, run_off, run_end = f, off, end
    if run_f >= 0:
        parts.append(srcs[run_f][0][run_off:run_end])
    return b"".join(parts)


def _collect(dfd: int, names: list[str], window: Tuple[int, int], budget: int, notes: list[str],
             deadline: Optional[float] = None) -> _Ring:
    """Read and parse the ring, newest file first (the read bound and the deadline keep the newest)."""
    ordered = _newest_first(dfd, names, notes)
    newest = next((name for name, reg in ordered if reg), None)
    ring = _Ring(names=[name for name, _reg in ordered])
    per_file: List[List[_Rec]] = []
    for fidx, (name, _reg) in enumerate(ordered):
        if budget <= 0:
            notes.append(f"{name}: not read, read bound of the freeze reached")
            continue
        if deadline is not None and time.monotonic() >= deadline:
            notes.append(f"{name}: not read, the action deadline passed")
            continue
        got = _read_file(dfd, name, budget, notes)
        if got is None:
            continue
        buf, cut = got
        budget -= len(buf)
        hdr = _parse_header(buf)
        if hdr is None:
            if name != newest or len(buf) >= GHDR_LEN:
                notes.append(f"{name}: skipped, not a classic pcap file")
            continue
        if ring.hdr is None:
            ring.hdr = hdr
        elif hdr.linktype != ring.hdr.linktype:
            notes.append(f"{name}: skipped, linktype {hdr.linktype} differs from {ring.hdr.linktype}")
            continue
        recs, future = _records(buf, hdr, fidx, name, name == newest or cut, window, notes)
        per_file.append(recs)
        ring.future += future
        ring.srcs[fidx] = (buf, hdr)
    ring.recs = [r for file_recs in reversed(per_file) for r in file_recs]  # oldest file first: stable ties
    ring.recs.sort(key=itemgetter(0))
    return ring


def freeze(dir_path: str, now: float, window_sec: float, cap_bytes: int, prefix: str = "smb.pcap",
           deadline: Optional[float] = None) -> PcapFreeze:
    """The records of the ring in dir_path stamped within the last window_sec before now, as
    one pcap of at most cap_bytes. Never raises for bad input: problems are in .notes."""
    res = PcapFreeze(b"", 0, None, None)
    if not (math.isfinite(now) and math.isfinite(window_sec) and window_sec >= 0):
        res.notes.append(f"bad freeze window (now={now}, window_sec={window_sec})")
        return res
    try:
        dfd = os.open(dir_path, _DIR_FLAGS)
    except OSError as e:
        res.notes.append(f"no packet ring at {dir_path} ({e.strerror})")
        return res
    try:
        names = ring_files(dfd, prefix)
        window = (_to_ns(now - window_sec), _to_ns(now + FUTURE_SKEW_SEC))
        budget = max(READ_TOTAL_FACTOR * cap_bytes, READ_TOTAL_MIN)
        ring = _collect(dfd, names, window, budget, res.notes, deadline)
    except OSError as e:
        res.notes.append(f"packet ring at {dir_path} unreadable ({e.strerror})")
        return res
    finally:
        os.close(dfd)
    if ring.future:
        res.notes.append(f"{ring.future} records more than {FUTURE_SKEW_SEC:g} s after now dropped")
    if not names:
        res.notes.append(f"empty packet ring at {dir_path} (no {prefix}N files)")
    elif ring.hdr is None:
        res.notes.append(f"no usable pcap file in the packet ring at {dir_path}")
    elif not ring.recs:
        res.notes.append(f"no packets in the last {window_sec:g} s")
    kept, res.truncated = _cap(ring.recs, cap_bytes)
    if res.truncated:
        res.notes.append(f"{len(ring.recs) - len(kept)} oldest records dropped to fit {cap_bytes} bytes")
    if ring.hdr is None or not kept:
        return res
    used = list(dict.fromkeys(r[1] for r in kept))
    res.data, res.packets = _write(ring.hdr, kept, ring.srcs, used), len(kept)
    res.first_ts, res.last_ts = kept[0][0] / _NS, kept[-1][0] / _NS
    res.files = [ring.names[f] for f in used]
    return res
