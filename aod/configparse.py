"""Config parse, the build: the top-level mapping and the simple sections.

config.load_text (run by the core at start and on reload, and by `aodv2 check-config`) imports
_build from here lazily (this module imports config for its dataclasses). _build walks the
top-level keys, hands latency, errors and ignored_statuses to configrules.py and parses the
rest (reconnect, health, actions, capture, retention, ring, tracers, tracer, metrics, upload)
itself (recorder: configrecorder.py; nfs: confignfs.py), recording every problem in `_Errors` with
the typed checks of configcheck.py.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
from types import MappingProxyType
from typing import Any, Mapping

from .config import (
    ANOMALY_TYPES,
    HEALTH_TYPES,
    PLACEHOLDER_RE,
    TRACER_MODES,
    UPLOAD_PLACEHOLDERS,
    Config,
    HealthConfig,
    HealthTypeConfig,
    MetricsConfig,
    ReconnectConfig,
    RingConfig,
    TracerConfig,
    UploadConfig,
    _default_actions,
    _known_actions,
)
from .configcheck import _abs_path, _Errors, _got, _list, _mapping, _metrics_path, _output_dir, _short, _suggest
from .confignfs import parse_nfs
from .configrecorder import parse_recorder
from .configrules import _check_ignored, _error_rules, _ignored_statuses, _latency, _num_field

# ---------------------------------------------------------------- limits and tables

RING_MAX_KB = 1 << 20  # 1 GiB
PAGE_KB = max(4, mmap.PAGESIZE // 1024)

_TRACER_RE = re.compile(r"^[a-z0-9_-]{1,32}$")

_TOP_KEYS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in ("source", "warnings"))


# ---------------------------------------------------------------- sections


def _build(errs: _Errors, data: dict[str, Any]) -> Config:
    d = Config()
    top = _mapping(errs, data, "", _TOP_KEYS) or {}
    kw: dict[str, Any] = {}
    kw["watch_interval_sec"] = _num_field(
        errs, top, "", "watch_interval_sec", "watch_interval_sec", d.watch_interval_sec
    )
    if "output_dir" in top:
        kw["output_dir"] = _output_dir(errs, "output_dir", top["output_dir"], d.output_dir)
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
    if "tracer" in top:
        kw["tracer"] = _tracer(errs, top["tracer"])
    if "metrics" in top:
        kw["metrics"] = _metrics(errs, top["metrics"])
    if "upload" in top:
        kw["upload"] = _upload(errs, top["upload"])
    if "recorder" in top:
        kw["recorder"] = parse_recorder(errs, top["recorder"])
    if "nfs" in top:
        kw["nfs"] = parse_nfs(errs, top["nfs"])
    return dataclasses.replace(d, **kw)


def _numeric_section(errs: _Errors, raw: Any, name: str, default: Any) -> Any:
    keys = [f.name for f in dataclasses.fields(default)]
    sec = _mapping(errs, raw, name, keys)
    if sec is None:
        return default
    kw = {k: _num_field(errs, sec, name, k, f"{name}.{k}", getattr(default, k)) for k in sec}
    return dataclasses.replace(default, **kw)

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


def _tracer(errs: _Errors, raw: Any) -> TracerConfig:
    sec = _mapping(errs, raw, "tracer", ("mode",))
    if not sec or "mode" not in sec:
        return TracerConfig()
    v = sec["mode"]
    if isinstance(v, str) and v in TRACER_MODES:
        return TracerConfig(mode=v)
    errs.add("tracer.mode", f"expected one of: {', '.join(TRACER_MODES)}, {_got(v)}{_suggest(v, TRACER_MODES)}")
    return TracerConfig()


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
            kw["textfile_path"] = _metrics_path(errs, "metrics.textfile_path", v, d.textfile_path)
    if "interval_sec" in sec:
        kw["interval_sec"] = _num_field(errs, sec, "metrics", "interval_sec", "metrics.interval_sec",
                                        d.interval_sec)
    return dataclasses.replace(d, **kw)


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
