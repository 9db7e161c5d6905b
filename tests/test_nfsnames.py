"""aod/nfsnames.py: NFS client ids named by server and export, on trees laid out as the three
Debian kernels lay them out (checked in the VM: Debian 13's /sys/fs/nfs/<dev> links, 6.1's
/sys/kernel/sunrpc, 5.10's debugfs only)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aod import hung, names, nfsnames
from aod.names import involved
from aod.record import KIND_COMPLETION, KIND_HEALTH, KIND_HUNG, TRACER_NFS, empty

# Debian 13 (6.12.118), the probe's mounts: v4.2 of /srv/nfs, v4.2 of /srv/nfs/sub, v3 of /srv/nfs
MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "83 29 0:47 / /mnt/nfs4 rw,relatime shared:100 - nfs4 127.0.0.1:/srv/nfs rw,vers=4.2,rsize=524288,hard,"
    "proto=tcp,timeo=10,retrans=2,sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1\n"
    "86 29 0:48 / /mnt/nfs4b rw,relatime shared:103 - nfs4 127.0.0.1:/srv/nfs/sub rw,vers=4.2,hard,nosharecache,"
    "proto=tcp,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1\n"
    "80 29 0:45 / /mnt/nfs3 rw,relatime shared:106 - nfs 127.0.0.1:/srv/nfs rw,vers=3,hard,nolock,proto=tcp,"
    "mountaddr=127.0.0.1,mountvers=3,mountport=47494,mountproto=udp,local_lock=all,addr=127.0.0.1\n"
)
# client -> switch (clnt-0/1 rpcbind over the local socket, 3 nfsd's callback client)
SWITCHES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 3, 6: 3, 7: 1, 8: 1}
DSTADDR = {0: ("xprt-1-local", "/var/run/rpcbind.sock"), 1: ("xprt-0-tcp", "127.0.0.1"),
           2: ("xprt-2-tcp", "127.0.0.1"), 3: ("xprt-3-tcp", "127.0.0.1")}
LINKS = {"0:45": {"nfs_client": 5, "nfs_state_client": 4, "nfsacl_client": 6},
         "0:47": {"nfs_client": 7, "nfs_state_client": 2}, "0:48": {"nfs_client": 8, "nfs_state_client": 2}}


def kernel_tree(root: Path, per_mount_links: bool = True, mountinfo: str = MOUNTINFO) -> nfsnames.NfsNames:
    sunrpc, sys_nfs = root / "sys/kernel/sunrpc", root / "sys/fs/nfs"
    (sys_nfs / "net/nfs_client").mkdir(parents=True)
    for sw, (xprt, addr) in DSTADDR.items():
        d = sunrpc / "xprt-switches" / f"switch-{sw}" / xprt
        d.mkdir(parents=True)
        (d / "dstaddr").write_text(addr + "\n")
    for cl, sw in SWITCHES.items():
        d = sunrpc / "rpc-clients" / f"clnt-{cl}"
        d.mkdir(parents=True)
        os.symlink(f"../../xprt-switches/switch-{sw}", d / "switch")
    if per_mount_links:
        for dev, links in LINKS.items():
            (sys_nfs / dev).mkdir()
            (sys_nfs / dev / "shutdown").write_text("0\n")
            for name, cl in links.items():
                os.symlink(f"../../../kernel/sunrpc/rpc-clients/clnt-{cl}", sys_nfs / dev / name)
    (root / "mountinfo").write_text(mountinfo)
    return nfsnames.NfsNames(str(sys_nfs), str(sunrpc), str(root / "debug/sunrpc"), str(root / "mountinfo"))


def named(n: nfsnames.NfsNames, cl: int) -> tuple[object, object]:
    return n.server_of_session(cl), n.share(cl, 0x1234)


def test_debian13_each_mount_client_is_its_export(tmp_path: Path) -> None:
    n = kernel_tree(tmp_path)
    assert n.refresh()
    assert named(n, 7) == ("127.0.0.1", "127.0.0.1:/srv/nfs")
    assert named(n, 8) == ("127.0.0.1", "127.0.0.1:/srv/nfs/sub")
    assert named(n, 5) == named(n, 6) == named(n, 4) == ("127.0.0.1", "127.0.0.1:/srv/nfs")  # v3, its acl, state
    assert named(n, 2) == ("127.0.0.1", None)  # the v4 state client renews both exports' lease
    assert named(n, 3) == ("127.0.0.1", None)  # linked to no mount: not guessed from its address
    assert named(n, 0) == (None, None)  # rpcbind over a local socket


def test_debian12_clients_known_by_address_only(tmp_path: Path) -> None:
    """No /sys/fs/nfs/<dev>: a client is named by its server, and by the export when that server
    has one export mounted."""
    n = kernel_tree(tmp_path, per_mount_links=False)
    n.refresh()
    assert named(n, 7) == ("127.0.0.1", None)  # /srv/nfs and /srv/nfs/sub: which one is not known
    one = "".join(ln + "\n" for ln in MOUNTINFO.splitlines() if "/srv/nfs/sub" not in ln)
    m = kernel_tree(tmp_path / "one", per_mount_links=False, mountinfo=one)
    m.refresh()
    assert named(m, 7) == named(m, 2) == ("127.0.0.1", "127.0.0.1:/srv/nfs")


def test_debian11_debugfs_only(tmp_path: Path) -> None:
    """5.10: no /sys/kernel/sunrpc; debugfs names clients in hex, their transport's info has addr."""
    dbg = tmp_path / "debug/sunrpc"
    for cl, xprt in ((10, 3), (2, 1)):
        d = dbg / "rpc_clnt" / format(cl, "x")
        d.mkdir(parents=True)
        os.symlink(f"../../rpc_xprt/{xprt}", d / "xprt")
    for xprt, addr in ((3, "192.0.2.7"), (1, "/var/run/rpcbind.sock")):
        d = dbg / "rpc_xprt" / str(xprt)
        d.mkdir(parents=True)
        (d / "info").write_text(f"netid: tcp\naddr: {addr}\nport: 2049\nstate: 0x12\n")
    (tmp_path / "mountinfo").write_text("80 29 0:45 / /mnt/a\\040b rw - nfs 192.0.2.7:/exp rw,vers=3,addr=192.0.2.7\n")
    n = nfsnames.NfsNames(str(tmp_path / "none"), str(tmp_path / "none"), str(dbg), str(tmp_path / "mountinfo"))
    n.refresh()
    assert named(n, 10) == ("192.0.2.7", "192.0.2.7:/exp") and named(n, 2) == (None, None)


def test_mountinfo_parsing_is_strict_and_escapes_decoded() -> None:
    text = ("80 29 0:45 / /mnt/my\\040share rw - nfs [fe80::1]:/x\\012y rw,vers=3\n"
            "81 29 0:46 / /mnt/c rw - cifs //srv/share rw,addr=10.0.0.1\n"
            "garbage line without the separator\n"
            "82 29 notadev / /mnt/d rw - nfs4 h:/e rw,addr=1.2.3.4\n")
    (m,) = nfsnames.parse_mountinfo(text)
    assert (m.dev, m.point, m.export, m.addr) == ("0:45", "/mnt/my share", "[fe80::1]:/x?y", "fe80::1")


def test_nothing_readable_names_nothing(tmp_path: Path) -> None:
    now = [5.0]
    n = nfsnames.NfsNames(*(str(tmp_path / p) for p in ("a", "b", "c", "d")), mono=lambda: now[0])
    assert n.refresh() and named(n, 7) == (None, None)
    assert not n.refresh()  # at most once a second
    assert n.refresh(force=True) is False  # forced: at most every FORCED_MIN_SEC
    now[0] += 2 * names.FORCED_MIN_SEC
    assert n.refresh(force=True) and not n.refresh()


def test_nfs_anomaly_details_name_server_and_export(tmp_path: Path) -> None:
    n = kernel_tree(tmp_path)
    rows = empty(4)
    rows["tracer_id"] = TRACER_NFS
    rows["kind"] = [KIND_COMPLETION, KIND_COMPLETION, KIND_HUNG, KIND_HEALTH]
    rows["session_id"] = [7, 8, 99, 0]  # 99: a client gone; 0: a transport event without one
    rows["tree_id"] = [0x11, 0x12, 0x13, 0x14]  # xids
    rows["command"] = [0x0401, 0x0401, 0x0401, 11]
    got = involved(n, rows)
    assert got == {"servers": ["127.0.0.1"], "shares": ["127.0.0.1:/srv/nfs", "127.0.0.1:/srv/nfs/sub"],
                   "unnamed": ["client 99"]}
    h = hung.details(rows[:3], n, 3000.0, 0.0)
    assert [(r["share"], r["server"]) for r in h["requests"]] == [
        ("127.0.0.1:/srv/nfs", "127.0.0.1"), ("127.0.0.1:/srv/nfs/sub", "127.0.0.1"), (None, None)]
    assert np.array_equal(rows["session_id"], [7, 8, 99, 0])


def test_the_nfs_detector_names_its_anomalies(tmp_path: Path) -> None:
    from aod import config
    from aod.detectsplit import Detectors

    d = Detectors(config.load_text("latency: {acceptable_count: 3}\nnfs: {default_threshold_ms: 100}"),
                  mono=lambda: 10**12, nfs_names=kernel_tree(tmp_path))
    batch = empty(3)
    batch["tracer_id"], batch["kind"], batch["command"], batch["session_id"] = TRACER_NFS, KIND_COMPLETION, 0x0401, 8
    batch["latency_ns"], batch["ts_ns"] = 300 * 10**6, 10**12 + np.arange(3)
    (a,) = d.immediate(batch)
    assert a.key == "nfs_latency" and a.details["servers"] == ["127.0.0.1"]
    assert a.details["shares"] == ["127.0.0.1:/srv/nfs/sub"]


def test_two_mounts_of_one_superblock_name_the_server_only(tmp_path: Path) -> None:
    """Without nosharecache, mounts of one server filesystem share a superblock (one dev, one client):
    which export a request was for is not known (review finding)."""
    sys_nfs = tmp_path / "nfs"
    (sys_nfs / "0:47").mkdir(parents=True)
    os.symlink("../../clnt-7", sys_nfs / "0:47" / "nfs_client")
    mi = tmp_path / "mountinfo"
    mi.write_text("83 29 0:47 / /mnt/a rw - nfs4 192.0.2.7:/srv/nfs rw,vers=4.2,addr=192.0.2.7\n"
                  "86 29 0:47 /sub /mnt/b rw - nfs4 192.0.2.7:/srv/nfs/sub rw,vers=4.2,addr=192.0.2.7\n")
    n = nfsnames.NfsNames(str(sys_nfs), str(tmp_path / "s"), str(tmp_path / "d"), str(mi))
    n.refresh()
    assert named(n, 7) == ("192.0.2.7", None)


def test_records_of_no_client_force_no_refresh(tmp_path: Path) -> None:
    """A transport event has no client (session_id 0): nothing to look up again (review finding: every
    NFS anomaly re-read every source a second time)."""
    now = [5.0]
    n = nfsnames.NfsNames(*(str(tmp_path / p) for p in ("a", "b", "c", "d")), mono=lambda: now[0])
    reads = []
    real = n.gate.due
    n.gate.due = lambda force=False: reads.append(force) or real(force)  # type: ignore[method-assign]
    rows = empty(2)
    rows["tracer_id"], rows["kind"], rows["command"], rows["tree_id"] = TRACER_NFS, KIND_HEALTH, 10, [0x1234, 0x99]
    now[0] += 1.0
    assert involved(n, rows) == {"servers": [], "shares": [], "unnamed": []}
    assert reads == [False]
    rows["session_id"] = 7  # a client not known: one forced re-read
    now[0] += 1.0
    involved(n, rows)
    assert reads == [False, False, True]  # one try for the batch, not one per record


def test_long_foreign_mounts_never_push_nfs_mounts_out(tmp_path: Path) -> None:
    """A user's FUSE mounts with long escaped names ahead of the NFS ones (review finding: a byte cap on
    the whole file hid them)."""
    long_point = "/home/u/" + "\\040" * 4000
    other = f"40 29 0:60 / {long_point} rw,nosuid - fuse.sshfs u@h:/ rw,user_id=1000\n"
    mi = tmp_path / "mountinfo"
    mi.write_text(other * 300 + MOUNTINFO)
    assert mi.stat().st_size > nfsnames.MAX_MOUNTINFO
    got = nfsnames.read_mounts(str(mi))
    assert [m.point for m in got] == ["/mnt/nfs4", "/mnt/nfs4b", "/mnt/nfs3"]


def test_a_switch_shared_by_many_clients_is_read_once(tmp_path: Path) -> None:
    kernel_tree(tmp_path)
    seen: list[str] = []
    real = nfsnames._read

    def counting(path: str) -> str:
        seen.append(path)
        return real(path)

    import pytest

    mp = pytest.MonkeyPatch()
    mp.setattr(nfsnames, "_read", counting)
    try:
        got = nfsnames.sysfs_addrs(str(tmp_path / "sys/kernel/sunrpc"))
    finally:
        mp.undo()
    assert got == {c: "127.0.0.1" for c in range(2, 9)}  # clnt-0/1: rpcbind over the local socket
    assert len(seen) == len(DSTADDR)  # one dstaddr per switch, not per client


def test_aodv2_show_names_the_exports_of_an_nfs_bundle() -> None:
    from aod.bundleread import BundleView
    from aod.bundleshow import format_show

    anomaly = {"type": "latency", "protocol": "nfs", "rule": "r", "count": 3, "commands": ["NFSv4 READ"],
               "servers": ["192.0.2.7"], "shares": ["192.0.2.7:/srv/a", "192.0.2.7:/srv/b"]}
    view = BundleView(path="/x/aod_nfslatency_1.tar.zst", size=1, members=[], summary={"anomaly": anomaly})
    out = format_show(view).splitlines()
    assert "servers    192.0.2.7" in out and "exports    192.0.2.7:/srv/a, 192.0.2.7:/srv/b" in out
    anomaly.update(protocol="smb", shares=["\\\\fs1\\data"])
    assert "shares     \\\\fs1\\data" in format_show(view).splitlines()


def test_status_names_each_counters_map() -> None:
    from aod.status import format_text

    def line(source: object) -> str:
        text = format_text({"counters": {"source": source, "available": True, "reason": ""}}, "running", "ok")
        return next(ln for ln in text.splitlines() if "counters:" in ln).strip()

    assert line(["cmd_stats_v2", "nfs_stats_v1"]) == "counters: cmd_stats_v2, nfs_stats_v1"
    assert line(["", "nfs_stats_v1"]) == "counters: nfs_stats_v1"
    assert line("/run/aodv2/ring") == "counters: ring"  # a status file of an older core
    assert line(["", ""]) == "counters: -"
