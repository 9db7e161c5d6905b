"""Detection (dispatch -> detect -> policy): vectorised rules over event columns.

`Detector.immediate` runs on every drained batch, in the dispatcher thread:
  - emergency: one watched completion over latency.emergency_threshold_ms;
  - reconnect: a reconnect record, or an error whose status means the session is gone;
  - hung: the tracer's hung records, grouped for latency.hung_group_ms (hung.py; the group is
    raised by `tick`, which the dispatcher runs between ring waits, at its deadline);
  - credits, connect, auth: the kernel's health events (health.py);
  - the count rules, latency and each error rule: they fire at the event that brings
    acceptable_count matches within horizon_sec (sliding.CountRule), wherever the window
    boundaries fall, so within one drained batch of it.
`Detector.window` runs at each window close, in the watcher thread: the share rules
(matches as a share of all completions, whose count comes from the tracers' histograms,
read once a window) fire there.

Both read the compact `Columns` the dispatcher extracted once per batch (kind, command,
latency, ts), never the 72-byte records: error rules gather only the error rows. An
anomaly carries the ring events of its horizon from `RecentEvents`, gathered only when
it fires (at most MAX_ANOMALY_EVENTS, matching ones first), and names the servers and shares
of its own events (names.involved).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from . import health, hung, nfsproc, smb2
from .anomaly import Anomaly
from .config import Config
from .detecttables import LATENCY, Rule, Tables, latency_kind, ns, tables
from .dispatch import Columns, Events, RecentEvents, since
from .names import Namer, involved
from .record import KIND_ERROR, KIND_HEALTH, KIND_HUNG, KIND_RECONNECT
from .sliding import CountRule, Crossing, ShareHit, ShareRule

_RECONNECT_STATUSES = np.array(sorted(smb2.RECONNECT_STATUSES), dtype=np.uint32)
MAX_ANOMALY_EVENTS = 50_000  # events an anomaly (and its bundle's events.npy) carries at most
MAX_NAMING_ROWS = 10_000  # an anomaly's newest own events whose servers and shares it names

_latency_kind = latency_kind  # (a module global: tests wrap it)
Match = Callable[[Events], np.ndarray]  # ascending indices of an anomaly's own events in evidence


@dataclass
class _Found:
    type: str
    rule: str
    count: int
    commands: np.ndarray
    details: dict[str, Any]
    start_ns: int  # the anomaly's window: what it counted
    end_ns: int
    evidence_from_ns: int  # ring events carried from here on
    match: Match
    own: Optional[np.ndarray] = None  # its own records, when known (hung, health): what it names


class Detector:
    """Rules over batches (`immediate`) and closed windows (`window`).

    The config lives in `tables`, swapped whole by `reconfigure`; a rule's sliding state is kept
    across a reload that leaves what it depends on unchanged (`Tables.count_params`,
    `share_params`), and starts afresh otherwise. Count state belongs to the dispatcher thread, share state
    to the watcher thread; `_lock` guards what they tell each other (matches not yet part of an
    anomaly, and rules to start afresh because the other kind fired).
    """

    tables: Tables

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time,
                 mono: Callable[[], int] = time.monotonic_ns,
                 suppressing: Callable[[str], bool] = lambda _type: False,
                 recent: Optional[RecentEvents] = None,
                 stats_since: Callable[[int], Optional[np.ndarray]] = lambda _ns: None,
                 names: Optional[Namer] = None, protocol: str = "smb",
                 mine: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        self.clock = clock
        self.protocol = protocol  # of the records fed to it (detectsplit.py): its anomalies carry it
        self.mine = mine  # bool mask of a batch's records of its protocol: its evidence (None: all)
        self.names = names  # server and share names of an anomaly's events
        self.hung = hung.HungGroups()  # dispatcher thread
        self.emergencies_deduplicated = 0  # completions over the emergency threshold of hung requests
        self.health_counts: dict[str, int] = {}  # health records by code name since start (dispatcher thread)
        self.mono = mono
        self.suppressing = suppressing  # Policy.suppressing: that type's capture is sure to be refused
        self.recent = recent  # evidence; None: an anomaly carries its own batch only
        self.stats_since = stats_since  # all-traffic CMD_STATS of the windows since a time (the watcher's)
        self._lock = threading.Lock()
        self._matched: dict[str, Counter[int]] = {}  # rule key -> matches by command since take_matched()
        self._share_resets: set[str] = set()  # count rule fired: its share rule starts afresh
        self._count_resets: set[str] = set()  # share rule fired: its count rule starts afresh
        self._counts: dict[str, tuple[tuple[Any, ...], CountRule]] = {}  # key -> (params, state)
        self._counts_for: Optional[Tables] = None
        self._latched: dict[str, int] = {}  # rule key -> ts before which its events are ignored (fired)
        self._shares: dict[str, tuple[tuple[Any, ...], ShareRule]] = {}
        self._shares_for: Optional[Tables] = None
        self.reconfigure(cfg)

    def reconfigure(self, cfg: Config) -> None:
        """Build the new tables aside, then publish them with one assignment (atomic for readers)."""
        self.tables = tables(cfg, self.protocol)

    @property
    def cfg(self) -> Config:
        return self.tables.cfg

    def keep_ns(self) -> int:
        """How far back the evidence of an anomaly reaches (RecentEvents keeps this much)."""
        t = self.tables
        return max(t.longest_horizon_ns, int(t.cfg.watch_interval_sec * 1e9))

    # ---- the count rules' state (dispatcher thread) -----------------------------------
    def _count_rules(self, t: Tables) -> dict[str, CountRule]:
        if self._counts_for is not t:
            old = self._counts
            self._counts = {}
            for key, params in t.count_params.items():
                k, h = params[-2:]
                kept = old.get(key)
                self._counts[key] = kept if kept and kept[0] == params else (params, CountRule(k, ns(h)))
            self._counts_for = t
        with self._lock:
            resets, self._count_resets = self._count_resets, set()
        for key in resets:
            if key in self._counts:
                self._counts[key][1].clear()
        return {key: v[1] for key, v in self._counts.items()}

    def _counted(self, key: str, commands: np.ndarray, fired: bool, statuses: Optional[np.ndarray] = None) -> None:
        """Pass a batch's matches on to the share rule: by (command << 32 | status)."""
        by_cmd: Counter[int] = Counter()
        if not fired:
            packed = commands.astype(np.uint64) << np.uint64(32)
            if statuses is not None:
                packed |= statuses.astype(np.uint64)
            cmds, n = np.unique(packed, return_counts=True)
            by_cmd.update(dict(zip(cmds.tolist(), n.tolist())))
        with self._lock:
            if fired:  # these matches are the anomaly's; the share rule starts over
                self._share_resets.add(key)
                self._matched.pop(key, None)
            else:
                self._matched.setdefault(key, Counter()).update(by_cmd)

    def take_matched(self) -> tuple[dict[str, dict[int, int]], set[str]]:
        """For the watcher, at a window close before it reads the histograms: matches by command
        per rule since the last call, and the rules whose share history must start afresh."""
        with self._lock:
            m, self._matched = {k: dict(v) for k, v in self._matched.items()}, {}
            r, self._share_resets = self._share_resets, set()
        return m, r

    # ---- immediate: every batch --------------------------------------------------------
    def immediate(self, batch: np.ndarray, cols: Optional[Columns] = None) -> list[Anomaly]:
        """Emergency, reconnect, health and count rules on a freshly drained batch (cols: its Columns);
        its hung records join the open hung group, and a group whose deadline has come is raised."""
        if len(batch) == 0:
            return []
        t = self.tables  # one config for the whole batch
        counts = self._count_rules(t)
        cols = Columns.of(batch) if cols is None else cols
        kind, cmd, lat, ts = cols
        found: list[_Found] = []
        lat_cfg = t.cfg.latency
        lat_h = ns(lat_cfg.horizon_sec)
        t0, t1 = int(ts.min()), int(ts.max()) + 1

        iv = max(int(t.cfg.watch_interval_sec * 1e9), 1)
        hung_rows = np.flatnonzero(kind == KIND_HUNG)
        if len(hung_rows) and t.hung_ns:  # first: a request hung and done in one batch is hung only
            hung_rows = hung_rows[t.hung_codes[cmd[hung_rows]]]
            self.hung.feed(batch[hung_rows], self.mono(), int(t.cfg.latency.hung_group_ms * 1e6))
        cand = np.flatnonzero(lat > t.min_threshold_ns)  # the slow few: look up thresholds for these
        over = cand[_latency_kind(kind[cand]) & (lat[cand] > t.thresholds_ns[cmd[cand]])]
        em = over[lat[over] > t.emergency_ns]
        if len(em) and len(self.hung.recent):  # hung wins: its capture ran while the request hung
            seen = self.hung.recent.contains(batch[em])
            self.emergencies_deduplicated += int(np.count_nonzero(seen))
            em = em[~seen]
        em = self._unlatched("emergency", ts, em, iv)
        if len(em):
            worst = int(em[np.argmax(lat[em])])
            found.append(_Found(
                "emergency", f"latency>{lat_cfg.emergency_threshold_ms:g}ms", len(em), cmd[em],
                {"emergency_threshold_ms": lat_cfg.emergency_threshold_ms,
                 "max_latency_ms": round(float(lat[worst]) / 1e6, 3),
                 "command": smb2.command_name(int(cmd[worst]))},
                t0, t1, t0 - lat_h, lambda ev: ev.where(
                    lambda c: _latency_kind(c.kind) & t.tracked[c.command] & (c.latency_ns > t.emergency_ns)),
                own=batch[em]))
        if t.cfg.reconnect.enabled:
            rc = kind == KIND_RECONNECT
            errs = np.flatnonzero(kind == KIND_ERROR)
            if len(errs):
                rc[errs] = np.isin(batch["nt_status"][errs], _RECONNECT_STATUSES)
            rows = self._unlatched("reconnect", ts, np.flatnonzero(rc), iv)
            if len(rows):
                statuses = sorted({smb2.status_name(s) for s in batch["nt_status"][rows] if s})
                found.append(_Found("reconnect", "reconnect", len(rows), cmd[rows], {"statuses": statuses},
                                    t0, t1, t0 - lat_h, _match_reconnect, own=batch[rows]))
        hl = np.flatnonzero(kind == KIND_HEALTH)
        if len(hl):
            found.extend(self._health(t, batch, hl, ts, iv, t0, t1, lat_h))

        over = self._unlatched(LATENCY, ts, over)
        if len(over):
            cr = counts[LATENCY].feed(ts[over], cmd[over])
            self._counted(LATENCY, cmd[over], cr is not None)
            if cr is not None:
                self._latch(LATENCY, cr.crossing_ts, iv)
                found.append(self._latency_found(t, cr))
        if t.rules:
            errs = np.flatnonzero(kind == KIND_ERROR)
            if len(errs):
                status, err, ecmd = batch["nt_status"][errs], batch["err"][errs], cmd[errs]
                named = self._statuses(status, err)
                for r in t.rules:
                    m = np.flatnonzero(r.mask(status, err, ecmd))
                    m = m[ts[errs[m]] >= np.uint64(self._latched.get(r.key, 0))]
                    if not len(m):
                        continue
                    cr = counts[r.key].feed(ts[errs[m]], ecmd[m], named[m])
                    self._counted(r.key, ecmd[m], cr is not None, status[m])
                    if cr is not None:
                        self._latch(r.key, cr.crossing_ts, iv)
                        found.append(self._error_found(r, cr))
        out = self._build(found, t, batch, cols) if found else []
        return out + self.tick()

    def _health(self, t: Tables, batch: np.ndarray, rows: np.ndarray, ts: np.ndarray, iv: int,
                t0: int, t1: int, lat_h: int) -> list[_Found]:
        """credits, connect, auth from the batch's health records (rows); all codes counted."""
        codes = batch["command"][rows]
        for name, n in health.counts(codes).items():
            self.health_counts[name] = self.health_counts.get(name, 0) + n
        out = []
        for type_ in health.TYPES:
            if not t.cfg.health.enabled(type_):
                continue
            mine = self._unlatched(type_, ts, rows[np.isin(codes, health.CODES[type_])], iv)
            if not len(mine):
                continue
            recs = batch[mine]
            want = health.CODES[type_]
            out.append(_Found(type_, health.rule(recs), len(mine), np.zeros(0, np.uint16), health.details(recs),
                              t0, t1, t0 - lat_h,
                              lambda ev, want=want: ev.where(  # type: ignore[misc]
                                  lambda c: (c.kind == KIND_HEALTH) & np.isin(c.command, want)),
                              own=recs))
        return out

    # ---- hung: the group's deadline ----------------------------------------------------
    def next_deadline(self) -> Optional[int]:
        """Monotonic ns at which `tick` has an anomaly to raise (an open hung group), else None."""
        return self.hung.deadline

    def tick(self) -> list[Anomaly]:
        """The hung anomaly of a group whose deadline has come (dispatcher thread: after each
        drained batch and each ring wait, which ends by next_deadline())."""
        rows = self.hung.due(self.mono())
        if rows is None or not len(rows):
            return []
        t = self.tables
        lat = t.cfg.latency
        ms = t.hung_ns / 1e6
        first, last = int(rows["ts_ns"].min()), int(rows["ts_ns"].max())
        f = _Found("hung", f"in_flight>{ms:g}ms", len(rows), rows["command"],
                   hung.details(rows, self.names, ms, lat.hung_group_ms),
                   first, last + 1, first - ns(lat.horizon_sec), _match_hung, own=rows)
        return self._build([f], t, rows, Columns.of(rows))

    def _unlatched(self, key: str, ts: np.ndarray, rows: np.ndarray, iv: int = 0) -> np.ndarray:
        """rows whose events come after the rule's latch; a rule that fires now (iv given: emergency,
        reconnect) is latched for the rest of the window its newest event falls in."""
        until = self._latched.get(key, 0)
        if until and len(rows):
            rows = rows[ts[rows] >= np.uint64(until)]
        if iv and len(rows):
            self._latch(key, int(ts[rows].max()), iv)
        return rows

    def _latch(self, key: str, ts: int, iv: int) -> None:
        """At most one anomaly per rule and window: after it fires, the rule ignores events until
        the end of the window its crossing event falls in, then counts afresh."""
        self._latched[key] = (ts // iv + 1) * iv

    def _latency_found(self, t: Tables, cr: Crossing) -> _Found:
        lat = t.cfg.latency
        cmds = np.array(sorted(cr.by_command), dtype=np.uint16)
        return _Found(
            "latency", f"over_threshold>={lat.acceptable_count} in {lat.horizon_sec:g}s", cr.count, cmds,
            {"trigger": "count", "acceptable_count": lat.acceptable_count, "horizon_sec": lat.horizon_sec,
             "crossing_mono_ns": cr.crossing_ts,
             "over_threshold_by_command": {smb2.command_name(c): n for c, n in sorted(cr.by_command.items())},
             "thresholds_ms": {smb2.command_name(c): float(t.thresholds_ns[c]) / 1e6 for c in cmds}},
            cr.first_ts, cr.last_ts + 1, cr.crossing_ts - ns(lat.horizon_sec), lambda ev: _match_latency(t, ev))

    def _statuses(self, status: np.ndarray, err: np.ndarray) -> np.ndarray:
        """What an error rule counts errors by: the NT status (SMB; 0 when matched by errno), or for
        NFS the NFS4ERR_* status, else the errno flagged with nfsproc.ERRNO_FLAG (both are named)."""
        if self.protocol != "nfs":
            return status
        return nfsproc.status_key(status, err)

    def _status_name(self, s: int) -> str:
        return smb2.protocol_status_name(self.protocol, s)

    def _error_found(self, r: Rule, cr: Crossing) -> _Found:
        statuses = {self._status_name(s): n for s, n in sorted(cr.by_status.items()) if s}  # 0: matched by errno
        return _Found(
            "error", r.rule.name, cr.count, np.array(sorted(cr.by_command), dtype=np.uint16),
            {"trigger": "count", "acceptable_count": r.rule.acceptable_count, "horizon_sec": r.rule.horizon_sec,
             "crossing_mono_ns": cr.crossing_ts, "statuses": statuses},
            cr.first_ts, cr.last_ts + 1, cr.crossing_ts - ns(r.rule.horizon_sec), r.match)

    # ---- window: every window close -------------------------------------------------
    def _share_rules(self, t: Tables) -> dict[str, ShareRule]:
        if self._shares_for is not t:
            old = self._shares
            self._shares = {}
            for key, params in t.share_params.items():
                share, n, h = params[-3:]
                kept = old.get(key)
                self._shares[key] = kept if kept and kept[0] == params else (params, ShareRule(share, n, ns(h)))
            self._shares_for = t
        return {key: v[1] for key, v in self._shares.items()}

    def window(self, end_ns: int, stats: Optional[np.ndarray], matched: dict[str, dict[int, int]],
               resets: Optional[set[str]] = None) -> list[Anomaly]:
        """Share rules at a window close: stats is the window's all-traffic CMD_STATS delta (None
        while the tracer's counters are unreadable: no denominator, no share rule), matched and
        resets what `take_matched` returned before the histograms were read."""
        t = self.tables
        shares = self._share_rules(t)
        resets = resets or set()
        for key in resets:
            if key in shares:
                shares[key].clear()
        if stats is None:
            return []
        hist = stats["hist"].sum(axis=1)
        found: list[_Found] = []
        for r in (None, *t.rules):
            key = LATENCY if r is None else r.key
            if key in resets:
                continue  # its count rule fired in this window: these completions are that anomaly's
            sr = shares[key]
            slots = t.latency_slots if r is None else r.slots
            hit = sr.add(end_ns, matched.get(key, {}), int(hist[slots].sum()))
            if hit is None:
                continue
            with self._lock:
                self._count_resets.add(key)
            found.append(self._share_found(t, r, sr, hit, end_ns))
        return self._build(found, t, None, None) if found else []

    def _share_found(self, t: Tables, r: Optional[Rule], sr: ShareRule, hit: ShareHit, end_ns: int) -> _Found:
        m, c = hit.matches, hit.completions
        start = end_ns - sr.horizon_ns
        per_cmd: Counter[int] = Counter()
        per_status: Counter[int] = Counter()
        for packed, n in hit.by_command.items():  # command << 32 | status
            per_cmd[packed >> 32] += n
            per_status[packed & 0xFFFFFFFF] += n
        cmds = np.array(sorted(per_cmd), dtype=np.uint16)
        by_cmd = {smb2.command_name(k): n for k, n in sorted(per_cmd.items())}
        details: dict[str, Any] = {"trigger": "share", "share": sr.share, "share_min_count": sr.min_count,
                                   "horizon_sec": sr.horizon_ns / 1e9, "matches": m, "completions": c,
                                   "observed_share": round(m / c, 4) if c else 1.0}
        if r is None:
            lat = t.cfg.latency
            details.update({"over_threshold_by_command": by_cmd,
                            "thresholds_ms": {smb2.command_name(k): float(t.thresholds_ns[k]) / 1e6 for k in cmds}})
            return _Found("latency", f"over_threshold_share>={lat.share:g} in {lat.share_horizon_sec:g}s", m, cmds,
                          details, start, end_ns, start, lambda ev: _match_latency(t, ev))
        details["by_command"] = by_cmd
        details["statuses"] = {self._status_name(s): n for s, n in sorted(per_status.items()) if s}
        return _Found("error", r.rule.name, m, cmds, details, start, end_ns, start, r.match)

    # ---- anomalies ------------------------------------------------------------------------
    def _build(self, found: list[_Found], t: Tables, batch: Optional[np.ndarray],
               cols: Optional[Columns]) -> list[Anomaly]:
        """The anomalies, sharing one evidence: the ring events since the earliest evidence_from_ns,
        taken as references now and gathered into one array when the collector needs it."""
        if self.recent is not None:
            snap = self.recent.snapshot()
            if self.mine is not None:  # the shared recent events hold every protocol's records
                snap = [_select(b, c, self.mine(b)) for b, c in snap]
        else:
            snap = [(batch, cols if cols is not None else Columns.of(batch))] if batch is not None else []
        from_ns = min(f.evidence_from_ns for f in found)
        gather: Optional[Callable[[], np.ndarray]] = None
        extra: dict[str, Any] = {}
        if all(self.suppressing(f.type) for f in found):  # no capture will take them: keep nothing
            extra = {"events_not_kept": "suppressed"}
        else:
            n = sum(int(np.count_nonzero(c.ts_ns >= np.uint64(max(from_ns, 0)))) for _, c in snap)
            if n > MAX_ANOMALY_EVENTS:
                extra = {"events_in_horizon": n}
            gather = functools.partial(_gather, snap, from_ns, tuple(f.match for f in found))
        wall, mono = self.clock(), self.mono()
        out = []
        for f in found:
            named = {} if "servers" in f.details else involved(self.names, _own_rows(snap, f))
            out.append(Anomaly(type=f.type, rule=f.rule, count=f.count, detected_wall=wall, detected_mono_ns=mono,
                               window_start_ns=f.start_ns, window_end_ns=f.end_ns,
                               commands=tuple(int(c) for c in np.unique(f.commands)),
                               details={**f.details, **named, **extra}, gather=gather, protocol=self.protocol,
                               stats_gather=functools.partial(self.stats_since, f.start_ns)))
        return out


def _select(batch: np.ndarray, cols: Columns, keep: np.ndarray) -> tuple[np.ndarray, Columns]:
    return (batch, cols) if keep.all() else (batch[keep], cols.select(keep))


def _gather(snap: list[tuple[np.ndarray, Columns]], from_ns: int, matches: tuple[Match, ...]) -> np.ndarray:
    """The evidence records: all of them, or (over MAX_ANOMALY_EVENTS) the anomalies' own events
    from the older part plus the newest events, each record once, in drain order."""
    ev = since(snap, from_ns)
    n = len(ev)
    if n <= MAX_ANOMALY_EVENTS:
        return ev.records()
    cut = n - MAX_ANOMALY_EVENTS // 2
    rows = [m(ev) for m in matches]
    early = np.unique(np.concatenate([r[r < cut] for r in rows]))[-(MAX_ANOMALY_EVENTS // 2):]
    newest = n - (MAX_ANOMALY_EVENTS - len(early))  # fill up with the newest events
    return ev.take(early[early < newest], newest)


def _own_rows(snap: list[tuple[np.ndarray, Columns]], f: _Found) -> np.ndarray:
    """The anomaly's own records within what it counted (the newest MAX_NAMING_ROWS)."""
    if f.own is not None:
        return f.own
    ev = since(snap, f.start_ns)
    idx = f.match(ev)
    if len(idx):
        idx = idx[ev.at("ts_ns", idx) < np.uint64(max(f.end_ns, 0))][-MAX_NAMING_ROWS:]
    return ev.take(idx)


def _match_hung(ev: Events) -> np.ndarray:
    return ev.where(lambda c: c.kind == KIND_HUNG)


def _match_latency(t: Tables, ev: Events) -> np.ndarray:
    return ev.where(lambda c: _latency_kind(c.kind) & (c.latency_ns > t.thresholds_ns[c.command]))


def _match_reconnect(ev: Events) -> np.ndarray:
    idx, rows = ev.errors()
    lost = idx[np.isin(rows["nt_status"], _RECONNECT_STATUSES)] if len(idx) else idx
    return np.union1d(ev.where(lambda c: c.kind == KIND_RECONNECT), lost).astype(np.intp)
