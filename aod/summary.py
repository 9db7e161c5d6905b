"""summary.json of a bundle: what fired, when, and per-command latency (collect layer).

ring -> dispatch -> detect -> **collect** (summary.py builds the bundle's summary) -> retain.

Pure functions. Percentiles over all traffic come from the window's log2 histograms
(anomaly.stats()): they are approximate to the bucket, with linear interpolation
inside it (bucket b covers [2^(b-1), 2^b) us, bucket 0 is < 1 us). Without histograms they
come exactly from the events, which are only the slow/erroring ones.
"""

from __future__ import annotations

import math
import os
import socket
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from . import __version__
from .anomaly import Anomaly
from .config import HEALTH_TYPES, Config, hung_threshold_ns
from .record import (
    EVENT_VERSION,
    HIST_BUCKETS,
    KIND_COMPLETION,
    KIND_ERROR,
    KIND_HUNG,
    STATS_ROWS,
    protocol_rows,
    row_command,
    stats_row,
)
from .smb2 import command_name, errno_name, protocol_status_name, status_name

if TYPE_CHECKING:  # numpy.typing arrived in numpy 1.20; Debian 11 has 1.19
    import numpy.typing as npt

TOP_PROCESSES = 10


def bucket_bounds_us(b: int) -> tuple[float, float]:
    """[low, high) of log2 bucket b in microseconds (the last bucket is open-ended; we use 2x)."""
    return (0.0, 1.0) if b == 0 else (float(2 ** (b - 1)), float(2**b))


def percentiles_from_hist(hist: npt.ArrayLike, qs: Iterable[float]) -> list[Optional[float]]:
    """Quantiles (0..100) in ms from a log2 latency histogram; None when it is empty.

    Approximate to the bucket: the rank is located in its bucket and interpolated linearly
    between the bucket's bounds.
    """
    counts = np.asarray(hist, dtype=np.float64)
    total = float(counts.sum())
    qs = list(qs)
    if total <= 0:
        return [None for _ in qs]
    cum = np.cumsum(counts)
    out: list[Optional[float]] = []
    for q in qs:
        rank = min(max(q, 0.0), 100.0) / 100.0 * total
        b = int(np.searchsorted(cum, rank, side="left"))
        b = min(b, len(counts) - 1)
        while counts[b] == 0 and b < len(counts) - 1:  # rank 0 lands before the first non-empty bucket
            b += 1
        before = float(cum[b] - counts[b])
        frac = (rank - before) / counts[b] if counts[b] else 0.0
        lo, hi = bucket_bounds_us(b)
        out.append(round((lo + min(max(frac, 0.0), 1.0) * (hi - lo)) / 1000.0, 3))
    return out


def iso_utc(wall: float) -> str:
    dt = datetime.fromtimestamp(wall, timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mono_to_wall(anomaly: Anomaly, t_ns: int) -> float:
    return anomaly.detected_wall - (anomaly.detected_mono_ns - int(t_ns)) / 1e9


def jsonable(v: Any) -> Any:
    """Plain JSON types only (numpy scalars/arrays, sets, bytes, mappings handled)."""
    if isinstance(v, (str, bool)) or v is None:
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (set, frozenset)):
        return sorted((jsonable(x) for x in v), key=str)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return str(v)


def _ms(ns: float) -> float:
    return round(float(ns) / 1e6, 3)


def _exact(lat_ns: np.ndarray) -> dict[str, Any]:
    if len(lat_ns) == 0:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p99 = np.percentile(lat_ns.astype(np.float64), [50, 99])
    return {"p50_ms": _ms(p50), "p99_ms": _ms(p99), "mean_ms": _ms(lat_ns.astype(np.float64).mean())}


def per_command(anomaly: Anomaly) -> dict[str, dict[str, Any]]:
    ev = anomaly.records()
    comp = ev[ev["kind"] == KIND_COMPLETION]
    errs = ev[ev["kind"] == KIND_ERROR]
    stats = anomaly.stats()
    # commands of requests only: a health or reconnect record's command is an event code
    reqs = ev[np.isin(ev["kind"], (KIND_COMPLETION, KIND_ERROR, KIND_HUNG))]
    cmds = set(int(c) for c in np.unique(reqs["command"])) if len(reqs) else set()
    mine = protocol_rows(anomaly.protocol)
    if stats is not None and len(stats) == STATS_ROWS:
        cmds |= {row_command(int(r)) for r in np.flatnonzero(mine)
                 if int(stats[r]["hist"].sum()) or int(stats[r]["errors"])}
    else:
        stats = None
    out: dict[str, dict[str, Any]] = {}
    for cmd in sorted(cmds):
        lat = comp["latency_ns"][comp["command"] == cmd]
        n_err = int((errs["command"] == cmd).sum())
        r = int(stats_row(cmd))
        slot = stats[r] if stats is not None and mine[r] else None
        errors = max(n_err, int(slot["errors"]) if slot is not None else 0)  # events are a subset
        hist = slot["hist"] if slot is not None else None
        row: dict[str, Any]
        if slot is not None and hist is not None and int(hist.sum()) > 0:
            n = int(hist.sum())
            p50, p99 = percentiles_from_hist(hist, (50, 99))
            top = max(b for b in range(HIST_BUCKETS) if hist[b])
            lo_us, hi_us = bucket_bounds_us(top)
            # exact from the events when they reach the top bucket; else the bucket's upper bound
            exact = len(lat) and int(lat.max()) >= lo_us * 1000
            max_ms = _ms(int(lat.max())) if exact else round(hi_us / 1000.0, 3)
            row = {
                "count": n,
                "errors": errors,
                "p50_ms": None if p50 is None else min(p50, max_ms),
                "p99_ms": None if p99 is None else min(p99, max_ms),
                "mean_ms": _ms(int(slot["latency_sum_ns"]) / n),
                "max_ms": max_ms,
                "source": "histogram",
                "hist": [int(x) for x in hist],  # all completions by log2(latency in us): `aodv2 show`
            }
        else:
            row = {"count": int(len(lat)), "errors": errors, **_exact(lat),
                   "max_ms": _ms(int(lat.max())) if len(lat) else None, "source": "events"}
        row["slow_events"] = int(len(lat))
        row["error_events"] = n_err
        out[command_name(cmd)] = row
    return out


def _thresholds(config: Config) -> dict[str, Any]:
    lat = config.latency
    return {
        "latency": {
            "mode": lat.mode,
            "default_threshold_ms": lat.default_threshold_ms,
            "thresholds_ms": {command_name(c): ms for c, ms in sorted(lat.thresholds_ms.items())},
            "track": [command_name(c) for c in lat.track],
            "exclude": [command_name(c) for c in lat.exclude],
            "acceptable_count": lat.acceptable_count,
            "emergency_threshold_ms": lat.emergency_threshold_ms,
            "hung_threshold_ms": hung_threshold_ns(lat) / 1e6,
            "hung_exclude": [command_name(c) for c in lat.hung_exclude],
            "hung_group_ms": lat.hung_group_ms,
        },
        "health": {t: config.health.enabled(t) for t in HEALTH_TYPES},
        "errors": [
            {
                "name": r.name,
                "statuses": sorted(status_name(s) for s in r.statuses),
                "errnos": sorted(errno_name(e) for e in r.errnos),
                "commands": sorted(command_name(c) for c in r.commands),
                "acceptable_count": r.acceptable_count,
            }
            for r in config.errors
        ],
        "watch_interval_sec": config.watch_interval_sec,
    }


def _processes(ev: np.ndarray) -> list[dict[str, Any]]:
    c: Counter[tuple[str, int]] = Counter(
        (bytes(comm).split(b"\0", 1)[0].decode("utf-8", "replace"), int(pid))
        for comm, pid in zip(ev["comm"], ev["pid"])
    )
    return [{"comm": comm, "pid": pid, "events": n} for (comm, pid), n in c.most_common(TOP_PROCESSES)]


def build_summary(
    anomaly: Anomaly, config: Config, action_results: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The summary.json dict (JSON-serialisable)."""
    ev = anomaly.records()
    errs = ev[ev["kind"] == KIND_ERROR]
    statuses = Counter(protocol_status_name(anomaly.protocol, int(s)) for s in errs["nt_status"] if int(s))
    errnos = Counter(errno_name(int(e)) for e in errs["err"] if int(e))
    return jsonable({
        "aodv2_version": __version__,
        "anomaly": {
            "type": anomaly.type,
            "protocol": anomaly.protocol or "any",  # smb | nfs | any (a manual capture)
            "rule": anomaly.rule,
            "count": anomaly.count,
            "commands": [command_name(c) for c in anomaly.commands],
            "details": anomaly.details,
            "servers": list(anomaly.details.get("servers") or []),
            "shares": list(anomaly.details.get("shares") or []),
        },
        "detected_at": iso_utc(anomaly.detected_wall),
        "window": {
            "start": iso_utc(mono_to_wall(anomaly, anomaly.window_start_ns)),
            "end": iso_utc(mono_to_wall(anomaly, anomaly.window_end_ns)),
            "seconds": round((anomaly.window_end_ns - anomaly.window_start_ns) / 1e9, 3),
        },
        "host": socket.gethostname(),
        "kernel": os.uname().release,
        "thresholds": _thresholds(config),
        "events_in_bundle": int(len(ev)),
        "event_version": EVENT_VERSION,
        "latency_source_note": "histogram percentiles are approximate to the log2 bucket (linear inside it)",
        "per_command": per_command(anomaly),
        "per_status": dict(statuses.most_common()),
        "per_errno": dict(errnos.most_common()),
        "top_processes": _processes(ev),
        "actions": [
            {k: a.get(k) for k in ("name", "status", "started_s", "duration_s", "bytes", "error", "truncated",
                                   "source")}
            for a in action_results
        ],
    })
