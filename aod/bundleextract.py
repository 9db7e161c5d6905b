"""`aodv2 show BUNDLE --extract DIR`: unpack a finished bundle without trusting its member names.

ring -> dispatch -> detect -> collect -> retain; this sits after collect, beside bundleview.py.
It never calls tarfile.extract*: each member is checked, then written through directory fds with
O_NOFOLLOW | O_EXCL (files 0600, dirs 0700), so it is equally safe on Python 3.9, which has no
extraction filters. The bundle is read through once before DIR is touched (it must open, be a
tar, hold at most MAX_EXTRACT_MEMBERS members and inflate to at most bundle.READ_LIMIT); DIR
itself is never a symlink and belongs to the caller or root, as does every directory in it.
"""

from __future__ import annotations

import errno
import os
import tarfile
from dataclasses import dataclass, field
from typing import IO

from . import bundle
from .bundleread import ViewError, human_bytes, member_kind, name_parts, open_bundle, os_error, stream_file

MAX_EXTRACT_MEMBERS = 10_000  # an aodv2 bundle has a few dozen; a 1 GiB tar can hold 2 million


@dataclass
class ExtractResult:
    dest: str
    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)
    error: str = ""  # the stream broke off (files written before it are kept)


def _member_problem(m: tarfile.TarInfo, parts: list[str], refused: set[str]) -> str:
    """Why member m must not be extracted ('' if it may)."""
    if m.name.startswith("/"):
        return "absolute path"
    if ".." in parts:
        return "path leaves the target directory ('..')"
    if not parts:
        return "empty name"
    if any("\0" in p for p in parts):
        return "NUL byte in the name"
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in refused:
            return f"inside {'/'.join(parts[:i])!r}, which was refused"
    kind = member_kind(m)
    if kind in ("symlink", "hardlink"):
        return f"{kind} to {m.linkname!r}: links are never extracted"
    if kind in ("chardev", "blockdev", "fifo"):
        return f"{kind}: device files and fifos are never extracted"
    if kind == "other":
        return f"unsupported member type {m.type!r}"
    return ""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Foreign(Exception):
    """An existing directory in the way belongs to another user."""


def _mine(fd: int) -> bool:
    return os.fstat(fd).st_uid in (0, os.geteuid())


def _open_dirs(root_fd: int, parts: list[str], made: list[str], prefix: str) -> int:
    """fd of root/parts..., creating missing dirs 0700; never through a symlink (ELOOP/ENOTDIR),
    never into another user's directory (_Foreign)."""
    fd = os.dup(root_fd)
    try:
        for i, p in enumerate(parts):
            try:
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(p, 0o700, dir_fd=fd)
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(nfd, 0o700)
                made.append(os.path.join(prefix, *parts[: i + 1]))
            os.close(fd)
            fd = nfd
            if not _mine(fd):
                raise _Foreign()
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dest(dest: str) -> int:
    """fd of the directory dest, created 0700 if missing (its parent must exist). Refused (ViewError):
    a symlink (opened O_NOFOLLOW, so one planted by someone else is never followed), not a
    directory, or owned by someone other than the caller or root."""
    path = dest.rstrip("/") or "/"
    parent, base = os.path.split(path)
    try:
        if base in ("", ".", ".."):
            fd = os.open(path, _DIR_FLAGS)
        else:
            pfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                try:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                except FileExistsError:
                    pass
                fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
            finally:
                os.close(pfd)
    except OSError as e:  # O_NOFOLLOW | O_DIRECTORY on a symlink: ELOOP or ENOTDIR
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise ViewError(f"{dest}: is a symbolic link; refusing to extract through it") from None
        if e.errno == errno.ENOTDIR:
            raise ViewError(f"{dest}: not a directory") from None
        raise os_error(dest, e, "cannot create") from None
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        os.close(fd)
        raise ViewError(f"{dest}: owned by uid {st.st_uid}, not by you or root; refusing to extract into it")
    return fd


def _precheck(raw: IO[bytes], path: str, limit: int) -> None:
    """One pass over the whole bundle before anything is written: ViewError when it is no tar,
    holds more than MAX_EXTRACT_MEMBERS members or inflates past limit. A truncated or corrupt
    tail is left to the real pass (what comes before it is extracted)."""
    n = [0]

    def count(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bool:
        n[0] += 1
        if n[0] > MAX_EXTRACT_MEMBERS:
            raise ViewError(f"{path}: more than {MAX_EXTRACT_MEMBERS} members: not an aodv2 bundle; "
                            "nothing extracted")
        return True

    err = stream_file(raw, path, count, limit)
    if err and not n[0]:
        raise ViewError(f"{path}: {err}; nothing extracted")


def extract(path: str, dest: str, limit: int = bundle.READ_LIMIT) -> ExtractResult:
    """Unpack the bundle under dest (created 0700 if missing; its parent must exist). Files 0600,
    dirs 0700, existing files never overwritten. Refused (and listed): absolute and '..' paths,
    links, device files, fifos, anything under a refused member, paths through a symlink or
    another user's directory. Raises ViewError, before dest is created, for a bundle that cannot
    be opened or read (see _precheck), and for a dest that is refused (see open_dest)."""
    with open_bundle(path) as raw:
        _precheck(raw, path, limit)
        raw.seek(0)
        root_fd = open_dest(dest)
        try:
            return _extract(raw, path, dest, root_fd, limit)
        finally:
            os.close(root_fd)


def _extract(raw: IO[bytes], path: str, dest: str, root_fd: int, limit: int) -> ExtractResult:
    res = ExtractResult(dest)
    refused: set[str] = set()
    total = [0]
    seen = [0]

    def refuse(name: str, parts: list[str], why: str) -> None:
        res.refused.append((name, why))
        refused.add("/".join(parts))

    def visit(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bool:
        seen[0] += 1
        if seen[0] > MAX_EXTRACT_MEMBERS:  # the file changed since _precheck
            raise ViewError(f"{path}: more than {MAX_EXTRACT_MEMBERS} members; stopped")
        parts = name_parts(m.name)
        why = _member_problem(m, parts, refused)
        if why:
            refuse(m.name, parts, why)
            return True
        try:
            if m.isdir():
                os.close(_open_dirs(root_fd, parts, res.dirs, dest))
                return True
            pfd = _open_dirs(root_fd, parts[:-1], res.dirs, dest)
        except _Foreign:
            refuse(m.name, parts, "its directory belongs to another user")
            return True
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                refuse(m.name, parts, "its path goes through a symlink or a non-directory")
                return True
            if e.errno == errno.ENAMETOOLONG:
                refuse(m.name, parts, "name too long")
                return True
            raise os_error(os.path.join(dest, *parts), e, "cannot create") from None
        try:
            try:
                fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=pfd)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ELOOP, errno.EISDIR):
                    refuse(m.name, parts, "already exists in the target directory; not overwritten")
                    return True
                if e.errno == errno.ENAMETOOLONG:
                    refuse(m.name, parts, "name too long")
                    return True
                raise os_error(os.path.join(dest, *parts), e, "cannot create") from None
            out = os.path.join(dest, *parts)
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), 0o600)
                    src = tar.extractfile(m)
                    while src is not None:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        total[0] += len(chunk)
                        if total[0] > limit:
                            raise ViewError(f"{path}: unpacks to more than {human_bytes(limit)}; stopped")
                        f.write(chunk)
            except BaseException as e:  # never leave a half-written file behind
                try:
                    os.unlink(parts[-1], dir_fd=pfd)
                except OSError:
                    pass
                if isinstance(e, OSError) and e.errno:
                    raise os_error(out, e, "cannot write") from None
                raise
            res.files.append(out)
        finally:
            os.close(pfd)
        return True

    res.error = stream_file(raw, path, visit, limit)
    return res
