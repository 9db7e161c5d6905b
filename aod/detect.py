"""Detection (dispatch -> detect -> collect): vectorised rules over event columns.

`Detector.immediate` runs on every drained batch (emergency, reconnect: fire at
once); `Detector.window` runs once per closed window of watch_interval_sec
(latency count, error rules). `Throttle` applies cooldown and the hourly cap.
Both read the compact `Columns` the dispatcher extracted once per batch (kind,
command, latency, ts), batch by batch, never the 72-byte records: error rules
gather only the error rows, and whole records are gathered only when an anomaly
fires (at most MAX_ANOMALY_EVENTS of them).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from . import smb2
from .anomaly import Anomaly
from .config import Config, ErrorRule, threshold_lookup
from .dispatch import Columns, Events
from .record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT

_RECONNECT_STATUSES = np.array(sorted(smb2.RECONNECT_STATUSES), dtype=np.uint32)
_NEVER = np.iinfo(np.uint64).max
MAX_ANOMALY_EVENTS = 50_000  # events an anomaly (and its bundle's events.npy) carries at most

Found = tuple[str, str, int, np.ndarray, np.ndarray, dict[str, Any]]  # type, rule, count, rows, commands, details


def _latency_kind(kind: np.ndarray) -> np.ndarray:
    """Completion or error (both carry a latency): kind in {1, 2}."""
    return (kind - np.uint8(KIND_COMPLETION)) <= np.uint8(KIND_ERROR - KIND_COMPLETION)


def _set(values: frozenset[int], dtype: type) -> np.ndarray:
    return np.array(sorted(values), dtype=dtype)


class _Rule:
    """An ErrorRule as arrays, built once per config."""

    def __init__(self, rule: ErrorRule) -> None:
        self.rule = rule
        self.statuses = _set(rule.statuses, np.uint32)
        self.errnos = _set(rule.errnos, np.int32)
        self.commands = _set(rule.commands, np.uint16)

    def mask(self, status: np.ndarray, err: np.ndarray, command: np.ndarray) -> np.ndarray:
        """Over error rows only."""
        m = np.isin(status, self.statuses) | np.isin(err, self.errnos)
        if len(self.commands):
            m &= np.isin(command, self.commands)
        return m


@dataclass(frozen=True)
class _Tables:
    """Everything a config decides for the detectors, built once per config and never changed:
    `reconfigure` swaps in a new one with a single assignment, and each `immediate` / `window`
    call reads `Detector.tables` once, so a batch or window never sees a mix of two configs."""

    cfg: Config
    tracked: np.ndarray  # bool[65536]: command watched for latency (read-only)
    thresholds_ns: np.ndarray  # uint64[65536] ns by command: threshold, _NEVER where untracked (read-only)
    emergency_ns: np.uint64
    min_threshold_ns: np.uint64
    rules: tuple[_Rule, ...]


def _tables(cfg: Config) -> _Tables:
    lookup = threshold_lookup(cfg.latency)
    tracked = np.isfinite(lookup)
    thresholds = np.where(tracked, lookup, 0).astype(np.uint64)
    thresholds[~tracked] = _NEVER
    tracked.flags.writeable = thresholds.flags.writeable = False
    return _Tables(cfg=cfg, tracked=tracked, thresholds_ns=thresholds,
                   emergency_ns=np.uint64(round(cfg.latency.emergency_threshold_ms * 1e6)),
                   min_threshold_ns=thresholds.min(), rules=tuple(_Rule(r) for r in cfg.errors))


class Detector:
    """Stateless apart from the config-derived `tables`; swap them with `reconfigure`."""

    tables: _Tables

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time,
                 mono: Callable[[], int] = time.monotonic_ns,
                 suppressing: Callable[[str], bool] = lambda _type: False) -> None:
        self.clock = clock
        self.mono = mono
        self.suppressing = suppressing  # Throttle.suppressing: that type's capture is sure to be refused
        self.reconfigure(cfg)

    def reconfigure(self, cfg: Config) -> None:
        """Build the new tables aside, then publish them with one assignment (atomic for readers)."""
        self.tables = _tables(cfg)

    @property
    def cfg(self) -> Config:
        return self.tables.cfg

    def _bounded(self, ev: Events, rows: list[np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """The records the anomalies of one call carry: all of them, or (over MAX_ANOMALY_EVENTS)
        the matching rows of any rule from the older part plus the newest events, shared by all."""
        n = len(ev)
        if n <= MAX_ANOMALY_EVENTS:
            return ev.records(), {}
        cut = n - MAX_ANOMALY_EVENTS // 2
        early = np.unique(np.concatenate([r[r < cut] for r in rows]))[-(MAX_ANOMALY_EVENTS // 2):]
        newest = n - (MAX_ANOMALY_EVENTS - len(early))  # fill up with the newest events
        return ev.take(early[early < newest], newest), {"events_in_window": n}  # each record once

    def _build(self, found: list[Found], ev: Events, start: int, end: int,
               stats: Optional[np.ndarray] = None) -> list[Anomaly]:
        if not found:
            return []
        if all(self.suppressing(f[0]) for f in found):  # no capture will take them: copy nothing
            kept, extra = ev.records()[:0], {"events_in_window": len(ev), "events_not_kept": "suppressed"}
        else:
            kept, extra = self._bounded(ev, [f[3] for f in found])
        wall, mono = self.clock(), self.mono()
        return [Anomaly(type=t, rule=r, count=n, detected_wall=wall, detected_mono_ns=mono, window_start_ns=start,
                        window_end_ns=end, events=kept, commands=tuple(int(c) for c in np.unique(cmds)),
                        details={**d, **extra}, window_stats=stats)
                for t, r, n, _, cmds, d in found]

    def immediate(self, batch: np.ndarray, cols: Optional[Columns] = None) -> list[Anomaly]:
        """Emergency and reconnect checks on a freshly drained batch (cols: its Columns, if extracted)."""
        if len(batch) == 0:
            return []
        t = self.tables  # one config for the whole batch
        found: list[Found] = []
        ev = Events.of(batch, cols)
        kind, cmd, lat, ts = ev.parts[0]

        cand = np.flatnonzero(lat > t.emergency_ns)  # rare: check the rest on these only
        em = cand[_latency_kind(kind[cand]) & t.tracked[cmd[cand]]]
        if len(em):
            worst = int(em[np.argmax(lat[em])])
            emergency_ms = t.cfg.latency.emergency_threshold_ms
            found.append((
                "emergency", f"latency>{emergency_ms:g}ms", len(em), em, cmd[em],
                {"emergency_threshold_ms": emergency_ms,
                 "max_latency_ms": round(float(lat[worst]) / 1e6, 3),
                 "command": smb2.command_name(int(cmd[worst]))}))
        if t.cfg.reconnect.enabled:
            rc = kind == KIND_RECONNECT
            errs = np.flatnonzero(kind == KIND_ERROR)
            if len(errs):
                rc[errs] = np.isin(batch["nt_status"][errs], _RECONNECT_STATUSES)
            rows = np.flatnonzero(rc)
            if len(rows):
                statuses = sorted({smb2.status_name(s) for s in batch["nt_status"][rows] if s})
                found.append(("reconnect", "reconnect", len(rows), rows, cmd[rows], {"statuses": statuses}))
        if not found:
            return []
        return self._build(found, ev, int(ts.min()), int(ts.max()) + 1)

    def window(self, events: np.ndarray | Events, start_ns: int, end_ns: int,
               stats: Optional[np.ndarray] = None) -> list[Anomaly]:
        """Latency-count and error rules over one closed window (records, or Events with columns)."""
        t = self.tables  # one config for the whole window
        ev = events if isinstance(events, Events) else Events.of(events)
        if len(ev) == 0:
            return []
        found: list[Found] = []
        lat_cfg, thresholds = t.cfg.latency, t.thresholds_ns
        floor = t.min_threshold_ns
        cand = ev.where(lambda c: c.latency_ns > floor)  # the slow few: look up thresholds for these
        cmd = ev.at("command", cand)
        ok = _latency_kind(ev.at("kind", cand)) & (ev.at("latency_ns", cand) > thresholds[cmd])
        over, over_cmd = cand[ok], cmd[ok]
        n = len(over)
        if n and n >= lat_cfg.acceptable_count:
            over_cmds, counts = np.unique(over_cmd, return_counts=True)
            found.append((
                "latency", f"over_threshold>={lat_cfg.acceptable_count}", n, over, over_cmds,
                {"acceptable_count": lat_cfg.acceptable_count,
                 "over_threshold_by_command": {smb2.command_name(c): int(k) for c, k in zip(over_cmds, counts)},
                 "thresholds_ms": {smb2.command_name(c): float(thresholds[c]) / 1e6 for c in over_cmds}}))
        if t.rules:
            idx, sub = ev.errors()
            status, err, ecmd = np.array(sub["nt_status"]), np.array(sub["err"]), ev.at("command", idx)
            for r in t.rules:
                m = r.mask(status, err, ecmd)
                n = int(np.count_nonzero(m))
                if n and n >= r.rule.acceptable_count:
                    sts, k = np.unique(status[m], return_counts=True)
                    found.append(("error", r.rule.name, n, idx[m], ecmd[m],
                                  {"acceptable_count": r.rule.acceptable_count,
                                   "statuses": {smb2.status_name(s): int(c) for s, c in zip(sts, k)}}))
        return self._build(found, ev, start_ns, end_ns, stats)


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

    def suppressing(self, type_: str, margin: float = 1.0) -> bool:
        """True if allow(type_) is certain to refuse for the next `margin` seconds (no side effect):
        the detector then skips copying events for an anomaly no capture will take."""
        now = self.clock() + margin
        with self.lock:
            last = self.last.get(type_)
            cooling = last is not None and now - last < self.cooldown
            recent = sum(1 for t in self.recent if now - t < 3600)
            return cooling or recent >= self.max_per_hour

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
