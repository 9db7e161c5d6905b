"""Names of servers and shares: /proc/fs/cifs/DebugData as 5.10 and current kernels print it, the
tracer's pinned servers_v1/trees_v1 maps (their byte layout), records -> names, share labels."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from aod import bpfsys, names
from aod.dispatch import Columns
from aod.names import Names, involved, parse_debugdata, read_pinned, share_label
from aod.record import CMD_NONE, KIND_ERROR, KIND_HEALTH, KIND_RECONNECT, TREE_KEY_DTYPE, empty
from aod.sharelabels import OTHER, ShareTotals
from aod.watch import Tally

# fs/smb/client/cifs_debug.c (6.x): a session without domain info ("Address:"), an encrypted one
# with it ("Name:"), an extra channel whose ConnectionId is indented, the MIDs section
CURRENT = """Display Internal CIFS Data Structures for Debugging
---------------------------------------------------
CIFS Version 2.47
Features: DFS,FSCACHE,STATS2,DEBUG,ALLOW_INSECURE_LEGACY,CIFS_POSIX,UPCALL(SPNEGO),XATTR,ACL,WITNESS
CIFSMaxBufSize: 16384
Active VFS Requests: 1

Servers:$
1) ConnectionId: 0x1 Hostname: fs1.example.com$
ClientGUID: 5F3E3C1A-0000-0000-0000-000000000000
Number of credits: 8190,1,1 Dialect 0x311 signed
Server capabilities: 0x300067
TCP status: 1 Instance: 1
Local Users To Server: 1 SecMode: 0x1 Req On Wire: 1 Net namespace: 4026531840
In Send: 0 In MaxReq Wait: 0

\tSessions:$
\t1) Address: 10.0.0.5 Uses: 1 Capability: 0x300067\tSession Status: 1$
\tSecurity type: RawNTLMSSP  SessionId: 0x9c0a1b2c3d signed
\tUser: 0 Cred User: 0

\tExtra Channels: 1$

\t\tChannel: 2 ConnectionId: 0x7
\t\tNumber of credits: 512 Dialect 0x311

\tShares:$
\t0) IPC: \\\\fs1.example.com\\IPC$ Mounts: 1 DevInfo: 0x0 Attributes: 0x0
\tPathComponentMax: 0 Status: 1 type: 0 Serial Number: 0x0
\tShare Capabilities: None\tShare Flags: 0x0
\ttid: 0x1\tMaximal Access: 0x1f00a9

\t1) \\\\fs1.example.com\\data Mounts: 2 Type: NTFS DevInfo: 0x20 Attributes: 0x1006f
\tPathComponentMax: 255 Status: 1 type: DISK Serial Number: 0x9a1b
\tShare Capabilities: None Aligned, Partition Aligned,\tShare Flags: 0x800
\ttid: 0x5\tOptimal sector size: 0x200\tMaximal Access: 0x1f01ff

\tMIDs:$
\tServer ConnectionId: 0x1
\t\tState: 2 com: 9 pid: 4242 cbdata: 00000000a1b2c3d4 mid 37

2) ConnectionId: 0x2 Hostname: 10.0.0.9$
Number of credits: 512 Dialect 0x302
TCP status: 1 Instance: 3

\tSessions:$
\t1) Name: 10.0.0.9  Domain: CORP Uses: 1 OS: Windows$
\tNOS: Windows\tCapability: 0x300047
\tSMB session status: 1$
\tSecurity type: Kerberos  SessionId: 0x4400000000a1 encrypted
\tUser: 1000 Cred User: 1000

\tShares:$
\t0) IPC: \\\\10.0.0.9\\IPC$ Mounts: 1 DevInfo: 0x0 Attributes: 0x0
\tPathComponentMax: 0 Status: 1 type: 0 Serial Number: 0x0
\tShare Capabilities: None\tShare Flags: 0x30
\ttid: 0x1\tMaximal Access: 0x1f00a9

\t1) \\\\10.0.0.9\\home Mounts: 1 DevInfo: 0x20 Attributes: 0x1006f
\tPathComponentMax: 255 Status: 1 type: DISK Serial Number: 0x1
\tShare Capabilities: None\tShare Flags: 0x0
\ttid: 0x9\tMaximal Access: 0x1f01ff\tDISCONNECTED$
""".replace("$\n", " \n")  # the kernel ends many lines with a space

# 5.10's fs/cifs/cifs_debug.c: no ClientGUID, "Features: DFS,FSCACHE,STATS,...", "PathComponentMax"
# spelt as then, no Extra Channels
V5_10 = """Display Internal CIFS Data Structures for Debugging
---------------------------------------------------
CIFS Version 2.29
Features: DFS,FSCACHE,STATS,DEBUG,ALLOW_INSECURE_LEGACY,WEAK_PW_HASH,CIFS_POSIX,UPCALL(SPNEGO),XATTR,ACL
CIFSMaxBufSize: 16384
Active VFS Requests: 0
Servers:$
1) ConnectionId: 0x3 Hostname: 127.0.0.1$
Number of credits: 8190 Dialect 0x311
TCP status: 1 Instance: 1
Local Users To Server: 1 SecMode: 0x1 Req On Wire: 0
In Send: 0 In MaxReq Wait: 0

\tSessions:$
\t1) Address: 127.0.0.1 Uses: 1 Capability: 0x300045\tSession Status: 1$
\tSecurity type: RawNTLMSSP
\tSessionId: 0x1c9b6e89
\tUser: 0 Cred User: 0

\tShares:$
\t0) IPC: \\\\127.0.0.1\\IPC$ Mounts: 1 DevInfo: 0x0 Attributes: 0x0
\tPathComponentMax: 0 Status: 1 type: 0 Serial Number: 0x0
\tShare Capabilities: None\tShare Flags: 0x30
\ttid: 0x1\tMaximal Access: 0x1f00a9

\t1) \\\\127.0.0.1\\share Mounts: 1 Type: NTFS DevInfo: 0x20 Attributes: 0x1006f
\tPathComponentMax: 255 Status: 1 type: DISK Serial Number: 0x5a1
\tShare Capabilities: None Aligned, Partition Aligned,\tShare Flags: 0x0
\ttid: 0x5\tOptimal sector size: 0x200\tMaximal Access: 0x1f01ff

\tMIDs:$
""".replace("$\n", " \n")


def test_debugdata_of_a_current_kernel() -> None:
    dd = parse_debugdata(CURRENT)
    assert dd.servers == {1: "fs1.example.com", 2: "10.0.0.9"}  # channel 0x7 is no server of its own
    assert dd.sessions == {0x9C0A1B2C3D: "fs1.example.com", 0x4400000000A1: "10.0.0.9"}
    assert dd.shares == {(0x9C0A1B2C3D, 1): "\\\\fs1.example.com\\IPC$", (0x9C0A1B2C3D, 5): "\\\\fs1.example.com\\data",
                         (0x4400000000A1, 1): "\\\\10.0.0.9\\IPC$", (0x4400000000A1, 9): "\\\\10.0.0.9\\home"}
    assert "STATS2" in dd.features


def test_debugdata_of_5_10() -> None:
    dd = parse_debugdata(V5_10)
    assert dd.servers == {3: "127.0.0.1"}
    assert dd.shares[(0x1C9B6E89, 5)] == "\\\\127.0.0.1\\share"
    assert dd.sessions == {0x1C9B6E89: "127.0.0.1"}
    assert "STATS" in dd.features and "STATS2" not in dd.features


def test_debugdata_garbage_and_truncation_never_raise() -> None:
    assert parse_debugdata("").servers == {}
    cut = CURRENT[: CURRENT.index("tid: 0x5")]  # the data share's tid line cut off
    assert (0x9C0A1B2C3D, 5) not in parse_debugdata(cut).shares


def _pinned(monkeypatch: pytest.MonkeyPatch, servers: dict[int, str], trees: dict[tuple[int, int], str]) -> None:
    def items(path: str, limit: int) -> tuple[list[tuple[bytes, bytes]], bool]:
        if path.endswith("servers_v1"):
            return [(struct.pack("<Q", c), h.encode().ljust(64, b"\0")) for c, h in servers.items()], False
        if path.endswith("trees_v1"):
            out = []
            for (s, t), unc in trees.items():
                key = np.zeros(1, TREE_KEY_DTYPE)
                key["sesid"], key["tid"] = s, t
                out.append((key.tobytes(), unc.encode().ljust(128, b"\0")))
            return out, False
        raise OSError(2, "no such pin")

    monkeypatch.setattr(bpfsys, "map_items", items)


def test_pinned_maps_are_read_with_their_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    _pinned(monkeypatch, {0x10: "nas"}, {(0xABCDEF0123, 0x77): "\\\\nas\\proj"})
    assert read_pinned("/sys/fs/bpf/aodv2") == ({0x10: "nas"}, {(0xABCDEF0123, 0x77): "\\\\nas\\proj"})


def test_names_merge_pins_and_debugdata(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    _pinned(monkeypatch, {0x10: "nas"}, {(0xABCDEF0123, 0x77): "\\\\nas\\proj"})
    dd = tmp_path / "DebugData"
    dd.write_text(V5_10)
    t = [0.0]
    n = Names("/sys/fs/bpf/aodv2", debugdata=str(dd), mono=lambda: t[0])
    assert n.refresh()
    assert n.share(0xABCDEF0123, 0x77) == "\\\\nas\\proj"  # pinned
    assert n.share(0x1C9B6E89, 5) == "\\\\127.0.0.1\\share"  # a mount older than the tracer
    assert n.server(0x10) == "nas" and n.server(3) == "127.0.0.1"
    assert n.server_of_session(0xABCDEF0123) == "nas"  # from the UNC
    assert share_label(n, 0x1C9B6E89, 99) == "127.0.0.1" and share_label(n, 1, 2) == "unknown"
    dd.write_text(CURRENT)
    assert not n.refresh() and n.server(1) is None  # at most once a second
    t[0] = 1.5
    assert n.refresh() and n.server(1) == "fs1.example.com"


def test_involved_names_the_servers_and_shares_of_records(monkeypatch: pytest.MonkeyPatch) -> None:
    _pinned(monkeypatch, {0x10: "nas"}, {(0xAB, 0x7): "\\\\nas\\proj"})
    n = Names("/pins", debugdata="/nonexistent")
    e = empty(4)
    e["kind"] = [KIND_ERROR, KIND_RECONNECT, KIND_HEALTH, KIND_ERROR]
    e["command"] = [9, CMD_NONE, 4, 9]
    e["session_id"] = [0xAB, 0x10, 0x10, 0xCD]
    e["tree_id"] = [0x7, 0, 0, 0x3]
    got = involved(n, e)
    assert got == {"servers": ["nas"], "shares": ["\\\\nas\\proj"], "unnamed": ["session 0xcd tree 0x3"]}


def test_share_labels_are_bounded_and_fold_into_other() -> None:
    t = ShareTotals(cap=2)
    for s in ("a", "b", "c"):
        t.add_errors({(s, 9, 0xC00000B5): 1})
    snap = t.snapshot()["errors"]
    assert snap == {f"b|9|{0xC00000B5}": 1, f"c|9|{0xC00000B5}": 1, f"{OTHER}|9|{0xC00000B5}": 1}
    t.add_slow("d", np.array([10, 10]), 2000)
    assert set(t.snapshot()["slow"]) == {"d"} and len(t.recent) == 2


def test_tally_counts_errors_and_slow_completions_per_share(monkeypatch: pytest.MonkeyPatch) -> None:
    _pinned(monkeypatch, {}, {(0xAB, 0x7): "\\\\nas\\proj"})
    tally = Tally(Names("/pins", debugdata="/nonexistent"))
    tally.names.refresh()  # type: ignore[union-attr]
    e = empty(3)
    e["kind"] = [KIND_ERROR, 1, 1]
    e["command"] = 9
    e["session_id"] = 0xAB
    e["tree_id"] = [0x7, 0x7, 0x8]
    e["latency_ns"] = [5_000_000, 600_000_000, 700_000_000]
    e["nt_status"] = [0xC00000B5, 0, 0]
    tally.add(e, Columns.of(e))
    snap = tally.labels.snapshot()
    assert snap["errors"] == {f"\\\\nas\\proj|9|{0xC00000B5}": 1}
    assert sum(snap["slow"]["\\\\nas\\proj"]["hist"]) == 1
    assert sum(snap["slow"]["nas"]["hist"]) == 1  # tree 8 is unknown: its session's server
    assert names.MAX_NAMED >= 10
