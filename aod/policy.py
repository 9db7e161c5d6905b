"""Anomaly policy (detect -> policy -> collect): what happens to an anomaly once detected.

Every anomaly is counted and put on record. One the capture limits allow is alerted
(journal, priority alert), written to the history (anomalies.jsonl, "captured": true)
and handed to the collector. One they refuse (the type's cooldown, the hourly cap, the
manual cap, or a full collector queue) is held and, at the next window close (`flush`),
written as one journal record per type at priority notice (MESSAGE_ID suppressed) and one
history line ("captured": false) carrying how many were refused, why, their rules,
commands and event counts, and the bundle that covers them, if any. So a storm costs one
record per type per window, and nothing is lost. Every record names the servers and shares
involved (details "servers"/"shares", from names.involved): AOD_SERVER, AOD_SHARE in the journal.

Budgets: manual captures (`aodv2 collect`, SIGUSR1) have their own, capture.manual_per_hour,
and never use a slot of the hourly cap. Budget and cooldown are charged on acceptance only:
a capture the full collector queue refuses is refunded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import history, log
from .anomaly import Anomaly
from .config import Config
from .names import MAX_NAMED
from .smb2 import command_name

HOUR = 3600.0
MAX_REQUESTS = 500  # hung requests listed per refused line (the hung anomaly's own limit)
REASONS = {"cooldown": "the cooldown", "hourly_cap": "the hourly cap", "manual_cap": "the manual capture cap",
           "queue_full": "a full collector queue"}
MANUAL = "manual"  # the anomaly type of `aodv2 collect` and SIGUSR1


@dataclass(frozen=True)
class Charge:
    """What one accepted capture took from the budget (for a refund)."""

    type_: str
    at: float
    prev_last: Optional[float]


class Throttle:
    """Per-type cooldown plus a global hourly cap on detected captures; manual captures have
    their own hourly cap and no cooldown. Thread-safe."""

    def __init__(self, cooldown_sec: float, max_per_hour: int,
                 clock: Callable[[], float] = time.monotonic, manual_per_hour: int = 12) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.last: dict[str, float] = {}
        self.recent: deque[float] = deque()  # detected captures in the last hour
        self.manual: deque[float] = deque()  # manual captures in the last hour
        self.suppressed: dict[str, int] = {}
        self.set_limits(cooldown_sec, max_per_hour, manual_per_hour)

    def set_limits(self, cooldown_sec: float, max_per_hour: int, manual_per_hour: Optional[int] = None) -> None:
        with self.lock:
            self.cooldown = cooldown_sec
            self.max_per_hour = max_per_hour
            if manual_per_hour is not None:
                self.manual_per_hour = manual_per_hour

    def suppressing(self, type_: str, margin: float = 1.0) -> bool:
        """True if allow(type_) is certain to refuse for the next `margin` seconds (no side effect):
        the detector then skips copying events for an anomaly no capture will take."""
        now = self.clock() + margin
        with self.lock:
            if type_ == MANUAL:
                return sum(1 for t in self.manual if now - t < HOUR) >= self.manual_per_hour
            last = self.last.get(type_)
            cooling = last is not None and now - last < self.cooldown
            recent = sum(1 for t in self.recent if now - t < HOUR)
            return cooling or recent >= self.max_per_hour

    def take(self, type_: str, force: bool = False) -> tuple[str, Optional[Charge]]:
        """('', charge) if a capture of this type may start now (and charges it), else (why not,
        None): 'cooldown', 'hourly_cap' or 'manual_cap', counted in `suppressed`. force skips the
        cooldown and the hourly cap (not the manual cap)."""
        now = self.clock()
        with self.lock:
            for q in (self.recent, self.manual):
                while q and now - q[0] >= HOUR:
                    q.popleft()
            last = self.last.get(type_)
            why = ""
            if type_ == MANUAL:
                why = "manual_cap" if len(self.manual) >= self.manual_per_hour else ""
            elif not force:
                if last is not None and now - last < self.cooldown:
                    why = "cooldown"
                elif len(self.recent) >= self.max_per_hour:
                    why = "hourly_cap"
            if why:
                self.suppressed[type_] = self.suppressed.get(type_, 0) + 1
                return why, None
            self.last[type_] = now
            (self.manual if type_ == MANUAL else self.recent).append(now)
            return "", Charge(type_, now, last)

    def refusal(self, type_: str, force: bool = False) -> str:
        """'' if a capture of this type may start now (and charges it), else why not."""
        return self.take(type_, force)[0]

    def refund(self, charge: Charge) -> None:
        """Give back a charge whose capture never started (the collector queue was full)."""
        with self.lock:
            q = self.manual if charge.type_ == MANUAL else self.recent
            try:
                q.remove(charge.at)
            except ValueError:  # already expired
                pass
            if self.last.get(charge.type_) == charge.at:  # no later capture of this type since
                if charge.prev_last is None:
                    self.last.pop(charge.type_, None)
                else:
                    self.last[charge.type_] = charge.prev_last


@dataclass
class _Held:
    """Refused anomalies of one type since the last flush."""

    anomalies: int = 0
    events: int = 0
    first: float = 0.0
    last: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)
    commands: set[int] = field(default_factory=set)
    servers: list[str] = field(default_factory=list)
    shares: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)  # hung: each request, as the anomaly listed it

    def add(self, a: Anomaly, reason: str) -> None:
        self.first = self.first or a.detected_wall
        self.last = a.detected_wall
        self.anomalies += 1
        self.events += a.count
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.rules[a.rule] = self.rules.get(a.rule, 0) + 1
        self.commands.update(a.commands)
        for key, have in (("servers", self.servers), ("shares", self.shares)):
            for v in a.details.get(key) or ():
                if v not in have and len(have) < MAX_NAMED:
                    have.append(v)
        room = MAX_REQUESTS - len(self.requests)
        if room > 0:
            self.requests.extend((a.details.get("requests") or [])[:room])


def where(servers: Any, shares: Any) -> str:
    r"""' on \\srv\share, \\srv\b' (the shares, else the servers), '' when none is known."""
    names = list(shares or ()) or list(servers or ())
    if not names:
        return ""
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return " on " + ", ".join(names[:3]) + more


@dataclass
class _Capture:
    """The last capture of a type: it covers refusals while its cooldown runs."""

    at: float  # monotonic
    wall: float
    anomaly_id: int
    path: Optional[str] = None  # once written
    failed: bool = False


class Policy:
    """Counts, throttles, records and submits anomalies. Thread-safe: the dispatcher, the
    watcher and the main thread (manual captures) all raise anomalies."""

    def __init__(self, cfg: Callable[[], Config], submit: Callable[[Anomaly], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        c = cfg()
        self.cfg = cfg
        self.submit = submit
        self.clock = clock
        self.throttle = Throttle(c.capture.cooldown_sec, c.capture.max_per_hour, clock, c.capture.manual_per_hour)
        self.lock = threading.Lock()
        self.anomalies: dict[str, int] = {}  # detected, by type (captured or not)
        self.refused: dict[str, int] = {}  # by reason
        self.capture_failures = 0  # submits the collector queue refused
        self._held: dict[str, _Held] = {}
        self._captures: dict[str, _Capture] = {}

    def set_limits(self, cfg: Config) -> None:
        self.throttle.set_limits(cfg.capture.cooldown_sec, cfg.capture.max_per_hour, cfg.capture.manual_per_hour)

    def suppressing(self, type_: str) -> bool:
        return self.throttle.suppressing(type_)

    @property
    def suppressed(self) -> dict[str, int]:
        """Anomalies the cooldown, the hourly cap or the manual cap refused, by type."""
        with self.throttle.lock:
            return dict(self.throttle.suppressed)

    def raise_(self, a: Anomaly) -> bool:
        """Alert and capture, or hold as refused. True if the capture was queued."""
        return not self.raise_why(a)

    def raise_why(self, a: Anomaly) -> str:
        """raise_(), returning '' if the capture was queued, else why not (a REASONS key)."""
        with self.lock:
            self.anomalies[a.key] = self.anomalies.get(a.key, 0) + 1
        why, charge = self.throttle.take(a.key)
        if why or charge is None:
            self._hold(a, why)
            return why
        with self.lock:  # before the submit: its result can come back at once
            prev = self._captures.get(a.key)
            self._captures[a.key] = _Capture(self.clock(), a.detected_wall, id(a))
        queued = self.submit(a)
        cmds = ",".join(command_name(c) for c in a.commands)
        statuses = a.details.get("statuses") or ()  # error: {name: count}; reconnect: [names]
        extra = {"AOD_STATUS": ",".join(statuses)} if statuses else {}
        servers, shares = a.details.get("servers") or [], a.details.get("shares") or []
        log.emit("anomaly", log.ALERT,
                 f"AOD detected anomaly: {a.key} with {a.count} events{where(servers, shares)}",
                 AOD_ANOMALY=a.key, AOD_COUNT=a.count, AOD_COMMAND=cmds, AOD_RULE=a.rule,
                 AOD_SERVER=",".join(servers), AOD_SHARE=",".join(shares), **extra)
        if queued:
            self._history(history.record(a, captured=True))
            return ""
        self.throttle.refund(charge)  # never started: no budget, no cooldown, covers nothing
        with self.lock:
            self.capture_failures += 1
            c = self._captures.get(a.key)
            if c is not None and c.anomaly_id == id(a):
                if prev is None:
                    del self._captures[a.key]
                else:
                    self._captures[a.key] = prev
        log.emit("capture_failed", logging.ERROR,
                 f"AOD capture for {a.key} anomaly dropped: collector queue is full", AOD_ANOMALY=a.key)
        self._history(history.record(a, captured=False, reason="queue_full"))
        with self.lock:
            self.refused["queue_full"] = self.refused.get("queue_full", 0) + 1
        return "queue_full"

    def _hold(self, a: Anomaly, why: str) -> None:
        with self.lock:
            self.refused[why] = self.refused.get(why, 0) + 1
            self._held.setdefault(a.key, _Held()).add(a, why)

    def _history(self, line: dict[str, Any]) -> None:
        err = history.append(self.cfg().output_dir, line)
        if err:
            log.emit("capture_failed", logging.WARNING, f"AOD anomaly history: {err}",
                     AOD_ANOMALY=str(line.get("type")))

    def on_result(self, anomaly: Anomaly, path: Optional[str], ok: bool) -> None:
        """The collector finished a capture: the covering bundle of later refusals is known."""
        with self.lock:
            c = self._captures.get(anomaly.key)
            if c is not None and c.anomaly_id == id(anomaly):
                c.path, c.failed = (path if ok else None), not ok

    def covering(self, type_: str) -> Optional[_Capture]:
        """The capture whose cooldown is still running for this type, if any."""
        with self.lock:
            c = self._captures.get(type_)
        if c is None or self.clock() - c.at >= self.cfg().capture.cooldown_sec:
            return None
        return c

    def flush(self) -> int:
        """Record the refused anomalies held since the last flush: one journal record and one
        history line per type. Returns how many types were recorded."""
        with self.lock:
            held, self._held = self._held, {}
        cfg = self.cfg()
        for type_, h in sorted(held.items()):
            cover = self.covering(type_)
            state = ("written" if cover.path else "failed" if cover.failed else "in progress") if cover else "none"
            bundle = cover.path if cover and cover.path else ""
            if len(h.reasons) == 1:
                why = REASONS.get(next(iter(h.reasons)), next(iter(h.reasons)))
            else:
                why = ", ".join(f"{REASONS.get(r, r)} ({n})" for r, n in sorted(h.reasons.items()))
            limits = (f"max {cfg.capture.manual_per_hour}/h" if type_ == MANUAL
                      else f"cooldown {cfg.capture.cooldown_sec:g}s, max {cfg.capture.max_per_hour}/h")
            cover_text = {"written": f"covered by {bundle}", "in progress": "its covering capture is in progress",
                          "failed": "its covering capture failed", "none": "no bundle covers it"}[state]
            msg = (f"AOD {h.anomalies} {type_} anomal{'y' if h.anomalies == 1 else 'ies'}"
                   f"{where(h.servers, h.shares)} not captured, refused by {why} ({limits}); {cover_text}")
            cmds = sorted(h.commands)
            log.emit("suppressed", log.NOTICE, msg, AOD_ANOMALY=type_, AOD_SUPPRESSED=h.anomalies,
                     AOD_COUNT=h.events, AOD_REASON=",".join(sorted(h.reasons)), AOD_RULE=",".join(sorted(h.rules)),
                     AOD_COMMAND=",".join(command_name(c) for c in cmds), AOD_BUNDLE=bundle,
                     AOD_SERVER=",".join(h.servers), AOD_SHARE=",".join(h.shares))
            line = history.base(type_, h.last, ",".join(sorted(h.rules)), h.events, cmds)
            line.update({"captured": False, "reason": ",".join(sorted(h.reasons)), "anomalies": h.anomalies,
                         "first": history.iso(h.first), "reasons": h.reasons, "rules": h.rules,
                         "covered_by": bundle or None, "covered_by_state": state,
                         "servers": h.servers, "shares": h.shares})
            if h.requests:  # hung: the requests stay on record one by one, captured or not
                line["requests"] = h.requests
            self._history(line)
        return len(held)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"anomalies": dict(self.anomalies), "refused": dict(self.refused),
                    "capture_failures": self.capture_failures}
