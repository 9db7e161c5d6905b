"""Running one planned step into the stage dir, and folding step results (collect layer).

ring -> dispatch -> detect -> **collect** (actions.py plans, actionrun.py runs, collect.py drives).

A step reads a file (capped, in a daemon thread), runs commands (argv, no shell, killed at
the timeout with their process group), or writes one section of the evidence helper's
answer (EvidenceFetch: one request per capture, shared by every evidence step). A skipped
or missing step runs nothing. Every step is bounded by the action timeout.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .actions import ActionEnv, Step, redact, redact_file
from .evidencestep import EvidenceFetch, run_evidence
from .stageio import CappedSink, in_thread

__all__ = ["ActionResult", "CappedSink", "EvidenceFetch", "StepResult", "combine", "in_thread", "run_step"]
_KILL_WAIT_SEC = 1.0  # after SIGKILL; a task stuck in D state is abandoned, not waited for
_CHUNK = 256 * 1024
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


def _read_file_into(step: Step, path: str, stage: str) -> tuple[int, bool]:
    """Read path (capped) into the stage file; returns (bytes, truncated). Blocking."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        skipped = 0
        if step.keep == "tail" and st.st_size > step.cap_bytes:
            f.seek(st.st_size - step.cap_bytes)
            skipped = st.st_size - step.cap_bytes
        parts, n = [], 0
        while n <= step.cap_bytes:  # read one byte past the cap to know it was hit
            chunk = f.read(min(_CHUNK, step.cap_bytes + 1 - n))
            if not chunk:
                break
            parts.append(chunk)
            n += len(chunk)
    data = b"".join(parts)
    truncated = skipped > 0 or len(data) > step.cap_bytes
    data = data[: step.cap_bytes]
    if skipped:  # start at a line boundary
        nl = data.find(b"\n")
        if 0 <= nl < len(data) - 1:
            data = data[nl + 1 :]
    if step.redact:
        data = redact(data)
    dest = os.path.join(stage, step.dest)
    try:
        sink = CappedSink(dest, step.cap_bytes, "head")
        try:
            sink.write(data)
        finally:
            size = sink.close()
    except OSError as e:  # name the stage file, not the source, on ENOSPC/EROFS
        raise OSError(e.errno, e.strerror, dest) from e
    return size, truncated


async def _run_file(step: Step, stage: str, timeout: float, res: StepResult) -> None:
    path = next((p for p in step.files if os.path.exists(p)), None)
    if path is None:
        res.status, res.error = "missing", "not found: " + ", ".join(step.files)
        return
    res.source = path
    try:
        read = in_thread(_read_file_into, step, path, stage)
        res.bytes, res.truncated = await asyncio.wait_for(read, timeout)
    except FileNotFoundError:
        res.status, res.error = "missing", f"not found: {path}"
    except asyncio.TimeoutError:
        res.status, res.error = "timeout", f"reading {path} took over {timeout:g}s"
    except OSError as e:
        res.status, res.error = "failed", f"{e.filename or path}: {e.strerror or e}"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


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

    Raises asyncio.TimeoutError after killing the process group; CancelledError likewise.
    """
    err = bytearray()

    def keep_err(b: bytes) -> None:
        err.extend(b)
        del err[:-_STDERR_KEEP]

    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        env={"PATH": env.search_path(), "LC_ALL": "C", "SYSTEMD_COLORS": "0", "PAGER": "cat"},
    )

    async def communicate() -> int:
        await asyncio.gather(_pump(proc.stdout, sink.write), _pump(proc.stderr, keep_err))
        return await proc.wait()

    try:
        rc = await asyncio.wait_for(communicate(), timeout)
    except BaseException:
        _kill_group(proc)
        try:  # reap if it dies; a process stuck in D state is left to the child watcher
            await asyncio.wait_for(asyncio.shield(proc.wait()), _KILL_WAIT_SEC)
        except BaseException:  # noqa: S110 - best effort
            pass
        raise
    return rc, err.decode("utf-8", "replace").strip()


async def _run_commands(step: Step, stage: str, timeout: float, env: ActionEnv, res: StepResult) -> None:
    sink = CappedSink(os.path.join(stage, step.dest), step.cap_bytes, step.keep)
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
    finally:
        res.truncated = sink.truncated
        res.bytes = sink.close()
        if step.redact and res.bytes:  # also when cancelled: nothing unredacted reaches a bundle
            res.bytes = redact_file(os.path.join(stage, step.dest))
    res.error = "" if res.status == "ok" else "; ".join(notes)


async def run_step(step: Step, stage: str, timeout: float, env: ActionEnv,
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
