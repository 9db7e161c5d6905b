"""Bundles on disk: stage dir -> tar.zst, written atomically (collect layer, read by retain).

ring -> dispatch -> detect -> **collect** -> retain.

A capture writes into `<output_dir>/.stage-<type>_<stamp>_<pid>_<seq>/` (0700). `finalize()`
streams the stage as a tar through zstd into `.<name>.<pid>.partial` (0600 from creation), fsyncs it, then links it
to `aod_<type>_<YYYYmmddTHHMMSSZ>_<seq>.tar.zst` (never clobbering) and fsyncs the dir. Only
names matching BUNDLE_RE are finished bundles; retain.py relies on that.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import shutil
import stat
import tarfile
import threading
import time
from pathlib import PurePosixPath
from typing import IO, Optional

import zstandard

from . import log

BUNDLE_RE = re.compile(r"^aod_([a-z0-9]+)_(\d{8}T\d{6}Z)_(\d+)\.tar\.zst$")
STAGE_PREFIX = ".stage-"
PARTIAL_SUFFIX = ".partial"
ZSTD_LEVEL = 3
FIRST_MEMBERS = ("summary.json", "events.npy")  # put first in the tar: cheap to peek at
READ_LIMIT = 1024 * 1024 * 1024  # read_bundle refuses to inflate more than this

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_seq = itertools.count(1)
_seq_lock = threading.Lock()


class BundleError(Exception):
    """A bundle could not be written; the message names the path and the reason."""

    def __init__(self, message: str, path: str = "", errno_: Optional[int] = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno_


def _next_seq() -> int:
    with _seq_lock:
        return next(_seq)


def _safe_type(anomaly_type: str) -> str:
    return re.sub(r"[^a-z0-9]", "", anomaly_type.lower()) or "unknown"


_OWNED_RE = re.compile(r"^(?:\.stage-[a-z0-9]+_\d{8}T\d{6}Z_(\d+)_\d+|\.aod_.+\.tar\.zst\.(\d+)\.partial)$")


def owner_pid(name: str) -> Optional[int]:
    """pid of the process that made a stage dir or partial file (from its name), else None."""
    m = _OWNED_RE.match(name)
    return int(m.group(1) or m.group(2)) if m else None


def utc_stamp(wall: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))


def bundle_name(anomaly_type: str, wall: float, seq: int) -> str:
    return f"aod_{_safe_type(anomaly_type)}_{utc_stamp(wall)}_{seq}.tar.zst"


def _fail(what: str, path: str, e: BaseException) -> BundleError:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
    return BundleError(f"{what} {path}: {reason}", path, getattr(e, "errno", None))


_warned_dirs: set[str] = set()


def ensure_output_dir(path: str) -> None:
    """Create output_dir 0700 if missing. An existing one of ours with group/other bits is set to
    0700 (bundle names and the anomaly history are nobody else's business) and that is logged;
    one we do not own, or that refuses chmod (cifs, vfat), is used as it is, with one warning."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise BundleError(f"output directory {path} is not a directory", path, errno.ENOTDIR)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise _fail("cannot use output directory", path, e) from e
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    try:
        if st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "owned by another user")
        os.chmod(path, 0o700)
        if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
            raise PermissionError(errno.EPERM, "the filesystem ignores chmod")
    except OSError as e:
        if path not in _warned_dirs:
            _warned_dirs.add(path)
            log.emit("bundle", logging.WARNING, f"AOD output directory {path} is mode {mode:04o} and cannot "
                     f"be set to 0700 ({e.strerror or e}); bundles stay 0600 in it", AOD_OUTPUT=path)
        return
    log.emit("bundle", logging.WARNING,
             f"AOD output directory {path} was mode {mode:04o}; set to 0700", AOD_OUTPUT=path)


def new_stage(output_dir: str, anomaly_type: str, wall: float) -> str:
    """Make a fresh 0700 stage directory inside output_dir and return its path."""
    ensure_output_dir(output_dir)
    base = f"{STAGE_PREFIX}{_safe_type(anomaly_type)}_{utc_stamp(wall)}_{os.getpid()}"
    for _ in range(1000):
        path = os.path.join(output_dir, f"{base}_{_next_seq()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise _fail("cannot create stage directory", path, e) from e
    raise BundleError(f"cannot create a stage directory in {output_dir}", output_dir)


def write_member(stage: str, rel: str, data: bytes) -> int:
    """Write one file (0600) into the stage; parent dirs 0700."""
    path = os.path.join(stage, rel)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return len(data)


def discard_stage(stage: str) -> None:
    shutil.rmtree(stage, ignore_errors=True)


def _members(stage: str) -> list[str]:
    """Relative paths (dirs and regular files, no symlinks), summary first, then sorted."""
    out: list[str] = []
    for root, dirs, files in os.walk(stage):
        dirs.sort()
        rel_root = os.path.relpath(root, stage)
        for name in sorted(dirs) + sorted(files):
            out.append(os.path.normpath(os.path.join(rel_root, name)))
    first = [m for m in FIRST_MEMBERS if m in out]
    return first + [m for m in out if m not in first]


def _compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0)


def _write_tar(stage: str, top: str, raw: IO[bytes]) -> None:
    with _compressor().stream_writer(raw, closefd=False) as zw:
        with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            ti = tarfile.TarInfo(top)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o700, int(time.time())
            tar.addfile(ti)
            for rel in _members(stage):
                path = os.path.join(stage, rel)
                st = os.lstat(path)
                ti = tarfile.TarInfo(f"{top}/{rel}")
                ti.mtime = int(st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o700
                    tar.addfile(ti)
                elif stat.S_ISREG(st.st_mode):
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    with os.fdopen(fd, "rb") as f:
                        ti.size, ti.mode = os.fstat(fd).st_size, 0o600
                        tar.addfile(ti, f)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(partial: str, output_dir: str, name: str, anomaly_type: str, wall: float) -> str:
    """Give the finished partial its final name (`name`, else a later seq) without clobbering."""
    for i in range(1000):
        final = os.path.join(output_dir, name if i == 0 else bundle_name(anomaly_type, wall, _next_seq()))
        try:
            os.link(partial, final)  # atomic, fails if final exists
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if os.path.lexists(final):  # no hard links here: check, then rename
                continue
            os.rename(partial, final)
            return final
        os.unlink(partial)
        return final
    raise OSError(errno.EEXIST, "no free bundle name", output_dir)


def finalize(stage: str, output_dir: str, anomaly_type: str, wall: float) -> tuple[str, int]:
    """Stage -> finished bundle. Returns (path, bytes). Removes the stage either way.

    Raises BundleError naming the path on any failure (ENOSPC, EROFS, EACCES, ...) after
    removing the partial file, so no half-written bundle is ever left or visible.
    """
    name = partial = ""
    fd, created = -1, False
    try:
        for _ in range(1000):  # a name free both as bundle and as partial (earlier runs, crashes)
            name = bundle_name(anomaly_type, wall, _next_seq())
            partial = os.path.join(output_dir, f".{name}.{os.getpid()}{PARTIAL_SUFFIX}")
            if os.path.lexists(os.path.join(output_dir, name)):
                continue
            try:
                fd = os.open(partial, _NEW_FILE, 0o600)
                created = True
                break
            except FileExistsError:
                continue
        if fd < 0:
            raise OSError(errno.EEXIST, "no free bundle name", output_dir)
        with os.fdopen(fd, "wb") as raw:
            fd = -1  # owned by raw now
            _write_tar(stage, name[: -len(".tar.zst")], raw)
            raw.flush()
            os.fsync(raw.fileno())
            size = os.fstat(raw.fileno()).st_size
        final = _publish(partial, output_dir, name, anomaly_type, wall)
    except Exception as e:  # OSError, TarError, ZstdError, ...: never leave a partial behind
        if fd >= 0:
            os.close(fd)
        if created:
            _unlink_quietly(partial)
        raise _fail("cannot write bundle", partial or output_dir, e) from e
    finally:
        discard_stage(stage)
    try:
        _fsync_dir(output_dir)
    except OSError:  # the bundle is complete and named; durability of the name is best effort
        pass
    return final, size


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def list_bundles(output_dir: str) -> list[str]:
    """Finished bundles (name pattern, regular files), oldest first, newest last."""
    return [e[0] for e in bundle_entries(output_dir)]


def bundle_entries(output_dir: str) -> list[tuple[str, float, int]]:
    """(path, mtime, size) of the finished bundles, oldest first; one lstat each."""
    found: list[tuple[float, str, int, str, int]] = []
    try:
        names = os.listdir(output_dir)
    except OSError:
        return []
    for name in names:
        m = BUNDLE_RE.match(name)
        if not m:
            continue
        path = os.path.join(output_dir, name)
        try:
            st = os.lstat(path)
        except OSError:  # vanished
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((st.st_mtime, m.group(2), int(m.group(3)), path, st.st_size))
    return [(f[3], f[0], f[4]) for f in sorted(found)]


def read_bundle(path: str, limit: int = READ_LIMIT) -> dict[str, bytes]:
    """Member name (without the top directory) -> content. Regular files only; refuses
    absolute or '..' names and more than `limit` bytes in total."""
    out: dict[str, bytes] = {}
    total = 0
    try:
        with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as zr:
            with tarfile.open(fileobj=zr, mode="r|") as tar:  # type: ignore[call-overload]
                for m in tar:
                    parts = PurePosixPath(m.name).parts
                    if not m.isfile() or not parts or m.name.startswith("/") or ".." in parts:
                        continue
                    rel = "/".join(parts[1:]) if len(parts) > 1 else parts[0]
                    total += m.size
                    if total > limit:
                        raise BundleError(f"bundle {path} inflates to more than {limit} bytes", path)
                    fobj = tar.extractfile(m)
                    out[rel] = fobj.read() if fobj is not None else b""
    except (OSError, tarfile.TarError, zstandard.ZstdError) as e:
        raise _fail("cannot read bundle", path, e) from e
    return out
