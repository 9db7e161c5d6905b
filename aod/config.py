"""Configuration: YAML file -> validated, frozen dataclasses (read before anything runs).

Every other layer (ring, dispatch, detect, collect, retain) reads only the frozen
Config built here. load() checks the whole file up front and raises ConfigError
with *every* problem, each as "FILE: dotted.path: expected ..., got ...".
Command, status and errno names become ints here, so the hot path never sees names.
The parse lives in configparse.py (the build and the simple sections) and configrules.py
(number ranges, latency, error rules); the typed checks they use live in configcheck.py.
"""

from __future__ import annotations

import dataclasses
import errno as _errno_mod
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .actions import ACTION_NAMES
from .configcheck import _duplicate_keys, _errno_out, _Errors, _got, _ms_to_ns, _plain
from .confignfs import NfsConfig
from .confignfs import to_dict as _nfs_dict
from .configrecorder import RecorderConfig
from .record import CMD_SLOTS
from .smb2 import NT_STATUS, command_name, status_name
from .yamlsafe import MAX_FILE_BYTES, MAX_YAML_ALIASES, YamlError, oneline, parse, read_text  # noqa: F401

ANOMALY_TYPES = ("latency", "error", "emergency", "reconnect", "manual", "hung", "credits", "connect", "auth")
HEALTH_TYPES = ("credits", "connect", "auth")  # anomaly types raised from the kernel's health tracepoints
# evidence of a hang, collected while it holds (the evidence helper's actions): on by default for
# hung and emergency only, after cifs_debug (DebugData first: it shows the outstanding requests)
EVIDENCE_ACTIONS = ("task_stacks", "inflight", "connections")
HUNG_MIN_MS = 100.0  # a hung threshold below this would call ordinary slow requests hung
HUNG_GROUP_MAX_MS = 500.0
LATENCY_MODES = ("all", "trackonly", "excludeonly")
TRACER_MODES = ("auto", "tracepoint", "kprobe")  # tracer.mode: how the smb tracer attaches
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
    max_per_hour: int = 12  # across all detected types
    manual_per_hour: int = 12  # `aodv2 collect` and SIGUSR1: their own budget, not max_per_hour
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
PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")  # upload.command placeholders


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
class TracerConfig:
    """Read by the smb tracer at attach (a change needs a tracer restart): auto = the cifs
    tracepoints when smb3_cmd_enter/done are usable, else the kprobe fallback; tracepoint = those or
    exit 78; kprobe = the fallback even where the tracepoints exist (`--force-kprobes`)."""

    mode: str = "auto"


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
    tracer: TracerConfig = TracerConfig()
    metrics: MetricsConfig = MetricsConfig()
    upload: UploadConfig = UploadConfig()
    recorder: RecorderConfig = RecorderConfig()
    nfs: NfsConfig = NfsConfig()


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
    from .configparse import _build  # here, not at the top: configparse imports this module

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


def hung_codes(lat: LatencyConfig) -> np.ndarray:
    """bool[LOOKUP_SIZE]: the command ids (or procedure codes) that can be called hung: a finite latency
    threshold under the mode (mode + exclude) and not in hung_exclude. All False when aging is off."""
    if not hung_threshold_ns(lat):
        return np.zeros(LOOKUP_SIZE, dtype=bool)
    finite = np.isfinite(threshold_lookup(lat))
    finite[list(lat.hung_exclude)] = False
    return finite


def slot_mask(by_id: np.ndarray) -> int:
    """A bool per command id -> a mask by command slot (record.cmd_slot): bit s for id s, the last
    bit for every id from CMD_SLOTS - 1 on (the emit filter's and the state file's masks)."""
    last = CMD_SLOTS - 1
    bits = np.append(by_id[:last], by_id[last:].any()).astype(np.uint64)
    return int((bits << np.arange(CMD_SLOTS, dtype=np.uint64)).sum())


def hung_cmd_mask(lat: LatencyConfig) -> int:
    """Bit s set when command slot s can be called hung (hung_codes by slot_mask). 0 when aging is off."""
    return slot_mask(hung_codes(lat))


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
        "tracer": _plain(cfg.tracer),
        "metrics": _plain(cfg.metrics),
        "upload": {**_plain(cfg.upload), "command": list(cfg.upload.command)},
        "recorder": {"trace": {**_plain(cfg.recorder.trace), "events": list(cfg.recorder.trace.events)},
                     "pcap": {**_plain(cfg.recorder.pcap), "ports": list(cfg.recorder.pcap.ports)}},
        "nfs": _nfs_dict(cfg.nfs),
    }
