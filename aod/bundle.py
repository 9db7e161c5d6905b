"""Bundles on disk: stage dir -> tar.zst, written atomically (collect layer, read by retain).

ring -> dispatch -> detect -> **collect** -> retain.

A capture writes into `<output_dir>/.stage-<type>_<stamp>_<pid>_<seq>/` (0700), an open
stageio.Stage: every file in it is created relative to its fd, O_NOFOLLOW|O_EXCL. `finalize()`
streams the stage (walked through directory fds; symlinks and anything not a regular file are
left out) as a tar through zstd (zstdcodec.py: the zstandard module or the zstd program) into
`.<name>.<pid>.partial` (0600 from creation), fsyncs it, then links it to
`aod_<type>_<YYYYmmddTHHMMSSZ>_<seq>.tar.zst` (never clobbering) and fsyncs the dir, all
relative to the output dir's fd. Only names matching BUNDLE_RE are finished bundles;
retain.py relies on that. The output dir must pass safefs.check_dir and must not be a system
directory (ensure_output_dir); the core never changes the mode of one it did not create.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import stat
import tarfile
import threading
import time
from pathlib import PurePosixPath
from typing import IO, Any, Optional

from . import log, safefs, zstdcodec
from .stageio import Stage, StageLike, opened

BUNDLE_RE = re.compile(r"^aod_([a-z0-9]+)_(\d{8}T\d{6}Z)_(\d+)\.tar\.zst$")
STAGE_PREFIX = ".stage-"
PARTIAL_SUFFIX = ".partial"
ZSTD_LEVEL = 3
FIRST_MEMBERS = ("summary.json", "events.npy")  # put first in the tar: cheap to peek at
READ_LIMIT = 1024 * 1024 * 1024  # read_bundle refuses to inflate more than this

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_DEPTH = 16  # stage subdirectories packed (actions use 2)
_seq = itertools.count(1)
_seq_lock = threading.Lock()
_live: set[str] = set()  # names of this process's stages in use (retain.py leaves them alone)


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
WHAT = "output_dir"


def ensure_output_dir(path: str) -> None:
    """Refuse a system directory (/etc, /var/log, /proc/...) and one another user could swap
    (it or a parent owned or writable by another non-root user: safefs.check_dir); create the
    missing levels 0700. An existing one that others can read (say 0755) is used as it is, with
    one warning: the core never changes the mode of a directory it did not create. Raises BundleError."""
    why = safefs.system_dir_problem(path)
    if why:
        raise BundleError(f"{WHAT} {path}: {why}; expected a directory of its own, such as /var/log/aodv2",
                          path, errno.EPERM)
    try:
        safefs.check_dir(path, WHAT)
        fd, _ = safefs.makedirs_fd(path, 0o700, WHAT)  # each level checked again as it is opened or made
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except safefs.UnsafePath as e:
        raise BundleError(str(e), path, e.errno) from e
    except OSError as e:
        raise _fail("cannot use output directory", path, e) from e
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 and path not in _warned_dirs:
        _warned_dirs.add(path)
        log.emit("bundle", logging.WARNING, f"AOD output directory {path} is mode {mode:04o}: other users may "
                 "see the bundle names (bundles stay 0600); chmod 0700 it if that matters (aodv2 never "
                 "changes the mode of a directory it did not create)", AOD_OUTPUT=path)


def _open_output_dir(path: str) -> int:
    """The output dir's fd, checked again once open (what was checked by path is what we hold)."""
    fd = safefs.open_dir(path, follow=True)
    try:
        safefs.verify_dir_fd(fd, path, WHAT)
    except BaseException:
        os.close(fd)
        raise
    return fd


def stage_in_use(name: str) -> bool:
    """A stage of this process that a capture is still filling."""
    with _seq_lock:
        return name in _live


def new_stage(output_dir: str, anomaly_type: str, wall: float) -> Stage:
    """Make a fresh 0700 stage directory inside output_dir and return it open."""
    ensure_output_dir(output_dir)
    base = f"{STAGE_PREFIX}{_safe_type(anomaly_type)}_{utc_stamp(wall)}_{os.getpid()}"
    try:
        out_fd = _open_output_dir(output_dir)
    except safefs.UnsafePath as e:
        raise BundleError(str(e), output_dir, e.errno) from e
    except OSError as e:
        raise _fail("cannot use output directory", output_dir, e) from e
    try:
        for _ in range(1000):
            name = f"{base}_{_next_seq()}"
            path = os.path.join(output_dir, name)
            with _seq_lock:
                _live.add(name)  # before it exists: the stale sweep never sees it unclaimed
            try:
                os.mkdir(name, 0o700, dir_fd=out_fd)
                fd = safefs.open_dir(name, dir_fd=out_fd)
                try:
                    os.fchmod(fd, 0o700)
                except BaseException:
                    os.close(fd)
                    raise
                return Stage(path, fd, name)
            except FileExistsError:
                _forget(name)
                continue
            except OSError as e:
                _forget(name)
                raise _fail("cannot create stage directory", path, e) from e
    finally:
        os.close(out_fd)
    raise BundleError(f"cannot create a stage directory in {output_dir}", output_dir)


def _forget(name: str) -> None:
    with _seq_lock:
        _live.discard(name)


def write_member(stage: StageLike, rel: str, data: bytes) -> int:
    """Write one new file (0600) into the stage, relative to its fd; parent dirs 0700."""
    with opened(stage) as st:
        fd = st.create(rel)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return len(data)


def discard_stage(stage: StageLike) -> None:
    """Remove a stage without following any symlink: its contents through its own fd, then
    its name. Never raises."""
    if not isinstance(stage, Stage):
        parent, name = os.path.split(os.path.normpath(os.fspath(stage)))
        try:
            pfd = safefs.open_dir(parent or ".", follow=True)
            try:
                safefs.remove_tree(name, pfd)
            finally:
                os.close(pfd)
        except OSError:
            pass
        return
    try:
        if stage.fd >= 0:
            safefs.clear_dir(stage.fd)
        pfd = safefs.open_dir(os.path.dirname(stage.path), follow=True)
        try:
            os.rmdir(stage.name or os.path.basename(stage.path), dir_fd=pfd)
        finally:
            os.close(pfd)
    except OSError:
        pass
    finally:
        stage.close()
        _forget(stage.name)


def _members(stage: Stage) -> list[tuple[str, bool, float]]:
    """(relative path, is a directory, mtime) of the stage's directories and regular files, walked
    through directory fds (symlinks and anything else left out); summary first, then sorted."""
    out: list[tuple[str, bool, float]] = []

    def walk(fd: int, rel: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise OSError(errno.ELOOP, "stage directories nested too deep", os.path.join(stage.path, rel))
        with os.scandir(fd) as it:
            found = []
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                    found.append((e.name, stat.S_ISDIR(st.st_mode), st.st_mtime))
        dirs = sorted(f for f in found if f[1])
        out.extend((os.path.join(rel, n), d, m) for n, d, m in dirs + sorted(f for f in found if not f[1]))
        for name, _, _ in dirs:
            sub = safefs.open_dir(name, dir_fd=fd)
            try:
                walk(sub, os.path.join(rel, name), depth + 1)
            finally:
                os.close(sub)

    walk(stage.fd, "", 0)
    first = [m for name in FIRST_MEMBERS for m in out if m[0] == name]
    return first + [m for m in out if m not in first]


def _writer(raw: IO[bytes]) -> Any:
    return zstdcodec.writer(raw, ZSTD_LEVEL)  # the module, or the zstd program writing to raw's fd


def _write_tar(stage: Stage, top: str, raw: IO[bytes]) -> None:
    with _writer(raw) as zw:
        with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            ti = tarfile.TarInfo(top)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o700, int(time.time())
            tar.addfile(ti)
            for rel, is_dir, mtime in _members(stage):
                ti = tarfile.TarInfo(f"{top}/{rel}")
                ti.mtime = int(mtime)
                if is_dir:
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o700
                    tar.addfile(ti)
                    continue
                fd = stage.open_read(rel)  # O_NOFOLLOW on every component, a regular file only
                with os.fdopen(fd, "rb") as f:
                    ti.size, ti.mode = os.fstat(fd).st_size, 0o600
                    tar.addfile(ti, f)


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _publish(partial: str, out_fd: int, output_dir: str, name: str, anomaly_type: str, wall: float) -> str:
    """Give the finished partial its final name (`name`, else a later seq) without clobbering."""
    for i in range(1000):
        final = name if i == 0 else bundle_name(anomaly_type, wall, _next_seq())
        try:  # atomic, fails if final exists
            os.link(partial, final, src_dir_fd=out_fd, dst_dir_fd=out_fd, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if _lexists(final, out_fd):  # no hard links here: check, then rename
                continue
            os.rename(partial, final, src_dir_fd=out_fd, dst_dir_fd=out_fd)
            return os.path.join(output_dir, final)
        os.unlink(partial, dir_fd=out_fd)
        return os.path.join(output_dir, final)
    raise OSError(errno.EEXIST, "no free bundle name", output_dir)


def finalize(stage: StageLike, output_dir: str, anomaly_type: str, wall: float) -> tuple[str, int]:
    """Stage -> finished bundle. Returns (path, bytes). Removes the stage either way.

    Raises BundleError naming the path on any failure (ENOSPC, EROFS, EACCES, ...) after
    removing the partial file, so no half-written bundle is ever left or visible.
    """
    name = partial = pname = ""
    fd, out_fd, created = -1, -1, False
    try:
        with opened(stage) as st:
            zstdcodec.backend()  # none: CodecError saying what to install, before any file is made
            out_fd = _open_output_dir(output_dir)
            for _ in range(1000):  # a name free both as bundle and as partial (earlier runs, crashes)
                name = bundle_name(anomaly_type, wall, _next_seq())
                pname = f".{name}.{os.getpid()}{PARTIAL_SUFFIX}"
                partial = os.path.join(output_dir, pname)
                if _lexists(name, out_fd):
                    continue
                try:
                    fd = os.open(pname, _NEW_FILE, 0o600, dir_fd=out_fd)
                    created = True
                    break
                except FileExistsError:
                    continue
            if fd < 0:
                raise OSError(errno.EEXIST, "no free bundle name", output_dir)
            with os.fdopen(fd, "wb") as raw:
                fd = -1  # owned by raw now
                _write_tar(st, name[: -len(".tar.zst")], raw)
                raw.flush()
                os.fsync(raw.fileno())
                size = os.fstat(raw.fileno()).st_size
            final = _publish(pname, out_fd, output_dir, name, anomaly_type, wall)
            try:
                os.fsync(out_fd)
            except OSError:  # the bundle is complete and named; durability of the name is best effort
                pass
    except Exception as e:  # OSError, TarError, CodecError, ...: never leave a partial behind
        if fd >= 0:
            os.close(fd)
        if created:
            try:
                os.unlink(pname, dir_fd=out_fd)
            except OSError:
                pass
        if isinstance(e, safefs.UnsafePath):
            raise BundleError(str(e), output_dir, e.errno) from e
        raise _fail("cannot write bundle", partial or output_dir, e) from e
    finally:
        if out_fd >= 0:
            os.close(out_fd)
        discard_stage(stage)
    return final, size


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
        with open(path, "rb") as f, zstdcodec.reader(f) as zr:
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
    except (OSError, tarfile.TarError, zstdcodec.CodecError) as e:
        raise _fail("cannot read bundle", path, e) from e
    return out
