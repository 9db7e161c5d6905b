"""Detector tables (config -> detect): what a config decides for the detectors, as arrays.

Built once per config by `tables()` and never changed (`Detector.reconfigure` swaps a whole
new one in): thresholds by command, the watched histogram slots, the error rules as arrays,
what each rule's sliding state depends on, and the hung threshold and commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config, ErrorRule, hung_codes, hung_threshold_ns, threshold_lookup
from .dispatch import Events
from .record import KIND_COMPLETION, KIND_ERROR, protocol_rows, stats_row

NEVER = np.iinfo(np.uint64).max
LATENCY = "latency"  # rule key of the latency rules; error rules are "error:NAME"


def latency_kind(kind: np.ndarray) -> np.ndarray:
    """Completion or error (both carry a latency): kind in {1, 2}."""
    return (kind - np.uint8(KIND_COMPLETION)) <= np.uint8(KIND_ERROR - KIND_COMPLETION)


def _set(values: frozenset[int], dtype: type) -> np.ndarray:
    return np.array(sorted(values), dtype=dtype)


def _slots(commands: Any, mine: np.ndarray) -> np.ndarray:
    """bool[STATS_ROWS]: the statistics rows of these commands (all the protocol's rows, `mine`, when
    there are none)."""
    cmds = np.asarray(list(commands), dtype=np.int64)
    if not len(cmds):
        return mine.copy()
    out = np.zeros(len(mine), bool)
    out[stats_row(cmds)] = True
    return out & mine


class Rule:
    """An ErrorRule as arrays, built once per config."""

    def __init__(self, rule: ErrorRule, mine: np.ndarray) -> None:
        self.rule = rule
        self.key = f"error:{rule.name}"
        self.statuses = _set(rule.statuses, np.uint32)
        self.errnos = _set(rule.errnos, np.int32)
        self.commands = _set(rule.commands, np.uint16)
        self.slots = _slots(rule.commands, mine)

    def mask(self, status: np.ndarray, err: np.ndarray, command: np.ndarray) -> np.ndarray:
        """Over error rows only."""
        m = np.isin(status, self.statuses) | np.isin(err, self.errnos)
        if len(self.commands):
            m &= np.isin(command, self.commands)
        return m

    def match(self, ev: Events) -> np.ndarray:
        idx, rows = ev.errors()
        if not len(idx):
            return idx
        return idx[self.mask(rows["nt_status"], rows["err"], ev.at("command", idx))]


@dataclass(frozen=True)
class Tables:
    """Everything a config decides for the detectors, built once per config and never changed:
    `reconfigure` swaps in a new one with a single assignment, and each `immediate` / `window`
    call reads `Detector.tables` once, so a batch or window never sees a mix of two configs."""

    cfg: Config
    tracked: np.ndarray  # bool[65536]: command watched for latency (read-only)
    thresholds_ns: np.ndarray  # uint64[65536] ns by command: threshold, NEVER where untracked (read-only)
    emergency_ns: np.uint64
    min_threshold_ns: np.uint64
    latency_slots: np.ndarray  # bool[STATS_ROWS]: statistics rows of the watched commands
    rules: tuple[Rule, ...]
    count_params: dict[str, tuple[Any, ...]]  # rule key -> what its count state depends on
    share_params: dict[str, tuple[Any, ...]]  # rule key -> what its share state depends on
    hung_ns: int  # hung threshold (0: off)
    hung_codes: np.ndarray  # bool[65536]: commands that may be called hung (read-only)

    @property
    def longest_horizon_ns(self) -> int:
        lat = self.cfg.latency
        return max([ns(lat.horizon_sec), ns(lat.share_horizon_sec)]
                   + [ns(max(r.rule.horizon_sec, r.rule.share_horizon_sec)) for r in self.rules])


def ns(sec: float) -> int:
    return int(sec * 1e9)


def tables(cfg: Config, protocol: str = "smb") -> Tables:
    """The tables of a detector of this protocol's records (its share rules count its own statistics rows)."""
    mine = protocol_rows(protocol)
    lookup = threshold_lookup(cfg.latency)
    tracked = np.isfinite(lookup)
    thresholds = np.where(tracked, lookup, 0).astype(np.uint64)
    thresholds[~tracked] = NEVER
    tracked.flags.writeable = thresholds.flags.writeable = False
    slots = np.zeros(len(mine), bool)
    slots[stats_row(np.flatnonzero(tracked))] = True
    slots &= mine
    lat = cfg.latency
    watched = hash(thresholds.tobytes())  # which completions match: a reload that keeps it keeps the counts
    rules = tuple(Rule(r, mine) for r in cfg.errors)
    count_params: dict[str, tuple[Any, ...]] = {LATENCY: (watched, lat.acceptable_count, lat.horizon_sec)}
    share_params: dict[str, tuple[Any, ...]] = {LATENCY: (watched, lat.share, lat.share_min_count,
                                                          lat.share_horizon_sec)}
    for r in rules:
        what = (r.rule.statuses, r.rule.errnos, r.rule.commands)
        count_params[r.key] = (*what, r.rule.acceptable_count, r.rule.horizon_sec)
        share_params[r.key] = (*what, r.rule.share, r.rule.share_min_count, r.rule.share_horizon_sec)
    hung = hung_codes(lat)
    hung.flags.writeable = False
    return Tables(cfg=cfg, tracked=tracked, thresholds_ns=thresholds,
                   emergency_ns=np.uint64(round(lat.emergency_threshold_ms * 1e6)),
                   min_threshold_ns=thresholds.min(), latency_slots=slots, rules=rules,
                   count_params=count_params, share_params=share_params,
                   hung_ns=hung_threshold_ns(lat), hung_codes=hung)
