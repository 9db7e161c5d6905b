"""What the detectors hand to the collector (detect -> collect)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

import numpy as np

from .record import CMD_STATS_DTYPE, EVENT_DTYPE


@dataclass(frozen=True)
class Anomaly:
    type: str  # latency | error | emergency | reconnect | manual
    rule: str  # which rule fired, human readable ("latency>500ms", "timeouts", "SIGUSR1")
    count: int  # events that matched the rule in the window
    detected_wall: float  # time.time() at detection
    detected_mono_ns: int  # time.monotonic_ns() at detection
    window_start_ns: int  # monotonic, inclusive
    window_end_ns: int  # monotonic, exclusive
    events: np.ndarray = field(default_factory=lambda: np.zeros(0, EVENT_DTYPE))  # the window's events (EVENT_DTYPE)
    commands: tuple[int, ...] = ()  # affected SMB2 command ids
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # thresholds, statuses, ...
    window_stats: Optional[np.ndarray] = None  # CMD_STATS_DTYPE[CMD_SLOTS]: all-traffic delta for the window

    def __post_init__(self) -> None:
        assert self.events.dtype == EVENT_DTYPE
        assert self.window_stats is None or self.window_stats.dtype == CMD_STATS_DTYPE
