"""Config parse, the rules part: number ranges, the latency section and the error rules.

config.load_text (run by the core at start and on reload, and by `aodv2 check-config`) calls
configparse._build, which calls the section parsers here; every number of the file is checked
against _NUMS through _num_field. Each parser records its problems in `_Errors` with the typed
checks of configcheck.py and returns the config.py dataclass (or its default). Imports config
and configcheck only; configparse imports this module, never the other way round.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Optional, Sequence

from .config import (
    DEFAULT_ERROR_RULES,
    DEFAULT_IGNORED_STATUSES,
    HUNG_GROUP_MAX_MS,
    HUNG_MIN_MS,
    LATENCY_MODES,
    ErrorRule,
    LatencyConfig,
    ReconnectConfig,
)
from .configcheck import (
    _NAME_RE,
    _command,
    _commands,
    _errno,
    _Errors,
    _g,
    _got,
    _join,
    _list,
    _mapping,
    _Num,
    _number,
    _status,
    _suggest,
)
from .record import IGNORED_MAX
from .smb2 import RECONNECT_STATUSES, command_name, status_name

# ---------------------------------------------------------------- limits and tables

MAX_MS = 86_400_000.0  # one day

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
    "capture.manual_per_hour": _Num(True, 1, False, 3600, ""),
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

_LATENCY_KEYS = tuple(f.name for f in dataclasses.fields(LatencyConfig))
_RULE_KEYS = ("name", "status", "errno", "commands", "acceptable_count", "horizon_sec", "share", "share_min_count",
              "share_horizon_sec")


# ---------------------------------------------------------------- reading


def _num_field(errs: _Errors, sec: dict[str, Any], path: str, key: str, spec_key: str, default: Any) -> Any:
    if key not in sec:
        return default
    got = _number(errs, _join(path, key), sec[key], _NUMS[spec_key])
    return default if got is None else got


# ---------------------------------------------------------------- sections


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
