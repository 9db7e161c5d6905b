"""The core daemon (main thread): wires ring -> dispatch -> detect -> policy -> collect -> retain.

Runs every component as a supervised worker thread, restarts one that raises,
talks to systemd (READY, STATUS, WATCHDOG only while all heartbeats are fresh,
RELOADING, STOPPING) and handles SIGTERM/SIGINT, SIGHUP (reload) and SIGUSR1
(manual capture). With a state dir it also publishes status.json (`aodv2 status`),
serves the control socket (`aodv2 collect`) and writes the Prometheus textfile.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from . import __version__, log, metrics, reaper, recorderstatus, retain, safefs, stageio, status, tracerstate, zstdcodec
from . import config as config_mod
from .anomaly import Anomaly
from .collect import BundleResult, Collector
from .config import Config
from .control import Control
from .counters import Counters
from .detectsplit import Detectors
from .dispatch import Columns, Dispatcher, RecentEvents
from .names import Names
from .nfsnames import NfsNames
from .notify import Notifier
from .policy import REASONS, Policy
from .retain import Retention
from .supervisor import Supervisor
from .upload import Uploader
from .watch import Tally, Watcher

WARNING = logging.WARNING
EX_CONFIG = 78  # as cli.EX_CONFIG: aodv2.service's RestartPreventExitStatus (a restart cannot fix it)


@dataclass
class CoreStats:
    captures: dict = field(default_factory=dict)  # bundles written by anomaly type
    bundles: int = 0
    capture_failures: int = 0  # captures that failed (the policy counts those a full queue dropped)
    bundle_bytes_written: int = 0
    last_bundle: dict = field(default_factory=dict)  # path, type, time, bytes


class Core:
    """One running aodv2 core. `run()` blocks until stopped and returns the exit code."""

    def __init__(self, cfg: Config, ring: Any, counters: Optional[Counters],
                 config_path: Optional[str] = None, notifier: Optional[Notifier] = None,
                 heartbeat_timeout: float = 10.0, collector_env: Any = None,
                 on_result: Optional[Callable[[BundleResult], None]] = None,
                 tracer_dir: Optional[str] = None, ring_file: Optional[str] = None,
                 state_dir: Optional[str] = None) -> None:
        self.cfg = cfg
        self.state_dir = state_dir  # status.json and control.sock; None: neither
        self.config_path = config_path
        self.tracer_dir = tracer_dir  # where tracers publish their state; None for a file ring
        self.ring_file = ring_file  # set by `run --ring-file`: overrides ring.path on reload too
        self.ring = ring
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()
        self.stats = CoreStats()
        self.lock = threading.Lock()
        self.started = time.time()
        self._waiters: dict[int, tuple[threading.Event, list[BundleResult]]] = {}  # id(anomaly) -> result
        self._state_errors: set[str] = set()  # status/metrics write errors already logged
        self._flags: set[str] = set()
        self._wake = threading.Event()  # a signal arrived: run the main loop now
        self._extra_on_result = on_result
        self._subreaper = False  # start() made this process a child subreaper
        kw = {} if collector_env is None else {"env": collector_env}
        self.collector = Collector(lambda: self.cfg, on_result=self._on_result, **kw)
        self.policy = Policy(lambda: self.cfg, self.collector.submit)
        self.recent = RecentEvents(lambda: self.detector.keep_ns())
        # server and share names: the tracer's pins beside the ring (none for a file ring), DebugData
        self.names = Names(os.path.dirname(cfg.ring.path) if tracer_dir else None)
        self.nfs_names = NfsNames()
        self.tally = Tally(self.names, self.nfs_names)
        self.emit_check = status.EmitCheck()
        self.detector: Detectors = Detectors(cfg, suppressing=self.policy.suppressing, recent=self.recent,
                                 stats_since=lambda ns: self.watcher.horizon.since(ns), names=self.names,
                                 nfs_names=self.nfs_names)
        self.dispatcher = Dispatcher(ring, self.recent, self._on_batch, deadline=self.detector.next_deadline,
                                     on_tick=self._on_tick)
        self.watcher: Watcher = Watcher(self.tally, self.detector, counters, lambda: self.cfg.watch_interval_sec,
                               self.raise_anomaly, bad_records=lambda: self.bad_records()["total"],
                               overflow=lambda: self.recent.overflow, on_window=self.policy.flush)
        self.retention = Retention(lambda: self.cfg)
        self.uploader = Uploader(lambda: self.cfg)  # idle while upload.command is empty
        workers: list[Any] = [self.dispatcher, self.watcher, self.collector, self.retention, self.uploader]
        if state_dir:
            workers.append(Control(state_dir, self.collect_now))
        self.supervisor = Supervisor(workers, self.stop_event, heartbeat_timeout=heartbeat_timeout)

    # --- detect -> policy -> collect ------------------------------------------
    def _on_batch(self, batch: np.ndarray, cols: Columns) -> None:
        self.tally.add(batch, cols)
        for a in self.detector.immediate(batch, cols):
            self.raise_anomaly(a)

    def _on_tick(self) -> None:
        """Between ring waits (dispatcher thread): a hung group whose deadline has come."""
        for a in self.detector.tick():
            self.raise_anomaly(a)

    def raise_anomaly(self, a: Anomaly) -> bool:
        """Hand an anomaly to the policy (policy.py). True if its capture was queued."""
        return self.policy.raise_(a)

    def bad_records(self) -> dict[str, int]:
        """Ring records skipped, by reason, and their total."""
        out = {"corrupt": int(getattr(self.ring, "bad_records", 0)), "foreign": int(getattr(self.ring, "foreign", 0)),
               "future": self.dispatcher.future}
        out["total"] = sum(out.values())
        return out

    def _on_result(self, r: BundleResult) -> None:
        with self.lock:
            if r.ok and r.path:
                self.stats.bundles += 1
                self.stats.captures[r.anomaly.key] = self.stats.captures.get(r.anomaly.key, 0) + 1
                self.stats.bundle_bytes_written += r.bytes
                self.stats.last_bundle = {"path": r.path, "type": r.anomaly.key, "time": time.time(),
                                          "bytes": r.bytes}
            else:
                self.stats.capture_failures += 1
            waiter = self._waiters.pop(id(r.anomaly), None)
        self.policy.on_result(r.anomaly, r.path, r.ok)
        if r.ok and r.path and self.uploader.enabled() and not self.uploader.submit(r.path, r.anomaly.key):
            log.emit("upload_failed", WARNING, f"AOD upload of {r.path} skipped: upload queue is full",
                     AOD_BUNDLE=r.path)
        if waiter:
            waiter[1].append(r)
            waiter[0].set()
        if self._extra_on_result:
            self._extra_on_result(r)

    def manual_capture(self, reason: str = "SIGUSR1",
                       waiter: Optional[tuple[threading.Event, list[BundleResult]]] = None) -> bool:
        """Capture now (SIGUSR1, `aodv2 collect`). With `waiter`, its event is set when the bundle
        is done. False if the capture could not be queued."""
        return not self._manual(reason, waiter)

    def _manual(self, reason: str, waiter: Optional[tuple[threading.Event, list[BundleResult]]]) -> str:
        """manual_capture(): '' if queued, else why not (policy.REASONS key)."""
        now_ns = time.monotonic_ns()
        events = self.recent.events(now_ns - self.detector.keep_ns()).records()
        start = int(events["ts_ns"].min()) if len(events) else now_ns
        a = Anomaly(type="manual", rule=reason, count=len(events), detected_wall=time.time(),
                    detected_mono_ns=now_ns, window_start_ns=start, window_end_ns=now_ns, events=events)
        if waiter:
            with self.lock:
                self._waiters[id(a)] = waiter
        why = self.policy.raise_why(a)
        if why and waiter:
            with self.lock:
                self._waiters.pop(id(a), None)
        return why

    def collect_now(self, reason: str, timeout: float) -> tuple[bool, str]:
        """For the control socket: capture and wait for the bundle. (ok, path or error)."""
        log.emit("control", logging.INFO, f"AOD capture requested: {reason}", AOD_REASON=reason)
        done: tuple[threading.Event, list[BundleResult]] = (threading.Event(), [])
        why = self._manual(reason, done)
        if why:
            return False, {"queue_full": "the collector queue is full", "manual_cap": "the manual capture limit "
                           f"({self.cfg.capture.manual_per_hour}/h) is reached"}.get(why, REASONS.get(why, why))
        if not done[0].wait(timeout):
            return False, f"the bundle was not finished within {timeout:g}s"
        r = done[1][0]
        return (True, str(r.path)) if r.ok and r.path else (False, r.error or "capture failed")

    # --- control -------------------------------------------------------------
    def request(self, flag: str) -> None:
        """Signal-safe: 'stop', 'reload' or 'capture'; handled by the main loop."""
        self._flags.add(flag)
        if flag == "stop":
            self.stop_event.set()
            self.collector.wake()
        self._wake.set()

    def reload(self) -> bool:
        if not self.config_path:
            return False
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as e:
            log.emit("reload_failed", logging.ERROR,
                     f"AOD config reload rejected, keeping the running config: {e}",
                     AOD_CONFIG=self.config_path, AOD_ERRORS=len(e.errors))
            self.notifier.ready(self.status_text())
            return False
        if self.ring_file:  # `run --ring-file` overrides ring.path; keep doing so
            new = dataclasses.replace(new, ring=dataclasses.replace(new.ring, path=self.ring_file))
        if (new.ring, new.output_dir) != (self.cfg.ring, self.cfg.output_dir):
            log.emit("reloaded", WARNING, "AOD ring and output_dir changes take effect on restart; "
                     f"still using {self.cfg.ring.path} and {self.cfg.output_dir}", AOD_CONFIG=self.config_path)
            new = dataclasses.replace(new, ring=self.cfg.ring, output_dir=self.cfg.output_dir)
        self.cfg = new
        self.detector.reconfigure(new)
        self.policy.set_limits(new)
        self.emit_check.reset()  # say it again if the new thresholds are below what a tracer emits
        log.emit("reloaded", logging.INFO, f"AOD config reloaded from {self.config_path}",
                 AOD_CONFIG=self.config_path)
        for w in new.warnings:
            log.emit("reloaded", WARNING, f"AOD config: {w}", AOD_CONFIG=self.config_path)
        self.notifier.ready(self.status_text())
        return True

    def status_text(self, snap: Optional[dict[str, Any]] = None) -> str:
        """systemd's STATUS= line, from a snapshot (taken now if not given)."""
        s = snap or self.snapshot()
        tracers = tracerstate.describe(s["tracers"]) if self.tracer_dir else "file ring"
        last = os.path.basename((s["last_bundle"] or {}).get("path", "")) or "none"
        return (f"{tracers}; {s['events_per_sec']:.0f} events/s, drops {s['drops_total']}, "
                f"bad records {s['bad_records']}, overflow {s['event_buffer_overflow']}, "
                f"anomalies {sum(s['anomalies'].values())} (suppressed {sum(s['suppressed'].values())}), "
                f"bundles {s['bundles_written']}, last bundle {last}")

    def tracer_states(self) -> dict[str, str]:
        return tracerstate.read_states(self.tracer_dir, self.cfg.tracers) if self.tracer_dir else {}

    def snapshot(self) -> dict[str, Any]:
        """What `aodv2 status` shows and the metrics export (JSON-able)."""
        cfg, r = self.cfg, self.watcher.rates
        used, n = retain.usage(cfg.output_dir)
        with self.lock:
            st = dataclasses.replace(self.stats, captures=dict(self.stats.captures),
                                     last_bundle=dict(self.stats.last_bundle))
        pol = self.policy.snapshot()
        bad = self.bad_records()
        return {
            "schema": status.SCHEMA, "state": "running", "pid": os.getpid(), "aodv2_version": __version__,
            "started": self.started, "updated": time.time(), "config": self.config_path or "",
            "ring": cfg.ring.path, "ring_kind": "pinned" if self.tracer_dir else "file ring",
            "output_dir": cfg.output_dir, "watch_interval_sec": cfg.watch_interval_sec,
            "tracers": self.tracer_states(), "counters": self._counters_state(), "healthy": self.supervisor.healthy(),
            "tracer_detail": status.tracer_details(self.tracer_dir, cfg.tracers),
            "recorders": recorderstatus.details(self.tracer_dir, cfg.recorder),
            "hung": {"records": self.detector.hung.records, "open_group": len(self.detector.hung.parts),
                     "emergencies_deduplicated": self.detector.emergencies_deduplicated},
            "health_events": dict(self.detector.health_counts),
            "names": dict(zip(("servers", "shares"), self.names.known()), features=list(self.names.features)),
            "share_labels": self.tally.labels.snapshot(), "nfs_labels": self.tally.nfs_labels.snapshot(),
            "unhealthy": self.supervisor.stale() + ([self.supervisor.failed] if self.supervisor.failed else []),
            "events_per_sec": r.events_per_sec, "ring_records": r.ring_records, "drops_total": r.drops_total,
            "drops_last_window": r.drops_last_window, "bad_records": bad.pop("total"),
            "bad_records_by_reason": bad, "event_buffer_overflow": self.recent.overflow,
            "anomalies": pol["anomalies"], "suppressed": self.policy.suppressed, "refused": pol["refused"],
            "captures": st.captures, "bundles_written": st.bundles,
            "capture_failures": st.capture_failures + pol["capture_failures"],
            "zstd": zstdcodec.describe(),  # what bundles are compressed with: module | cli PATH | none
            "action_processes": reaper.REAPER.snapshot(),  # killed, stranded (alive after SIGKILL)
            "bundle_bytes_written": st.bundle_bytes_written, "last_bundle": st.last_bundle or None,
            "disk": {"used_bytes": used, "bundles": n, "budget_bytes": int(cfg.retention.max_total_mb * 1024 * 1024),
                     "max_age_days": cfg.retention.max_age_days},
            "thresholds": status.thresholds(cfg),
            "capture": {"cooldown_sec": cfg.capture.cooldown_sec, "max_per_hour": cfg.capture.max_per_hour,
                        "manual_per_hour": cfg.capture.manual_per_hour},
            "upload": self.uploader.stats() if cfg.upload.command else None,
            "metrics_path": metrics.textfile_path(cfg.metrics) or "",
            "stale_removed": retain.stale_removed(),  # leftover stage dirs and partials removed
            "stranded_reads": stageio.stranded(),  # file readers abandoned while stuck in the kernel
        }

    def _counters_state(self) -> Optional[dict[str, Any]]:
        """Which all-traffic counters the watcher reads (a pinned map and its layout, or a file ring)."""
        c = self.watcher.counters
        if c is None:
            return None
        return {"source": c.source, "available": c.available, "reason": c.reason}

    def _write_error(self, what: str, err: OSError) -> None:
        if what not in self._state_errors:  # once per kind until it works again
            self._state_errors.add(what)
            log.emit("metrics_failed", WARNING, f"AOD cannot write {what}: {err.strerror or err}",
                     AOD_PATH=what, AOD_ERROR=str(err))

    def publish(self, snap: dict[str, Any], up: bool = True, with_metrics: bool = True) -> None:
        """Write status.json and (with_metrics) the Prometheus textfile. Never raises OSError."""
        if not up:
            snap["state"] = "stopped"
        if self.state_dir:
            path = status.status_path(self.state_dir)
            try:
                status.write(self.state_dir, snap)
                self._state_errors.discard(path)
            except OSError as e:
                self._write_error(path, e)
        mpath = snap["metrics_path"]
        if with_metrics and mpath:
            try:
                metrics.write(mpath, metrics.render(snap, self.watcher.snapshot_totals(), up=up))
                self._state_errors.discard(mpath)
            except safefs.UnsafePath as e:  # another user could swap the directory: metrics stay off
                self._write_error(mpath, OSError(e.errno, f"{e.strerror}; metrics are off until this is fixed"))
            except OSError as e:
                self._write_error(mpath, e)
            except Exception as e:  # noqa: BLE001 - a metrics bug must not take the main loop down
                self._write_error(mpath, OSError(0, f"internal error {e!r}"))

    def start(self) -> None:
        if not reaper.is_subreaper():  # adopt actions' orphans, to kill and reap them (reaper.py)
            self._subreaper = reaper.set_subreaper(True)
        self.supervisor.start()
        log.emit("ready", logging.INFO, f"AOD core ready, reading {self.cfg.ring.path}",
                 AOD_RING=self.cfg.ring.path, AOD_OUTPUT=self.cfg.output_dir)
        self.notifier.ready(self.status_text())

    def preflight(self) -> str:
        """Why the core must not start, else '': an output or state directory that is a system
        one, or that another user could swap (safefs.check_dir). Other problems (a full or
        read-only disk) are left to the captures, which report them."""
        dirs = [("output_dir", self.cfg.output_dir)] + ([("--state-dir", self.state_dir)] if self.state_dir else [])
        for what, path in dirs:
            why = safefs.system_dir_problem(path)
            if why:
                return f"{what} {path}: {why}; expected a directory of its own"
            try:
                safefs.check_dir(path, what)
            except safefs.UnsafePath as e:
                return str(e)
            except OSError:  # a file in the way, EACCES on a parent: the writes will say so
                pass
        return ""

    def run(self, tick: float = 1.0) -> int:
        refused = self.preflight()
        if refused:
            log.emit("fatal", logging.ERROR, f"AOD cannot start: {refused}", AOD_OUTPUT=self.cfg.output_dir)
            return EX_CONFIG
        self.start()
        ping = self.notifier.ping_interval()
        last_ping = last_status = last_metrics = 0.0
        withheld = False
        while not self.stop_event.is_set():
            self._wake.wait(tick if ping is None else min(tick, ping / 4))
            self._wake.clear()
            flags, self._flags = self._flags, set()
            if "reload" in flags:
                self.reload()
            if "capture" in flags:
                self.manual_capture()
            self.supervisor.check()
            reaper.REAPER.poll()  # killed action processes that have died since
            now = time.monotonic()
            healthy = self.supervisor.healthy()
            if ping and now - last_ping >= ping:
                if healthy:
                    self.notifier.watchdog()
                    last_ping, withheld = now, False
                elif not withheld:
                    withheld = True
                    stale = ",".join(self.supervisor.stale()) or self.supervisor.failed or "?"
                    log.emit("watchdog_withheld", logging.ERROR,
                             f"AOD withholding watchdog ping: unhealthy component(s) {stale}",
                             AOD_COMPONENT=stale)
            if self.supervisor.failed and not ping:
                self.stop_event.set()  # no watchdog to restart us: exit non-zero instead
            if now - last_status >= 1.0:
                self.names.refresh()
                if "nfs" in self.cfg.tracers:
                    self.nfs_names.refresh()
                snap = self.snapshot()  # one read of tracer states and disk use for both
                for tracer, msg in self.emit_check.check(self.cfg, snap["tracer_detail"]):
                    log.emit("tracer", WARNING, msg, AOD_TRACER=tracer)
                self.notifier.status(self.status_text(snap))
                metrics_due = now - last_metrics >= self.cfg.metrics.interval_sec
                self.publish(snap, with_metrics=metrics_due)
                last_status = now
                if metrics_due:
                    last_metrics = now
        return self.shutdown()

    def shutdown(self) -> int:
        self.stop_event.set()
        self.collector.wake()
        self.notifier.stopping()
        log.emit("stopping", logging.INFO, "AOD core stopping")
        stuck = self.supervisor.join(timeout=5.0)
        self.policy.flush()  # refused anomalies of the last, unfinished window
        self.publish(self.snapshot(), up=False)
        if self._subreaper:  # an in-process core (tests) gives the process back as it was
            reaper.set_subreaper(False)
            self._subreaper = False
        if stuck:
            log.emit("stopping", WARNING, f"AOD components did not stop in time: {','.join(stuck)}")
        return 1 if self.supervisor.failed else 0


def install_signals(core: Core) -> None:
    signal.signal(signal.SIGTERM, lambda *_: core.request("stop"))
    signal.signal(signal.SIGINT, lambda *_: core.request("stop"))
    signal.signal(signal.SIGHUP, lambda *_: core.request("reload"))
    signal.signal(signal.SIGUSR1, lambda *_: core.request("capture"))
