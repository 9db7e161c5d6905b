"""Write a small file atomically (tmp + rename): tracer state, core status, metrics.

Readers (aodv2 status, node_exporter's textfile collector) never see a partial file. Every step is
relative to the opened parent directory: the temp file is created O_EXCL|O_NOFOLLOW|O_NONBLOCK (a
FIFO or symlink planted at its name is removed and logged, never opened), then renamed over `path`.
"""

from __future__ import annotations

import logging
import os
import stat

from . import log, safefs


def write_atomic(path: str, data: bytes, mode: int = 0o600, dir_mode: int = 0o700,
                 system_owner: bool = False, what: str = "directory") -> None:
    """Replace `path` with `data` (exactly `mode`). Missing parent dirs are created with dir_mode.
    Raises OSError; safefs.UnsafePath when another user could swap the parent (`what` names it)."""
    parent = os.path.dirname(path) or "."
    base = os.path.basename(path)
    dfd, _ = safefs.makedirs_fd(parent, dir_mode, what, system_owner)  # every level checked, by fd
    try:
        tmp = f".{base}.{os.getpid()}.tmp"
        try:
            fd = safefs.open_new(tmp, dfd, os.O_WRONLY, mode)
        except FileExistsError:  # our own name: a crash's leftover, or something planted there
            _remove_stale(tmp, dfd, parent)
            fd = safefs.open_new(tmp, dfd, os.O_WRONLY, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def _remove_stale(tmp: str, dfd: int, parent: str) -> None:
    shown = os.path.join(parent, tmp)
    try:
        st = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    kind = "a file" if stat.S_ISREG(st.st_mode) else safefs.kind_of(st.st_mode)
    try:
        os.unlink(tmp, dir_fd=dfd)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OSError(e.errno, f"{kind} is in the way at the temp file name ({e.strerror})", shown) from None
    log.emit("metrics_failed", logging.WARNING, f"AOD removed {kind} found at its temp file name {shown} "
             "(left by a crash, or planted); writing again", AOD_PATH=shown)
