"""One detector per protocol (dispatch -> detect -> policy): SMB and NFS records counted apart.

The ring holds both protocols' records (tracer_id). Each protocol gets its own Detector (detect.py)
over its own records, with its own config view: SMB the config as written, NFS confignfs.nfs_view()
(its procedures, thresholds, one error rule, benign statuses). So a slow NFS share and a slow SMB
share are two anomalies, each counted against its own thresholds, tagged with its protocol
(Anomaly.protocol), throttled and named apart (policy key "nfs_latency", bundle aod_nfslatency_*),
each carrying its own protocol's records as evidence.
Daemon and watcher see one object with the Detector's interface.

Records of the synthetic and file tracers count as SMB (their commands are SMB ids). Both see the
watcher's statistics (counters.py: cmd_stats_v2's rows, then nfs_stats_v1's); each detector's share
rules and bundle percentiles use its own protocol's rows (record.protocol_rows).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .anomaly import Anomaly
from .config import Config
from .confignfs import nfs_view
from .detect import Detector
from .dispatch import Columns
from .names import Namer
from .record import TRACER_NFS

PROTOCOLS = ("smb", "nfs")


def throttle_key(type_: str, protocol: str) -> str:
    """Anomaly.key of an anomaly of this type and protocol."""
    return type_ if protocol in ("smb", "") else f"{protocol}_{type_}"


class Detectors:
    """Detector's interface over one Detector per protocol."""

    def __init__(self, cfg: Config, suppressing: Callable[[str], bool] = lambda _t: False,
                 nfs_names: Optional[Namer] = None, **kw: Any) -> None:
        self.smb = Detector(cfg, suppressing=suppressing, protocol="smb", mine=lambda b: b["tracer_id"] != TRACER_NFS,
                            **kw)
        nfs_kw = dict(kw, names=nfs_names)  # NFS clients named by nfsnames.NfsNames
        self.nfs = Detector(nfs_view(cfg), suppressing=lambda t: suppressing(throttle_key(t, "nfs")),
                            protocol="nfs", mine=lambda b: b["tracer_id"] == TRACER_NFS, **nfs_kw)
        self.all = (self.smb, self.nfs)

    def reconfigure(self, cfg: Config) -> None:
        self.smb.reconfigure(cfg)
        self.nfs.reconfigure(nfs_view(cfg))

    @property
    def cfg(self) -> Config:
        return self.smb.cfg

    def keep_ns(self) -> int:
        return max(d.keep_ns() for d in self.all)

    def immediate(self, batch: np.ndarray, cols: Optional[Columns] = None) -> list[Anomaly]:
        nfs = batch["tracer_id"] == TRACER_NFS if len(batch) else np.zeros(0, bool)
        if not nfs.any():
            return self.smb.immediate(batch, cols) + self.nfs.tick()
        cols = Columns.of(batch) if cols is None else cols
        out: list[Anomaly] = []
        for det, rows in ((self.smb, ~nfs), (self.nfs, nfs)):
            if rows.any():
                out += det.immediate(batch[rows], cols.select(rows))
            else:
                out += det.tick()
        return out

    def tick(self) -> list[Anomaly]:
        return self.smb.tick() + self.nfs.tick()

    def next_deadline(self) -> Optional[int]:
        got = [d for d in (self.smb.next_deadline(), self.nfs.next_deadline()) if d is not None]
        return min(got) if got else None

    def take_matched(self) -> tuple[Any, Any]:
        taken = [d.take_matched() for d in self.all]
        return tuple(m for m, _ in taken), tuple(r for _, r in taken)

    def window(self, end_ns: int, stats: Optional[np.ndarray], matched: Any, resets: Any = None) -> list[Anomaly]:
        resets = resets or (set(), set())
        return (self.smb.window(end_ns, stats, matched[0], resets[0])
                + self.nfs.window(end_ns, stats, matched[1], resets[1]))

    # what status and metrics read (both protocols together)
    @property
    def emergencies_deduplicated(self) -> int:
        return sum(d.emergencies_deduplicated for d in self.all)

    @property
    def health_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.all:
            for k, n in d.health_counts.items():
                out[k] = out.get(k, 0) + n
        return out

    @property
    def hung(self) -> Any:
        return _HungView(self.smb.hung, self.nfs.hung)


class _HungView:
    """records and parts of both protocols' hung groups (status, metrics)."""

    def __init__(self, *groups: Any) -> None:
        self.records = sum(g.records for g in groups)
        self.parts = [p for g in groups for p in g.parts]
