"""Retention: keep the bundle directory within its age and size budget (last stop of the data flow).

ring -> dispatch -> detect -> collect -> **retain**.

Only finished bundles (bundle.BUNDLE_RE names) are pruned, oldest first (by mtime): first
those over max_age, then more until the total fits max_total_bytes. The total also counts the
anomaly history (anomalies.jsonl and its logrotate rotations), which logrotate, not this module,
trims. The newest bundle is always kept. Leftover `.partial` files and `.stage-*` dirs of a crashed
process are removed once they are older than STALE_SEC (a live writer touches them), or QUIET_SEC
when the pid in their name is gone; this process's stages as soon as no capture uses them
(bundle.stage_in_use: a leaked worker's), its partials never (a wall clock stepped forward must
not delete a running capture). That sweep runs at start, every pass and after each capture
(collect.py); what it removed is counted (stale_removed(), in `aodv2 status --json`).
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
from .bundle import PARTIAL_SUFFIX, STAGE_PREFIX, bundle_entries, owner_pid, stage_in_use
from .config import Config
from .tracerstate import pid_alive

STALE_SEC = 3600.0
QUIET_SEC = 60.0  # a leftover whose owner pid is gone, untouched this long, is stale
_count_lock = threading.Lock()
_stale_removed = {"stages": 0, "partials": 0}
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


def stale_removed() -> dict[str, int]:
    """Leftover stage dirs and partial files removed since start."""
    with _count_lock:
        return dict(_stale_removed)


def _is_stale(name: str, path: str, st: os.stat_result, now: float, stale_sec: float) -> bool:
    pid = owner_pid(name)
    if pid == os.getpid():  # ours: a stage no capture uses was leaked; a partial is finalize's own
        return name.startswith(STAGE_PREFIX) and not stage_in_use(name)
    quiet = now - _newest_mtime(path, st)
    return quiet > stale_sec or (pid is not None and quiet > QUIET_SEC and not pid_alive(pid))


def clean_stale(
    output_dir: str, now: float, stale_sec: float = STALE_SEC
) -> tuple[list[tuple[str, str]], list[str]]:
    """Remove leftover `.partial` files and `.stage-*` dirs (see the module doc)."""
    pruned: list[tuple[str, str]] = []
    errors: list[str] = []
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return pruned, errors
    for name in names:
        stage = name.startswith(STAGE_PREFIX)
        if not (stage or (name.startswith(".") and name.endswith(PARTIAL_SUFFIX))):
            continue
        path = os.path.join(output_dir, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        n = len(pruned)
        if _is_stale(name, path, st, now, stale_sec) and _remove(path, "stale", st.st_size, pruned, errors) \
                and len(pruned) > n:  # removed here (not by a concurrent sweep)
            with _count_lock:
                _stale_removed["stages" if stage else "partials"] += 1
    return pruned, errors


def sweep_stale(output_dir: str) -> int:
    """clean_stale now, errors logged (the collector, after each capture). Returns how many went."""
    pruned, errors = clean_stale(output_dir, time.time())
    for err in errors:
        log.emit("pruned", logging.WARNING, f"AOD cannot remove {err}", AOD_OUTPUT=output_dir, AOD_ERROR=err)
    return len(pruned)


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
