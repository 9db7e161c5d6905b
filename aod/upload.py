"""The uploader worker: finished bundle -> operator's upload command (after collect).

ring -> dispatch -> detect -> collect -> **upload** (beside retain).

`Uploader.submit()` (any thread, never blocks) queues a bundle the collector just wrote;
`Uploader.run()` is the worker thread. Per job it reads the current config, expands the
upload.command argv template in one pass (values stay literal: no shell, no str.format),
and runs it in its own process group with stdin closed and the output tail kept (2 KiB).
An attempt is killed (whole group) after upload.timeout_sec, retried upload.retries times
after backoff_sec * 2**k seconds. Every outcome is logged ("upload" / "upload_failed").
"""

from __future__ import annotations

import logging
import os
import queue
import re
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from . import log
from .collect import drain
from .config import PLACEHOLDER_RE, Config
from .reaper import REAPER, popen_tagged

QUEUE_SIZE = 64
TAIL_BYTES = 2048  # output kept per stream for the log
MAX_BACKOFF_SEC = 86400.0  # one retry delay is never longer than a day
_TICK_SEC = 0.2  # poll step while an attempt runs or a backoff waits (beat, stop, deadline)
_IDLE_SEC = 0.5  # idle queue wait
_BEAT_SEC = 0.5  # backoff wait step
_KILL_WAIT_SEC = 1.0  # after SIGKILL, wait this long to reap the leader
_READ_CHUNK = 65536
# systemd hands these to the daemon, not to its hook; JOURNAL_STREAM would make journald-aware
# tools (rclone) prefix each stderr line with "<3>", though their stderr is our pipe.
_DROP_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
             "JOURNAL_STREAM")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PRIO_RE = re.compile(r"^<[0-7]>")  # sd-daemon(3) priority prefix


@dataclass(frozen=True)
class Job:
    path: str
    anomaly_type: str


@dataclass
class Attempt:
    """One run of the command: ok, or why not (`exit` is a code, signal name, timeout, exec)."""

    ok: bool
    exit: str = ""
    error: str = ""  # one line for the message
    detail: str = ""  # output tail (<= TAIL_BYTES per stream), single line
    stopped: bool = False


# ---------------------------------------------------------------- pure helpers


def placeholder_values(path: str, anomaly_type: str, output_dir: str) -> dict[str, str]:
    return {"path": path, "name": os.path.basename(path), "type": anomaly_type, "dir": output_dir}


def expand(template: tuple[str, ...], values: Mapping[str, str]) -> list[str]:
    """argv template -> argv. One pass per argument: substituted text is never rescanned,
    unknown {...} stay literal (config validation rejects them anyway)."""
    return [PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), a) for a in template]


def backoff_delay(backoff_sec: float, k: int) -> float:
    """Delay before retry k (0-based): backoff_sec * 2**k, capped at MAX_BACKOFF_SEC."""
    return min(MAX_BACKOFF_SEC, float(backoff_sec) * (2.0 ** min(k, 64)))


def clean_tail(data: bytes, limit: int = TAIL_BYTES) -> str:
    """Output bytes -> one printable line (ANSI, control chars and <N> priority prefixes gone,
    lines joined by ' | ')."""
    text = _ANSI_RE.sub("", data[-limit:].decode("utf-8", "replace"))
    lines = [" ".join(_CTRL_RE.sub(" ", _PRIO_RE.sub("", ln)).split()) for ln in re.split(r"[\r\n]+", text)]
    out = " | ".join(ln for ln in lines if ln)
    return out if len(out) <= limit else "..." + out[-(limit - 3):]


def last_lines(detail: str, n: int = 2, limit: int = 300) -> str:
    s = " | ".join(detail.split(" | ")[-n:])
    return s if len(s) <= limit else "..." + s[-(limit - 3):]


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _DROP_ENV}


def _exited(pid: int) -> bool:
    """Leader exited? WNOWAIT leaves it a zombie, so its pid (= our pgid) cannot be reused
    before we kill what is left of the group."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return str(rc)


def run_attempt(argv: list[str], timeout: float, stop: threading.Event,
                beat: Callable[[], None]) -> Attempt:
    """Run argv once (no shell, own process group, stdin /dev/null). Never raises OSError."""
    try:  # tagged and live for the reaper before the fork: no sweep of an action takes it for an orphan
        proc, tag = popen_tagged(argv, child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    except OSError as e:
        return Attempt(False, exit="exec",
                       error=f"cannot run {argv[0]}: {e.strerror or e} (expected an executable program)")
    assert proc.stdout is not None and proc.stderr is not None  # noqa: S101 - PIPE given
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    tails = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in tails:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)

    def pump(fd: int) -> None:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(fd)
            return
        buf = tails[fd]
        buf.extend(chunk)
        del buf[:-TAIL_BYTES]

    reason = ""
    deadline = time.monotonic() + timeout
    try:
        while True:
            beat()
            if _exited(proc.pid):
                break
            if stop.is_set():
                reason = "stopped"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            if not sel.get_map():  # both pipes at EOF: only the exit is left to wait for
                time.sleep(min(_TICK_SEC, left))
                continue
            for key, _ in sel.select(min(_TICK_SEC, left)):
                pump(int(key.fd))
    finally:
        # timeout, stop, or children left behind by a finished leader: the whole tree, setsid
        # grandchildren too (reaper.py; the core is their subreaper)
        REAPER.kill_tree(tag)
        try:
            proc.wait(_KILL_WAIT_SEC)
        except subprocess.TimeoutExpired:  # stuck in D state: Popen reaps it later
            pass
        for _ in range(64):  # what is still buffered in the pipes (writers are dead)
            fds = [int(k.fd) for k, _ in sel.select(0)]
            if not fds:
                break
            for fd in fds:
                pump(fd)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    detail = clean_tail(bytes(tails[err_fd])) or clean_tail(bytes(tails[out_fd]))
    if reason == "stopped":
        return Attempt(False, exit="stopped", error="interrupted: the daemon is stopping", detail=detail,
                       stopped=True)
    if reason == "timeout":
        return Attempt(False, exit="timeout", error=f"timed out after {timeout:g}s, process group killed",
                       detail=detail)
    rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    if rc == 0:
        return Attempt(True, exit="0", detail=detail)
    what = f"exited with status {rc}" if rc > 0 else f"killed by {_exit_text(rc)}"
    return Attempt(False, exit=_exit_text(rc), error=what, detail=detail)


# ---------------------------------------------------------------- the worker


class Uploader:
    """Worker (see daemon.py): bounded queue of bundles in, one upload at a time."""

    name = "uploader"

    def __init__(self, get_config: Callable[[], Config], queue_size: int = QUEUE_SIZE) -> None:
        self.get_config = get_config
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max(1, queue_size))
        self._mu = threading.Lock()  # guards the counters below
        self._pending = 0  # submitted, not settled yet (queued + the one in flight)
        self._in_flight = False  # the job taken by run() is not settled yet
        self._ok = self._failed = self._attempts = self._rejected = self._dropped = 0
        self._last_error = ""
        self._last_ok = ""

    # --- any thread ------------------------------------------------------------
    def enabled(self) -> bool:
        try:
            return bool(self.get_config().upload.command)
        except Exception:
            return False

    def submit(self, path: str, anomaly_type: str) -> bool:
        """Queue a finished bundle. False when upload is off or the queue is full. Never blocks."""
        if not self.enabled():
            return False
        with self._mu:
            try:
                self._queue.put_nowait(Job(path, anomaly_type))
            except queue.Full:
                self._rejected += 1
                return False
            self._pending += 1
        return True

    def stats(self) -> dict[str, object]:
        with self._mu:
            return {"ok": self._ok, "failed": self._failed, "attempts": self._attempts,
                    "pending": self._pending, "rejected": self._rejected, "dropped": self._dropped,
                    "last_error": self._last_error, "last_ok": self._last_ok}

    # --- worker thread ---------------------------------------------------------
    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        with self._mu:
            lost = self._in_flight  # left unsettled by a run() that raised (never expected)
        if lost:
            log.emit("upload_failed", logging.WARNING, "AOD uploader restarted: 1 bundle not uploaded",
                     AOD_DROPPED=1)
            self._settle(dropped=1)
        while not stop.is_set():
            beat()
            try:
                job = self._queue.get(timeout=_IDLE_SEC)
            except queue.Empty:
                continue
            with self._mu:
                self._in_flight = True
            try:
                interrupted = self._upload(job, stop, beat)
            except Exception as e:  # a bug: count it, keep the worker alive
                self._final_failure(job, 1, 1, Attempt(False, exit="internal", error=f"internal error: {e!r}"))
                interrupted = False
            if interrupted:
                break
        self._drop_pending()

    def _settle(self, ok: int = 0, failed: int = 0, dropped: int = 0, last_ok: str = "",
                last_error: str = "") -> None:
        """The job in flight is done: count its outcome (log it first, so stats never run ahead)."""
        with self._mu:
            if not self._in_flight:
                return
            self._in_flight = False
            self._pending -= 1
            self._ok += ok
            self._failed += failed
            self._dropped += dropped
            self._last_ok = last_ok or self._last_ok
            self._last_error = last_error or self._last_error

    def _upload(self, job: Job, stop: threading.Event, beat: Callable[[], None]) -> bool:
        """One job, all attempts. True when interrupted by stop (the job is not settled)."""
        cfg = self.get_config()
        up = cfg.upload
        if not up.command:
            self._drop(job, "upload.command is empty since a config reload")
            return False
        argv = expand(up.command, placeholder_values(job.path, job.anomaly_type, cfg.output_dir))
        total = int(up.retries) + 1
        t0 = time.monotonic()
        for n in range(1, total + 1):
            if not os.path.exists(job.path):
                self._drop(job, "the bundle no longer exists (removed by retention?)")
                return False
            with self._mu:
                self._attempts += 1
            res = run_attempt(argv, float(up.timeout_sec), stop, beat)
            if res.stopped:
                return True
            if res.ok:
                secs = round(time.monotonic() - t0, 3)
                log.emit("upload", logging.INFO, f"AOD bundle uploaded: {job.path} (attempt {n}/{total}, "
                         f"{secs:g}s)", AOD_BUNDLE=job.path, AOD_ANOMALY=job.anomaly_type,
                         AOD_UPLOAD_ATTEMPTS=n, AOD_UPLOAD_SECONDS=secs)
                self._settle(ok=1, last_ok=job.path)
                return False
            if n == total:
                self._final_failure(job, n, total, res)
                return False
            delay = backoff_delay(up.backoff_sec, n - 1)
            log.emit("upload_failed", logging.WARNING,
                     f"AOD upload of {job.path} failed (attempt {n}/{total}): {_why(res)}; "
                     f"retrying in {delay:g}s", AOD_BUNDLE=job.path, AOD_ANOMALY=job.anomaly_type,
                     AOD_UPLOAD_ATTEMPTS=n, AOD_EXIT=res.exit, AOD_ERROR=res.detail or res.error)
            if _sleep(delay, stop, beat):
                return True
        return False

    def _final_failure(self, job: Job, n: int, total: int, res: Attempt) -> None:
        why = _why(res)
        log.emit("upload_failed", logging.ERROR,
                 f"AOD upload of {job.path} failed (attempt {n}/{total}), giving up: {why}",
                 AOD_BUNDLE=job.path, AOD_ANOMALY=job.anomaly_type, AOD_UPLOAD_ATTEMPTS=n,
                 AOD_EXIT=res.exit, AOD_ERROR=res.detail or res.error)
        self._settle(failed=1, last_error=f"{job.path}: {why}")

    def _drop(self, job: Job, why: str) -> None:
        log.emit("upload_failed", logging.WARNING, f"AOD upload of {job.path} dropped: {why}",
                 AOD_BUNDLE=job.path, AOD_ANOMALY=job.anomaly_type)
        self._settle(dropped=1)

    def _drop_pending(self) -> None:
        """Stopping: the interrupted job and everything queued are not uploaded; one line."""
        with self._mu:
            n = int(self._in_flight)
        n += drain(self._queue)
        if n:
            log.emit("upload_failed", logging.WARNING, f"AOD uploader stopping: {n} bundle(s) not uploaded",
                     AOD_DROPPED=n)
        with self._mu:
            self._pending -= n
            self._dropped += n
            self._in_flight = False


def _why(res: Attempt) -> str:
    tail = last_lines(res.detail) if res.detail else ""
    return res.error + (f": {tail}" if tail else "")


def _sleep(seconds: float, stop: threading.Event, beat: Callable[[], None]) -> bool:
    """Wait `seconds`, beating; True as soon as stop is set."""
    end = time.monotonic() + seconds
    while True:
        beat()
        left = end - time.monotonic()
        if left <= 0:
            return stop.is_set()
        if stop.wait(min(_BEAT_SEC, left)):
            return True
