"""Running one planned step into the stage dir, and folding step results (collect layer).

ring -> dispatch -> detect -> **collect** (actions.py plans, actionrun.py runs, collect.py drives).

A step reads a file (capped, in a daemon thread that only reads: the capture writes the stage
file, relative to the stage's fd, so a read stuck in the kernel is abandoned and counted as
stranded, never able to write or re-create anything later), runs commands (argv, no shell; at the
timeout, and whatever it leaves behind when it exits, its whole process tree is killed:
reaper.py), or writes one section of the evidence helper's answer (EvidenceFetch: one
request per capture, shared by every evidence step), or freezes a flight recorder (recorderstep.py).
A skipped or missing step runs nothing.
Every step is bounded by the action timeout.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import select
import shlex
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import log
from .actions import ActionEnv, Step
from .evidencestep import EvidenceFetch, run_evidence
from .reaper import KILL_WAIT_SEC, REAPER, TAG_VAR, new_tag
from .recorderstep import run_recorder
from .redact import cut_partial_line, redact, redact_capped
from .stageio import CappedSink, ReadGate, StageLike, in_thread, stage_sink, stranded, write_capped

__all__ = ["ActionResult", "CappedSink", "EvidenceFetch", "StepResult", "combine", "in_thread", "run_step"]
_KILL_WAIT_SEC = KILL_WAIT_SEC  # after SIGKILL; a task stuck in D state is abandoned, not waited for
_SWEEP_SEC = 2.0  # the /proc scans of a sweep, beyond the kill wait
_CHUNK = 256 * 1024
_READ_MARGIN = 0.1  # a file reader's own deadline comes this much before the action timeout
MAX_STRANDED = 4  # file readers stuck in the kernel at once; beyond that, file steps are skipped
_STDERR_KEEP = 4096


@dataclass
class StepResult:
    action: str
    dest: str
    status: str = "ok"
    duration_s: float = 0.0
    bytes: int = 0
    error: str = ""
    exit_code: Optional[int] = None
    truncated: bool = False
    label: str = ""
    source: str = ""  # file read or command run
    started: float = 0.0  # time.monotonic() when it began (0: never ran)



# --- running a step -----------------------------------------------------------


def _read_file_into(step: Step, path: str, gate: ReadGate) -> tuple[bytes, bool]:
    """Read path (capped, redacted) in a worker thread; returns (data, truncated). It never
    touches the stage: the capture writes what it returns. O_NONBLOCK and poll() bound a FIFO,
    socket or device by the gate's deadline, and so does the check between chunks for a slow
    file. A regular (procfs) file ignores O_NONBLOCK, so one read the kernel holds can outlive
    the deadline: the capture then abandons it (counted as stranded, stageio.stranded())."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            data, skipped = _read_capped(fd, step, gate)
        finally:
            os.close(fd)
    finally:
        gate.finished()
    truncated = skipped > 0 or len(data) > step.cap_bytes
    data = data[: step.cap_bytes]
    if truncated:  # whole lines only: a secret cut at the edge would escape the redaction
        data = cut_partial_line(data, "tail" if skipped else "head")
    return (redact(data) if step.redact else data), truncated


def _read_capped(fd: int, step: Step, gate: ReadGate) -> tuple[bytes, int]:
    """(up to cap + 1 bytes, bytes skipped at the start for keep=tail)."""
    st = os.fstat(fd)
    regular = stat.S_ISREG(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory")
    skipped = 0
    if regular and step.keep == "tail" and st.st_size > step.cap_bytes:
        skipped = st.st_size - step.cap_bytes
        os.lseek(fd, skipped, os.SEEK_SET)
    poller = None if regular else select.poll()
    if poller is not None:
        poller.register(fd, select.POLLIN)
    parts, n = [], 0
    while n <= step.cap_bytes and not gate.abandoned:  # one byte past the cap tells it was hit
        left = gate.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(errno.ETIMEDOUT, "read deadline passed")
        if poller is not None and not poller.poll(max(1, int(left * 1000))):
            continue
        try:
            chunk = os.read(fd, min(_CHUNK, step.cap_bytes + 1 - n))
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            break
        parts.append(chunk)
        n += len(chunk)
    return b"".join(parts), skipped


async def _run_file(step: Step, stage: StageLike, timeout: float, res: StepResult) -> None:
    path = next((p for p in step.files if os.path.exists(p)), None)
    if path is None:
        res.status, res.error = "missing", "not found: " + ", ".join(step.files)
        return
    res.source = path
    stuck = stranded()["now"]
    if stuck >= MAX_STRANDED:
        res.status, res.error = "skipped", f"skipped: {stuck} earlier file reads are still stuck in the kernel"
        return
    gate = ReadGate(time.monotonic() + max(0.0, timeout - min(_READ_MARGIN, timeout / 4)))
    try:
        data, res.truncated = await asyncio.wait_for(in_thread(_read_file_into, step, path, gate), timeout)
    except FileNotFoundError:
        res.status, res.error = "missing", f"not found: {path}"
        return
    except (asyncio.TimeoutError, TimeoutError):
        res.status, res.error = "timeout", f"reading {path} took over {timeout:g}s"
        if gate.abandon():
            res.error += f" (its reader is stuck in the kernel: abandoned, {stranded()['now']} stranded now)"
        return
    except OSError as e:
        res.status, res.error = "failed", f"{e.filename or path}: {e.strerror or e}"
        return
    except BaseException:  # cancelled (shutdown): the thread may still be in its read
        gate.abandon()
        raise
    res.bytes, _ = await in_thread(write_capped, stage, step.dest, data, step.cap_bytes)


async def _end_tree(proc: asyncio.subprocess.Process, tag: str) -> None:
    """Kill what is left of a command: its group and every descendant, also a `setsid`
    grandchild or an orphan the core adopted (reaper.py), and reap them. The sweep runs in a
    thread that finishes on its own even if this task is cancelled; a process stuck in D state
    is counted as stranded, never waited for."""
    sweep = in_thread(REAPER.kill_tree, tag, _KILL_WAIT_SEC)
    try:
        await asyncio.wait_for(asyncio.shield(sweep), _KILL_WAIT_SEC + _SWEEP_SEC)
    except asyncio.TimeoutError:
        log.emit("action_failed", logging.WARNING, f"AOD killing the processes of action command {proc.pid} did "
                 f"not finish within {_KILL_WAIT_SEC + _SWEEP_SEC:g}s (a stuck /proc read?); left to finish alone")
    except Exception as e:  # noqa: BLE001 - a sweep bug must not hide the command's result
        log.emit("action_failed", logging.WARNING, f"AOD killing the processes of action command {proc.pid} "
                 f"failed: {e!r}")
    if proc.returncode is None:
        try:
            proc.kill()  # the sweep could not see it (e.g. /proc unreadable)
        except ProcessLookupError:
            pass
        try:  # the leader is asyncio's to reap; stuck in D state: left to the child watcher
            await asyncio.wait_for(asyncio.shield(proc.wait()), _KILL_WAIT_SEC)
        except asyncio.TimeoutError:
            pass
    transport = getattr(proc, "_transport", None)  # its pipes too: a stranded process may hold them
    if transport is not None:
        transport.close()


async def _pump(stream: Optional[asyncio.StreamReader], out: Callable[[bytes], None]) -> None:
    if stream is None:
        return
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return
        out(chunk)


async def run_command(
    argv: tuple[str, ...], sink: CappedSink, timeout: float, env: ActionEnv
) -> tuple[Optional[int], str]:
    """Run argv (no shell), stream stdout into sink. Returns (exit code, stderr tail).

    Raises asyncio.TimeoutError after killing the command's whole process tree; CancelledError
    likewise. Whatever the command leaves behind when it exits is killed too. Raises OSError
    (EAGAIN) while MAX_STRANDED processes of earlier commands survive SIGKILL.
    """
    if REAPER.over_limit():
        raise OSError(errno.EAGAIN, f"not started: {REAPER.stranded} processes of earlier actions survived "
                      "SIGKILL (D state, a dead mount?)")
    err = bytearray()
    tag = new_tag()

    def keep_err(b: bytes) -> None:
        err.extend(b)
        del err[:-_STDERR_KEEP]

    REAPER.reserve(tag)  # before the fork: no sweep of another command takes this one for an orphan
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            env={"PATH": env.search_path(), "LC_ALL": "C", "SYSTEMD_COLORS": "0", "PAGER": "cat", TAG_VAR: tag},
        )
    except BaseException:
        REAPER.abandon(tag)
        raise
    REAPER.started(tag, proc.pid)

    async def communicate() -> int:
        await asyncio.gather(_pump(proc.stdout, sink.write), _pump(proc.stderr, keep_err))
        return await proc.wait()

    try:
        rc = await asyncio.wait_for(communicate(), timeout)
    finally:  # timeout, cancel or exit: nothing the command started outlives it
        await _end_tree(proc, tag)
    return rc, err.decode("utf-8", "replace").strip()


async def _run_commands(step: Step, stage: StageLike, timeout: float, env: ActionEnv, res: StepResult) -> None:
    sink = stage_sink(stage, step.dest, step.cap_bytes, step.keep)
    notes: list[str] = []
    try:
        for i, argv in enumerate(step.argvs):
            shown = shlex.join([os.path.basename(argv[0]), *argv[1:]])
            if step.sequence:
                sink.write(f"## {shown}\n".encode(errors="surrogateescape"))
            elif i:
                sink.reset()  # fallback: drop the failed attempt's output
            res.source = shown
            try:
                rc, err = await run_command(argv, sink, timeout, env)
            except asyncio.TimeoutError:
                res.status, res.exit_code = "timeout", None
                notes.append(f"{os.path.basename(argv[0])} timed out after {timeout:g}s (killed)")
                if step.sequence:
                    sink.write(b"## timed out, killed\n")
                break  # a dead server: the next command would block the same way
            except OSError as e:
                res.status, res.exit_code = "failed", None
                notes.append(f"cannot run {argv[0]}: {e.strerror or e}")
                continue
            res.exit_code = rc
            if step.sequence:
                if err:
                    sink.write(err.encode(errors="replace") + b"\n")
                sink.write(f"## exit {rc}\n\n".encode())
            if rc != 0:
                res.status = "failed"
                notes.append(f"{os.path.basename(argv[0])} exited {rc}" + (f": {err[-300:]}" if err else ""))
            elif not step.sequence:
                res.status = "ok"
                break
    finally:  # redacted also when cancelled: nothing unredacted reaches a bundle; a capped
        res.truncated = sink.truncated  # capture is cut at a line boundary (no secret cut in half)
        res.bytes = sink.close(functools.partial(redact_capped, cut=step.keep if res.truncated else "")
                               if step.redact else None)
    res.error = "" if res.status == "ok" else "; ".join(notes)


async def run_step(step: Step, stage: StageLike, timeout: float, env: ActionEnv,
                   fetch: Optional[EvidenceFetch] = None) -> StepResult:
    """Execute one step into stage/<dest>. Never raises except CancelledError."""
    res = StepResult(step.action, step.dest, label=step.label)
    t0 = res.started = time.monotonic()
    try:
        if step.skipped:
            res.status, res.error = "skipped", f"skipped: {step.skipped}"
        elif step.missing:
            res.status, res.error = "missing", step.missing
        elif step.evidence:
            await run_evidence(step, stage, fetch, res)
        elif step.recorder:
            await run_recorder(step, stage, timeout, env, res)
        elif step.files:
            await _run_file(step, stage, timeout, res)
        else:
            await _run_commands(step, stage, timeout, env, res)
    except asyncio.CancelledError:
        res.status, res.error = "timeout", "stopped before it finished (daemon shutting down)"
        raise
    except OSError as e:  # writing the stage file (ENOSPC, EACCES, ...)
        res.status, res.error = "failed", f"{e.strerror or e}: {e.filename or step.dest}"
    finally:
        res.duration_s = round(time.monotonic() - t0, 3)
    return res


_SEVERITY = {"ok": 0, "skipped": 1, "missing": 1, "failed": 2, "timeout": 3}


@dataclass
class ActionResult:
    """One action's outcome (several steps for per-mount actions)."""

    name: str
    status: str
    duration_s: float = 0.0
    bytes: int = 0
    error: str = ""
    exit_code: Optional[int] = None
    truncated: bool = False
    files: list[str] = field(default_factory=list)
    source: str = ""  # the file read or the command run (the fallback actually used)
    started_s: Optional[float] = None  # seconds after the capture began that its first step started

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "duration_s": self.duration_s,
            "bytes": self.bytes,
            "error": self.error,
            "exit_code": self.exit_code,
            "truncated": self.truncated,
            "files": list(self.files),
            "source": self.source,
            "started_s": self.started_s,
        }


def combine(name: str, steps: list[StepResult], t0: Optional[float] = None) -> ActionResult:
    """Fold step results of one action: the worst status wins, bytes add up. A skipped step
    (guarded mount) beside steps that ran keeps the others' status; its reason stays in error."""
    if not steps:
        return ActionResult(name, "missing", error="nothing to do")
    ran = [s for s in steps if s.status != "skipped"] or steps
    worst = max(ran, key=lambda s: _SEVERITY.get(s.status, 2))
    starts = [s.started for s in steps if s.started]
    errors = [f"{s.label}: {s.error}" if s.label else s.error for s in steps if s.error]
    return ActionResult(
        name=name,
        status=worst.status,
        duration_s=max(s.duration_s for s in steps),
        bytes=sum(s.bytes for s in steps),
        error="; ".join(errors)[:2000],
        exit_code=worst.exit_code,
        truncated=any(s.truncated for s in steps),
        files=[s.dest for s in steps if s.bytes or s.status not in ("missing", "skipped")],
        source=steps[0].source if len(steps) == 1 else "",
        started_s=round(min(starts) - t0, 3) if starts and t0 is not None else None,
    )
