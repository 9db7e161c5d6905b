"""Prometheus metrics in the node_exporter textfile-collector format (beside the data flow).

The core renders its counters every metrics.interval_sec and replaces the .prom file
atomically (node_exporter's textfile collector reads *.prom on each scrape). Counters
are cumulative since the core started; the latency histogram comes from the tracers'
per-command log2 histograms, so it covers every completion, not only ring records.
The file is 0644: node_exporter runs as its own user, and it holds counts only. Its directory
must pass safefs.check_dir (a system account such as `prometheus` may own it); else nothing is
written and the core logs that metrics are off, once.

Share labels: the error records and the slow completion records (those the tracer emits)
are also counted per share (sharelabels.py): aodv2_smb_errors_total carries a share label,
and aodv2_smb_share_slow_latency_seconds is their latency histogram per share. At most
sharelabels.MAX_SHARE_LABELS shares (the most recently seen) have their own label, the rest
count under share="other", so the cardinality stays bounded however many mounts there are.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional

import numpy as np

from . import nfsproc, safefs
from .atomicfile import write_atomic
from .config import METRICS_DEFAULT_DIR, MetricsConfig
from .counters import zero_stats
from .record import STATS_ROWS, protocol_rows, row_command
from .smb2 import command_name, status_name

TEXTFILE_NAME = "aodv2.prom"
# histogram bucket b holds [2^(b-1), 2^b) us; `le` edges exported: 64 us .. 2^25 us (33.6 s)
FIRST_EDGE, LAST_EDGE = 6, 25


def textfile_path(cfg: MetricsConfig) -> Optional[str]:
    """Where to write, or None when metrics are off (or 'auto' and no node_exporter dir)."""
    if cfg.textfile_path == "auto":
        return os.path.join(METRICS_DEFAULT_DIR, TEXTFILE_NAME) if os.path.isdir(METRICS_DEFAULT_DIR) else None
    return cfg.textfile_path or None


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw: Any) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in kw.items()) + "}" if kw else ""


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(**labels)} {_num(value)}")


def _num(v: float) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


def _by(d: Any, label: str) -> list[tuple[str, dict[str, Any], float]]:
    return [("", {label: k}, v) for k, v in sorted((d or {}).items())]


def _active(stats: np.ndarray, protocol: str) -> list[int]:
    """The protocol's statistics rows with completions or errors."""
    busy = (stats["hist"].sum(axis=1) > 0) | (stats["errors"] > 0) | (stats["ignored"] > 0)
    return [int(r) for r in np.flatnonzero(busy & protocol_rows(protocol))]


def _counts(o: _Out, stats: np.ndarray, rows: list[int], proto: str, label: str, what: str) -> None:
    """<proto>_<label>s_total, its errors and its ignored statuses, counted in the kernel."""
    noun = "commands" if label == "command" else "procedures"
    name = {r: command_name(row_command(r)) for r in rows}
    o.family(f"aodv2_{proto}_{noun}_total", "counter",
             f"{what} completed, counted in the kernel by the tracers (every completion).",
             [("", {label: name[r]}, int(stats["hist"][r].sum())) for r in rows])
    o.family(f"aodv2_{proto}_{label}_errors_total", "counter",
             f"{what} that completed with an error, counted in the kernel (ignored statuses excluded).",
             [("", {label: name[r]}, int(stats["errors"][r])) for r in rows])
    ignored, key = ("ignored_statuses", "ignored_statuses") if proto == "smb" else \
        ("benign_statuses", "nfs.benign_statuses")
    o.family(f"aodv2_{proto}_{label}_{ignored}_total", "counter",
             f"{what} that completed with a status in {key} (normal work: end of a listing, a missing "
             "name), counted in the kernel and not as errors.",
             [("", {label: name[r]}, int(stats["ignored"][r])) for r in rows])


def _latency(o: _Out, stats: np.ndarray, rows: list[int], family: str, label: str, help_: str) -> None:
    hist: list[tuple[str, dict[str, Any], float]] = []
    for r in rows:
        h, name = stats["hist"][r], command_name(row_command(r))
        cum = np.cumsum(h)
        for b in range(FIRST_EDGE, LAST_EDGE + 1):
            hist.append(("_bucket", {label: name, "le": format((1 << b) / 1e6, ".10g")}, int(cum[b])))
        hist.append(("_bucket", {label: name, "le": "+Inf"}, int(cum[-1])))
        hist.append(("_sum", {label: name}, int(stats["latency_sum_ns"][r]) / 1e9))
        hist.append(("_count", {label: name}, int(cum[-1])))
    o.family(family, "histogram", help_, hist)


def _slow(o: _Out, labels: dict[str, Any], family: str, label: str, help_: str) -> None:
    """A ShareTotals snapshot's slow completion histograms, one series per share or export."""
    shist: list[tuple[str, dict[str, Any], float]] = []
    for sh, d in sorted((labels.get("slow") or {}).items()):
        cum = np.cumsum(np.asarray(d.get("hist") or [0], np.int64))
        for b in range(FIRST_EDGE, LAST_EDGE + 1):
            le = format((1 << b) / 1e6, ".10g")
            shist.append(("_bucket", {label: sh, "le": le}, int(cum[min(b, len(cum) - 1)])))
        shist.append(("_bucket", {label: sh, "le": "+Inf"}, int(cum[-1])))
        shist.append(("_sum", {label: sh}, int(d.get("sum_ns", 0)) / 1e9))
        shist.append(("_count", {label: sh}, int(cum[-1])))
    o.family(family, "histogram", help_, shist)


def _errors(o: _Out, by_place: Optional[dict[str, int]], totals: dict[tuple[int, int], int], family: str,
            proto: str, names: tuple[str, str], status: Callable[[int], str], status_help: str) -> None:
    """Error records by command, status and share/export ("place|command|status" keys, bounded
    labels) when the core tallies them by place, else by command and status (the Watcher's totals)."""
    what, place = names
    if by_place is not None:
        rows = sorted((k.rsplit("|", 2), n) for k, n in by_place.items())  # a place name may hold "|"
        o.family(family, "counter", f"{proto} error records by {what}, {status_help} and {place} (the 20 most "
                 f"recently seen; the rest as {place}=\"other\").",
                 [("", {what: command_name(int(c)), "status": status(int(st)), place: p}, n) for (p, c, st), n in rows])
    else:
        o.family(family, "counter", f"{proto} error records by {what} and {status_help}.",
                 [("", {what: command_name(c), "status": status(st)}, n) for (c, st), n in sorted(totals.items())])


def render(snap: dict[str, Any], totals: Optional[dict[str, Any]], up: bool = True) -> str:
    """Exposition text from a Core snapshot (daemon.py) and the Watcher's cumulative totals."""
    o = _Out()
    o.family("aodv2_up", "gauge", "1 while the aodv2 core runs, 0 after a clean stop.", [("", {}, 1 if up else 0)])
    o.family("aodv2_start_time_seconds", "gauge", "When the core started (unix time).",
             [("", {}, float(snap.get("started", 0)))])
    o.family("aodv2_tracer_up", "gauge", "1 when the tracer is attached to the kernel.",
             [("", {"tracer": n}, 1 if s == "attached" else 0) for n, s in sorted((snap.get("tracers") or {}).items())])
    stats: np.ndarray = totals["cmd_stats"] if totals and totals.get("cmd_stats") is not None \
        and len(totals["cmd_stats"]) == STATS_ROWS else zero_stats()
    smb_rows, nfs_rows = _active(stats, "smb"), _active(stats, "nfs")
    _counts(o, stats, smb_rows, "smb", "command", "SMB commands")
    _counts(o, stats, nfs_rows, "nfs", "procedure", "NFS procedures (RPCs of the nfs program; v4: one COMPOUND)")
    labels, nfs_labels = snap.get("share_labels") or {}, snap.get("nfs_labels") or {}
    _errors(o, labels.get("errors"), (totals or {}).get("errors") or {}, "aodv2_smb_errors_total", "SMB",
            ("command", "share"), status_name, "NT status")
    rec = (totals or {}).get("reconnects") or {}
    o.family("aodv2_smb_reconnects_total", "counter", "Reconnect records by NT status (0: the client reconnected).",
             [("", {"status": status_name(s) if s else "reconnect"}, n) for s, n in sorted(rec.items())])
    _latency(o, stats, smb_rows, "aodv2_smb_command_latency_seconds", "command",
             "SMB command latency (enter to completion), every completion.")
    _latency(o, stats, nfs_rows, "aodv2_nfs_procedure_latency_seconds", "procedure",
             "NFS procedure latency (RPC execute time, as mountstats counts it), every completion.")
    _errors(o, nfs_labels.get("errors"), (totals or {}).get("nfs_errors") or {}, "aodv2_nfs_errors_total", "NFS",
            ("procedure", "export"), nfsproc.status_label, "status (an errno name, or an NFS4ERR_* status)")
    _slow(o, labels, "aodv2_smb_share_slow_latency_seconds", "share",
          "Latency of the slow completions the tracers emitted (at or over the emit threshold), by share "
          "(the 20 most recently seen shares; the rest as share=\"other\").")
    _slow(o, nfs_labels, "aodv2_nfs_export_slow_latency_seconds", "export",
          "Latency of the slow NFS completions the nfs tracer emitted (at or over the emit threshold), by export "
          "(server:/path; the 20 most recently seen; the rest as export=\"other\").")
    hung = snap.get("hung") or {}
    o.family("aodv2_hung_requests_total", "counter",
             "Hung records: requests found in flight longer than latency.hung_threshold_ms (one per request).",
             [("", {}, hung.get("records", 0))])
    o.family("aodv2_emergencies_deduplicated_total", "counter",
             "Completions over the emergency threshold raising no emergency: their request was reported hung.",
             [("", {}, hung.get("emergencies_deduplicated", 0))])
    health = snap.get("health_events") or {}
    o.family("aodv2_kernel_health_events_total", "counter", "Records of the kernel's cifs health tracepoints.",
             _by(health, "event"))
    o.family("aodv2_kernel_slow_responses_total", "counter",
             "smb3_slow_rsp events: responses slower than the cifs slow_rsp_threshold (CONFIG_CIFS_STATS2 only).",
             [("", {}, health.get("slow_rsp", 0))])
    aging = [(n, d.get("aging") or {}) for n, d in sorted((snap.get("tracer_detail") or {}).items())]
    aging = [(n, a) for n, a in aging if a]
    for key, kind, help_ in (("inflight", "gauge", "Requests in flight the tracer's aging scan saw."),
                             ("hung", "gauge", "Requests held in the tracer's hung map."),
                             ("unpaired", "counter", "Completions whose in-flight entry was missing "
                                                     "(evicted, or started before the tracer attached)."),
                             ("hung_full", "counter", "Aged requests left in the LRU: the hung map was full.")):
        name = f"aodv2_tracer_{key}" + ("_total" if kind == "counter" else "")
        o.family(name, kind, help_, [("", {"tracer": n}, a.get(key, 0)) for n, a in aging])
    o.family("aodv2_ring_records_total", "counter", "Records the core read from the ring.",
             [("", {}, snap.get("ring_records", 0))])
    o.family("aodv2_ring_drops_total", "counter", "Records the tracers dropped because the ring was full.",
             [("", {}, snap.get("drops_total", 0))])
    o.family("aodv2_ring_bad_records_total", "counter",
             "Ring records skipped, by reason: corrupt, foreign (another layout), future (stamped after now).",
             _by(snap.get("bad_records_by_reason"), "reason"))
    o.family("aodv2_event_buffer_overflow_total", "counter",
             "Ring events let go from the buffer of recent events before their detection horizon ended "
             "(bundles carry the newest; detection is not affected).",
             [("", {}, snap.get("event_buffer_overflow", 0))])
    o.family("aodv2_anomalies_total", "counter", "Anomalies detected, by type (captured or suppressed).",
             _by(snap.get("anomalies"), "type"))
    o.family("aodv2_anomalies_suppressed_total", "counter",
             "Anomalies not captured because of the cooldown or the hourly cap, by type.",
             _by(snap.get("suppressed"), "type"))
    o.family("aodv2_anomalies_refused_total", "counter",
             "Anomalies not captured, by reason: cooldown, hourly_cap, queue_full.",
             _by(snap.get("refused"), "reason"))
    o.family("aodv2_captures_total", "counter", "Bundles written, by anomaly type.", _by(snap.get("captures"), "type"))
    o.family("aodv2_capture_failures_total", "counter", "Captures that failed or were dropped.",
             [("", {}, snap.get("capture_failures", 0))])
    o.family("aodv2_bundle_written_bytes_total", "counter", "Bytes of bundles written.",
             [("", {}, snap.get("bundle_bytes_written", 0))])
    disk = snap.get("disk") or {}
    o.family("aodv2_bundles_bytes", "gauge", "Bytes counted in the retention budget (bundles, anomalies.jsonl).",
             [("", {}, disk.get("used_bytes", 0))])
    o.family("aodv2_bundles", "gauge", "Bundles on disk in the output dir.", [("", {}, disk.get("bundles", 0))])
    o.family("aodv2_bundles_budget_bytes", "gauge", "retention.max_total_mb in bytes.",
             [("", {}, disk.get("budget_bytes", 0))])
    last = snap.get("last_bundle") or {}
    o.family("aodv2_last_capture_timestamp_seconds", "gauge", "When the last bundle was written (0: none).",
             [("", {}, float(last.get("time", 0)))])
    up_stats = snap.get("upload")
    if up_stats:
        o.family("aodv2_uploads_total", "counter", "Bundle uploads by final result.",
                 [("", {"result": "ok"}, up_stats.get("ok", 0)), ("", {"result": "failed"}, up_stats.get("failed", 0))])
        o.family("aodv2_upload_attempts_total", "counter", "Upload hook runs, retries included.",
                 [("", {}, up_stats.get("attempts", 0))])
        o.family("aodv2_uploads_pending", "gauge", "Bundles waiting for upload.",
                 [("", {}, up_stats.get("pending", 0))])
    return "\n".join(o.lines) + "\n"


WHAT = "metrics.textfile_path directory"


def write(path: str, text: str) -> None:
    """Atomic replace, 0644. Raises OSError: safefs.UnsafePath when another user could swap the
    directory, or it is a system one (the core then says metrics are off). Missing levels are made
    0755: node_exporter runs as its own user and must get through them to the 0644 counts file."""
    d = os.path.dirname(path)
    why = safefs.system_dir_problem(d)
    if why:
        raise safefs.UnsafePath(d, f"{WHAT} {d}: {why}; expected a directory of its own, such as "
                                   f"{METRICS_DEFAULT_DIR}")
    safefs.check_dir(d, WHAT, system_owner=True)
    write_atomic(path, text.encode(), mode=0o644, dir_mode=0o755, system_owner=True, what=WHAT)
