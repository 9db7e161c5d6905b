"""Configuration: YAML file -> validated, frozen dataclasses (read before anything runs).

Every other layer (ring, dispatch, detect, collect, retain) reads only the frozen
Config built here. load() checks the whole file up front and raises ConfigError
with *every* problem, each as "FILE: dotted.path: expected ..., got ...".
Command, status and errno names become ints here, so the hot path never sees names.
The typed checks themselves live in configcheck.py.
"""

from __future__ import annotations

import dataclasses
import errno as _errno_mod
import mmap
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .actions import ACTION_NAMES
from .configcheck import (
    _NAME_RE,
    _abs_path,
    _command,
    _commands,
    _duplicate_keys,
    _errno,
    _errno_out,
    _Errors,
    _g,
    _got,
    _join,
    _list,
    _mapping,
    _ms_to_ns,
    _Num,
    _number,
    _plain,
    _short,
    _status,
    _suggest,
)
from .record import IGNORED_MAX
from .smb2 import NT_STATUS, RECONNECT_STATUSES, command_name, status_name
from .yamlsafe import MAX_FILE_BYTES, MAX_YAML_ALIASES, YamlError, oneline, parse, read_text  # noqa: F401

ANOMALY_TYPES = ("latency", "error", "emergency", "reconnect", "manual", "hung", "credits", "connect", "auth")
HEALTH_TYPES = ("credits", "connect", "auth")  # anomaly types raised from the kernel's health tracepoints
# evidence of a hang, collected while it holds (the evidence helper's actions): on by default for
# hung and emergency only, after cifs_debug (DebugData first: it shows the outstanding requests)
EVIDENCE_ACTIONS = ("task_stacks", "inflight", "connections")
HUNG_MIN_MS = 100.0  # a hung threshold below this would call ordinary slow requests hung
HUNG_GROUP_MAX_MS = 500.0
LATENCY_MODES = ("all", "trackonly", "excludeonly")
DEFAULT_CONFIG_PATH = "/etc/aodv2/config.yaml"

LOOKUP_SIZE = 65536  # threshold_lookup() is indexed by the u16 command of an event


@dataclass(frozen=True)
class LatencyConfig:
    mode: str = "excludeonly"  # all | trackonly | excludeonly
    default_threshold_ms: float = 500.0
    thresholds_ms: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))  # cmd id -> ms
    track: tuple[int, ...] = ()  # cmd ids, used when mode == trackonly
    exclude: tuple[int, ...] = (15,)  # cmd ids, used when mode == excludeonly (CHANGE_NOTIFY)
    acceptable_count: int = 10  # count rule: this many over threshold within horizon_sec fire at once
    emergency_threshold_ms: float = 1000.0
    horizon_sec: float = 10.0  # sliding horizon of the count rule
    share: float = 0.5  # share rule: this share of watched completions over threshold (0: off) ...
    share_min_count: int = 5  # ... and at least this many of them, within share_horizon_sec
    share_horizon_sec: float = 60.0
    # in flight longer than this: a hung record (None: emergency_threshold_ms; 0: aging off)
    hung_threshold_ms: Optional[float] = None
    hung_exclude: tuple[int, ...] = (10,)  # cmd ids never called hung (LOCK: blocking locks wait by design)
    hung_group_ms: float = 100.0  # grouping delay after the first hung record (0-500)

    @property
    def emergency_ns(self) -> int:
        return _ms_to_ns(self.emergency_threshold_ms)


@dataclass(frozen=True)
class ErrorRule:
    name: str
    statuses: frozenset[int] = frozenset()  # NT status codes
    errnos: frozenset[int] = frozenset()  # positive errno values
    commands: frozenset[int] = frozenset()  # empty = any command
    acceptable_count: int = 1  # count rule: this many matching errors within horizon_sec
    horizon_sec: float = 10.0
    share: float = 0.0  # share rule: matching errors / completions (of `commands`) >= this (0: off) ...
    share_min_count: int = 5  # ... with at least this many matching errors, within share_horizon_sec
    share_horizon_sec: float = 60.0


# Session-expired / name-deleted are the reconnect detector's job, not error rules.
DEFAULT_ERROR_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        name="timeouts",
        statuses=frozenset({NT_STATUS["STATUS_IO_TIMEOUT"]}),
        errnos=frozenset({_errno_mod.ETIMEDOUT}),
        acceptable_count=1,
    ),
    ErrorRule(
        name="access_denied",
        statuses=frozenset({NT_STATUS["STATUS_ACCESS_DENIED"]}),
        acceptable_count=20,
        share=0.2,  # a denied open costs successful lookups too: a client failing every open shows ~40%
    ),
    ErrorRule(
        name="handle_errors",
        statuses=frozenset({NT_STATUS["STATUS_FILE_CLOSED"], NT_STATUS["STATUS_INVALID_HANDLE"]}),
        acceptable_count=5,
    ),
)


# Statuses every client sees in normal work: the end of each directory listing, reads at
# EOF, session setup round trips, lookups of names that do not exist. The tracer drops them
# in the kernel (they are completions, not errors) and counts them per command.
DEFAULT_IGNORED_STATUSES: frozenset[int] = frozenset(NT_STATUS[n] for n in (
    "STATUS_NO_MORE_FILES",
    "STATUS_END_OF_FILE",
    "STATUS_MORE_PROCESSING_REQUIRED",
    "STATUS_OBJECT_NAME_NOT_FOUND",
    "STATUS_OBJECT_PATH_NOT_FOUND",
))


def _known_actions() -> tuple[str, ...]:
    """Every action name a list may hold: the table's, and the evidence actions."""
    return ACTION_NAMES + tuple(n for n in EVIDENCE_ACTIONS if n not in ACTION_NAMES)


def default_actions_for(type_: str) -> tuple[str, ...]:
    """hung and emergency: cifs_debug, the evidence actions, then the rest; other types: the table
    without the evidence actions (they look at tasks in D state: worth it for a hang only)."""
    rest = tuple(n for n in ACTION_NAMES if n not in EVIDENCE_ACTIONS)
    if type_ in ("hung", "emergency"):
        return ("cifs_debug", *EVIDENCE_ACTIONS, *(n for n in rest if n != "cifs_debug"))
    return rest


def _default_actions() -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({t: default_actions_for(t) for t in ANOMALY_TYPES})


@dataclass(frozen=True)
class ReconnectConfig:
    enabled: bool = True


@dataclass(frozen=True)
class HealthTypeConfig:
    enabled: bool = True


@dataclass(frozen=True)
class HealthConfig:
    """The anomaly types of the kernel's health tracepoints (record.HEALTH_TYPE)."""

    credits: HealthTypeConfig = HealthTypeConfig()
    connect: HealthTypeConfig = HealthTypeConfig()
    auth: HealthTypeConfig = HealthTypeConfig()

    def enabled(self, type_: str) -> bool:
        sec = getattr(self, type_, None)
        return bool(sec and sec.enabled)


@dataclass(frozen=True)
class CaptureConfig:
    cooldown_sec: float = 300.0  # per anomaly type
    max_per_hour: int = 12  # across all types
    concurrency: int = 4  # quick actions run at once
    action_timeout_sec: float = 15.0
    lookback_sec: float = 120.0  # how far back logs are captured


@dataclass(frozen=True)
class RetentionConfig:
    max_total_mb: float = 1024.0
    max_age_days: float = 30.0
    interval_sec: float = 60.0


@dataclass(frozen=True)
class RingConfig:
    path: str = "/sys/fs/bpf/aodv2/events"
    size_kb: int = 4096  # power of two, multiple of the page size


METRICS_DEFAULT_DIR = "/var/lib/prometheus/node-exporter"
UPLOAD_PLACEHOLDERS = ("path", "name", "type", "dir")


@dataclass(frozen=True)
class MetricsConfig:
    # "auto": METRICS_DEFAULT_DIR/aodv2.prom when that dir exists; "": off
    textfile_path: str = "auto"
    interval_sec: float = 5.0


@dataclass(frozen=True)
class UploadConfig:
    command: tuple[str, ...] = ()  # argv template, {path} {name} {type} {dir}; empty: off
    retries: int = 3  # attempts after the first
    backoff_sec: float = 10.0  # first retry delay, doubled each time
    timeout_sec: float = 600.0  # one attempt is killed after this long


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    watch_interval_sec: float = 1.0
    output_dir: str = "/var/log/aodv2"
    latency: LatencyConfig = LatencyConfig()
    errors: tuple[ErrorRule, ...] = DEFAULT_ERROR_RULES
    ignored_statuses: frozenset[int] = DEFAULT_IGNORED_STATUSES
    # things worth saying that do not stop the config (check-config prints them, the core logs them)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    reconnect: ReconnectConfig = ReconnectConfig()
    health: HealthConfig = HealthConfig()
    # anomaly type -> action names
    actions: Mapping[str, tuple[str, ...]] = field(default_factory=_default_actions)
    capture: CaptureConfig = CaptureConfig()
    retention: RetentionConfig = RetentionConfig()
    ring: RingConfig = RingConfig()
    tracers: tuple[str, ...] = ("smb",)
    metrics: MetricsConfig = MetricsConfig()
    upload: UploadConfig = UploadConfig()


# ---------------------------------------------------------------- public API


class ConfigError(Exception):
    """Invalid or unreadable configuration. .errors holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def defaults() -> Config:
    return Config()


def load(path: str) -> Config:
    """Read and validate a config file. Raises ConfigError (never anything else)."""
    source = os.fspath(path)
    try:
        text = read_text(source)
    except YamlError as e:
        raise ConfigError([str(e)]) from None
    return load_text(text, source)


def load_text(text: str, source: str = "<string>") -> Config:
    """Validate YAML text. Raises ConfigError naming `source` in every message."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ConfigError([f"{source}: expected at most {MAX_FILE_BYTES} bytes, got a larger file"])
    try:
        data, dups = parse(text, source, _duplicate_keys)
    except YamlError as e:
        raise ConfigError([str(e)]) from None
    dup_errors = [f"{source}: {p}: expected each key once, got a duplicate key on line {line}"
                  for p, line in dups or []]
    if data is None:
        raise ConfigError(
            [f"{source}: expected a YAML mapping of settings, got an empty file (write {{}} for defaults)"]
        )
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a YAML mapping at top level, {_got(data)}"])
    errs = _Errors(source)
    errs.items.extend(dup_errors)
    cfg = _build(errs, data)
    if errs.items:
        raise ConfigError(errs.items)
    return dataclasses.replace(cfg, source=source)


def check(path: str) -> list[str]:
    """All problems with the file at `path`; empty when it is valid."""
    try:
        load(path)
    except ConfigError as exc:
        return list(exc.errors)
    return []


def threshold_lookup(lat: LatencyConfig) -> np.ndarray:
    """float64[65536] indexed by u16 command: latency threshold in ns, +inf when the mode ignores it.

    A completion is over threshold when latency_ns > lookup[command].
    """
    out = np.full(LOOKUP_SIZE, float(_ms_to_ns(lat.default_threshold_ms)), dtype=np.float64)
    for cmd, ms in lat.thresholds_ms.items():
        out[int(cmd)] = float(_ms_to_ns(ms))
    if lat.mode == "trackonly":
        keep = np.zeros(LOOKUP_SIZE, dtype=bool)
        keep[list(lat.track)] = True
        out[~keep] = np.inf
    elif lat.mode == "excludeonly":
        out[list(lat.exclude)] = np.inf
    return out


def min_threshold_ns(lat: LatencyConfig) -> int:
    """Smallest latency any detector needs to see: min over tracked commands of their
    threshold and the emergency threshold (the tracer's emit filter)."""
    finite = threshold_lookup(lat)
    finite = finite[np.isfinite(finite)]
    lowest = int(finite.min()) if finite.size else lat.emergency_ns
    return min(lowest, lat.emergency_ns)


def hung_threshold_ns(lat: LatencyConfig) -> int:
    """The hung threshold in ns: hung_threshold_ms, emergency_threshold_ms when unset (but never
    below HUNG_MIN_MS: a 20 ms emergency threshold must not call every 20 ms request hung); 0 = aging off."""
    ms = max(lat.emergency_threshold_ms, HUNG_MIN_MS) if lat.hung_threshold_ms is None else lat.hung_threshold_ms
    return _ms_to_ns(ms)


def hung_cmd_mask(lat: LatencyConfig) -> int:
    """Bit s set when command slot s can be called hung: a finite latency threshold under the mode
    (mode + exclude) and not in hung_exclude (the last slot holds every id >= 31, like
    tracer.emit_cmd_mask). 0 when aging is off."""
    if not hung_threshold_ns(lat):
        return 0
    finite = np.isfinite(threshold_lookup(lat))
    finite[list(lat.hung_exclude)] = False
    slots = 32
    mask = 0
    for slot in range(slots - 1):
        if finite[slot]:
            mask |= 1 << slot
    if finite[slots - 1:].any():
        mask |= 1 << (slots - 1)
    return mask


def to_dict(cfg: Config) -> dict[str, Any]:
    """Config -> YAML-shaped plain dict (names, not ids). load_text(yaml.dump(to_dict(c))) == c."""
    lat = cfg.latency
    return {
        "watch_interval_sec": float(cfg.watch_interval_sec),
        "output_dir": cfg.output_dir,
        "latency": {
            "mode": lat.mode,
            "default_threshold_ms": float(lat.default_threshold_ms),
            "thresholds_ms": {command_name(c): float(ms) for c, ms in sorted(lat.thresholds_ms.items())},
            "track": [command_name(c) for c in lat.track],
            "exclude": [command_name(c) for c in lat.exclude],
            "acceptable_count": int(lat.acceptable_count),
            "emergency_threshold_ms": float(lat.emergency_threshold_ms),
            "horizon_sec": float(lat.horizon_sec),
            "share": float(lat.share),
            "share_min_count": int(lat.share_min_count),
            "share_horizon_sec": float(lat.share_horizon_sec),
            "hung_threshold_ms": None if lat.hung_threshold_ms is None else float(lat.hung_threshold_ms),
            "hung_exclude": [command_name(c) for c in lat.hung_exclude],
            "hung_group_ms": float(lat.hung_group_ms),
        },
        "errors": [
            {
                "name": r.name,
                "status": [status_name(s) for s in sorted(r.statuses)],
                "errno": [_errno_out(e) for e in sorted(r.errnos)],
                "commands": [command_name(c) for c in sorted(r.commands)],
                "acceptable_count": int(r.acceptable_count),
                "horizon_sec": float(r.horizon_sec),
                "share": float(r.share),
                "share_min_count": int(r.share_min_count),
                "share_horizon_sec": float(r.share_horizon_sec),
            }
            for r in cfg.errors
        ],
        "ignored_statuses": [status_name(s) for s in sorted(cfg.ignored_statuses)],
        "reconnect": {"enabled": bool(cfg.reconnect.enabled)},
        "health": {t: {"enabled": cfg.health.enabled(t)} for t in HEALTH_TYPES},
        "actions": {t: list(names) for t, names in cfg.actions.items()},
        "capture": _plain(cfg.capture),
        "retention": _plain(cfg.retention),
        "ring": _plain(cfg.ring),
        "tracers": list(cfg.tracers),
        "metrics": _plain(cfg.metrics),
        "upload": {**_plain(cfg.upload), "command": list(cfg.upload.command)},
    }


# ---------------------------------------------------------------- limits and tables

MAX_MS = 86_400_000.0  # one day
RING_MAX_KB = 1 << 20  # 1 GiB
PAGE_KB = max(4, mmap.PAGESIZE // 1024)

_TRACER_RE = re.compile(r"^[a-z0-9_-]{1,32}$")


_MS = _Num(False, 0, True, MAX_MS, "milliseconds")
_COUNT = _Num(True, 1, False, 1_000_000_000, "")
_HORIZON = _Num(False, 0, True, 3600, "seconds")
_SHARE = _Num(False, 0, False, 1, "a share of completions; 0 turns the share rule off")

# dotted path (lists as []) -> allowed range
_NUMS: dict[str, _Num] = {
    "watch_interval_sec": _Num(False, 0.1, False, 3600, "seconds"),
    "latency.default_threshold_ms": _MS,
    "latency.thresholds_ms.*": _MS,
    "latency.acceptable_count": _COUNT,
    "latency.emergency_threshold_ms": _MS,
    "latency.horizon_sec": _HORIZON,
    "latency.share": _SHARE,
    "latency.share_min_count": _COUNT,
    "latency.share_horizon_sec": _HORIZON,
    "latency.hung_threshold_ms": _Num(False, 0, False, MAX_MS, "milliseconds; 0 turns hung detection off, "
                                      f"else at least {HUNG_MIN_MS:g}"),
    "latency.hung_group_ms": _Num(False, 0, False, HUNG_GROUP_MAX_MS, "milliseconds"),
    "errors[].acceptable_count": _COUNT,
    "errors[].horizon_sec": _HORIZON,
    "errors[].share": _SHARE,
    "errors[].share_min_count": _COUNT,
    "errors[].share_horizon_sec": _HORIZON,
    "capture.cooldown_sec": _Num(False, 0, False, 7 * 86400, "seconds"),
    "capture.max_per_hour": _Num(True, 1, False, 3600, ""),
    "capture.concurrency": _Num(True, 1, False, 64, ""),
    "capture.action_timeout_sec": _Num(False, 0, True, 3600, "seconds"),
    "capture.lookback_sec": _Num(False, 0, True, 7 * 86400, "seconds"),
    "retention.max_total_mb": _Num(False, 0, True, 10_000_000, "MiB"),
    "retention.max_age_days": _Num(False, 0, True, 36500, "days"),
    "retention.interval_sec": _Num(False, 1, False, 86400, "seconds"),
    "metrics.interval_sec": _Num(False, 0.1, False, 3600, "seconds"),
    "upload.retries": _Num(True, 0, False, 100, ""),
    "upload.backoff_sec": _Num(False, 0, False, 86400, "seconds"),
    "upload.timeout_sec": _Num(False, 0, True, 86400, "seconds"),
}

_TOP_KEYS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in ("source", "warnings"))
_LATENCY_KEYS = tuple(f.name for f in dataclasses.fields(LatencyConfig))
_RULE_KEYS = ("name", "status", "errno", "commands", "acceptable_count", "horizon_sec", "share", "share_min_count",
              "share_horizon_sec")


# ---------------------------------------------------------------- reading and parsing


def _num_field(errs: _Errors, sec: dict[str, Any], path: str, key: str, spec_key: str, default: Any) -> Any:
    if key not in sec:
        return default
    got = _number(errs, _join(path, key), sec[key], _NUMS[spec_key])
    return default if got is None else got


# ---------------------------------------------------------------- sections


def _build(errs: _Errors, data: dict[str, Any]) -> Config:
    d = Config()
    top = _mapping(errs, data, "", _TOP_KEYS) or {}
    kw: dict[str, Any] = {}
    kw["watch_interval_sec"] = _num_field(
        errs, top, "", "watch_interval_sec", "watch_interval_sec", d.watch_interval_sec
    )
    if "output_dir" in top:
        kw["output_dir"] = _abs_path(errs, "output_dir", top["output_dir"], d.output_dir)
    if "latency" in top:
        kw["latency"] = _latency(errs, top["latency"])
    rules_raw = top.get("errors")
    if "errors" in top:
        kw["errors"] = _error_rules(errs, rules_raw)
    if "ignored_statuses" in top:
        kw["ignored_statuses"] = _ignored_statuses(errs, top["ignored_statuses"])
    if "reconnect" in top:
        kw["reconnect"] = _reconnect(errs, top["reconnect"])
    if "health" in top:
        kw["health"] = _health(errs, top["health"])
    ignored, warnings = _check_ignored(errs, kw.get("errors", d.errors), rules_raw if "errors" in top else None,
                                       kw.get("ignored_statuses", d.ignored_statuses), kw.get("reconnect", d.reconnect),
                                       "ignored_statuses" in top)
    kw["ignored_statuses"], kw["warnings"] = ignored, tuple(warnings)
    if "actions" in top:
        kw["actions"] = _actions(errs, top["actions"])
    for name in ("capture", "retention"):
        if name in top:
            kw[name] = _numeric_section(errs, top[name], name, getattr(d, name))
    if "ring" in top:
        kw["ring"] = _ring(errs, top["ring"])
    if "tracers" in top:
        kw["tracers"] = _tracers(errs, top["tracers"])
    if "metrics" in top:
        kw["metrics"] = _metrics(errs, top["metrics"])
    if "upload" in top:
        kw["upload"] = _upload(errs, top["upload"])
    return dataclasses.replace(d, **kw)


def _numeric_section(errs: _Errors, raw: Any, name: str, default: Any) -> Any:
    keys = [f.name for f in dataclasses.fields(default)]
    sec = _mapping(errs, raw, name, keys)
    if sec is None:
        return default
    kw = {k: _num_field(errs, sec, name, k, f"{name}.{k}", getattr(default, k)) for k in sec}
    return dataclasses.replace(default, **kw)


def _latency(errs: _Errors, raw: Any) -> LatencyConfig:
    d = LatencyConfig()
    p = "latency"
    sec = _mapping(errs, raw, p, _LATENCY_KEYS)
    if sec is None:
        return d
    kw: dict[str, Any] = {}
    mode: Optional[str] = d.mode
    if "mode" in sec:
        v = sec["mode"]
        if isinstance(v, str) and v in LATENCY_MODES:
            mode = kw["mode"] = v
        else:
            want = ", ".join(LATENCY_MODES)
            errs.add(f"{p}.mode", f"expected one of: {want}, {_got(v)}{_suggest(v, LATENCY_MODES)}")
            mode = None
    for k in ("default_threshold_ms", "acceptable_count", "emergency_threshold_ms", "horizon_sec", "share",
              "share_min_count", "share_horizon_sec"):
        if k in sec:
            got = _number(errs, f"{p}.{k}", sec[k], _NUMS[f"{p}.{k}"])
            kw[k] = got  # None marks invalid
    if "hung_group_ms" in sec:
        kw["hung_group_ms"] = _number(errs, f"{p}.hung_group_ms", sec["hung_group_ms"], _NUMS[f"{p}.hung_group_ms"])
    if "hung_threshold_ms" in sec and sec["hung_threshold_ms"] is not None:  # null: the emergency threshold
        v = _number(errs, f"{p}.hung_threshold_ms", sec["hung_threshold_ms"], _NUMS[f"{p}.hung_threshold_ms"])
        if v is not None and 0 < v < HUNG_MIN_MS:
            errs.add(f"{p}.hung_threshold_ms", f"expected 0 (off) or a number >= {HUNG_MIN_MS:g} (milliseconds), "
                                               f"got {_g(v)}")
            v = None
        kw["hung_threshold_ms"] = v
    if "hung_exclude" in sec:
        hx = _commands(errs, sec["hung_exclude"], f"{p}.hung_exclude")
        kw["hung_exclude"] = None if hx is None else tuple(hx)
    th_keys: dict[int, str] = {}  # command -> its key path, for errors found later
    if "thresholds_ms" in sec:
        tsec = _mapping(errs, sec["thresholds_ms"], f"{p}.thresholds_ms", None, "a mapping of command -> ms")
        if tsec is not None:
            th: dict[int, float] = {}
            for name, ms in tsec.items():
                sub = _join(f"{p}.thresholds_ms", name)
                cmd = _command(errs, sub, name)
                val = _number(errs, sub, ms, _NUMS["latency.thresholds_ms.*"])
                if cmd is not None and val is not None:
                    if cmd in th:
                        errs.add(sub, f"expected each command once, got {command_name(cmd)} twice")
                    th[cmd], th_keys[cmd] = val, sub
            kw["thresholds_ms"] = MappingProxyType(th)

    lists: dict[str, Optional[dict[int, int]]] = {"track": {}, "exclude": {c: -1 for c in d.exclude}}
    for k in ("track", "exclude"):
        if k in sec:
            lists[k] = _commands(errs, sec[k], f"{p}.{k}")
            if lists[k] is not None:
                kw[k] = tuple(lists[k] or ())
    track, exclude = lists["track"], lists["exclude"]
    if mode == "trackonly" and track is not None and not track:
        errs.add(f"{p}.track", "expected at least one command when latency.mode is trackonly, got none")
    if track is not None and exclude is not None:
        for cmd in exclude:
            if cmd not in track:
                continue
            name = command_name(cmd)
            msg = (
                f"expected a command to be either tracked or excluded, "
                f"got {name} in both latency.track and latency.exclude"
            )
            if "exclude" in sec:
                errs.add(f"{p}.exclude[{exclude[cmd]}]", msg)
            else:
                hint = " (latency.exclude defaults to [CHANGE_NOTIFY]; set it)"
                errs.add(f"{p}.track[{track[cmd]}]", msg + hint)

    dflt = kw.get("default_threshold_ms", d.default_threshold_ms)
    emer = kw.get("emergency_threshold_ms", d.emergency_threshold_ms)
    if dflt is not None and emer is not None and emer < dflt:
        if "emergency_threshold_ms" in sec:
            want = f"a number >= latency.default_threshold_ms ({_g(dflt)})"
            errs.add(f"{p}.emergency_threshold_ms", f"expected {want}, got {_g(emer)}")
        else:
            want = f"a number <= latency.emergency_threshold_ms ({_g(emer)}, its default; raise it too)"
            errs.add(f"{p}.default_threshold_ms", f"expected {want}, got {_g(dflt)}")
    if emer is not None:  # the same per command: anything over a higher threshold is an emergency anyway
        hint = "" if "emergency_threshold_ms" in sec else ", its default; raise it too"
        for cmd, ms in kw.get("thresholds_ms", {}).items():
            if ms > emer:
                want = f"a number <= latency.emergency_threshold_ms ({_g(emer)}{hint})"
                errs.add(th_keys[cmd], f"expected {want}, got {_g(ms)}")
    kw = {k: v for k, v in kw.items() if v is not None}
    return dataclasses.replace(d, **kw)


def _error_rules(errs: _Errors, raw: Any) -> tuple[ErrorRule, ...]:
    items = _list(errs, raw, "errors", "error rules")
    if items is None:
        return DEFAULT_ERROR_RULES
    rules: list[ErrorRule] = []
    names: dict[str, int] = {}
    for i, item in enumerate(items):
        p = f"errors[{i}]"
        if item is None:
            errs.add(p, "expected an error rule mapping (name, status, errno, ...), got null")
            continue
        sec = _mapping(errs, item, p, _RULE_KEYS, "an error rule mapping (name, status, errno, ...)")
        if sec is None:
            continue
        name = sec.get("name")
        if "name" not in sec:
            errs.add(f"{p}.name", "expected a rule name, got nothing (the key is required)")
        elif not isinstance(name, str) or not _NAME_RE.match(name):
            errs.add(f"{p}.name", f"expected a rule name of letters, digits, '_' or '-' (1-64), {_got(name)}")
        elif name in names:
            other = names[name]
            errs.add(f"{p}.name", f"expected a unique rule name, got {name!r} also used by errors[{other}]")
        else:
            names[name] = i
        sets: dict[str, Optional[frozenset[int]]] = {}
        for key, conv, what in (
            ("status", _status, "NT status names or hex codes"),
            ("errno", _errno, "errno names"),
        ):
            vals: Optional[set[int]] = set()
            if key in sec:
                lst = _list(errs, sec[key], f"{p}.{key}", what)
                if lst is None:
                    vals = None
                else:
                    for j, v in enumerate(lst):
                        got = conv(errs, f"{p}.{key}[{j}]", v)
                        if got is None or vals is None:
                            vals = None
                        else:
                            vals.add(got)
            sets[key] = frozenset(vals) if vals is not None else None
        cmds: Optional[dict[int, int]] = {}
        if "commands" in sec:
            cmds = _commands(errs, sec["commands"], f"{p}.commands")
        count = _num_field(errs, sec, p, "acceptable_count", "errors[].acceptable_count", 1)
        d = ErrorRule("-")
        extra = {k: _num_field(errs, sec, p, k, f"errors[].{k}", getattr(d, k))
                 for k in ("horizon_sec", "share", "share_min_count", "share_horizon_sec")}
        st, en = sets["status"], sets["errno"]
        if st is not None and en is not None and not st and not en:
            errs.add(p, "expected at least one entry in 'status' or 'errno', got none")
        if isinstance(name, str):
            rules.append(ErrorRule(name, st or frozenset(), en or frozenset(), frozenset(cmds or ()), count, **extra))
    return tuple(rules)


def _ignored_statuses(errs: _Errors, raw: Any) -> frozenset[int]:
    items = _list(errs, raw, "ignored_statuses", "NT status names or hex codes")
    if items is None:
        return DEFAULT_IGNORED_STATUSES
    out: set[int] = set()
    for j, v in enumerate(items):
        got = _status(errs, f"ignored_statuses[{j}]", v)
        if got is not None:
            out.add(got)
    if len(out) > IGNORED_MAX:
        errs.add("ignored_statuses", f"expected at most {IGNORED_MAX} statuses (the tracer's map), got {len(out)}")
    return frozenset(out)


def _check_ignored(errs: _Errors, rules: Sequence[ErrorRule], rules_raw: Any, ignored: frozenset[int],
                   reconnect: ReconnectConfig, ignored_given: bool) -> tuple[frozenset[int], list[str]]:
    """An ignored status is dropped in the kernel: a rule naming it could never fire, and the
    reconnect detector would never see a session loss. With ignored_statuses set that is an
    error; left to its default, a status a rule names is not ignored (a warning), so a config
    written before the key existed keeps working. Returns (ignored statuses, warnings)."""
    warnings: list[str] = []
    for i, r in enumerate(rules):
        named = (rules_raw[i].get("status") if isinstance(rules_raw, list) and i < len(rules_raw)
                 and isinstance(rules_raw[i], dict) else None)
        for s in sorted(r.statuses & ignored):
            if not ignored_given:
                warnings.append(f"{errs.source}: ignored_statuses: {status_name(s)} is not ignored (it is in the "
                                f"defaults) because error rule {r.name} names it; set ignored_statuses to choose")
                continue
            j = next((k for k, v in enumerate(named or []) if v in (status_name(s), s, f"0x{s:08X}",
                                                                      f"0x{s:08x}")), None)
            path = f"errors[{i}].status" + (f"[{j}]" if j is not None else "")
            rule = "" if rules_raw is not None else f" (the default rule {r.name})"
            errs.add(path, f"expected a status that is not in ignored_statuses, got {status_name(s)}{rule}: the "
                           "tracer drops it in the kernel, so this rule could never match it")
    if not ignored_given:
        ignored = ignored - frozenset().union(*(r.statuses for r in rules))
    if reconnect.enabled:
        for s in sorted(ignored & RECONNECT_STATUSES):
            errs.add("ignored_statuses", f"expected no session-loss status while reconnect.enabled is true, got "
                                         f"{status_name(s)}: the reconnect detector needs it")
    return ignored, warnings


def _reconnect(errs: _Errors, raw: Any) -> ReconnectConfig:
    sec = _mapping(errs, raw, "reconnect", ("enabled",))
    if not sec or "enabled" not in sec:
        return ReconnectConfig()
    v = sec["enabled"]
    if not isinstance(v, bool):
        errs.add("reconnect.enabled", f"expected true or false, {_got(v)}")
        return ReconnectConfig()
    return ReconnectConfig(enabled=v)


def _health(errs: _Errors, raw: Any) -> HealthConfig:
    sec = _mapping(errs, raw, "health", HEALTH_TYPES, "a mapping of health type (credits, connect, auth) -> "
                                                      "{enabled: true|false}")
    kw: dict[str, HealthTypeConfig] = {}
    for t, v in (sec or {}).items():
        sub = _mapping(errs, v, f"health.{t}", ("enabled",))
        if not sub or "enabled" not in sub:
            continue
        if isinstance(sub["enabled"], bool):
            kw[t] = HealthTypeConfig(enabled=sub["enabled"])
        else:
            errs.add(f"health.{t}.enabled", f"expected true or false, {_got(sub['enabled'])}")
    return dataclasses.replace(HealthConfig(), **kw)


def _actions(errs: _Errors, raw: Any) -> Mapping[str, tuple[str, ...]]:
    out = dict(_default_actions())
    known = _known_actions()
    sec = _mapping(errs, raw, "actions", ANOMALY_TYPES, "a mapping of anomaly type -> action names")
    for atype, v in (sec or {}).items():
        p = f"actions.{atype}"
        items = _list(errs, v, p, "action names")
        if items is None:
            continue
        names: list[str] = []
        for j, name in enumerate(items):
            if isinstance(name, str) and name in known:
                if name not in names:
                    names.append(name)
            else:
                errs.add(
                    f"{p}[{j}]",
                    f"expected an action name ({', '.join(known)}), "
                    f"{_got(name)}{_suggest(name, known)}",
                )
        out[atype] = tuple(names)
    return MappingProxyType(out)


def _ring(errs: _Errors, raw: Any) -> RingConfig:
    d = RingConfig()
    sec = _mapping(errs, raw, "ring", ("path", "size_kb"))
    if sec is None:
        return d
    kw: dict[str, Any] = {}
    if "path" in sec:
        kw["path"] = _abs_path(errs, "ring.path", sec["path"], d.path)
        if "." in os.path.basename(kw["path"]):  # bpf_lookup() refuses it: EPERM at pin time
            errs.add("ring.path", f"expected a bpffs path whose name has no '.' (bpffs refuses it), "
                                  f"{_got(sec['path'])}")
    if "size_kb" in sec:
        v = sec["size_kb"]
        ok = isinstance(v, int) and not isinstance(v, bool)
        ok = ok and PAGE_KB <= v <= RING_MAX_KB and v & (v - 1) == 0 and v % PAGE_KB == 0
        if ok:
            kw["size_kb"] = v
        else:
            errs.add(
                "ring.size_kb",
                f"expected a power of two from {PAGE_KB} to {RING_MAX_KB} (KiB) and a multiple of the "
                f"{PAGE_KB} KiB page size, {_got(v)}",
            )
    return dataclasses.replace(d, **kw)


def _tracers(errs: _Errors, raw: Any) -> tuple[str, ...]:
    items = _list(errs, raw, "tracers", "tracer names")
    if items is None:
        return Config().tracers
    out: list[str] = []
    for i, v in enumerate(items):
        if isinstance(v, str) and _TRACER_RE.match(v):
            if v not in out:
                out.append(v)
        else:
            errs.add(f"tracers[{i}]", f"expected a tracer name of a-z, 0-9, '_' or '-' (1-32), {_got(v)}")
    return tuple(out)


def _metrics(errs: _Errors, raw: Any) -> MetricsConfig:
    d = MetricsConfig()
    sec = _mapping(errs, raw, "metrics", ("textfile_path", "interval_sec"))
    if sec is None:
        return d
    kw: dict[str, Any] = {}
    if "textfile_path" in sec:
        v = sec["textfile_path"]
        if v in ("", "auto"):
            kw["textfile_path"] = v
        else:
            kw["textfile_path"] = _abs_path(errs, "metrics.textfile_path", v, d.textfile_path)
    if "interval_sec" in sec:
        kw["interval_sec"] = _num_field(errs, sec, "metrics", "interval_sec", "metrics.interval_sec",
                                        d.interval_sec)
    return dataclasses.replace(d, **kw)


PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")  # upload.command placeholders


def _upload(errs: _Errors, raw: Any) -> UploadConfig:
    d = UploadConfig()
    sec = _mapping(errs, raw, "upload", [f.name for f in dataclasses.fields(UploadConfig)])
    if sec is None:
        return d
    kw: dict[str, Any] = {}
    for k in ("retries", "backoff_sec", "timeout_sec"):
        if k in sec:
            kw[k] = _num_field(errs, sec, "upload", k, f"upload.{k}", getattr(d, k))
    if "command" in sec:
        items = _list(errs, sec["command"], "upload.command", "argv strings (no shell)")
        argv: list[str] = []
        for i, v in enumerate(items or []):
            p = f"upload.command[{i}]"
            if not isinstance(v, str) or not v or len(v) > 4096 or "\0" in v:
                errs.add(p, f"expected a non-empty string, {_got(v)}")
                continue
            bad = [m for m in PLACEHOLDER_RE.findall(v) if m not in UPLOAD_PLACEHOLDERS]
            rest = PLACEHOLDER_RE.sub("", v)
            if bad or "{" in rest or "}" in rest:
                errs.add(p, f"unknown or unbalanced placeholder in {_short(v)}; expected only "
                            + ", ".join("{" + n + "}" for n in UPLOAD_PLACEHOLDERS))
                continue
            argv.append(v)
        if argv and not argv[0].startswith("/"):
            errs.add("upload.command[0]", f"expected an absolute program path (no shell, no PATH lookup), "
                                          f"{_got(argv[0])}")
        kw["command"] = tuple(argv)
    return dataclasses.replace(d, **kw)
