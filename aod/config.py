"""Configuration: YAML file -> validated, frozen dataclasses (read before anything runs).

Shape only here; the loader and validation live below the dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

ANOMALY_TYPES = ("latency", "error", "emergency", "reconnect", "manual")
LATENCY_MODES = ("all", "trackonly", "excludeonly")
DEFAULT_CONFIG_PATH = "/etc/aodv2/config.yaml"


@dataclass(frozen=True)
class LatencyConfig:
    mode: str = "excludeonly"  # all | trackonly | excludeonly
    default_threshold_ms: float = 500.0
    thresholds_ms: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))  # cmd id -> ms
    track: tuple[int, ...] = ()  # cmd ids, used when mode == trackonly
    exclude: tuple[int, ...] = (15,)  # cmd ids, used when mode == excludeonly (CHANGE_NOTIFY)
    acceptable_count: int = 10  # anomaly when count over threshold in a window >= this
    emergency_threshold_ms: float = 1000.0


@dataclass(frozen=True)
class ErrorRule:
    name: str
    statuses: frozenset[int] = frozenset()  # NT status codes
    errnos: frozenset[int] = frozenset()  # positive errno values
    commands: frozenset[int] = frozenset()  # empty = any command
    acceptable_count: int = 1  # anomaly when matching errors in a window >= this


@dataclass(frozen=True)
class ReconnectConfig:
    enabled: bool = True


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


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    watch_interval_sec: float = 1.0
    output_dir: str = "/var/log/aodv2"
    latency: LatencyConfig = LatencyConfig()
    errors: tuple[ErrorRule, ...] = ()
    reconnect: ReconnectConfig = ReconnectConfig()
    actions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))  # anomaly type -> action names
    capture: CaptureConfig = CaptureConfig()
    retention: RetentionConfig = RetentionConfig()
    ring: RingConfig = RingConfig()
    tracers: tuple[str, ...] = ("smb",)
