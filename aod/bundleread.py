"""Reading finished bundles as one stream: members, summary.json and events.npy.

ring -> dispatch -> detect -> collect -> retain; this sits after collect and only reads the
bundles of bundle.py, for `aodv2 show` and `aodv2 list` (bundleview.py) and `show --extract`
(bundleextract.py). Every read is size-capped (headers too: bundlecheck.py), summary.json is parsed
with a nesting bound, events.npy only as exactly record.EVENT_DTYPE, and a bundle cut off or
garbled between two members is told apart from a whole one (tarfile's stream mode stops there
silently). zstdcodec.py inflates (the zstandard module, or the zstd program, bounded in time).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Optional

import numpy as np

from . import bundle, zstdcodec
from .bundlecheck import BoundedTar, load_events
from .safetext import loads, short

EX_FAIL, EX_USAGE, EX_NOPERM = 1, 2, 77  # as in cli.py
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEAD_LIMIT = 16 * 1024 * 1024  # list: inflate at most this much looking for summary.json
SUMMARY_LIMIT = 1024 * 1024  # a real one is a few KiB
EVENTS_LIMIT = 32 * 1024 * 1024  # 466k records; the core keeps at most 65536
TRACE_LIMIT = 16 << 20  # of recorder/trace.txt read for `aodv2 show` (lines around the trigger)
MAX_MEMBERS = 100_000  # show; --extract stops at bundleextract.MAX_EXTRACT_MEMBERS
_BLOCK = tarfile.BLOCKSIZE


class ViewError(Exception):
    """A bundle or directory cannot be read: one-line message and the exit code to use."""

    def __init__(self, message: str, code: int = EX_FAIL) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Member:
    name: str  # as stored in the tar
    size: int
    kind: str  # file | dir | symlink | hardlink | chardev | blockdev | fifo | other
    linkname: str = ""


@dataclass
class BundleView:
    path: str
    size: int  # compressed bytes on disk
    members: list[Member] = field(default_factory=list)
    summary: Optional[dict[str, Any]] = None
    events: Optional[np.ndarray] = None
    problems: list[str] = field(default_factory=list)  # events.npy unreadable, ...
    error: str = ""  # the bundle is corrupt or truncated (what was read before is kept)
    trace: Optional[bytes] = None  # recorder/trace.txt, its first TRACE_LIMIT bytes


def human_bytes(n: Optional[float]) -> str:
    """'1.5 MiB'; '-' for what is not a finite number (a bundle may hold anything)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    try:
        n = float(n)
    except OverflowError:  # an int past 1e308
        return "-"
    if not math.isfinite(n):
        return "-"
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return "-"  # not reached


def open_bundle(path: str) -> IO[bytes]:
    """The bundle file, checked: exists, regular, readable, zstd magic. Raises ViewError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise os_error(path, e, "cannot open bundle") from None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise os_error(path, e, "cannot read bundle") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ViewError(f"{path}: is a directory, expected a bundle (aod_*.tar.zst); "
                            "for a directory of bundles use: aodv2 list --dir DIR")
        raise ViewError(f"{path}: not a regular file, expected a bundle (aod_*.tar.zst)")
    f = os.fdopen(fd, "rb")
    try:
        magic = f.read(4)
        if not magic:
            raise ViewError(f"{path}: empty file, expected a bundle (aod_*.tar.zst)")
        if magic != ZSTD_MAGIC:
            raise ViewError(f"{path}: not zstd-compressed, expected a bundle (aod_*.tar.zst)")
        f.seek(0)
    except ViewError:
        f.close()
        raise
    except OSError as e:
        f.close()
        raise os_error(path, e, "cannot read bundle") from None
    return f


def os_error(path: str, e: OSError, what: str) -> ViewError:
    if e.errno in (errno.EACCES, errno.EPERM):
        hint = " (needs root: bundles are root's, 0600 in a 0700 directory; try sudo)" if os.geteuid() != 0 else ""
        return ViewError(f"{what} {path}: permission denied{hint}", EX_NOPERM)
    if e.errno == errno.ENOENT:
        return ViewError(f"{what} {path}: no such file or directory")
    return ViewError(f"{what} {path}: {e.strerror or e}")


class _Inflated:
    """Decompressed bytes for tarfile's stream mode, with a size cap and end-of-archive checking.

    tarfile stops silently at a missing or garbled header after the first member, so a bundle cut
    off between two members would look whole; finish() tells: after the last member a tar has
    at least one zero block and nothing but zeros.
    """

    def __init__(self, raw: IO[bytes], path: str, limit: int) -> None:
        try:  # the zstandard module, or the zstd program (zstdcodec.py)
            self._zr = zstdcodec.reader(raw)
        except zstdcodec.CodecError as e:  # neither is installed, or the program cannot run
            raise ViewError(f"cannot read bundle {path}: {e}") from None
        self.path, self.limit = path, limit
        self.pos = 0
        self.last_nonzero = 0  # end offset of the last non-zero byte seen

    def read(self, n: int = -1) -> bytes:
        data = self._zr.read(n if n is not None and n >= 0 else 1 << 20)
        self.pos += len(data)
        if self.pos > self.limit:
            raise ViewError(f"{self.path}: inflates to more than {human_bytes(self.limit)}; not read further")
        tail = data.rstrip(b"\0")
        if tail:
            self.last_nonzero = self.pos - len(data) + len(tail)
        return data

    def close(self) -> None:
        self._zr.close()  # the zstd program, if any, killed and reaped

    def finish(self, tar_end: int) -> str:
        """'' if the archive ends properly at offset tar_end, else what is wrong."""
        while self.pos < tar_end + 64 * 1024 and self.read(65536):
            pass
        if self.last_nonzero > tar_end:
            return "corrupt: data after the last good member is not a tar header"
        if self.pos < tar_end + _BLOCK:
            return f"truncated: the archive breaks off after {tar_end} bytes (no end-of-archive block)"
        return ""


def member_kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.ischr():
        return "chardev"
    if m.isblk():
        return "blockdev"
    if m.isfifo():
        return "fifo"
    return "other"


def name_parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


Visit = Callable[[tarfile.TarFile, tarfile.TarInfo], bool]


def stream(path: str, visit: Visit, limit: int, check_end: bool = True) -> str:
    """Call visit(tar, member) for each member until it returns False. Returns '' when the
    archive was read to its proper end (or visit stopped), else why it is corrupt/truncated.
    Raises ViewError when the file cannot be opened or is not a zstd file at all."""
    with open_bundle(path) as raw:
        return stream_file(raw, path, visit, limit, check_end)


def stream_file(raw: IO[bytes], path: str, visit: Visit, limit: int, check_end: bool = True) -> str:
    """stream() over an already opened bundle, from its current offset."""
    inflated = _Inflated(raw, path, limit)
    try:
        return _stream_tar(inflated, path, visit, limit, check_end)
    finally:
        inflated.close()


def _stream_tar(inflated: _Inflated, path: str, visit: Visit, limit: int, check_end: bool) -> str:
    try:
        with BoundedTar.open(fileobj=inflated, mode="r|") as tar:  # type: ignore[call-overload]
            for m in tar:
                if not 0 <= m.size <= limit:  # tarfile would skip its data block by block, forever
                    return (f"corrupt: member {short(m.name, 80)!r} claims {m.size} bytes, "
                            f"more than the {human_bytes(limit)} limit")
                if not visit(tar, m):
                    return ""
            return inflated.finish(tar.offset) if check_end else ""
    except ViewError:
        raise
    except OSError as e:  # disk read errors; CodecError is not an OSError
        raise os_error(path, e, "cannot read bundle") from None
    except zstdcodec.CodecError as e:
        if not e.corrupt:  # the zstd program stalled or was killed: nothing known about the bundle
            raise ViewError(f"cannot read bundle {path}: {short(str(e))}") from None
        return _verdict(inflated, e)
    except (tarfile.TarError, EOFError, ValueError, UnicodeError) as e:
        return _verdict(inflated, e)


def _verdict(inflated: _Inflated, e: Exception) -> str:
    """What a bundle whose tar or zstd stream failed is: truncated or corrupt, and where."""
    msg = short(str(e) or type(e).__name__)
    if inflated.pos == 0:
        return f"truncated or corrupt: the zstd stream yields no data ({msg})"
    if msg in ("empty file", "truncated header", "invalid header", "bad checksum") and inflated.pos <= _BLOCK:
        return f"not a tar archive inside the zstd stream, or truncated ({msg})"
    return f"corrupt: {msg}"


def _is_summary(name: str) -> bool:
    p = name_parts(name)
    return p == ["summary.json"] or (len(p) == 2 and p[1] == "summary.json")


def _parse_summary(data: bytes, path: str) -> dict[str, Any]:
    try:
        s = loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError too; nesting past safetext.MAX_JSON_DEPTH
        raise ViewError(f"{path}: summary.json is not valid JSON ({short(str(e), 120)})") from None
    if not isinstance(s, dict):
        raise ViewError(f"{path}: summary.json is not a JSON object")
    return s


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo, cap: int) -> Optional[bytes]:
    if m.size > cap:
        return None
    f = tar.extractfile(m)
    return f.read() if f is not None else b""


def read_view(path: str, limit: int = bundle.READ_LIMIT) -> BundleView:
    """Members, summary and events of a bundle in one pass. Raises ViewError when nothing can be
    read (missing, unreadable, not a zstd file) or when no summary.json was found."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise os_error(path, e, "cannot open bundle") from None
    view = BundleView(path, size)

    def visit(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bool:
        if len(view.members) >= MAX_MEMBERS:
            raise ViewError(f"{path}: more than {MAX_MEMBERS} members; not an aodv2 bundle")
        view.members.append(Member(m.name, int(m.size), member_kind(m), m.linkname))
        p = name_parts(m.name)
        if m.isreg() and p[-2:] == ["recorder", "trace.txt"] and len(p) <= 3 and view.trace is None:
            f = tar.extractfile(m)
            view.trace = f.read(TRACE_LIMIT) if f is not None else b""
        if not m.isreg() or len(p) > 2:
            return True
        if _is_summary(m.name) and view.summary is None:
            data = _read_member(tar, m, SUMMARY_LIMIT)
            if data is None:
                raise ViewError(f"{path}: summary.json is {human_bytes(m.size)}, larger than expected")
            view.summary = _parse_summary(data, path)
        elif p[-1] == "events.npy" and view.events is None:
            data = _read_member(tar, m, EVENTS_LIMIT)
            try:
                if data is None:
                    raise ValueError(f"{human_bytes(m.size)} is more than expected")
                view.events = load_events(data)
            except (ValueError, OSError, EOFError) as e:
                view.problems.append(f"events.npy unreadable: {e}")
        return True

    view.error = stream(path, visit, limit)
    if view.summary is None:
        if view.error:
            raise ViewError(f"{path}: {view.error}")
        raise ViewError(f"{path}: no summary.json in it: not an aodv2 bundle")
    return view


def peek_summary(path: str, limit: int = HEAD_LIMIT) -> dict[str, Any]:
    """summary.json of a bundle, inflating only until it is found (it is the first file)."""
    found: list[dict[str, Any]] = []

    def visit(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bool:
        if m.isreg() and _is_summary(m.name):
            data = _read_member(tar, m, SUMMARY_LIMIT)
            if data is None:
                raise ViewError(f"{path}: summary.json is {human_bytes(m.size)}, larger than expected")
            found.append(_parse_summary(data, path))
            return False
        return True

    try:
        err = stream(path, visit, limit, check_end=False)
    except ViewError as e:
        if not found and "inflates to more than" in str(e):
            raise ViewError(f"{path}: no summary.json in its first {human_bytes(limit)}") from None
        raise
    if found:
        return found[0]
    raise ViewError(f"{path}: {err}" if err else f"{path}: no summary.json in it: not an aodv2 bundle")
