"""Detection (dispatch -> detect -> collect): vectorised rules over event arrays.

`Detector.immediate` runs on every drained batch (emergency, reconnect: fire at
once); `Detector.window` runs once per closed window of watch_interval_sec
(latency count, error rules). `Throttle` applies cooldown and the hourly cap.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from . import smb2
from .anomaly import Anomaly
from .config import Config, ErrorRule, threshold_lookup
from .record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT

_RECONNECT_STATUSES = np.array(sorted(smb2.RECONNECT_STATUSES), dtype=np.uint32)
_LATENCY_KINDS = np.array([KIND_COMPLETION, KIND_ERROR], dtype=np.uint8)


def _names(cmds: np.ndarray) -> str:
    return ",".join(smb2.command_name(c) for c in cmds)


def over_threshold(events: np.ndarray, lookup_ns: np.ndarray) -> np.ndarray:
    """Mask of events whose latency is strictly above their command's threshold."""
    lat = events["latency_ns"].astype(np.float64)
    return np.isin(events["kind"], _LATENCY_KINDS) & (lat > lookup_ns[events["command"]])


def error_mask(events: np.ndarray, rule: ErrorRule) -> np.ndarray:
    m = np.zeros(len(events), dtype=bool)
    if rule.statuses:
        m |= np.isin(events["nt_status"], np.fromiter(rule.statuses, np.uint32, len(rule.statuses)))
    if rule.errnos:
        m |= np.isin(events["err"], np.fromiter(rule.errnos, np.int32, len(rule.errnos)))
    m &= events["kind"] == KIND_ERROR
    if rule.commands:
        m &= np.isin(events["command"], np.fromiter(rule.commands, np.uint16, len(rule.commands)))
    return m


def reconnect_mask(events: np.ndarray) -> np.ndarray:
    return (events["kind"] == KIND_RECONNECT) | (
        (events["kind"] == KIND_ERROR) & np.isin(events["nt_status"], _RECONNECT_STATUSES)
    )


class Detector:
    """Stateless apart from the config-derived lookup tables; swap with `reconfigure`."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time,
                 mono: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self.mono = mono
        self.reconfigure(cfg)

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lookup_ns = threshold_lookup(cfg.latency)
        self.emergency_ns = float(cfg.latency.emergency_threshold_ms) * 1e6
        self.tracked = np.isfinite(self.lookup_ns)

    def _anomaly(self, type_: str, rule: str, count: int, events: np.ndarray, start: int, end: int,
                 mask: np.ndarray, details: dict, stats: Optional[np.ndarray] = None) -> Anomaly:
        cmds = tuple(int(c) for c in np.unique(events["command"][mask]))
        return Anomaly(type=type_, rule=rule, count=count, detected_wall=self.clock(),
                       detected_mono_ns=self.mono(), window_start_ns=start, window_end_ns=end,
                       events=np.ascontiguousarray(events), commands=cmds, details=details,
                       window_stats=stats)

    def immediate(self, batch: np.ndarray) -> list[Anomaly]:
        """Emergency and reconnect checks on a freshly drained batch."""
        out: list[Anomaly] = []
        if len(batch) == 0:
            return out
        start, end = int(batch["ts_ns"].min()), int(batch["ts_ns"].max()) + 1
        lat = batch["latency_ns"].astype(np.float64)
        em = (lat > self.emergency_ns) & self.tracked[batch["command"]] & np.isin(batch["kind"], _LATENCY_KINDS)
        n = int(em.sum())
        if n:
            worst = int(np.argmax(np.where(em, lat, -1)))
            out.append(self._anomaly(
                "emergency", f"latency>{self.cfg.latency.emergency_threshold_ms:g}ms", n, batch, start, end, em,
                {"emergency_threshold_ms": self.cfg.latency.emergency_threshold_ms,
                 "max_latency_ms": round(float(lat[worst]) / 1e6, 3),
                 "command": smb2.command_name(int(batch["command"][worst]))}))
        if self.cfg.reconnect.enabled:
            rc = reconnect_mask(batch)
            n = int(rc.sum())
            if n:
                statuses = sorted({smb2.status_name(s) for s in batch["nt_status"][rc] if s})
                out.append(self._anomaly("reconnect", "reconnect", n, batch, start, end, rc,
                                         {"statuses": statuses}))
        return out

    def window(self, events: np.ndarray, start_ns: int, end_ns: int,
               stats: Optional[np.ndarray] = None) -> list[Anomaly]:
        """Latency-count and error rules over one closed window."""
        out: list[Anomaly] = []
        lat = self.cfg.latency
        over = over_threshold(events, self.lookup_ns)
        n = int(over.sum())
        if n and n >= lat.acceptable_count:
            per_cmd = {smb2.command_name(c): int(k) for c, k in
                       zip(*np.unique(events["command"][over], return_counts=True))}
            out.append(self._anomaly(
                "latency", f"over_threshold>={lat.acceptable_count}", n, events, start_ns, end_ns, over,
                {"acceptable_count": lat.acceptable_count, "over_threshold_by_command": per_cmd,
                 "thresholds_ms": {smb2.command_name(c): float(self.lookup_ns[c]) / 1e6
                                   for c in np.unique(events["command"][over])}}, stats))
        for rule in self.cfg.errors:
            m = error_mask(events, rule)
            n = int(m.sum())
            if n and n >= rule.acceptable_count:
                statuses = {smb2.status_name(s): int(k) for s, k in
                            zip(*np.unique(events["nt_status"][m], return_counts=True))}
                out.append(self._anomaly("error", rule.name, n, events, start_ns, end_ns, m,
                                         {"acceptable_count": rule.acceptable_count, "statuses": statuses},
                                         stats))
        return out


class Throttle:
    """Per-type cooldown plus a global hourly cap on captures. Thread-safe."""

    def __init__(self, cooldown_sec: float, max_per_hour: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.last: dict[str, float] = {}
        self.recent: deque[float] = deque()
        self.suppressed: dict[str, int] = {}
        self.unreported: dict[str, int] = {}
        self.set_limits(cooldown_sec, max_per_hour)

    def set_limits(self, cooldown_sec: float, max_per_hour: int) -> None:
        with self.lock:
            self.cooldown = cooldown_sec
            self.max_per_hour = max_per_hour

    def allow(self, type_: str, force: bool = False) -> bool:
        """True if a capture of this type may start now (and records it)."""
        now = self.clock()
        with self.lock:
            while self.recent and now - self.recent[0] >= 3600:
                self.recent.popleft()
            last = self.last.get(type_)
            ok = force or (
                (last is None or now - last >= self.cooldown) and len(self.recent) < self.max_per_hour
            )
            if ok:
                self.last[type_] = now
                self.recent.append(now)
            else:
                self.suppressed[type_] = self.suppressed.get(type_, 0) + 1
                self.unreported[type_] = self.unreported.get(type_, 0) + 1
            return ok

    def take_unreported(self) -> dict[str, int]:
        with self.lock:
            out, self.unreported = self.unreported, {}
            return out


def window_bounds(t_ns: int, interval_ns: int) -> tuple[int, int]:
    start = t_ns - (t_ns % interval_ns)
    return start, start + interval_ns

