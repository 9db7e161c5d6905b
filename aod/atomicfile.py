"""Write a small file atomically (tmp + rename): tracer state, core status, metrics.

Readers (aodv2 status, node_exporter's textfile collector) never see a partial file.
"""

from __future__ import annotations

import os


def write_atomic(path: str, data: bytes, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Replace `path` with `data`. Creates the parent dir (dir_mode) if missing. Raises OSError."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=dir_mode, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
