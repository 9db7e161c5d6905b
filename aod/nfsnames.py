"""NFS servers and exports (beside detect): an NFS record's client id -> server and "server:/export".

An nfs tracer record's session_id is its RPC client's id (the kernel's cl_clid). `NfsNames` answers
for the NFS detector with the methods names.Names has for SMB (so names.involved and hung.details
name NFS anomalies too), from what the kernel shows of its RPC clients:

  - /sys/fs/nfs/<maj:min>/{nfs_client,nfsacl_client,nfs_state_client} (Debian 13's 6.12; not 6.1
    nor 5.10): links to each mount's clients, so a client is a mount (mountinfo by maj:min);
  - /sys/kernel/sunrpc/rpc-clients/clnt-N/switch -> xprt-switches/switch-M/xprt-*/dstaddr (6.1 and
    6.12): a client's server address;
  - debugfs sunrpc/rpc_clnt/<hex id>/xprt -> rpc_xprt/K/info "addr: ..." (5.10 too, where debugfs
    is mounted): the same;
  - /proc/self/mountinfo: the NFS mounts ("server:/export", option addr=), so a client known by its
    server's address only is named by that server's export when one export of it is mounted.

A client of several exports (the NFSv4 state client, which renews the lease of every mount of a
server; on 6.1 and 5.10 any client of a server with two exports mounted) is named by its server only.
Only read (sysfs, debugfs, procfs); refresh() re-reads at most once a second. Thread-safe.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .names import RefreshGate

SYS_NFS = "/sys/fs/nfs"
SUNRPC = "/sys/kernel/sunrpc"
DEBUG_SUNRPC = "/sys/kernel/debug/sunrpc"
MOUNTINFO = "/proc/self/mountinfo"
MAX_ENTRIES = 4096  # directory entries looked at per source
MAX_FILE = 4096  # bytes read of a sysfs or debugfs file
MAX_MOUNTINFO = 4 << 20
MAX_NAME = 256  # characters of a name kept
_LINKS = ("nfs_client", "nfsacl_client", "nfs_state_client")
_DEV_RE = re.compile(r"\d{1,10}:\d{1,10}")
_CLNT_RE = re.compile(r"clnt-(\d{1,10})")
_SWITCH_RE = re.compile(r"switch-\d{1,10}")
_XPRT_RE = re.compile(r"\d{1,10}")
_ADDR_RE = re.compile(r"^addr:\s*(\S+)", re.M)
_ESC_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    dev: str  # "0:47", as /sys/fs/nfs names it
    export: str  # the mount's source: "server:/path"
    point: str
    addr: str  # its addr= option (the server's address), else the source's host


def _clean(s: str) -> str:
    """mountinfo's octal escapes decoded; control characters shown as '?'; at most MAX_NAME."""
    s = _ESC_RE.sub(lambda m: chr(int(m.group(1), 8)), s)
    return "".join(c if c.isprintable() else "?" for c in s[:MAX_NAME])


def host_of(export: str) -> str:
    """'srv:/x' -> 'srv', '[fe80::1]:/x' -> 'fe80::1'."""
    if export.startswith("["):
        return export[1:].partition("]")[0]
    return export.partition(":")[0]


def _mount(line: str) -> Optional[Mount]:
    """An nfs or nfs4 mount of a mountinfo line, else None."""
    left, sep, right = line.partition(" - ")
    f, r = left.split(" "), right.split(" ")
    if not sep or len(f) < 5 or len(r) < 3 or r[0] not in ("nfs", "nfs4") or not _DEV_RE.fullmatch(f[2]):
        return None
    export = _clean(r[1])
    opts = dict(o.partition("=")[::2] for o in r[2].split(","))
    return Mount(f[2], export, _clean(f[4]), _clean(opts.get("addr") or host_of(export)))


def parse_mountinfo(text: str) -> list[Mount]:
    """The nfs and nfs4 mounts of a /proc/<pid>/mountinfo text."""
    return [m for m in map(_mount, text.splitlines()) if m is not None]


def read_mounts(path: str = MOUNTINFO) -> list[Mount]:
    """The NFS mounts of a mountinfo file, line by line: other mounts (a user's FUSE mounts with
    long names) never push them out; at most MAX_MOUNTINFO bytes of NFS lines and MAX_ENTRIES mounts."""
    out: list[Mount] = []
    kept = 0
    try:
        with open(path, "rb") as f:
            for raw in f:
                if b" - nfs" not in raw:
                    continue
                kept += len(raw)
                m = _mount(raw.decode("utf-8", "replace").rstrip("\n"))
                if m is not None:
                    out.append(m)
                if kept > MAX_MOUNTINFO or len(out) >= MAX_ENTRIES:
                    break
    except OSError:
        pass
    return out


def _listdir(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for _, e in zip(range(MAX_ENTRIES), it)]
    except OSError:
        return []


def _link_name(path: str) -> str:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def client_mounts(root: str = SYS_NFS) -> dict[int, set[str]]:
    """client id -> the devs (maj:min) of the mounts whose clients it is."""
    out: dict[int, set[str]] = {}
    for dev in _listdir(root):
        if not _DEV_RE.fullmatch(dev):
            continue
        for link in _LINKS:
            m = _CLNT_RE.fullmatch(_link_name(os.path.join(root, dev, link)))
            if m:
                out.setdefault(int(m.group(1)), set()).add(dev)
    return out


def sysfs_addrs(root: str = SUNRPC) -> dict[int, str]:
    """client id -> its server's address(es), from /sys/kernel/sunrpc (local sockets left out);
    each transport switch read once however many clients share it."""
    out: dict[int, str] = {}
    clients = os.path.join(root, "rpc-clients")
    switches: dict[str, str] = {}
    for name in _listdir(clients):
        m = _CLNT_RE.fullmatch(name)
        switch = _link_name(os.path.join(clients, name, "switch")) if m else ""
        if not m or not _SWITCH_RE.fullmatch(switch):
            continue
        if switch not in switches:
            sw = os.path.join(root, "xprt-switches", switch)
            addrs = {_clean(_read(os.path.join(sw, x, "dstaddr"))) for x in _listdir(sw) if x.startswith("xprt-")}
            switches[switch] = ",".join(sorted(a for a in addrs if a and not a.startswith("/")))
        if switches[switch]:
            out[int(m.group(1))] = switches[switch]
    return out


def debugfs_addrs(root: str = DEBUG_SUNRPC) -> dict[int, str]:
    """client id -> its server's address, from debugfs (directories named by the id in hex)."""
    out: dict[int, str] = {}
    for name in _listdir(os.path.join(root, "rpc_clnt")):
        xprt = _link_name(os.path.join(root, "rpc_clnt", name, "xprt"))
        if not re.fullmatch(r"[0-9a-f]{1,8}", name) or not _XPRT_RE.fullmatch(xprt):
            continue
        m = _ADDR_RE.search(_read(os.path.join(root, "rpc_xprt", xprt, "info")))
        if m and not m.group(1).startswith("/"):
            out[int(name, 16)] = _clean(m.group(1))
    return out


class NfsNames:
    """NFS client ids -> server and export, refreshed at most once a second (names.Names' methods)."""

    def __init__(self, sys_nfs: str = SYS_NFS, sunrpc: str = SUNRPC, debug: str = DEBUG_SUNRPC,
                 mountinfo: str = MOUNTINFO, mono: Callable[[], float] = time.monotonic) -> None:
        self.paths = (sys_nfs, sunrpc, debug, mountinfo)
        self.lock = threading.Lock()
        self.gate = RefreshGate(mono)
        self._servers: dict[int, str] = {}
        self._exports: dict[int, str] = {}

    def refresh(self, force: bool = False) -> bool:
        if not self.gate.due(force):
            return False
        sys_nfs, sunrpc, debug, mountinfo = self.paths
        mounts = read_mounts(mountinfo)
        by_dev: dict[str, list[Mount]] = {}  # a superblock two mounts share (no nosharecache) has two
        by_addr: dict[str, set[str]] = {}
        for m in mounts:
            by_dev.setdefault(m.dev, []).append(m)
            by_addr.setdefault(m.addr, set()).add(m.export)
        servers: dict[int, str] = {}
        exports: dict[int, str] = {}
        linked = client_mounts(sys_nfs)
        for cl, devs in linked.items():  # a client of known mounts (6.12)
            mine = [m for d in devs for m in by_dev.get(d, ())]
            hosts, names = {m.addr for m in mine}, {m.export for m in mine}
            if len(hosts) == 1:
                servers[cl] = hosts.pop()
            if len(names) == 1:
                exports[cl] = names.pop()
        for cl, addr in (sysfs_addrs(sunrpc) or debugfs_addrs(debug)).items():  # by its server's address
            servers.setdefault(cl, addr)
            names = by_addr.get(addr, set())
            if not linked and len(names) == 1:  # where the kernel links mounts, a client it does not is none's
                exports[cl] = next(iter(names))
        with self.lock:
            self._servers, self._exports = servers, exports
        return True

    def share(self, sesid: int, tid: int) -> Optional[str]:
        """The export of client `sesid` (tid is the record's xid: not part of the name)."""
        with self.lock:
            return self._exports.get(int(sesid))

    def server(self, conn_id: int) -> Optional[str]:
        return None  # no NFS record is keyed by a connection

    def server_of_session(self, sesid: int) -> Optional[str]:
        with self.lock:
            return self._servers.get(int(sesid))

    def id_label(self, sesid: int, tid: int) -> str:
        """How an unnamed record is listed: its client id ('' for the transport events without one)."""
        return f"client {int(sesid)}" if sesid else ""

