"""Retention: keep the bundle directory within its age and size budget (last stop of the data flow).

ring -> dispatch -> detect -> collect -> **retain**.

Only finished bundles (bundle.BUNDLE_RE names) are pruned, oldest first (by mtime): first
those over max_age, then more until the total fits max_total_bytes. The total also counts the
anomaly history (anomalies.jsonl and its logrotate rotations), which logrotate, not this module,
trims. The newest bundle is always kept. Leftover `.partial` files and `.stage-*` dirs of a crashed
process are removed once they are older than STALE_SEC (a live writer touches them); those
of this process never are (a wall clock stepped forward must not delete a running capture).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import threading
import time
from typing import Callable, Optional

from . import history, log
from .bundle import PARTIAL_SUFFIX, STAGE_PREFIX, bundle_entries, owner_pid
from .config import Config

STALE_SEC = 3600.0
_MiB = 1024 * 1024
_HISTORY_RE = re.compile(re.escape(history.FILENAME) + r"(\.\d+|-\d{8,10})?(\.gz)?")  # logrotate names


def history_bytes(output_dir: str) -> int:
    """Bytes of the anomaly history files in output_dir (counted in the budget, never pruned here)."""
    total = 0
    try:
        with os.scandir(output_dir) as it:
            for e in it:
                if _HISTORY_RE.fullmatch(e.name):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
    except OSError:
        pass
    return total


def _newest_mtime(path: str, st: os.stat_result) -> float:
    """mtime of a stage dir is the newest of the dir and what is inside it."""
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
    return newest


def _remove(path: str, reason: str, size: int, pruned: list[tuple[str, str]], errors: list[str]) -> bool:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:  # someone else removed it: fine
        return True
    except OSError as e:
        errors.append(f"{path}: {e.strerror or e}")
        return False
    pruned.append((path, reason))
    log.emit("pruned", logging.INFO, f"AOD pruned {path} ({reason})", AOD_BUNDLE=path, AOD_REASON=reason,
             AOD_BYTES=size)
    return True


def clean_stale(
    output_dir: str, now: float, stale_sec: float = STALE_SEC
) -> tuple[list[tuple[str, str]], list[str]]:
    """Remove `.partial` files and `.stage-*` dirs untouched for stale_sec."""
    pruned: list[tuple[str, str]] = []
    errors: list[str] = []
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return pruned, errors
    for name in names:
        if not (name.startswith(STAGE_PREFIX) or (name.startswith(".") and name.endswith(PARTIAL_SUFFIX))):
            continue
        if owner_pid(name) == os.getpid():
            continue  # our own capture in progress: never stale, whatever the wall clock says
        path = os.path.join(output_dir, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if now - _newest_mtime(path, st) > stale_sec:
            _remove(path, "stale", st.st_size, pruned, errors)
    return pruned, errors


def prune(
    output_dir: str, max_total_bytes: float, max_age_sec: float, now: Optional[float] = None,
    stale_sec: float = STALE_SEC,
) -> list[tuple[str, str]]:
    """Prune output_dir; returns [(path, reason)] with reason age | size | stale.

    A limit <= 0 is "no limit". Files that vanish meanwhile are skipped. Raises OSError
    only if the directory itself cannot be read; a file that cannot be removed is logged.
    """
    now = time.time() if now is None else now
    if not os.path.isdir(output_dir):
        return []
    os.listdir(output_dir)  # unreadable dir: raise to the caller
    pruned, errors = clean_stale(output_dir, now, stale_sec)
    entries = bundle_entries(output_dir)  # oldest first
    if not entries:
        return pruned
    keep_last = entries.pop()  # newest: always kept
    survivors: list[tuple[str, float, int]] = []
    for path, mtime, size in entries:
        if max_age_sec > 0 and now - mtime > max_age_sec:
            if _remove(path, "age", size, pruned, errors):
                continue
        survivors.append((path, mtime, size))
    if max_total_bytes > 0:
        total = keep_last[2] + sum(e[2] for e in survivors) + history_bytes(output_dir)
        for path, _mtime, size in survivors:
            if total <= max_total_bytes:
                break
            if _remove(path, "size", size, pruned, errors):
                total -= size
    for err in errors:
        log.emit("pruned", logging.WARNING, f"AOD cannot prune {err}", AOD_OUTPUT=output_dir, AOD_ERROR=err)
    return pruned


class Retention:
    """Worker (see daemon.py): prune once at start, then every retention.interval_sec."""

    name = "retention"

    def __init__(self, config_provider: Callable[[], Config]) -> None:
        self.config_provider = config_provider
        self.runs = 0
        self.last_error = ""

    def prune_now(self) -> list[tuple[str, str]]:
        """One pass; errors are logged, never raised."""
        self.runs += 1
        out_dir = ""
        try:
            cfg = self.config_provider()
            out_dir = cfg.output_dir
            r = cfg.retention
            result = prune(out_dir, r.max_total_mb * _MiB, r.max_age_days * 86400.0)
            self.last_error = ""
            return result
        except Exception as e:
            msg = f"{e.strerror or e}" if isinstance(e, OSError) else repr(e)
            self.last_error = msg
            log.emit("pruned", logging.WARNING, f"AOD retention pass on {out_dir} failed: {msg}",
                     AOD_OUTPUT=out_dir, AOD_ERROR=msg)
            return []

    def _interval(self) -> float:
        try:
            return max(1.0, float(self.config_provider().retention.interval_sec))
        except Exception:
            return 60.0

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        beat()
        self.prune_now()
        last = time.monotonic()
        while not stop.is_set():
            beat()
            if time.monotonic() - last >= self._interval():
                self.prune_now()
                last = time.monotonic()
                beat()
            stop.wait(1.0)


def usage(output_dir: str) -> tuple[int, int]:
    """(bytes counted against the budget, bundle count) in output_dir; (0, 0) if it cannot be read."""
    entries = bundle_entries(output_dir)
    return sum(e[2] for e in entries) + history_bytes(output_dir), len(entries)
