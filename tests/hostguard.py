"""The host's aodv2 state is off limits to tests (conftest.py installs this; not a test module).

A root CI run on a host where aodv2 runs must not replace the real daemon's control.sock,
status.json or bundles, nor read its pins. In this process an audit hook refuses (PermissionError)
and records every open, create, rename, remove, listing, chmod and socket bind/connect under
/run/aodv2, /var/log/aodv2 and /sys/fs/bpf/aodv2, and bpfsys.obj_get of a pin there; the
autouse fixture fails the test that did it, even if the code under test swallowed the error.
A core started as a subprocess is covered by test_harden_core's scan: every `aod.cli run`
argv in tests/ and bench/ names its --state-dir.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

HOST_PATHS = ("/run/aodv2", "/var/log/aodv2", "/sys/fs/bpf/aodv2")
# audited events whose path arguments are checked (sys.audit event names)
_PATH_EVENTS = {
    "open": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.replace": (0, 1), "os.remove": (0,),
    "os.rmdir": (0,), "os.chmod": (0,), "os.chown": (0,), "os.listdir": (0,), "os.scandir": (0,),
    "os.symlink": (0, 1), "os.link": (0, 1), "os.truncate": (0,), "os.utime": (0,), "os.mkfifo": (0,),
    "os.mknod": (0,), "shutil.rmtree": (0,), "socket.bind": (1,), "socket.connect": (1,),
    "socket.sendto": (1,),
}
violations: list[str] = []
_lock = threading.Lock()
_installed = False


class HostStateTouched(PermissionError):
    pass


def host_path(p: Any) -> str:
    """p normalised if it is a path under one of HOST_PATHS, else ''."""
    if isinstance(p, os.PathLike):
        p = os.fspath(p)
    if isinstance(p, bytes):
        p = p.decode("utf-8", "replace")
    if not isinstance(p, str) or not p.startswith("/"):
        return ""
    n = os.path.normpath(p)
    return n if any(n == h or n.startswith(h + "/") for h in HOST_PATHS) else ""


def _record(what: str, path: str) -> None:
    with _lock:
        violations.append(f"{what} {path}")
    raise HostStateTouched(1, f"a test touched the host's aodv2 state ({what})", path)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    idx = _PATH_EVENTS.get(event)
    if idx is None:
        return
    for i in idx:
        if i < len(args):
            p = host_path(args[i])
            if p:
                _record(event, p)


def install() -> None:
    """Add the audit hook (once per process; it cannot be removed) and guard bpfsys.obj_get."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.addaudithook(_hook)
    from aod import bpfsys

    real = bpfsys.obj_get

    def obj_get(path: str, file_flags: int = 0) -> int:
        p = host_path(path)
        if p:
            _record("bpf obj_get", p)
        return real(path, file_flags)

    bpfsys.obj_get = obj_get
    _guard_safefs()


def _guard_safefs() -> None:
    """aod.safefs walks directories by fd (openat): the audit events then carry relative names
    only, so its path entry points are guarded here (every caller uses `safefs.NAME(...)`)."""
    from aod import safefs

    def wrap(name: str) -> None:
        real = getattr(safefs, name)

        def guarded(path: Any, *args: Any, **kw: Any) -> Any:
            if kw.get("dir_fd") is None and not (args and isinstance(args[0], int) and name in _DIR_FD_SECOND):
                p = host_path(path)
                if p:
                    _record(f"safefs.{name}", p)
            return real(path, *args, **kw)

        setattr(safefs, name, guarded)

    for name in ("check_dir", "makedirs", "makedirs_fd", "open_dir", "open_new", "open_regular"):
        wrap(name)


_DIR_FD_SECOND = ("open_dir", "open_new", "open_regular")  # (name, dir_fd, ...): relative to an fd


def installed() -> bool:
    return _installed


def take() -> list[str]:
    """The violations since the last call (and forget them)."""
    with _lock:
        out = list(violations)
        violations.clear()
    return out
