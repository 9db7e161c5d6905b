"""Config of NFS detection (`nfs:`), and the NFS view of a config (config layer).

The nfs tracer (front_nfs.py) reads it for its emit filter, hung threshold and benign statuses;
the core's NFS detector (detectsplit.py) sees the config through nfs_view(): the latency table
holds the NFS procedure codes only (aod/nfsproc.py), one error rule counts every non-benign NFS
error, and the SMB error rules and statuses are left out. configparse._build hands the `nfs`
section to parse_nfs() here.

  nfs:
    default_threshold_ms: 500       # every procedure without its own threshold
    thresholds_ms: {COMMIT: 2000}   # by procedure name: both versions, or "NFSv3 READ" for one
    exclude: [NFSv3 NULL]           # never slow, never hung
    hung_threshold_ms: null         # null: latency.hung_threshold_ms (0: no NFS hung records)
    benign_statuses: [ENOENT, ...]  # errnos or NFS4ERR_* names: completions, not errors
    errors: {acceptable_count: 5, horizon_sec: 10}
"""

from __future__ import annotations

import dataclasses
import errno as _errno
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Optional

from . import nfsproc
from .configcheck import _Errors, _got, _join, _list, _mapping, _Num, _number, _suggest
from .record import IGNORED_MAX

if TYPE_CHECKING:
    from .config import Config

ERESTARTSYS = 512  # kernel-internal: a signal interrupted the call
ENOTSUPP = 524  # kernel-internal: the server lacks an optional operation (SEEK, ALLOCATE, ...)
DEFAULT_BENIGN: frozenset[int] = frozenset({
    _errno.ENOENT, _errno.EEXIST, _errno.ENOTEMPTY, _errno.ENODATA, _errno.EOPNOTSUPP, ENOTSUPP, ERESTARTSYS,
    nfsproc.NFS4ERR["NFS4ERR_NOTSUPP"],
})
_MS = _Num(False, 0, True, 86_400_000, "milliseconds")
HUNG_MIN_MS = 100.0  # config.HUNG_MIN_MS (config imports this module)
_HUNG_MS = _Num(False, 0, False, 86_400_000,
                f"milliseconds; 0 turns NFS hung detection off, else at least {HUNG_MIN_MS:g}")
_COUNT = _Num(True, 1, False, 1_000_000_000, "")
_HORIZON = _Num(False, 0, True, 3600, "seconds")
_KEYS = ("default_threshold_ms", "thresholds_ms", "exclude", "hung_threshold_ms", "benign_statuses", "errors")
_ERRNO_NAMES = {n: getattr(_errno, n) for n in dir(_errno) if n.startswith("E") and isinstance(getattr(_errno, n), int)}
_ERRNO_NAMES.update(ERESTARTSYS=ERESTARTSYS, ENOTSUPP=ENOTSUPP)
_STATUS_NAMES = {**_errno.errorcode, _errno.EOPNOTSUPP: "EOPNOTSUPP", ERESTARTSYS: "ERESTARTSYS", ENOTSUPP: "ENOTSUPP"}


@dataclass(frozen=True)
class NfsConfig:
    default_threshold_ms: float = 500.0
    thresholds_ms: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))  # code -> ms
    exclude: frozenset[int] = frozenset({nfsproc.code(3, "NULL"), nfsproc.code(4, "NULL")})  # codes
    hung_threshold_ms: Optional[float] = None
    benign_statuses: frozenset[int] = DEFAULT_BENIGN  # errno, or NFS4ERR_* (>= 10000)
    error_count: int = 5
    error_horizon_sec: float = 10.0


def _codes(errs: _Errors, path: str, v: Any) -> list[int]:
    """A procedure name: 'READ' (both versions) or 'NFSv3 READ' (one)."""
    if isinstance(v, str):
        one = nfsproc.lookup(v)
        if one is not None:
            return [one]
        both = [nfsproc.CODE_BASE[ver] | t.index(v.upper()) for ver, t in nfsproc.TABLES.items() if v.upper() in t]
        if both:
            return both
    names = sorted(set(nfsproc.V3) | set(nfsproc.V4))
    errs.add(path, f"expected an NFS procedure name such as READ or 'NFSv3 READ', {_got(v)}"
             + (_suggest(v.upper(), names) if isinstance(v, str) else ""))
    return []


def _status(errs: _Errors, path: str, v: Any) -> Optional[int]:
    if isinstance(v, str) and v in nfsproc.NFS4ERR:
        return nfsproc.NFS4ERR[v]  # the small ones are errnos too (NFS4ERR_NOENT = ENOENT)
    if isinstance(v, str) and v in _ERRNO_NAMES:
        return _ERRNO_NAMES[v]
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 20000:
        return v
    errs.add(path, f"expected an errno name (ENOENT), an NFS4ERR_* name or a positive number, {_got(v)}"
             + (_suggest(v, list(_ERRNO_NAMES) + list(nfsproc.NFS4ERR)) if isinstance(v, str) else ""))
    return None


def parse_nfs(errs: _Errors, raw: Any) -> NfsConfig:
    d = NfsConfig()
    sec = _mapping(errs, raw, "nfs", _KEYS)
    if sec is None:
        return d
    kw: dict[str, Any] = {}
    if "default_threshold_ms" in sec:
        got = _number(errs, "nfs.default_threshold_ms", sec["default_threshold_ms"], _MS)
        if got is not None:
            kw["default_threshold_ms"] = got
    if "thresholds_ms" in sec:
        t = _mapping(errs, sec["thresholds_ms"], "nfs.thresholds_ms", None)
        out: dict[int, float] = {}
        for name, ms in (t or {}).items():
            p = _join("nfs.thresholds_ms", name)
            got = _number(errs, p, ms, _MS)
            for c in _codes(errs, p, name):
                if got is not None:
                    out[c] = got
        kw["thresholds_ms"] = MappingProxyType(out)
    if "exclude" in sec:
        items = _list(errs, sec["exclude"], "nfs.exclude", "NFS procedure names") or []
        kw["exclude"] = frozenset(c for i, v in enumerate(items) for c in _codes(errs, f"nfs.exclude[{i}]", v))
    if "hung_threshold_ms" in sec and sec["hung_threshold_ms"] is not None:  # null: latency's
        v = _number(errs, "nfs.hung_threshold_ms", sec["hung_threshold_ms"], _HUNG_MS)
        if v is not None and 0 < v < HUNG_MIN_MS:  # as latency.hung_threshold_ms
            errs.add("nfs.hung_threshold_ms", f"expected 0 (off) or a number >= {HUNG_MIN_MS:g} (milliseconds), "
                     f"{_got(v)}")
        elif v is not None:
            kw["hung_threshold_ms"] = v
    if "benign_statuses" in sec:
        items = _list(errs, sec["benign_statuses"], "nfs.benign_statuses", "statuses") or []
        got_s = [_status(errs, f"nfs.benign_statuses[{i}]", v) for i, v in enumerate(items)]
        benign = frozenset(s for s in got_s if s is not None)
        if len(benign) > IGNORED_MAX:  # the kernel map's size (nfs_ignored_v1)
            errs.add("nfs.benign_statuses", f"expected at most {IGNORED_MAX} statuses, got {len(benign)}")
        kw["benign_statuses"] = benign
    if "errors" in sec:
        e = _mapping(errs, sec["errors"], "nfs.errors", ("acceptable_count", "horizon_sec")) or {}
        if "acceptable_count" in e:
            n = _number(errs, "nfs.errors.acceptable_count", e["acceptable_count"], _COUNT)
            if n is not None:
                kw["error_count"] = int(n)
        if "horizon_sec" in e:
            h = _number(errs, "nfs.errors.horizon_sec", e["horizon_sec"], _HORIZON)
            if h is not None:
                kw["error_horizon_sec"] = h
    return dataclasses.replace(d, **kw)


def status_out(s: int) -> Any:
    """A benign status as config text: its errno or NFS4ERR_* name, else the number."""
    if s >= nfsproc.NFS4ERR_MIN:
        return nfsproc.NFS4ERR_NAMES.get(s, s)
    return _STATUS_NAMES.get(s, s)


def to_dict(n: NfsConfig) -> dict[str, Any]:
    return {"default_threshold_ms": n.default_threshold_ms,
            "thresholds_ms": {nfsproc.name(c): ms for c, ms in sorted(n.thresholds_ms.items())},
            "exclude": [nfsproc.name(c) for c in sorted(n.exclude)],
            "hung_threshold_ms": n.hung_threshold_ms,
            "benign_statuses": [status_out(s) for s in sorted(n.benign_statuses)],
            "errors": {"acceptable_count": n.error_count, "horizon_sec": n.error_horizon_sec}}


NFS_ERRNOS = frozenset(range(1, 4096))
NFS_STATUSES = frozenset(range(nfsproc.NFS4ERR_MIN, nfsproc.NFS4ERR_MIN + 200))


def nfs_view(cfg: Config) -> Config:
    """The config as the NFS detector and the nfs tracer see it: latency over the NFS codes only
    (trackonly), the latency count rule's acceptable_count and horizons, one error rule for every
    non-benign NFS error, nothing of the SMB statuses."""
    from .config import ErrorRule

    n, lat = cfg.nfs, cfg.latency
    codes = [c for v, t in nfsproc.TABLES.items() for c in range(nfsproc.CODE_BASE[v], nfsproc.CODE_BASE[v] + len(t))]
    codes += [nfsproc.CODE_BASE[v] | nfsproc.UNKNOWN for v in nfsproc.TABLES]
    track = tuple(c for c in codes if c not in n.exclude)
    thresholds = MappingProxyType({c: n.thresholds_ms.get(c, n.default_threshold_ms) for c in track})
    latency = dataclasses.replace(lat, mode="trackonly", track=track, exclude=(), thresholds_ms=thresholds,
                                  default_threshold_ms=n.default_threshold_ms, hung_exclude=(),
                                  hung_threshold_ms=lat.hung_threshold_ms if n.hung_threshold_ms is None
                                  else n.hung_threshold_ms)
    rule = ErrorRule("nfs_errors", statuses=NFS_STATUSES - n.benign_statuses, errnos=NFS_ERRNOS - n.benign_statuses,
                     acceptable_count=n.error_count, horizon_sec=n.error_horizon_sec)
    return dataclasses.replace(cfg, latency=latency, errors=(rule,), ignored_statuses=n.benign_statuses)
