"""Safe file-system primitives for what the core writes as root (beside the data flow: used by
collect -> retain, the anomaly history, status.json, the control socket and the metrics textfile).

- `check_dir` refuses a directory that another non-root user owns or can write, or any of whose
  parents they can write: the walk resolves the path as the kernel does (symlinks too) and checks
  every directory it passes. Rules: the directory itself is owned by root (or by us) and not
  writable by group (unless the group is root) or others. A parent may also be sticky and owned
  by root (or us), like /tmp: others can add names there but cannot rename or remove ours. With
  `system_owner=True` (the metrics textfile only) a system account (uid <= SYS_UID_MAX of
  /etc/login.defs, with a nologin shell) may own the directory or its parents: Debian's
  prometheus-node-exporter chowns /var/lib/prometheus to `prometheus`. Such an owner can only
  make the write fail or rename `aodv2.prom` (0644, counts only): every open there is relative
  to the opened directory, O_NOFOLLOW and O_EXCL, so it cannot redirect a write of root's.
- `system_dir_problem` says why a path cannot be a dedicated directory (/etc, /var/log, /proc/...).
- `makedirs` / `makedirs_fd` create missing levels with an explicit mode (umask-proof), never touching
  existing ones, by a walk through directory fds from "/": each level is opened O_NOFOLLOW and
  checked by the `check_dir` rules before anything is made in it, and a symlink is followed only if
  those rules trust it. A name planted after `check_dir` (a symlink or a directory of another user
  in /tmp) redirects nothing: it is refused before any mkdir under it.
- `open_dir`, `open_new`, `open_regular`: O_NOFOLLOW|O_NONBLOCK opens relative to a directory fd,
  then an fstat check that a regular file was opened (a planted FIFO never blocks a thread).
- `remove_tree`: removal through directory fds that never follows a symlink.
"""

from __future__ import annotations

import errno
import functools
import os
import pwd
import stat
from typing import Optional

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# never a dedicated directory: bundles, retention or a chmod there would hit the system
SYSTEM_DIRS = frozenset((
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/run/lock", "/run/user", "/sbin", "/snap", "/srv",
    "/sys", "/tmp", "/usr", "/usr/bin", "/usr/games", "/usr/include", "/usr/lib", "/usr/lib32", "/usr/lib64",
    "/usr/libexec", "/usr/local", "/usr/local/bin", "/usr/local/etc", "/usr/local/lib", "/usr/local/sbin",
    "/usr/local/share", "/usr/sbin", "/usr/share", "/usr/src", "/var", "/var/backups", "/var/cache", "/var/lib",
    "/var/local", "/var/lock", "/var/log", "/var/log/journal", "/var/mail", "/var/opt", "/var/run", "/var/spool",
    "/var/tmp",
))
VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")  # nothing under these is a place for files
_MAX_LINKS = 40  # like the kernel's limit on symlinks in one lookup
_MAX_DEPTH = 32  # remove_tree: stages are 3 levels deep


class UnsafePath(OSError):
    """A directory other users could use to redirect root's writes; strerror says why and what is expected."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(errno.EPERM, message, path)

    def __str__(self) -> str:
        return str(self.strerror)


def normalize(path: str) -> str:
    """'/./etc/.' -> '/etc', '//etc' -> '/etc' (no symlink resolution)."""
    p = os.path.normpath(os.path.abspath(path))
    return "/" + p.lstrip("/")


def system_dir_problem(path: str) -> Optional[str]:
    """Why `path` cannot be a dedicated directory, else None. Checks the normalized path and,
    through symlinks, the resolved one."""
    norm = normalize(path)
    for p in dict.fromkeys((norm, os.path.realpath(path))):
        via = "" if p == norm else " (through a symlink)"
        for root in VIRTUAL_ROOTS:
            if p == root or p.startswith(root + "/"):
                return f"it is under {root}{via}"
        if p in SYSTEM_DIRS:  # a short, known name: safe to quote back
            return f"{p} is a system directory{via}"
    return None


@functools.lru_cache(maxsize=1)
def sys_uid_max(login_defs: str = "/etc/login.defs") -> int:
    """SYS_UID_MAX from login.defs (999 when absent)."""
    try:
        with open(login_defs, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "SYS_UID_MAX" and parts[1].isdigit():
                    return int(parts[1])
    except OSError:
        pass
    return 999


def _system_account(uid: int) -> bool:
    if not 0 < uid <= sys_uid_max():
        return False
    try:
        shell = pwd.getpwuid(uid).pw_shell
    except KeyError:  # no such account: nobody vouches for it
        return False
    return os.path.basename(shell) in ("nologin", "false")


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _others_write(st: os.stat_result) -> bool:
    """Writable by others, or by a group other than root's."""
    return bool(st.st_mode & stat.S_IWOTH) or (bool(st.st_mode & stat.S_IWGRP) and st.st_gid != 0)


def _owner_ok(uid: int, system_owner: bool) -> bool:
    return uid in (0, os.geteuid()) or (system_owner and _system_account(uid))


def dir_problem(st: os.stat_result, final: bool, system_owner: bool = False) -> Optional[str]:
    """Why a directory with this stat is not trusted (as the directory itself, or as a parent)."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not final and st.st_mode & stat.S_ISVTX and st.st_uid in (0, os.geteuid()):
        return None  # sticky and ours (/tmp): nobody else can rename or remove our entry
    if not _owner_ok(st.st_uid, system_owner):
        return "is owned by another user"
    if _others_write(st):
        return f"is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


def _expected(what: str, system_owner: bool) -> str:
    who = "root or a system account" if system_owner else "root"
    return (f"expected {what} and each parent owned by {who} and not writable by other users "
            f"(a sticky parent owned by root, like /tmp, is fine)")


def check_dir(path: str, what: str, system_owner: bool = False) -> None:
    """Raise UnsafePath (naming the path, the culprit's owner and mode, and what is expected) when
    another user could swap `path` or one of its parents. The missing tail of `path` is fine (it
    will be created by us); a non-directory in the way raises NotADirectoryError."""
    path = normalize(path)
    cur = "/"
    todo = [c for c in path.split("/") if c not in ("", ".")]
    links = 0
    st = os.lstat(cur)
    _judge(path, what, cur, st, not todo, system_owner)
    while todo:
        name = todo.pop(0)
        if name == "..":
            cur = os.path.dirname(cur)  # cur is resolved: this is the physical parent
            continue
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            return  # the rest is created by us, under `cur`, which passed
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
            _judge_link(path, what, cur, os.lstat(cur), nxt, st, system_owner)
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            todo = [c for c in target.split("/") if c not in ("", ".")] + todo
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{nxt} is not a directory", path)
        _judge(path, what, nxt, st, not todo, system_owner)
        cur = nxt


def _judge(path: str, what: str, d: str, st: os.stat_result, final: bool, system_owner: bool) -> None:
    why = dir_problem(st, final, system_owner)
    if why:
        if not final:
            who = f"{what} {path}: its parent {d}"
        else:
            who = f"{what} {path}" if d == path else f"{what} {path} (resolved to {d})"
        raise UnsafePath(path, f"{who} {why} (owner {_owner(st.st_uid)}, mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); {_expected(what, system_owner)}")


def _judge_link(path: str, what: str, parent_path: str, parent: os.stat_result, link: str,
                st: os.stat_result, system_owner: bool) -> None:
    """A symlink is followed only if nobody else could have planted it: its parent is not a shared
    (sticky, writable by others) directory, or the symlink is owned by root (or us)."""
    if parent.st_mode & stat.S_ISVTX and _others_write(parent) and not _owner_ok(st.st_uid, system_owner):
        raise UnsafePath(path, f"{what} {path}: the symlink {link} in the shared directory {parent_path} is "
                               f"owned by {_owner(st.st_uid)}; {_expected(what, system_owner)}")


def verify_dir_fd(fd: int, path: str, what: str, system_owner: bool = False) -> None:
    """The opened directory itself passes (what was checked by path is what we hold)."""
    st = os.fstat(fd)
    why = dir_problem(st, True, system_owner)
    if why:
        raise UnsafePath(path, f"{what} {path} {why} (owner {_owner(st.st_uid)}, mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); {_expected(what, system_owner)}")


_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a level of the walk (search only)
_MKDIR_TRIES = 8  # a name that keeps appearing and vanishing (a hostile user in /tmp) is an error, not a loop


def makedirs(path: str, mode: int, what: str = "directory", system_owner: bool = False) -> list[str]:
    """Create `path` and its missing parents, each with exactly `mode`; see makedirs_fd. Returns the
    created paths (resolved), top first."""
    fd, created = makedirs_fd(path, mode, what, system_owner)
    os.close(fd)
    return created


def makedirs_fd(path: str, mode: int, what: str = "directory",
                system_owner: bool = False) -> tuple[int, list[str]]:
    """Create `path` and its missing parents, each with exactly `mode` (mkdir, then fchmod of only the
    levels created here: the umask does not apply), and return (an O_RDONLY fd of `path`, the created
    paths top first). The walk goes from "/" through directory fds, never by path: each level is opened
    O_NOFOLLOW and must pass the check_dir rules (`what`, `system_owner`: as there) before anything is
    looked up or made in it; the final directory is checked like check_dir's. A symlink is resolved
    only if check_dir would trust it (not another user's in a shared sticky directory). A level that
    someone else made between our lookup and our mkdir (FileExistsError) is opened and checked like
    any existing one. Raises UnsafePath (nothing is created at or under the culprit),
    NotADirectoryError, or the OSError of a mkdir/open (naming the full path)."""
    path = normalize(path)
    todo = [c for c in path.split("/") if c not in ("", ".")]
    created: list[str] = []
    stack: list[tuple[str, int]] = []  # the resolved levels held open, "/" first
    links = 0
    try:
        stack.append(("/", os.open("/", _PATH_FLAGS)))
        _judge(path, what, "/", os.fstat(stack[0][1]), not todo, system_owner)
        while todo:
            name = todo.pop(0)
            cur, fd = stack[-1]
            if name == "..":  # the level we came from, already checked (the root's parent is itself)
                if len(stack) > 1:
                    os.close(stack.pop()[1])
                continue
            nxt = os.path.join(cur, name)
            try:
                nfd, target = _step(path, what, system_owner, fd, cur, name, mode, not todo, created)
            except UnsafePath:
                raise
            except OSError as e:
                if e.filename != name:
                    raise
                raise OSError(e.errno, e.strerror, nxt) from None  # the full path, not the bare name
            if target is None:
                stack.append((nxt, nfd))
                continue
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop()[1])
            todo = [c for c in target.split("/") if c not in ("", ".")] + todo
        final, pfd = stack[-1]
        fd = os.open(".", DIR_FLAGS, dir_fd=pfd)  # the very directory the walk checked, now readable
        try:
            _judge(path, what, final, os.fstat(fd), True, system_owner)
        except BaseException:
            os.close(fd)
            raise
        return fd, created
    finally:
        for _, f in stack:
            os.close(f)


def _step(path: str, what: str, system_owner: bool, fd: int, cur: str, name: str, mode: int, final: bool,
          created: list[str]) -> tuple[int, Optional[str]]:
    """Enter `name` in the checked directory `fd` (resolved path `cur`), making it if missing: (its
    O_PATH fd, None) once checked, or (-1, target) for a symlink that passes _judge_link."""
    nxt = os.path.join(cur, name)
    made = False
    for _ in range(_MKDIR_TRIES):
        try:
            nfd = os.open(name, _PATH_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            try:
                os.mkdir(name, mode & 0o700, dir_fd=fd)  # private until its mode is set
            except FileExistsError:  # made meanwhile by someone else: judged below like any existing level
                continue
            made = True
            continue
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:  # gone meanwhile: look again
                continue
            if not stat.S_ISLNK(st.st_mode):
                kind = "a file" if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode)
                raise NotADirectoryError(errno.ENOTDIR, f"{nxt} is {kind}, not a directory", path) from None
            _judge_link(path, what, cur, os.fstat(fd), nxt, st, system_owner)
            return -1, os.readlink(name, dir_fd=fd)
        try:
            st = os.fstat(nfd)
            if made and st.st_uid == os.geteuid():  # ours (no one else can swap it here): set its mode
                rfd = os.open(".", DIR_FLAGS, dir_fd=nfd)  # fchmod needs more than an O_PATH fd
                try:
                    os.fchmod(rfd, mode)
                    st = os.fstat(rfd)
                finally:
                    os.close(rfd)
                created.append(nxt)
            _judge(path, what, nxt, st, final, system_owner)
        except BaseException:
            os.close(nfd)
            raise
        return nfd, None
    raise OSError(errno.EAGAIN, f"{nxt} keeps appearing and vanishing while {what} {path} is created", path)


def open_dir(path: str, dir_fd: Optional[int] = None, follow: bool = False) -> int:
    """A directory fd; `follow` lets the last component be a symlink (a checked top directory)."""
    try:
        return os.open(path, DIR_FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=dir_fd)
    except OSError as e:
        if follow or e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        try:
            kind = kind_of(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            raise e from None
        raise OSError(e.errno, f"{kind} is in the way, not a directory", path) from None


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(name: str, dir_fd: Optional[int], shown: str, e: Optional[OSError] = None) -> OSError:
    """A clear error for an open that met a FIFO (ENXIO), a symlink (ELOOP) or the like."""
    try:
        kind = kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return e or OSError(errno.EINVAL, "not a regular file", shown)
    if kind == "not a regular file" and e is not None:
        return e
    return OSError(e.errno if e else errno.EINVAL, f"{kind} is in the way, not a regular file", shown)


def open_new(name: str, dir_fd: Optional[int], flags: int = os.O_WRONLY, mode: int = 0o600) -> int:
    """Create `name` (O_EXCL, never following or opening anything already there), exactly `mode`."""
    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | _SAFE, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode went through the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(name: str, dir_fd: Optional[int], flags: int, mode: int = 0o600, shown: str = "") -> int:
    """Open (or with O_CREAT create) a regular file without blocking or following a symlink;
    anything else there (FIFO, device, symlink, directory) is refused with a clear OSError."""
    shown = shown or name
    try:
        fd = os.open(name, flags | _SAFE, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ELOOP, errno.EISDIR, errno.ENODEV):
            raise _not_regular(name, dir_fd, shown, e) from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{kind_of(st.st_mode)} is in the way, not a regular file", shown)
    return fd


def clear_dir(fd: int, depth: int = 0) -> None:
    """Remove everything inside the directory `fd`, never following a symlink."""
    if depth > _MAX_DEPTH:
        raise OSError(errno.ELOOP, "directory tree too deep to remove")
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            remove_tree(name, fd, depth + 1)
        else:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass


def remove_tree(name: str, dir_fd: int, depth: int = 0) -> None:
    """Remove `name` inside `dir_fd`: a directory through its fd, anything else (a symlink too) unlinked."""
    try:
        fd = os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=dir_fd)  # a symlink or a file: the name goes, its target stays
        return
    try:
        clear_dir(fd, depth)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
