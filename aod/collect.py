"""The collector worker: anomaly -> quick actions -> bundle on disk (collect layer).

ring -> dispatch -> detect -> **collect** -> retain.

`Collector.submit()` (any thread, non-blocking) queues an anomaly; `Collector.run()` is
the worker thread: an asyncio loop that runs the anomaly type's actions concurrently
(bounded by capture.concurrency, each with capture.action_timeout_sec), writes
events.npy + summary.json, and turns the stage dir into a .tar.zst (bundle.py).
One capture at a time, except that a hung or emergency capture (URGENT_TYPES) starts at once,
beside a running one (at most URGENT_MAX of them): the evidence of a hang fades when it ends,
so it never waits for an earlier capture's slow actions. Failures of one action never stop
the others. The stage is an open directory (stageio.Stage): every write is relative to its
fd. After each capture, leftover stages no capture uses are swept (retain.sweep_stale).

Urgent actions (DebugData and the evidence helper's stacks, in-flight table and connections:
what fades once the hang ends) start first and outside capture.concurrency, so they are
never queued behind slow ones. mountguard.py decides which cifs mounts have hung requests;
their per-mount actions are skipped, with the reason in the summary.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from . import bundle, log, mountguard, retain
from .actionrun import ActionResult, StepResult, combine, in_thread, run_step
from .actions import ACTION_NAMES, ACTIONS, ActionEnv, Step, cifs_mount_entries, for_protocol, plan
from .anomaly import Anomaly
from .config import Config
from .evidencestep import EvidenceFetch
from .stageio import Stage
from .summary import build_summary, mono_to_wall

STOP_GRACE_SEC = 2.5  # on stop, actions get this long to finish before the bundle is written anyway
_POLL_SEC = 0.05  # while actions run
_IDLE_SEC = 1.0  # idle wait for work; submit() wakes the loop at once
_BEAT_SEC = 1.0
URGENT_TYPES = ("hung", "emergency")  # captures that start beside a running one
URGENT_MAX = 2  # urgent captures running at once (besides the regular one)


@dataclass
class BundleResult:
    anomaly: Anomaly
    path: Optional[str]
    ok: bool
    error: str = ""
    bytes: int = 0
    duration_s: float = 0.0
    actions: list[dict[str, Any]] = field(default_factory=list)


def drain(q: queue.Queue) -> int:
    """Empty a queue without blocking; returns how many items it held (shared with upload.py)."""
    n = 0
    while True:
        try:
            q.get_nowait()
            n += 1
        except queue.Empty:
            return n


def _log_window(anomaly: Anomaly, config: Config) -> tuple[int, int]:
    """Epoch seconds (since, until) for log actions: the window, and at least lookback_sec."""
    start = mono_to_wall(anomaly, anomaly.window_start_ns)
    since = math.floor(min(start, anomaly.detected_wall - config.capture.lookback_sec))
    # max(): a wall clock stepped back since detection must not give until < since
    return since, max(math.ceil(time.time()), math.ceil(anomaly.detected_wall)) + 1


def _plan_all(names: tuple[str, ...], env: ActionEnv, since: int, until: int, anomaly: Anomaly,
              pin_dir: str, config: Config) -> tuple[list[tuple[str, list[Step]]], dict[str, str]]:
    """Steps per action name, and the guarded mounts (mount point -> reason)."""
    guarded: dict[str, str] = {}
    if any(ACTIONS[n].per_mount for n in names if n in ACTIONS):
        guarded = mountguard.plan_guard(anomaly, cifs_mount_entries(env, unique=False), pin_dir)
    out: list[tuple[str, list[Step]]] = []
    for name in names:
        spec = ACTIONS.get(name)
        out.append((name, plan(spec, env, since, until, guarded, config.recorder, anomaly.detected_wall)
                     if spec else []))
    return out, guarded


def _prepare_dirs(stage: Stage, steps: list[Step]) -> None:
    for d in sorted({os.path.dirname(s.dest) for s in steps} - {""}):
        stage.makedirs(d)  # 0700, relative to the stage's fd, no symlink followed


def _write_meta(stage: Stage, anomaly: Anomaly, summary: dict[str, Any]) -> None:
    buf = io.BytesIO()
    np.save(buf, anomaly.records(), allow_pickle=False)
    bundle.write_member(stage, "events.npy", buf.getvalue())
    bundle.write_member(stage, "summary.json", json.dumps(summary, indent=2).encode() + b"\n")


async def _run_steps(
    steps: list[Step], stage: Stage, config: Config, env: ActionEnv,
    stop: Optional[threading.Event], grace: float, pids: tuple[int, ...] = (),
) -> list[StepResult]:
    sem = asyncio.Semaphore(max(1, int(config.capture.concurrency)))
    timeout = float(config.capture.action_timeout_sec)
    want = tuple(dict.fromkeys(s.evidence for s in steps if s.evidence))
    fetch = EvidenceFetch(env.evidence_socket, want, pids, timeout) if want else None

    async def one(step: Step) -> StepResult:
        if step.urgent:  # not behind the semaphore: started at once
            return await run_step(step, stage, timeout, env, fetch)
        async with sem:
            return await run_step(step, stage, timeout, env, fetch)

    # urgent steps are created (so started) first; results keep the planned order
    order = sorted(range(len(steps)), key=lambda i: not steps[i].urgent)
    started = {i: asyncio.ensure_future(one(steps[i])) for i in order}
    tasks = [started[i] for i in range(len(steps))]
    pending = set(tasks)
    deadline: Optional[float] = None
    while pending:
        _, pending = await asyncio.wait(pending, timeout=_POLL_SEC)
        if stop is not None and stop.is_set() and deadline is None:
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() >= deadline and pending:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            break
    out = []
    for step, t in zip(steps, tasks):
        if t.cancelled() or t.exception() is not None:
            why = "stopped before it finished (shutting down)" if t.cancelled() else repr(t.exception())
            out.append(StepResult(step.action, step.dest, status="timeout" if t.cancelled() else "failed",
                                  error=why, label=step.label))
        else:
            out.append(t.result())
    return out


def _fail(anomaly: Anomaly, t0: float, error: str, path: str, actions: list[dict[str, Any]]) -> BundleResult:
    log.emit("capture_failed", logging.ERROR, f"AOD capture for {anomaly.key} anomaly failed: {error}",
             AOD_ANOMALY=anomaly.key, AOD_PATH=path, AOD_ERROR=error)
    return BundleResult(anomaly, None, False, error=error, duration_s=round(time.monotonic() - t0, 3),
                        actions=actions)


async def run_capture(
    anomaly: Anomaly, config: Config, env: ActionEnv,
    stop: Optional[threading.Event] = None, grace: float = STOP_GRACE_SEC,
) -> BundleResult:
    """One capture end to end. Logs the outcome; never raises (except CancelledError)."""
    t0 = time.monotonic()
    configured = config.actions.get(anomaly.type)
    names = for_protocol(tuple(configured) if configured is not None else ACTION_NAMES, anomaly.protocol)
    try:
        stage = await in_thread(bundle.new_stage, config.output_dir, anomaly.key, anomaly.detected_wall)
    except bundle.BundleError as e:
        return _fail(anomaly, t0, str(e), e.path, [])
    actions: list[dict[str, Any]] = []
    try:
        since, until = _log_window(anomaly, config)
        pin_dir = os.path.dirname(config.ring.path)
        planned, guarded = await in_thread(_plan_all, names, env, since, until, anomaly, pin_dir, config)
        steps = [s for _, ss in planned for s in ss]
        await in_thread(_prepare_dirs, stage, steps)
        pids = mountguard.evidence_pids(anomaly) if any(s.evidence for s in steps) else ()
        done = iter(await _run_steps(steps, stage, config, env, stop, grace, pids))
        results: list[ActionResult] = []
        for name, ss in planned:
            if name not in ACTIONS:
                results.append(ActionResult(name, "failed", error=f"unknown action {name!r}"))
            else:
                results.append(combine(name, [next(done) for _ in ss], t0))
        actions = [r.as_dict() for r in results]
        for r in results:
            if r.status in ("failed", "timeout"):
                log.emit("action_failed", logging.WARNING, f"AOD action {r.name} {r.status}: {r.error}",
                         AOD_ACTION=r.name, AOD_STATUS=r.status, AOD_ANOMALY=anomaly.key)
        summary = build_summary(anomaly, config, actions)
        if guarded:
            summary["guarded_mounts"] = guarded  # mount point -> why no action touched it
        await in_thread(_write_meta, stage, anomaly, summary)
        path, size = await in_thread(bundle.finalize, stage, config.output_dir, anomaly.key,
                                     anomaly.detected_wall)
    except bundle.BundleError as e:  # finalize removed the stage and the partial
        return _fail(anomaly, t0, str(e), e.path, actions)
    except OSError as e:  # stage writes (events.npy, summary.json, dirs)
        bundle.discard_stage(stage)
        return _fail(anomaly, t0, f"cannot write {e.filename or stage}: {e.strerror or e}",
                     str(e.filename or stage), actions)
    except asyncio.CancelledError:
        bundle.discard_stage(stage)
        raise
    except Exception as e:  # a bug: keep the worker alive, say what happened
        bundle.discard_stage(stage)
        return _fail(anomaly, t0, f"internal error: {e!r}", stage.path, actions)
    dur = round(time.monotonic() - t0, 3)
    log.emit("bundle", logging.INFO, f"AOD bundle written: {path}", AOD_BUNDLE=path,
             AOD_ANOMALY=anomaly.key, AOD_BYTES=size, AOD_DURATION=dur)
    return BundleResult(anomaly, path, True, bytes=size, duration_s=dur, actions=actions)


def capture(anomaly: Anomaly, config: Config, env: Optional[ActionEnv] = None,
            stop: Optional[threading.Event] = None) -> BundleResult:
    """Synchronous one-shot capture on a private event loop (tests, `aodv2 demo`)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run_capture(anomaly, config, env or ActionEnv(), stop))
    finally:
        loop.close()


class Collector:
    """Worker (see daemon.py): bounded queue in, one capture at a time, bundles out."""

    name = "collector"

    def __init__(
        self,
        config_provider: Callable[[], Config],
        env: Optional[ActionEnv] = None,
        on_result: Optional[Callable[[BundleResult], None]] = None,
        queue_size: int = 16,
    ) -> None:
        self.config_provider = config_provider
        self.env = env or ActionEnv()
        self.on_result = on_result
        self._queue: queue.Queue[Anomaly] = queue.Queue(maxsize=max(1, queue_size))
        self.rejected = 0  # submit() refused: queue full
        self.dropped = 0  # queued but never captured: daemon stopping
        self._running: set[asyncio.Task[None]] = set()  # captures in progress (event loop only)
        self._regular: Optional[asyncio.Task[None]] = None
        self._backlog: list[Anomaly] = []  # taken from the queue, waiting for the regular slot
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wakeup: Optional[asyncio.Event] = None

    def submit(self, anomaly: Anomaly) -> bool:
        """Queue a capture; False (and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(anomaly)
        except queue.Full:
            self.rejected += 1
            return False
        self.wake()
        return True

    def wake(self) -> None:
        """Wake the idle loop now (new work, or stopping). Safe from any thread."""
        loop, ev = self._loop, self._wakeup
        if loop is not None and ev is not None:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # loop already closed
                pass

    @property
    def busy(self) -> bool:
        """A capture is in progress."""
        return bool(self._running)

    def pending(self) -> int:
        return self._queue.qsize() + len(self._backlog)

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(stop, beat))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        async def beat_forever() -> None:
            while True:
                beat()
                await asyncio.sleep(_BEAT_SEC)

        beater = asyncio.ensure_future(beat_forever())
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._wakeup.clear()
                self._schedule(stop)
                if self._queue.empty():
                    waiter = asyncio.ensure_future(self._wakeup.wait())
                    await asyncio.wait({waiter, *self._running}, timeout=_IDLE_SEC,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
            if self._running:  # each got `stop`: its actions finish within their grace
                await asyncio.gather(*self._running, return_exceptions=True)
            self._drop_queued()
        finally:
            self._loop = self._wakeup = None
            beater.cancel()
            await asyncio.gather(beater, return_exceptions=True)

    def _schedule(self, stop: threading.Event) -> None:
        """Take the queue: urgent captures start now (up to URGENT_MAX beside the regular one),
        the others one at a time in order."""
        while True:
            try:
                self._backlog.append(self._queue.get_nowait())
            except queue.Empty:
                break
        urgent = len(self._running) - (self._regular is not None and not self._regular.done())
        for a in [a for a in self._backlog if a.type in URGENT_TYPES]:
            if urgent >= URGENT_MAX and self._regular is not None and not self._regular.done():
                break  # all slots taken: it waits like any other
            self._backlog.remove(a)
            if self._regular is None or self._regular.done():
                self._regular = self._start(a, stop)
            else:
                self._start(a, stop)
                urgent += 1
        if self._backlog and (self._regular is None or self._regular.done()):
            self._regular = self._start(self._backlog.pop(0), stop)

    def _start(self, anomaly: Anomaly, stop: threading.Event) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._capture_one(anomaly, stop))
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._wakeup is not None:
            self._wakeup.set()  # a slot is free

    async def _capture_one(self, anomaly: Anomaly, stop: threading.Event) -> None:
        out_dir = ""
        try:
            config = self.config_provider()
            out_dir = config.output_dir
            result = await run_capture(anomaly, config, self.env, stop)
        except Exception as e:  # e.g. the config provider failed
            result = _fail(anomaly, time.monotonic(), f"internal error: {e!r}", "", [])
        if out_dir:  # leftovers no capture uses (a crash's, a leaked worker's): removed, counted
            try:
                await in_thread(retain.sweep_stale, out_dir)
            except Exception as e:  # noqa: BLE001 - best effort, never stops the worker
                log.emit("pruned", logging.WARNING, f"AOD stale stage sweep of {out_dir} failed: {e!r}")
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as e:
                log.emit("capture_failed", logging.WARNING, f"AOD bundle result handler failed: {e!r}",
                         AOD_ANOMALY=anomaly.key, AOD_BUNDLE=result.path or "")

    def _drop_queued(self) -> None:
        n = drain(self._queue) + len(self._backlog)
        self._backlog.clear()
        if n:
            self.dropped += n
            log.emit("suppressed", logging.WARNING, f"AOD collector stopping: {n} queued captures dropped",
                     AOD_DROPPED=n)
