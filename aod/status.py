"""Core status file: what the running core publishes for `aodv2 status` (beside the data flow).

The core rewrites /run/aodv2/status.json (0600, dir 0700) about once a second with a
snapshot (Core.snapshot in daemon.py) and marks it "stopped" on a clean exit. The CLI
reads it, decides whether the core is running (its pid alive, the file fresh) and
formats it for people. `--state-dir` may name anyone's directory: a status file that is
not a regular file, too big, not JSON, nested too deep or of the wrong types is one
StatusError (exit 1), and its text is escaped for the terminal (safetext.py).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from typing import Any, Optional

from . import recorderstatus, tracerstate
from .atomicfile import write_atomic
from .config import HEALTH_TYPES, Config, hung_threshold_ns, min_threshold_ns
from .confignfs import nfs_view
from .safetext import clean_lines, dumps, is_number, loads, short
from .smb2 import command_name, errno_name, status_name
from .tracerstate import RUN_DIR, pid_alive

STATUS_FILE = "status.json"
SCHEMA = 1
STALE_MIN_SEC = 10.0  # fresher than max(this, 3 intervals) counts as alive
MAX_STATUS_BYTES = 4 << 20  # the core writes a few KiB
# top-level fields format_text and assess use, and the JSON type each must have when present
_NUMBER_FIELDS = ("updated", "started", "watch_interval_sec", "events_per_sec")
_DICT_FIELDS = ("tracers", "counters", "bad_records_by_reason", "anomalies", "suppressed", "refused", "captures",
                "last_bundle", "disk", "thresholds", "capture", "upload", "hung", "health_events",
                "tracer_detail", "names", "recorders")
# what formatting a status file of unforeseen types raises (a nested field of the wrong type)
_SHAPE_ERRORS = (TypeError, ValueError, AttributeError, LookupError, OverflowError, RecursionError)


class StatusError(Exception):
    """The status cannot be read. .code: EX_NOPERM-style exit for the CLI."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def status_path(state_dir: str = RUN_DIR) -> str:
    return os.path.join(state_dir, STATUS_FILE)


def write(state_dir: str, snap: dict[str, Any]) -> None:
    """Raises OSError."""
    write_atomic(status_path(state_dir), json.dumps(snap, sort_keys=True, default=str).encode(), what="--state-dir")


def read(state_dir: str = RUN_DIR) -> dict[str, Any]:
    """The status snapshot, checked (see _problem). Raises StatusError."""
    path = status_path(state_dir)
    try:  # O_NONBLOCK: a fifo planted as status.json never blocks
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except PermissionError:
        raise StatusError(f"aodv2 status needs root: {path} is readable by root only", 77) from None
    except FileNotFoundError:
        if not os.access(state_dir, os.R_OK | os.X_OK) and os.path.isdir(state_dir):
            raise StatusError(f"aodv2 status needs root: {state_dir} is readable by root only", 77) from None
        raise StatusError(f"aodv2 core is not running: no {path}", 3) from None
    except OSError as e:
        raise StatusError(f"cannot read {path}: {e.strerror or e}", 1) from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise StatusError(f"{path} is not a valid status file (not a regular file)", 1)
            raw = f.read(MAX_STATUS_BYTES + 1)
    except OSError as e:
        raise StatusError(f"cannot read {path}: {e.strerror or e}", 1) from None
    if len(raw) > MAX_STATUS_BYTES:
        raise StatusError(f"{path} is not a valid status file (more than {MAX_STATUS_BYTES} bytes)", 1)
    try:
        snap = loads(raw)  # nesting bounded: never a RecursionError
        if not isinstance(snap, dict) or snap.get("schema") != SCHEMA:
            raise ValueError(f"expected a schema {SCHEMA} object")
        problem = _problem(snap)
        if problem:
            raise ValueError(problem)
    except ValueError as e:
        raise StatusError(f"{path} is not a valid status file ({short(str(e), 160)})", 1) from None
    return snap


def _problem(snap: dict[str, Any]) -> str:
    """What is wrong with the types of the top-level fields ('' if nothing)."""
    for k in _NUMBER_FIELDS:
        if k in snap and not is_number(snap[k]):
            return f"{k}: expected a number, got {type(snap[k]).__name__}"
    pid = snap.get("pid")
    if pid is not None and not (type(pid) is int and 0 < pid < 2**31):
        return "pid: expected a process id"
    for k in _DICT_FIELDS:
        if snap.get(k) is not None and not isinstance(snap[k], dict):
            return f"{k}: expected an object, got {type(snap[k]).__name__}"
    if snap.get("unhealthy") is not None and not isinstance(snap["unhealthy"], list):
        return "unhealthy: expected a list"
    return ""


def report(state_dir: str, as_json: bool) -> tuple[int, str]:
    """(exit code, text) of `aodv2 status`: 0 running, 1 hung (stale), 3 not running. Raises
    StatusError, also when a field deeper than _problem checks has a type formatting trips on."""
    snap = read(state_dir)
    try:
        state, reason = assess(snap)
        if as_json:
            text = dumps({**snap, "running": state == "running", "assessment": state, "reason": reason},
                         indent=1, sort_keys=True)
        else:
            text = clean_lines(format_text(snap, state, reason))
    except _SHAPE_ERRORS as e:
        raise StatusError(f"{status_path(state_dir)} is not a valid status file "
                          f"({type(e).__name__}: {short(str(e), 120)})", 1) from None
    return {"running": 0, "stale": 1}.get(state, 3), text


def assess(snap: dict[str, Any], now: Optional[float] = None) -> tuple[str, str]:
    """(state, reason): running | stopped | gone (pid dead) | stale (alive, not updating)."""
    now = time.time() if now is None else now
    updated = float(snap.get("updated", 0))
    age = now - updated
    if snap.get("state") == "stopped":
        return "stopped", f"stopped at {_when(updated)}"
    if not pid_alive(snap.get("pid")):
        return "gone", f"pid {snap.get('pid')} is gone (last update {_when(updated)})"
    limit = max(STALE_MIN_SEC, 3 * float(snap.get("watch_interval_sec", 1.0)))
    if age > limit:
        return "stale", f"not updated for {age:.0f}s (pid {snap.get('pid')} alive but not responding)"
    return "running", f"pid {snap.get('pid')}, up {_dur(now - float(snap.get('started', now)))}"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"


def _dur(s: float) -> str:
    s = int(max(s, 0))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {s}s"


def _mb(n: Any) -> str:
    return f"{float(n) / (1024 * 1024):.1f} MiB"


def _counts(d: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((d or {}).items())) or "none"


def thresholds(cfg: Config) -> dict[str, Any]:
    """The detection settings in force, for status.json (`aodv2 status` shows them)."""
    lat = cfg.latency
    return {
        "mode": lat.mode, "default_ms": lat.default_threshold_ms,
        "per_command_ms": {command_name(c): ms for c, ms in sorted(lat.thresholds_ms.items())},
        "track": [command_name(c) for c in lat.track] if lat.mode == "trackonly" else [],
        "exclude": [command_name(c) for c in lat.exclude] if lat.mode == "excludeonly" else [],
        "acceptable_count": lat.acceptable_count, "horizon_sec": lat.horizon_sec, "share": lat.share,
        "share_min_count": lat.share_min_count, "share_horizon_sec": lat.share_horizon_sec,
        "emergency_ms": lat.emergency_threshold_ms,
        "error_rules": [{"name": e.name, "acceptable_count": e.acceptable_count, "horizon_sec": e.horizon_sec,
                         "share": e.share, "share_min_count": e.share_min_count,
                         "share_horizon_sec": e.share_horizon_sec,
                         "match": [status_name(s) for s in sorted(e.statuses)]
                         + [errno_name(x) for x in sorted(e.errnos)],
                         "commands": [command_name(c) for c in sorted(e.commands)]} for e in cfg.errors],
        "ignored_statuses": [status_name(s) for s in sorted(cfg.ignored_statuses)],
        "hung": hung_health(cfg),
    }


_MODE_RE = re.compile(r"^[a-z][a-z() -]{0,39}$")  # "kprobe", "kprobe (--force-kprobes)"
DETAIL_KEYS = ("emit_min_ns", "emit_cmd_mask", "hung_threshold_ns", "health", "aging", "mode", "mode_config")


def tracer_details(state_dir: Optional[str], names: Any) -> dict[str, dict[str, Any]]:
    """What each tracer publishes beyond its state (tracerstate.read_detail): how it attached (mode,
    and the tracer.mode asked for), its emit filter, hung threshold, health tracepoints offered and
    attached, aging counters. {} per tracer
    that publishes none (an older tracer, or none running)."""
    if not state_dir:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        d = tracerstate.read_detail(state_dir, name)
        ok = {"emit_min_ns": int, "emit_cmd_mask": int, "hung_threshold_ns": int, "health": dict, "aging": dict,
              "mode": str, "mode_config": str}
        out[name] = {k: d[k] for k in DETAIL_KEYS  # a malformed value is left out, never shown
                     if isinstance(d.get(k), ok[k]) and not isinstance(d.get(k), bool)
                     and (ok[k] is not str or _MODE_RE.match(d[k]))}
    return out


class EmitCheck:
    """Warns when the core's smallest latency threshold is below what a tracer emits: completions
    between the two never reach the ring. Once per (tracer, its emit_min_ns, our threshold), and
    again after each reload (`reset`)."""

    def __init__(self) -> None:
        self.told: set[tuple[str, int, int]] = set()

    def reset(self) -> None:
        self.told.clear()

    def check(self, cfg: Config, details: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
        """(tracer, message) of each new gap."""
        out = []
        for name, d in sorted(details.items()):
            ours = min_threshold_ns((nfs_view(cfg) if name == "nfs" else cfg).latency)
            emit = d.get("emit_min_ns")
            if not isinstance(emit, int) or isinstance(emit, bool) or ours >= emit:
                continue
            key = (name, emit, ours)
            if key in self.told:
                continue
            self.told.add(key)
            out.append((name, f"AOD latency threshold {ours / 1e6:g} ms is below what tracer {name} emits "
                              f"({emit / 1e6:g} ms): slower completions between the two are not seen one by one "
                              f"(the histograms still count them); restart or reload the tracer"))
        return out


def hung_health(cfg: Config) -> dict[str, Any]:
    """The hung and health settings in force, for status.json."""
    lat = cfg.latency
    return {"hung_threshold_ms": hung_threshold_ns(lat) / 1e6, "hung_group_ms": lat.hung_group_ms,
            "hung_exclude": [command_name(c) for c in lat.hung_exclude],
            "health_enabled": {t: cfg.health.enabled(t) for t in HEALTH_TYPES}}


def _hung_lines(snap: dict[str, Any]) -> list[str]:
    th = (snap.get("thresholds") or {}).get("hung") or {}
    hung = snap.get("hung") or {}
    lines = []
    if th:
        ms = th.get("hung_threshold_ms")
        lines.append("  hung: " + (f"threshold {ms:g} ms, group {th.get('hung_group_ms', 0):g} ms"
                                   + (f", excluded {','.join(th.get('hung_exclude') or [])}"
                                      if th.get("hung_exclude") else "") if ms else "off")
                     + f"; hung records {hung.get('records', 0)}, deduplicated emergencies "
                       f"{hung.get('emergencies_deduplicated', 0)}")
        on = [t for t, v in sorted((th.get("health_enabled") or {}).items()) if v]
        lines.append(f"  health types: {','.join(on) or 'none'} enabled; kernel health events seen: "
                     f"{_counts(snap.get('health_events'))}")
    for name, d in sorted((snap.get("tracer_detail") or {}).items()):
        if d.get("mode"):
            lines.append(f"  tracer {name} attached in {d['mode']} mode"
                         + (f" (tracer.mode {d['mode_config']})" if d.get("mode_config") else ""))
        h = d.get("health") or {}
        if h:
            offered, attached = list(h.get("offered") or []), list(h.get("attached") or [])
            missing = [e for e in offered if e not in attached]
            lines.append(f"  tracer {name} health events: attached {','.join(attached) or 'none'}"
                         + (f"; offered but not attached {','.join(missing)}" if missing else "")
                         + f" ({len(offered)} offered by the kernel)")
        a = d.get("aging") or {}
        if a:
            lines.append(f"  tracer {name} aging: in flight {a.get('inflight', 0)}, hung {a.get('hung', 0)} "
                         f"(records {a.get('hung_records', 0)}), unpaired {a.get('unpaired', 0)}, hung_full "
                         f"{a.get('hung_full', 0)}, scans {a.get('scans', 0)}, scan max {a.get('scan_ms_max', 0)} ms")
        if "emit_min_ns" in d:
            lines.append(f"  tracer {name} emits completions >= {int(d['emit_min_ns']) / 1e6:g} ms")
    names = snap.get("names") or {}
    if names:
        feats = names.get("features") or []
        stats2 = "on" if "STATS2" in feats else ("off" if feats else "unknown")
        lines.append(f"  names: {names.get('servers', 0)} servers, {names.get('shares', 0)} shares known; "
                     f"CIFS STATS2 (smb3_slow_rsp fires) {stats2}")
    return lines


def _leftover_lines(snap: dict[str, Any]) -> list[str]:
    """What timed-out work left behind: action processes killed or stranded (alive after SIGKILL),
    file readers abandoned in the kernel, stale stage dirs removed. Nothing when all are zero."""
    def part(key: str) -> dict[str, Any]:
        v = snap.get(key)
        return v if isinstance(v, dict) else {}

    ap, rd, st = part("action_processes"), part("stranded_reads"), part("stale_removed")
    if not any(isinstance(v, int) and v for d in (ap, rd, st) for v in d.values()):
        return []
    return [f"  leftovers: action processes killed {ap.get('killed', 0)}, stranded {ap.get('stranded', 0)} now "
            f"({ap.get('stranded_total', 0)} in all); file reads stranded {rd.get('now', 0)} now "
            f"({rd.get('total', 0)} in all); stale stages removed {st.get('stages', 0)}, "
            f"partials {st.get('partials', 0)}"]


def _rule(r: dict[str, Any]) -> str:
    """'>= 10 in 10.0s, or share >= 0.5 (>= 5) in 60.0s' of a latency or error rule in the snapshot."""
    out = f">= {r.get('acceptable_count', '?')} in {r.get('horizon_sec', '?')}s"
    if r.get("share"):
        out += (f", or share >= {r['share']:g} (>= {r.get('share_min_count', '?')}) "
                f"in {r.get('share_horizon_sec', '?')}s")
    return out


def format_text(snap: dict[str, Any], state: str, reason: str) -> str:
    """Human-readable `aodv2 status` output."""
    lines = [f"aodv2 core: {state} ({reason})",
             f"  version {snap.get('aodv2_version', '?')}, config {snap.get('config') or '-'}"]
    tr = snap.get("tracers") or {}
    lines.append("  tracers: " + (", ".join(f"{n} {s}" for n, s in sorted(tr.items())) if tr else
                                  snap.get("ring_kind", "none")))
    c = snap.get("counters")
    if c:
        src = c.get("source")
        src = [str(x) for x in src if x] if isinstance(src, list) else [str(src)] if src else []
        lines.append(f"  counters: {', '.join(os.path.basename(x) for x in src) or '-'}"
                     + ("" if c.get("available") else f" (not readable: {c.get('reason')})"))
    bad = {k: v for k, v in (snap.get("bad_records_by_reason") or {}).items() if v}
    lines.append(f"  events: {float(snap.get('events_per_sec', 0)):.0f}/s, ring records "
                 f"{snap.get('ring_records', 0)}, drops {snap.get('drops_total', 0)} "
                 f"(last window {snap.get('drops_last_window', 0)}), bad records {snap.get('bad_records', 0)}"
                 + (f" ({_counts(bad)})" if bad else "")
                 + f", event buffer overflow {snap.get('event_buffer_overflow', 0)}")
    lines.append(f"  anomalies: {_counts(snap.get('anomalies'))}; suppressed: {_counts(snap.get('suppressed'))}"
                 + (f" (by reason: {_counts(snap.get('refused'))})" if snap.get("refused") else ""))
    lines.append(f"  captures: {_counts(snap.get('captures'))}; failed {snap.get('capture_failures', 0)}"
                 + (f"; zstd {short(str(snap['zstd']), 80)}" if snap.get("zstd") else ""))
    last = snap.get("last_bundle") or {}
    lines.append("  last bundle: " + (f"{last.get('path')} ({last.get('type')}, {_mb(last.get('bytes', 0))}, "
                                      f"{_when(float(last.get('time', 0)))})" if last else "none"))
    disk = snap.get("disk") or {}
    budget = float(disk.get("budget_bytes", 0))
    pct = f" ({100 * float(disk.get('used_bytes', 0)) / budget:.1f}%)" if budget else ""
    lines.append(f"  disk: {_mb(disk.get('used_bytes', 0))} of {_mb(budget)}{pct} in {disk.get('bundles', 0)} "
                 f"bundles and the anomaly history under {snap.get('output_dir', '?')}, "
                 f"max age {disk.get('max_age_days', '?')} days")
    th = snap.get("thresholds") or {}
    per = ", ".join(f"{k} {v:g}" for k, v in sorted((th.get("per_command_ms") or {}).items()))
    lines.append(f"  latency: mode {th.get('mode', '?')}, default {th.get('default_ms', '?')} ms"
                 + (f", {per} ms" if per else "")
                 + (f", excluded {','.join(th.get('exclude') or [])}" if th.get("exclude") else "")
                 + (f", tracked {','.join(th.get('track') or [])}" if th.get("track") else "")
                 + f"; {_rule(th)}; emergency {th.get('emergency_ms', '?')} ms")
    for r in th.get("error_rules") or []:
        lines.append(f"  error rule {r.get('name')}: {','.join(r.get('match') or [])} {_rule(r)}"
                     + (f" on {','.join(r.get('commands'))}" if r.get("commands") else ""))
    if th.get("ignored_statuses"):
        lines.append(f"  ignored statuses (not errors): {', '.join(th['ignored_statuses'])}")
    lines.extend(_hung_lines(snap))
    lines.extend(recorderstatus.lines(snap))
    cap = snap.get("capture") or {}
    if cap:
        lines.append(f"  capture: cooldown {cap.get('cooldown_sec')}s, max {cap.get('max_per_hour')}/h"
                     + (f", manual {cap['manual_per_hour']}/h" if cap.get("manual_per_hour") else ""))
    lines.extend(_leftover_lines(snap))
    up = snap.get("upload")
    if up:
        lines.append(f"  upload: ok {up.get('ok', 0)}, failed {up.get('failed', 0)}, pending {up.get('pending', 0)}"
                     + (f", last error: {up.get('last_error')}" if up.get("last_error") else ""))
    lines.append(f"  metrics: {snap.get('metrics_path') or 'off'}")
    if snap.get("unhealthy"):
        lines.append(f"  unhealthy components: {', '.join(snap['unhealthy'])}")
    return "\n".join(lines)
