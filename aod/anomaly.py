"""What the detectors hand to the collector (detect -> collect)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import numpy as np

from .record import CMD_STATS_DTYPE, EVENT_DTYPE


@dataclass(frozen=True)
class Anomaly:
    type: str  # latency | error | emergency | reconnect | manual | hung | credits | connect | auth
    rule: str  # which rule fired, human readable ("latency>500ms", "timeouts", "SIGUSR1")
    count: int  # events that matched the rule in the window
    detected_wall: float  # time.time() at detection
    detected_mono_ns: int  # time.monotonic_ns() at detection
    window_start_ns: int  # monotonic, inclusive
    window_end_ns: int  # monotonic, exclusive
    events: np.ndarray = field(default_factory=lambda: np.zeros(0, EVENT_DTYPE))  # the window's events (EVENT_DTYPE)
    commands: tuple[int, ...] = ()  # affected SMB2 command ids or NFS procedure codes (nfsproc.py)
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # thresholds, statuses, ...
    window_stats: Optional[np.ndarray] = None  # CMD_STATS_DTYPE[CMD_SLOTS]: all-traffic delta for the window
    # the detector's anomalies carry their events as views of the drained batches, gathered into
    # one array on first use (`records`, in the collector), not in the dispatcher thread
    gather: Optional[Callable[[], np.ndarray]] = field(default=None, compare=False, repr=False)
    # and their all-traffic statistics from their start to the last window closed when used
    stats_gather: Optional[Callable[[], Optional[np.ndarray]]] = field(default=None, compare=False, repr=False)
    protocol: str = ""  # smb | nfs: whose records raised it (detectsplit.py); "" for manual captures

    @property
    def key(self) -> str:
        """What the policy throttles by and a bundle is named after: the type, 'nfs_<type>' for NFS."""
        return self.type if self.protocol in ("", "smb") else f"{self.protocol}_{self.type}"

    def __post_init__(self) -> None:
        assert self.events.dtype == EVENT_DTYPE
        assert self.window_stats is None or self.window_stats.dtype == CMD_STATS_DTYPE

    def stats(self) -> Optional[np.ndarray]:
        """CMD_STATS_DTYPE[CMD_SLOTS] of all traffic over the anomaly: `window_stats`, or what
        `stats_gather` gives (once, when the capture builds its summary: the window that holds
        the crossing has usually closed by then)."""
        if self.stats_gather is None:
            return self.window_stats
        if "_stats" not in self.__dict__:
            got = self.stats_gather()
            assert got is None or got.dtype == CMD_STATS_DTYPE
            object.__setattr__(self, "_stats", got)
        stats: Optional[np.ndarray] = self.__dict__["_stats"]
        return stats

    def records(self) -> np.ndarray:
        """The anomaly's events (EVENT_DTYPE): `events`, or what `gather` gives (once)."""
        if self.gather is None:
            return self.events
        got = self.__dict__.get("_gathered")
        if got is None:
            got = self.gather()
            assert got.dtype == EVENT_DTYPE
            object.__setattr__(self, "_gathered", got)  # frozen: cache beside the fields
        return got
