"""Which cifs mounts a capture must not touch, and whose stacks to ask for (collect layer).

ring -> dispatch -> detect -> **collect** (collect.py asks this before planning the actions).

A mount whose requests are hung blocks every stat, statfs, ls or smbinfo of it, for as long
as the hang holds (the task sits in D state and cannot be killed). So before a capture plans
its per-mount actions it works out the hung shares and skips those mounts:

- a `hung` or `emergency` anomaly: `details["hung_shares"]` when the detector names them,
  else the (session, tree) of its records resolved to `\\\\server\\share` by aod.names;
- any anomaly: the requests in the pinned hung_v1 map right now (read-only), resolved alike.

A hung request whose share cannot be named makes every cifs mount possibly hung: all are
skipped. Mounts are matched by their source in /proc/mounts (`//server/share[/path]`); the
mount points themselves are never looked at.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from . import bpfsys
from .anomaly import Anomaly

GUARDED_TYPES = frozenset({"hung", "emergency"})
KIND_HUNG = 4  # record.KIND_HUNG
HUNG_MAP = "hung_v1"
PIDS_MAX = 256
ShareOf = Callable[[int, int], Optional[str]]


def unc_key(unc: str) -> Optional[tuple[str, str]]:
    """("server", "share") of "\\\\server\\share[\\path]" or "//server/share[/path]", lower case."""
    parts = [p for p in unc.replace("\\", "/").split("/") if p]
    return (parts[0].lower(), parts[1].lower()) if len(parts) >= 2 else None


def names_resolver(pin_dir: str) -> Optional[ShareOf]:
    """Names(pin_dir).share (pins + DebugData, never a mount); None if it cannot be built."""
    try:
        from .names import Names

        names = Names(pin_dir)
        names.refresh()
        return names.share
    except Exception:  # noqa: BLE001 - without names every cifs mount is guarded
        return None


def live_hung_pairs(pin_dir: str) -> set[tuple[int, int]]:
    """(session, tree) of the requests in the pinned hung_v1 map now; empty if unreadable."""
    from .evidence import KEY, START  # the layouts, one place

    try:
        items, _ = bpfsys.map_items(os.path.join(pin_dir, HUNG_MAP), 4096)
    except OSError:
        return set()
    out = set()
    for k, v in items:
        if len(k) >= KEY.size and len(v) >= START.size:
            out.add((KEY.unpack_from(k)[1], START.unpack_from(v)[2]))
    return out


def anomaly_pairs(anomaly: Anomaly) -> set[tuple[int, int]]:
    """(session, tree) of a hung/emergency anomaly's requests (hung records if it has any)."""
    if anomaly.type not in GUARDED_TYPES:
        return set()
    ev = anomaly.records()
    hung = ev[ev["kind"] == KIND_HUNG]
    use = hung if len(hung) else ev
    return {(int(s), int(t)) for s, t in zip(use["session_id"], use["tree_id"])}


def hung_shares(pairs: Iterable[tuple[int, int]], share_of: Optional[ShareOf],
                named: Iterable[str] = ()) -> tuple[set[tuple[str, str]], bool]:
    """(shares, all_mounts): the hung shares, and whether some hung request has no name."""
    shares = {k for k in (unc_key(u) for u in named) if k}
    unknown = False
    for ses, tree in pairs:
        unc = share_of(ses, tree) if share_of is not None else None
        key = unc_key(unc) if unc else None
        if key is None:
            unknown = True
        else:
            shares.add(key)
    return shares, unknown


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def guarded_mounts(entries: Iterable[tuple[str, str]], shares: set[tuple[str, str]],
                   all_mounts: bool) -> dict[str, str]:
    """mount point -> why it is skipped, for the (source, mount point) entries of /proc/mounts
    (every entry: a mount point can hold two stacked mounts, the hung one on top).

    A hung share that no mount source names (a DFS target, another name of the server) guards
    the mounts of its server, else every mount. A mount below a guarded one is guarded too:
    reaching it walks a path through the hung mount."""
    entries = list(entries)
    keys = [(unc_key(src), mnt) for src, mnt in entries]
    mounted = {k for k, _ in keys if k is not None}
    servers = {k[0] for k in mounted}
    loose = {s for s in shares if s not in mounted}  # hung, but no mount names this share
    out: dict[str, str] = {}
    for key, mnt in keys:
        if mnt in out:
            continue
        if key is not None and key in shares:
            out[mnt] = f"mount {mnt} has hung requests (\\\\{key[0]}\\{key[1]})"
        elif key is not None and any(s[0] == key[0] for s in loose):
            hung = sorted(f"\\\\{s[0]}\\{s[1]}" for s in loose if s[0] == key[0])
            out[mnt] = f"mount {mnt} may have hung requests (its server has hung requests on {', '.join(hung)})"
        elif all_mounts or any(s[0] not in servers for s in loose):
            out[mnt] = f"mount {mnt} may have hung requests (a hung request's share is not a known mount)"
    for _, mnt in keys:  # nested below a guarded mount point
        if mnt not in out:
            top = next((t for t in sorted(out) if _under(mnt, t)), None)
            if top is not None:
                out[mnt] = f"mount {mnt} lies below {top}, which may have hung requests"
    return out


def plan_guard(anomaly: Anomaly, entries: list[tuple[str, str]], pin_dir: str,
               share_of: Optional[ShareOf] = None, live: bool = True) -> dict[str, str]:
    """The mounts this capture must not touch (mount point -> reason). Reads no mount."""
    raw = anomaly.details.get("hung_shares") if isinstance(anomaly.details, Mapping) else None
    named = [u for u in raw if isinstance(u, str)] if isinstance(raw, (list, tuple)) else []
    pairs = set() if named else anomaly_pairs(anomaly)  # the detector named them: no lookup
    if live:
        pairs |= live_hung_pairs(pin_dir)
    if not pairs and not named:
        return {}
    if pairs and share_of is None:
        share_of = names_resolver(pin_dir)
    shares, unknown = hung_shares(pairs, share_of, named)
    return guarded_mounts(entries, shares, unknown)


def evidence_pids(anomaly: Anomaly) -> tuple[int, ...]:
    """Issuers of the anomaly's requests (hung ones first), for their stacks."""
    ev: Any = anomaly.records()
    if not len(ev):
        return ()
    order = np.argsort(ev["kind"] != KIND_HUNG, kind="stable")
    pids = [int(p) for p in ev["pid"][order] if int(p) > 0]
    return tuple(dict.fromkeys(pids))[:PIDS_MAX]
