"""bpf/nfs.bpf.c compiled as a plain shared library against test_tracer's bcc stand-ins (maps as
arrays, the ring a buffer, clock and task test-controlled): pairing by task, the program filter,
procedure codes, issuer kept for async calls, errors and benign statuses, the in-flight entry
for the aging scan, restarts, and the transport events."""

from __future__ import annotations

import ctypes
import errno
import struct
from pathlib import Path

import numpy as np
import pytest
from test_tracer import CC, MS, Sim

from aod import nfsproc
from aod.record import (
    HEALTH_RPC_RETRANSMIT,
    HEALTH_XPRT_TIMEOUT,
    INFLIGHT_KEY_DTYPE,
    INFLIGHT_START_DTYPE,
    KIND_COMPLETION,
    KIND_ERROR,
    KIND_HEALTH,
    NFS_SLOTS,
    TRACER_NFS,
    hist_bucket,
)

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")
OPTIONAL = ["AOD_HAVE_RPC_TASK_COMPLETE", "AOD_HAVE_XPRT_RETRANSMIT", "AOD_HAVE_XPRT_TIMER",
            "AOD_HAVE_XPRT_DISCONNECT_AUTO", "AOD_HAVE_XPRT_DISCONNECT_FORCE", "AOD_HAVE_XPRT_CONNECT"]


class NfsSim(Sim):
    def __init__(self, tmp: Path, emit_min_ns: int = 0, defines: tuple[str, ...] = tuple(OPTIONAL)) -> None:
        super().__init__(tmp, "nfs.bpf.c", ["AOD_INFLIGHT_MAX=64", *defines])
        self.emit_cfg(emit_min_ns, 1 << 31)
        keys, vals, used = self.table("procs", 256, 4 + nfsproc.NAME_LEN, 2)
        for i, (key, code) in enumerate(nfsproc.name_keys()):  # what front_nfs.setup loads
            ctypes.memmove(ctypes.addressof(keys) + i * len(key), key, len(key))
            struct.pack_into("<H", vals, 2 * i, code)
            used[i] = 1

    def rpc(self, event: str, task: int, client: int = 7, prog: bytes = b"nfs", proc: bytes = b"READ",
            **kw: int) -> None:
        self.tp(event, {"progname": prog, "procname": proc}, system="sunrpc", task_id=task, client_id=client, **kw)

    def call(self, task: int, proc: bytes, version: int = 4, lat_us: int = 1000, status: int = 0,
             prog: bytes = b"nfs", xid: int = 0x1000) -> None:
        """One RPC from rpc_task_begin to rpc_task_complete; lat_us passes between begin and end."""
        self.rpc("rpc_task_begin", task, prog=prog)
        self.rpc("rpc_request", task, prog=prog, proc=proc, version=version)
        self.now.value += lat_us * 1000
        self.rpc("rpc_task_end", task, status=status)
        self.rpc("rpc_stats_latency", task, prog=prog, proc=proc, version=version, xid=xid, execute=lat_us)
        self.rpc("rpc_task_complete", task)

    def inflight(self) -> list[tuple[dict, dict]]:
        keys, vals, used = self.table("inflight", 64, INFLIGHT_KEY_DTYPE.itemsize, INFLIGHT_START_DTYPE.itemsize)
        k = np.frombuffer(bytes(keys), INFLIGHT_KEY_DTYPE)
        v = np.frombuffer(bytes(vals), INFLIGHT_START_DTYPE)
        return [(dict(zip(k.dtype.names, k[i].item())), dict(zip(v.dtype.names, v[i].item())))
                for i in range(64) if used[i]]

    def set_ignored(self, *statuses: int) -> None:
        keys, vals, used = self.table("ignored_status", 256, 4, 4)
        for i, st in enumerate(statuses):
            struct.pack_into("<I", keys, 4 * i, st)
            struct.pack_into("<I", vals, 4 * i, 1)
            used[i] = 1


def test_completion_pairs_by_task_with_the_issuer_and_the_code(tmp_path: Path) -> None:
    s = NfsSim(tmp_path, emit_min_ns=5 * MS)
    s.now.value = 10**12
    s.task(4242, b"dd")  # the issuer at rpc_task_begin
    s.rpc("rpc_task_begin", 1)
    s.task(99, b"kworker/u4:2")  # an async call runs on in rpciod
    s.rpc("rpc_request", 1, proc=b"WRITE", version=3)
    assert s.inflight()[0][0] == {"conn": 7, "sesid": 7, "mid": 1, "cmd": 0x0307, "pad": 0, "pad2": 0}
    s.now.value += 20 * MS
    s.rpc("rpc_task_end", 1, status=0)
    assert s.inflight() == []  # out of flight at the end of the call
    s.rpc("rpc_stats_latency", 1, proc=b"WRITE", version=3, xid=0xABC, execute=20_000)
    s.rpc("rpc_task_complete", 1)
    (ev,) = s.events()
    assert (ev["kind"], ev["tracer_id"], ev["command"]) == (KIND_COMPLETION, TRACER_NFS, 0x0307)
    assert (ev["pid"], ev["comm"], ev["latency_ns"]) == (4242, b"dd", 20 * MS)
    assert (ev["session_id"], ev["mid"], ev["tree_id"]) == (7, 1, 0xABC)  # mid: the task; tree_id: the xid
    st = s.stats(NFS_SLOTS)[nfsproc.slot(0x0307)]
    assert st["hist"][hist_bucket(np.array([20 * MS]))[0]] == 1 and st["latency_sum_ns"] == 20 * MS


def test_emit_filter_other_programs_and_unknown_names(tmp_path: Path) -> None:
    s = NfsSim(tmp_path, emit_min_ns=5 * MS)
    s.call(1, b"GETATTR", lat_us=100)  # under the filter: histogram only
    s.call(2, b"GETPORT", prog=b"rpcbind", lat_us=9000)  # not NFS: nothing at all
    s.call(3, b"NULL", prog=b"nfs4_cb", lat_us=9000)  # the in-guest nfsd's callback client
    s.call(4, b"NEW_OP_2030", lat_us=9000)  # a name nfsproc lacks: NFSv4 ?
    ev = s.events()
    assert ev["command"].tolist() == [0x04FF]
    stats = s.stats(NFS_SLOTS)
    assert stats[nfsproc.slot(0x0412)]["hist"].sum() == 1  # v4 GETATTR counted
    assert stats["hist"].sum() == 2 and s.inflight() == []


def test_errors_benign_and_nfs4_statuses(tmp_path: Path) -> None:
    s = NfsSim(tmp_path)
    s.set_ignored(errno.ENOENT)
    s.call(1, b"LOOKUP", status=-errno.ENOENT)  # benign: a completion
    s.call(2, b"READ", status=-errno.ESTALE)
    s.call(3, b"OPEN", status=-10008)  # NFS4ERR_DELAY: no errno for it
    ev = s.events()
    errs = ev[ev["kind"] == KIND_ERROR]
    assert errs["command"].tolist() == [0x0401, 0x0404]
    assert errs["err"].tolist() == [errno.ESTALE, 0] and errs["nt_status"].tolist() == [0, 10008]
    assert (ev["kind"] == KIND_COMPLETION).sum() == 1  # the benign LOOKUP (emit filter 0)
    stats = s.stats(NFS_SLOTS)
    assert stats[nfsproc.slot(0x0413)]["ignored"] == 1 and stats["errors"].sum() == 2


def test_restart_keeps_the_first_start_and_hangs_stay_in_flight(tmp_path: Path) -> None:
    """A call the client restarts (NFS4ERR_DELAY) is in flight again with its first start, so the
    aging scan sees its whole age; a call that never ends stays in flight."""
    s = NfsSim(tmp_path)
    s.now.value = 10**12
    s.rpc("rpc_task_begin", 5)
    s.rpc("rpc_request", 5, proc=b"READ", version=4)
    s.now.value += MS
    s.rpc("rpc_task_end", 5, status=-10008)
    s.now.value += MS
    s.rpc("rpc_request", 5, proc=b"READ", version=4)  # restarted
    (key, start), = s.inflight()
    assert key["cmd"] == 0x0401 and start["ts"] == 10**12
    s.rpc("rpc_task_begin", 6)
    s.rpc("rpc_request", 6, proc=b"COMMIT", version=3)
    assert len(s.inflight()) == 2


def test_without_rpc_task_complete(tmp_path: Path) -> None:
    """5.10-like event set: still paired, still out of flight at the end."""
    s = NfsSim(tmp_path, defines=("AOD_HAVE_XPRT_TIMER",))
    s.rpc("rpc_task_begin", 1)
    s.rpc("rpc_request", 1, proc=b"READ", version=3)
    s.rpc("rpc_task_end", 1, status=0)
    s.rpc("rpc_stats_latency", 1, proc=b"READ", version=3, execute=50)
    assert s.inflight() == [] and s.events()["command"].tolist() == [0x0306]
    assert not hasattr(s.lib, "tracepoint__sunrpc__xprt_retransmit")


def test_transport_events(tmp_path: Path) -> None:
    s = NfsSim(tmp_path)
    s.rpc("rpc_task_begin", 3)
    s.rpc("xprt_retransmit", 3, proc=b"READ", version=4, xid=0x77, ntrans=2)
    s.rpc("xprt_retransmit", 4, prog=b"lockd", proc=b"LOCK", version=4, xid=0x78, ntrans=2)  # not NFS
    s.tp("xprt_timer", system="sunrpc", xid=0x77, status=-errno.ETIMEDOUT)
    ev = s.events()
    assert (ev["kind"] == KIND_HEALTH).all()
    assert ev["command"].tolist() == [HEALTH_RPC_RETRANSMIT, HEALTH_XPRT_TIMEOUT]
    assert ev["tree_id"].tolist() == [0x77, 0x77] and ev["mid"][0] == 3
    assert ev["latency_ns"][0] == 2 and ev["err"][1] == errno.ETIMEDOUT


def test_a_restart_of_a_reported_hung_call_is_not_reported_again(tmp_path: Path) -> None:
    """The aging scan moved the call to `hung` (reported once); the client restarts it (NFS4ERR_GRACE):
    it goes back into `hung`, not the LRU the scan reads, so no second hung record."""
    s = NfsSim(tmp_path)
    s.rpc("rpc_task_begin", 9)
    s.rpc("rpc_request", 9, proc=b"OPEN", version=4)
    ((key, start),) = s.inflight()
    kb, vb, ub = s.table("inflight", 64, INFLIGHT_KEY_DTYPE.itemsize, INFLIGHT_START_DTYPE.itemsize)
    hk, hv, hu = s.table("hung", 4096, INFLIGHT_KEY_DTYPE.itemsize, INFLIGHT_START_DTYPE.itemsize)
    i = next(j for j in range(64) if ub[j])  # what aging.Scanner._move does: insert into hung, delete from the LRU
    n = INFLIGHT_KEY_DTYPE.itemsize
    ctypes.memmove(ctypes.addressof(hk), bytes(kb)[i * n:(i + 1) * n], n)
    m = INFLIGHT_START_DTYPE.itemsize
    ctypes.memmove(ctypes.addressof(hv), bytes(vb)[i * m:(i + 1) * m], m)
    hu[0], ub[i] = 1, 0
    s.rpc("rpc_task_end", 9, status=-10013)  # NFS4ERR_GRACE: the client will restart it
    assert hu[0] == 0  # out of flight at the end
    s.rpc("rpc_request", 9, proc=b"OPEN", version=4)  # restarted
    assert s.inflight() == [] and hu[0] == 1  # back in hung, not in the scanned LRU
    s.rpc("rpc_task_end", 9, status=0)
    assert hu[0] == 0 and s.inflight() == []


def test_the_aging_scan_never_calls_an_excluded_nfs_procedure_hung(tmp_path: Path) -> None:
    """Every NFS code shares the last bit of the command mask, so the nfs tracer's live config
    (TracerLive over the nfs front's view) gives the scan the exact codes (config.hung_codes): an
    excluded procedure stays in flight, unreported."""
    import threading

    from test_aging import SELF, SimMaps, sim_emitter

    from aod import config as config_mod
    from aod import front_nfs, tracerlive
    from aod.record import KIND_HUNG

    s = NfsSim(tmp_path, defines=(*OPTIONAL, f"AOD_SELF_TGID={SELF}"))
    logged: list[str] = []
    live = tracerlive.TracerLive(None, None, lambda lv, m: logged.append(m), threading.Event(),
                                 lambda obj: (SimMaps(s), sim_emitter(s), lambda: 0), name="nfs",
                                 view=front_nfs.FRONT.live.view)
    assert live.thread is not None
    sc = live.thread.scanner
    sc.clock = lambda: s.now.value
    conf = live.apply(config_mod.load_text("nfs: {hung_threshold_ms: 1000, exclude: [NFSv4 NULL, NFSv4 LOCK]}\n"))
    assert conf["hung_threshold_ns"] == 1000 * MS and conf["hung_cmd_mask"] == 1 << 31  # the state file's view
    s.now.value = 10**12
    for task, proc in ((1, b"LOCK"), (2, b"READ")):
        s.rpc("rpc_task_begin", task)
        s.rpc("rpc_request", task, proc=proc, version=4)
    s.now.value += 5000 * MS
    assert sc.scan() == 1
    hung = s.events()
    assert [(int(e["kind"]), int(e["command"])) for e in hung] == [(KIND_HUNG, nfsproc.lookup("NFSv4 READ"))]
    assert [k["cmd"] for k, _ in s.inflight()] == [nfsproc.lookup("NFSv4 LOCK")]  # left alone
    assert sc.scan() == 0
