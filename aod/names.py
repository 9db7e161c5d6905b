"""Names of servers and shares (beside detect): numeric ids in records -> "\\\\server\\share".

ring records carry a session id and a tree id (KIND_HEALTH 1-5 and smb3_reconnect: the
connection's conn_id). `Names` turns them into names for anomalies, journal records,
anomalies.jsonl and the metrics' share labels, from two sources:

  - the smb tracer's pinned maps (dirname(ring.path)): `trees_v1` {sesid, tid} -> UNC and
    `servers_v1` conn_id -> hostname, filled from the tree-connect and connect tracepoints
    (read-only, through bpfsys);
  - /proc/fs/cifs/DebugData, for mounts older than the tracer (parse_debugdata: the format of
    fs/smb/client/cifs_debug.c, and of 5.10's fs/cifs/cifs_debug.c, which prints the same
    server, session and share lines).

Both are only read (never a mount): refresh() re-reads at most once a second. Thread-safe.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

from . import bpfsys
from .record import (
    CMD_NONE,
    HEALTH_BY_CONN,
    HOST_LEN,
    KIND_HEALTH,
    KIND_RECONNECT,
    SERVERS_MAX,
    TREE_KEY_DTYPE,
    TREES_MAX,
    UNC_LEN,
)

DEBUGDATA = "/proc/fs/cifs/DebugData"
TREES_PIN = "trees_v1"
SERVERS_PIN = "servers_v1"
REFRESH_SEC = 1.0
FORCED_MIN_SEC = 0.1  # a refresh for an id not yet known (a new mount), at most this often
MAX_DEBUGDATA = 4 << 20  # bytes read at most
MAX_NAMED = 20  # servers and shares an anomaly lists at most

# "1) ConnectionId: 0x1 Hostname: fs1 " (a primary connection: at the start of a line; channels
# and the MIDs section print their ConnectionId indented)
_SERVER_RE = re.compile(r"^\d+\) ConnectionId: 0x([0-9a-fA-F]+)(?: Hostname: (\S+))?", re.M)
_SESSION_RE = re.compile(r"SessionId: 0x([0-9a-fA-F]+)")
# "\t1) \\srv\share Mounts: 1 ..." and "\t0) IPC: \\srv\IPC$ Mounts: 1 ..."
# (a share name may hold spaces: "\\srv\my share Mounts: 1"; lazy, anchored: linear in the line)
_SHARE_RE = re.compile(r"^\t\d+\) (?:IPC: )?(\\\\[^\t]+?) Mounts: \d")
_TID_RE = re.compile(r"\btid: 0x([0-9a-fA-F]+)")
_FEATURES_RE = re.compile(r"^Features:\s*(.*)$", re.M)


@dataclass
class DebugData:
    """What parse_debugdata found."""

    servers: dict[int, str] = field(default_factory=dict)  # conn_id -> hostname
    shares: dict[tuple[int, int], str] = field(default_factory=dict)  # (sesid, tid) -> UNC
    sessions: dict[int, str] = field(default_factory=dict)  # sesid -> hostname of its server
    features: tuple[str, ...] = ()  # the Features line: STATS2 tells smb3_slow_rsp can fire


def parse_debugdata(text: str) -> DebugData:
    """Servers, sessions and shares of /proc/fs/cifs/DebugData. Tolerant: what it cannot read it
    skips (a share printed before its tid line is named when the tid follows)."""
    out = DebugData()
    m = _FEATURES_RE.search(text)
    if m:
        out.features = tuple(f.strip() for f in m.group(1).split(",") if f.strip())
    host: Optional[str] = None
    sesid: Optional[int] = None
    unc: Optional[str] = None
    for line in text.splitlines():
        sm = _SERVER_RE.match(line)
        if sm:
            host, sesid, unc = sm.group(2), None, None
            if host:
                out.servers[int(sm.group(1), 16)] = host
            continue
        ses = _SESSION_RE.search(line)
        if ses:
            sesid, unc = int(ses.group(1), 16), None
            if host:
                out.sessions[sesid] = host
            continue
        sh = _SHARE_RE.match(line)
        if sh:
            unc = sh.group(1)
            continue
        tid = _TID_RE.search(line)
        if tid and unc and sesid is not None:
            out.shares[(sesid, int(tid.group(1), 16))] = unc
            unc = None
    return out


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def server_of_unc(unc: str) -> Optional[str]:
    r"""'\\srv\share' -> 'srv'."""
    parts = unc.lstrip("\\").split("\\", 1)
    return parts[0] or None if unc.startswith("\\\\") else None


def read_pinned(pin_dir: str) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """(conn_id -> hostname, (sesid, tid) -> UNC) from the tracer's pins; empty where a pin is
    missing or unreadable (an older tracer, no root)."""
    servers: dict[int, str] = {}
    shares: dict[tuple[int, int], str] = {}
    try:
        items, _ = bpfsys.map_items(os.path.join(pin_dir, SERVERS_PIN), SERVERS_MAX)
        for k, v in items:
            if len(k) == 8 and len(v) >= 1:
                servers[int.from_bytes(k, "little")] = _cstr(v[:HOST_LEN])
    except OSError:
        pass
    try:
        items, _ = bpfsys.map_items(os.path.join(pin_dir, TREES_PIN), TREES_MAX)
        for k, v in items:
            if len(k) == TREE_KEY_DTYPE.itemsize:
                key = np.frombuffer(k, TREE_KEY_DTYPE)[0]
                shares[(int(key["sesid"]), int(key["tid"]))] = _cstr(v[:UNC_LEN])
    except OSError:
        pass
    return servers, shares


class Namer(Protocol):
    """What names a protocol's records (Names for SMB, nfsnames.NfsNames for NFS)."""

    def refresh(self, force: bool = False) -> bool: ...

    def share(self, sesid: int, tid: int) -> Optional[str]: ...

    def server(self, conn_id: int) -> Optional[str]: ...

    def server_of_session(self, sesid: int) -> Optional[str]: ...

    def id_label(self, sesid: int, tid: int) -> str: ...


class RefreshGate:
    """Whether a namer re-reads its sources now: at most once a REFRESH_SEC, or for a forced refresh
    (an id not known yet) once a FORCED_MIN_SEC. Thread-safe."""

    def __init__(self, mono: Callable[[], float]) -> None:
        self.mono = mono
        self.lock = threading.Lock()
        self._at: Optional[float] = None

    def due(self, force: bool = False) -> bool:
        now = self.mono()
        with self.lock:
            if self._at is not None and now - self._at < (FORCED_MIN_SEC if force else REFRESH_SEC):
                return False
            self._at = now
            return True


def share_label(names: Optional[Namer], sesid: int, tid: int) -> str:
    """A share's (or an NFS export's) name for a metric label: the share, else the server, else 'unknown'."""
    if names is None:
        return "unknown"
    return names.share(sesid, tid) or names.server_of_session(sesid) or "unknown"


def id_label(sesid: int, tid: int) -> str:
    """An SMB record left unnamed, by its ids ('' for none)."""
    return f"session 0x{sesid:x} tree 0x{tid:x}" if sesid or tid else ""


class Names:
    """Ids -> names, refreshed from the pins and DebugData at most once a REFRESH_SEC."""

    def __init__(self, pin_dir: Optional[str], debugdata: str = DEBUGDATA,
                 mono: Callable[[], float] = time.monotonic,
                 pinned: Callable[[str], tuple[dict[int, str], dict[tuple[int, int], str]]] = read_pinned) -> None:
        self.pin_dir = pin_dir
        self.debugdata = debugdata
        self.mono = mono
        self.pinned = pinned
        self.lock = threading.Lock()
        self.gate = RefreshGate(mono)
        self._servers: dict[int, str] = {}
        self._shares: dict[tuple[int, int], str] = {}
        self._sessions: dict[int, str] = {}
        self.features: tuple[str, ...] = ()

    def refresh(self, force: bool = False) -> bool:
        """Re-read the sources unless that was done within REFRESH_SEC. True if it re-read."""
        if not self.gate.due(force):
            return False
        dd = DebugData()
        try:
            with open(self.debugdata, "rb") as f:
                dd = parse_debugdata(f.read(MAX_DEBUGDATA).decode("utf-8", "replace"))
        except OSError:
            pass
        servers, shares = self.pinned(self.pin_dir) if self.pin_dir else ({}, {})
        sessions = dict(dd.sessions)
        for (ses, _), unc in shares.items():
            srv = server_of_unc(unc)
            if srv:
                sessions.setdefault(ses, srv)
        with self.lock:  # the pins win over DebugData: they are the kernel's view at connect time
            self._servers = {**dd.servers, **servers}
            self._shares = {**dd.shares, **shares}
            self._sessions = sessions
            self.features = dd.features
        return True

    def known(self) -> tuple[int, int]:
        """(servers, shares) known now."""
        with self.lock:
            return len(self._servers), len(self._shares)

    def share(self, sesid: int, tid: int) -> Optional[str]:
        with self.lock:
            return self._shares.get((int(sesid), int(tid)))

    def server(self, conn_id: int) -> Optional[str]:
        with self.lock:
            return self._servers.get(int(conn_id))

    def server_of_session(self, sesid: int) -> Optional[str]:
        with self.lock:
            return self._sessions.get(int(sesid))

    def id_label(self, sesid: int, tid: int) -> str:
        return id_label(sesid, tid)


def involved(names: Optional[Namer], rows: np.ndarray) -> dict[str, list[str]]:
    """The servers and shares of these records (EVENT_DTYPE), at most MAX_NAMED each, for an
    anomaly's details: {"servers": [...], "shares": [...], "unnamed": [ids not resolved]}."""
    servers: list[str] = []
    shares: list[str] = []
    unnamed: list[str] = []
    if not len(rows):
        return {"servers": servers, "shares": shares, "unnamed": unnamed}
    if names is not None:
        names.refresh()
    kind, cmd = rows["kind"], rows["command"]
    by_conn = ((kind == KIND_HEALTH) & np.isin(cmd, sorted(HEALTH_BY_CONN))) | \
        ((kind == KIND_RECONNECT) & (cmd == CMD_NONE))
    conns = np.unique(rows["session_id"][by_conn])
    pairs = np.unique(np.stack([rows["session_id"][~by_conn].astype(np.uint64),
                                rows["tree_id"][~by_conn].astype(np.uint64)], axis=1), axis=0)

    def add(lst: list[str], v: str) -> None:
        if v not in lst and len(lst) < MAX_NAMED:
            lst.append(v)

    retried = False
    for c in conns.tolist():
        srv = names.server(c) if names else None
        if srv is None and names is not None and not retried:
            retried = True  # one try per batch: a connection newer than the last refresh
            names.refresh(force=True)
            srv = names.server(c)
        if srv:
            add(servers, srv)
        else:
            add(unnamed, f"conn 0x{c:x}")
    for ses, tid in pairs.tolist():
        label = names.id_label(ses, tid) if names else id_label(ses, tid)  # '': a record of no request
        unc = names.share(ses, tid) if names else None
        if unc is None and names is not None and not retried and label:
            retried = True
            names.refresh(force=True)
            unc = names.share(ses, tid)
        srv = (server_of_unc(unc) if unc else None) or (names.server_of_session(ses) if names else None)
        if unc:
            add(shares, unc)
        if srv:
            add(servers, srv)
        if not unc and not srv and label:
            add(unnamed, label)
    return {"servers": servers, "shares": shares, "unnamed": unnamed}
