"""Ring layer: file ring writer, RingReader (file and pinned paths), counters, bpfsys packing."""

from __future__ import annotations

import errno
import multiprocessing
import os
import struct
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aod import bpfsys, counters, record, ring, ringfile
from aod.ring import REC_SIZE, RingError, RingReader
from aod.ringfile import FileRingWriter


def make_ring(tmp_path: Path, size: int = 4096) -> str:
    p = str(tmp_path / "ring")
    ringfile.create(p, size)
    return p


def events(mids: Any, kind: int = record.KIND_COMPLETION) -> np.ndarray:
    ev = record.empty(len(mids))
    ev["mid"] = mids
    ev["kind"] = kind
    ev["command"] = 9
    ev["comm"] = b"pytest"
    return ev


def payload(mid: int, version: int = record.EVENT_VERSION, size: int = record.EVENT_SIZE) -> bytes:
    ev = events([mid])
    ev["version"] = version
    ev["size"] = size
    return ev.tobytes()


# ---- framing ------------------------------------------------------------------------------


def test_wrap_records_cross_end_of_data(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        crossed = 0
        for rnd in range(8):
            start = int(w._prod[0])
            mids = np.arange(rnd * 37, rnd * 37 + 37)
            assert w.write(events(mids)) == 37
            starts = (start + np.arange(37) * REC_SIZE) % w.size
            crossed += int(np.count_nonzero(starts + REC_SIZE > w.size))
            out = r.drain()
            assert out["mid"].tolist() == mids.tolist()
            assert (out["comm"] == b"pytest").all()
        assert crossed >= 3  # records really straddled the end of the data region
        assert r.records_read == 8 * 37 and r.bad_records == 0
        assert r.bytes_read == 8 * 37 * REC_SIZE == r._cons[0]


def test_partial_drains_with_max_bytes(tmp_path: Path) -> None:
    p = make_ring(tmp_path, 16384)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        got: List[int] = []
        for rnd in range(6):
            assert w.write(events(np.arange(rnd * 30, rnd * 30 + 30))) == 30
            part = r.drain(max_bytes=7 * REC_SIZE + 13)["mid"].tolist()
            assert len(part) == 7
            one = r.drain(max_bytes=1)["mid"].tolist()  # below one record: still progresses
            assert len(one) == 1
            got += part + one
        while r.pending():
            got += r.drain(max_bytes=500)["mid"].tolist()
        assert got == list(range(180))


def test_busy_stops_drain_then_completes(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        w.write(events([0, 1, 2]))
        assert w.write_raw(payload(3), busy=True)
        w.write(events([4, 5]))
        assert r.drain()["mid"].tolist() == [0, 1, 2]
        cons = int(r._cons[0])
        assert r.drain().size == 0 and int(r._cons[0]) == cons  # not advanced past BUSY
        assert r.wait(0.02) is False  # BUSY head: nothing to read yet
        assert w.commit_pending() == 1
        assert r.wait(0.0) is True
        assert r.drain()["mid"].tolist() == [3, 4, 5]
        # a reserved record of foreign length stops the drain just the same
        assert w.write_raw(b"f" * 20, busy=True)
        w.write(events([6]))
        assert r.drain().size == 0 and r.foreign == 0 and r.pending() == 32 + REC_SIZE
        w.commit_pending()
        assert r.drain()["mid"].tolist() == [6] and r.foreign == 1


def test_discard_skipped(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        w.write(events([0]))
        w.write_raw(payload(1), discard=True)  # standard length, vector path
        w.write_raw(b"z" * 21, discard=True)  # foreign length, slow path
        w.write(events([2]))
        assert r.drain()["mid"].tolist() == [0, 2]
        assert (r.discarded, r.bad_records, r.foreign) == (2, 0, 0)


def test_bad_version_wrong_size_and_foreign_counted_rest_read(tmp_path: Path) -> None:
    p = make_ring(tmp_path, 8192)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        w.write(events([0, 1]))
        w.write_raw(payload(100, version=2))
        w.write(events([2]))
        w.write_raw(payload(101, size=64))
        w.write_raw(b"\x01\x00H\x00" + b"f" * 36)  # foreign length 40 that looks like a v1 header
        w.write_raw(b"")  # zero-length record
        w.write(events([3, 4]))
        out = r.drain()
        assert out["mid"].tolist() == [0, 1, 2, 3, 4]
        assert (r.bad_records, r.foreign, r.discarded) == (2, 2, 0)
        assert r.records_read == 5


def test_long_runs_and_interleaved_odd_records_in_big_ring(tmp_path: Path) -> None:
    p = make_ring(tmp_path, 1 << 20)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        want: List[int] = []
        seq = 0
        for i, n in enumerate([3000, 1, 700, 0, 2, 5000, 1]):  # long runs grow the look-ahead
            w.write(events(np.arange(seq, seq + n)))
            want += list(range(seq, seq + n))
            seq += n
            w.write_raw(b"o" * (i * 8 + 1)) if i % 2 else w.write_raw(payload(0, version=9))
        for _ in range(2000):  # strictly alternating: every record takes the slow step
            w.write(events([seq]))
            want.append(seq)
            seq += 1
            w.write_raw(b"x" * 16)
        out = r.drain()
        assert out["mid"].tolist() == want
        assert (r.foreign, r.bad_records) == (3 + 2000, 4)


@pytest.mark.parametrize("hdr_len", [0x3FFFFFF0, 8192, 4096 - 7, 1000])
def test_garbage_len_resyncs_to_producer(tmp_path: Path, hdr_len: int) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        w.write(events([0, 1, 2]))
        w.write_raw(b"g" * 16, hdr_len=hdr_len)  # len runs past producer_pos or the ring
        w.write(events([3]))  # published after the garbage: lost by the resync, by design
        assert r.drain()["mid"].tolist() == [0, 1, 2]
        assert r.bad_records == 1 and r.resyncs == 1
        assert r.pending() == 0
        w.write(events([4, 5]))
        assert r.drain()["mid"].tolist() == [4, 5]


def test_corrupt_positions_resync(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        w.write(events([0]))
        fd = os.open(p, os.O_RDWR)
        os.pwrite(fd, struct.pack("<Q", 10**6), ringfile.CONS_OFF)  # consumer ahead of producer
        os.close(fd)
        assert w.free_records() == 0 and w.write(events([1])) == 0
        assert r.wait(0.0) is True
        assert r.drain().size == 0 and r.bad_records == 1
        assert w.write(events([2])) == 1
        assert r.drain()["mid"].tolist() == [2]


def test_drops_counted_when_full(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    cnt = counters.FileCounters(p)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        fit = 4096 // REC_SIZE
        assert w.write(events(np.arange(fit + 9))) == fit
        assert cnt.drops() == 9 and cnt.available
        assert w.write_raw(b"x" * 100) is False
        assert cnt.drops() == 10
        assert r.drain()["mid"].tolist() == list(range(fit))
        assert w.write(events([7])) == 1
    cnt.close()


def test_drain_returns_owned_copy(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        w.write(events(np.arange(50)))
        out = r.drain()
        for _ in range(3):  # overwrite every slot of the data region
            w.write(events(np.full(50, 999)))
            r.drain()
        assert out["mid"].tolist() == list(range(50))
        assert out.flags.writeable and out.flags.c_contiguous


def test_write_rejects_wrong_dtype(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, pytest.raises(TypeError):
        w.write(np.zeros(3, dtype=np.uint64))


# ---- restart / files ------------------------------------------------------------------------


def test_restart_reader_and_writer_continue(tmp_path: Path) -> None:
    p = make_ring(tmp_path, 16384)
    w = FileRingWriter(p)
    w.write(events(np.arange(100)))
    r1 = RingReader.open_file(p)
    assert r1.drain(max_bytes=50 * REC_SIZE)["mid"].tolist() == list(range(50))
    r1.close()
    w.close()
    ringfile.create(p, 16384)  # a restarting side re-creates: same size keeps contents
    w2 = FileRingWriter(p)
    w2.write(events(np.arange(100, 110)))
    with RingReader.open_file(p) as r2:
        assert r2.drain()["mid"].tolist() == list(range(50, 110))
    w2.close()


def test_writer_death_mid_record_does_not_wedge_reader(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    w = FileRingWriter(p)
    w.write(events([0]))
    w.write_raw(payload(1), busy=True)  # reserved, never committed: writer "dies"
    w.close()
    with RingReader.open_file(p) as r:
        assert r.drain()["mid"].tolist() == [0]
        w2 = FileRingWriter(p)  # restarted writer turns the orphan into DISCARD
        assert w2.recovered == 1
        w2.write(events([2]))
        assert r.drain()["mid"].tolist() == [2] and r.discarded == 1
        w2.close()


def test_create_refuses_other_size_and_non_rings(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    assert os.stat(p).st_mode & 0o777 == 0o600
    with pytest.raises(RingError, match="size 4096"):
        ringfile.create(p, 8192)
    ringfile.create(p, 8192, replace=True)
    assert ringfile.existing_size(p) == 8192
    other = tmp_path / "notaring"
    other.write_bytes(b"hello" * 5000)
    os.chmod(other, 0o600)
    with pytest.raises(RingError, match="not an aodv2 ring"):
        RingReader.open_file(str(other))
    with pytest.raises(RingError, match="not an aodv2 ring"):
        ringfile.create(str(other), 4096)
    with pytest.raises(ValueError):
        ringfile.create(str(tmp_path / "r2"), 5000)
    with pytest.raises(RingError) as ei:
        RingReader.open_file(str(tmp_path / "missing"))
    assert ei.value.errno == errno.ENOENT
    link = tmp_path / "link"
    link.symlink_to(p)
    with pytest.raises(RingError):
        RingReader.open_file(str(link))
    os.chmod(p, 0o622)
    with pytest.raises(RingError, match="writable"):
        RingReader.open_file(p)
    with pytest.raises(RingError, match="cannot create"):
        ringfile.create(str(tmp_path / "no" / "ring"), 4096)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".aodring.")]  # no temp left


def test_wait_file_ring(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    with FileRingWriter(p) as w, RingReader.open_file(p) as r:
        assert r.wakeup == "poll"
        assert r.wait(0.02) is False
        w.write(events([1]))
        assert r.wait(5.0) is True
        r.drain()
        assert r.wait(0.0) is False


# ---- the pinned-ring code path on a stand-in for the kernel mapping ---------------------


def test_open_pinned_path_on_fake_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap as mmap_mod

    if mmap_mod.PAGESIZE != ringfile.FILE_PAGE:
        pytest.skip("file ring stands in for the kernel mapping only with 4 KiB pages")
    p = make_ring(tmp_path)
    fds: List[int] = []

    def fake_get(path: str, file_flags: int = 0) -> int:
        fds.append(os.open(p, os.O_RDWR))
        return fds[-1]

    monkeypatch.setattr(bpfsys, "obj_get", fake_get)
    monkeypatch.setattr(
        bpfsys, "map_info", lambda fd, what="": bpfsys.MapInfo(27, 1, 0, 0, 4096, 0, "events")
    )
    with FileRingWriter(p) as w, RingReader.open_pinned("/sys/fs/bpf/aodv2/events") as r:
        assert r.wakeup == "poll"  # epoll refuses regular files; real ringbuf fds use epoll
        for rnd in range(5):
            w.write(events(np.arange(rnd * 40, rnd * 40 + 40)))
            assert r.wait(1.0)
            assert r.drain()["mid"].tolist() == list(range(rnd * 40, rnd * 40 + 40))
    with pytest.raises(OSError):
        os.fstat(fds[0])  # reader closed the map fd
    monkeypatch.setattr(
        bpfsys, "map_info", lambda fd, what="": bpfsys.MapInfo(6, 1, 4, 8, 1, 0, "drops")
    )
    with pytest.raises(RingError, match="not a ring buffer"):
        RingReader.open_pinned("/sys/fs/bpf/aodv2/drops")


# ---- two processes ------------------------------------------------------------------------

STREAM_N = 1_000_000


def _stream_writer(path: str, n: int) -> None:
    w = FileRingWriter(path)
    seq = 0
    while seq < n:
        k = min(4096, n - seq, w.free_records())
        if k == 0:
            time.sleep(0.0002)
            continue
        assert w.write(events(np.arange(seq, seq + k))) == k
        seq += k
    w.close()


def test_two_processes_stream_1m_records_in_order(tmp_path: Path) -> None:
    p = make_ring(tmp_path, 1 << 20)
    proc = multiprocessing.get_context("spawn").Process(target=_stream_writer, args=(p, STREAM_N))
    proc.start()
    got = np.empty(STREAM_N, dtype=np.uint64)
    n = 0
    deadline = time.monotonic() + 100
    with RingReader.open_file(p) as r:
        while n < STREAM_N and time.monotonic() < deadline:
            if not r.wait(0.5):
                if not proc.is_alive() and r.pending() == 0:
                    break
                continue
            out = r.drain()
            got[n : n + len(out)] = out["mid"]
            n += len(out)
        bad = r.bad_records
    proc.join(30)
    assert proc.exitcode == 0
    assert n == STREAM_N
    assert np.array_equal(got, np.arange(STREAM_N, dtype=np.uint64))
    assert bad == 0 and counters.FileCounters(p).drops() == 0


# ---- counters -----------------------------------------------------------------------------


def _random_events(rng: np.random.Generator, n: int) -> np.ndarray:
    ev = record.empty(n)
    ev["kind"] = rng.choice([record.KIND_COMPLETION, record.KIND_ERROR, record.KIND_RECONNECT], n)
    ev["command"] = rng.integers(0, 40, n)
    ev["latency_ns"] = (10 ** rng.uniform(0, 13, n)).astype(np.uint64)
    ev["latency_ns"][:5] = [0, 999, 1000, 2**40, 2**63]
    return ev


def test_record_stats_matches_independent_histogram(tmp_path: Path) -> None:
    p = make_ring(tmp_path)
    rng = np.random.default_rng(1)
    evs = [_random_events(rng, 3000), _random_events(rng, 1000)]
    with FileRingWriter(p) as w:
        for ev in evs:
            w.record_stats(ev)
    want = counters.zero_stats()
    for ev in evs:
        for kind, cmd, lat in zip(ev["kind"].tolist(), ev["command"].tolist(), ev["latency_ns"].tolist()):
            slot = min(cmd, record.CMD_SLOTS - 1)
            if kind in (record.KIND_COMPLETION, record.KIND_ERROR):
                want["hist"][slot, min((lat // 1000).bit_length(), record.HIST_BUCKETS - 1)] += 1
                want["latency_sum_ns"][slot] += np.uint64(lat)  # u64 wrap, like the BPF side
            if kind == record.KIND_ERROR:
                want["errors"][slot] += 1
    with FileRingWriter(p) as w:
        w.record_stats(record.empty(0))  # nothing changes
    got = counters.FileCounters(p).cmd_stats()
    assert got.dtype == record.CMD_STATS_DTYPE and got.shape == (record.STATS_ROWS,)
    assert np.array_equal(got["hist"], want["hist"])  # the NFS rows are zero: a file ring has none
    assert np.array_equal(got["latency_sum_ns"], want["latency_sum_ns"])
    assert np.array_equal(got["errors"], want["errors"])
    assert int(got["hist"].sum()) == int(np.isin(np.concatenate(evs)["kind"], [1, 2]).sum())


def test_counters_round_trip_and_delta(tmp_path: Path) -> None:
    missing = counters.FileCounters(str(tmp_path / "nothing"))
    assert missing.drops() is None and not missing.available and "nothing" in missing.reason
    assert np.array_equal(missing.cmd_stats(), counters.zero_stats())
    p = make_ring(tmp_path)
    c = counters.open_counters(p, is_file=True)
    with FileRingWriter(p) as w:
        w.record_stats(events([1, 2, 3], kind=record.KIND_ERROR))
        w.add_drops(5)
        s1, d1 = c.cmd_stats(), c.drops()
        w.record_stats(events([4], kind=record.KIND_COMPLETION))
        w.add_drops(2)
        s2, d2 = c.cmd_stats(), c.drops()
    assert c.available and (d1, d2) == (5, 7)
    assert int(s1["errors"][9]) == 3 and int(s1["hist"][9].sum()) == 3
    d = counters.delta(s1, s2)
    assert d.dtype == record.CMD_STATS_DTYPE and int(d["hist"].sum()) == 1 and int(d["errors"].sum()) == 0
    assert np.array_equal(counters.delta(s2, s1), s1)  # went backwards: tracer restarted
    assert counters.delta_count(5, 7) == 2 and counters.delta_count(7, 3) == 3
    c.close()
    assert isinstance(counters.open_counters("/sys/fs/bpf/aodv2/events", False), counters.PinnedCounters)


def test_pinned_counters_missing_and_per_cpu_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    def enoent(path: str, file_flags: int = 0) -> int:
        raise OSError(errno.ENOENT, f"cannot open pinned BPF object {path}")

    monkeypatch.setattr(bpfsys, "obj_get", enoent)
    pc = counters.PinnedCounters("/sys/fs/bpf/aodv2")
    assert np.array_equal(pc.cmd_stats(), counters.zero_stats())
    assert pc.drops() is None and not pc.available and "not pinned yet" in pc.reason

    ncpu = 3
    stats_size = record.CMD_STATS_DTYPE.itemsize
    per_cpu = np.zeros((record.CMD_SLOTS, ncpu), dtype=record.CMD_STATS_DTYPE)
    rng = np.random.default_rng(2)
    per_cpu["hist"] = rng.integers(0, 1000, per_cpu["hist"].shape)
    per_cpu["latency_sum_ns"] = rng.integers(0, 2**40, per_cpu["latency_sum_ns"].shape)
    per_cpu["errors"] = rng.integers(0, 10, per_cpu["errors"].shape)
    drops = np.array([4, 0, 9], dtype="<u8")
    infos = {
        "drops": bpfsys.MapInfo(6, 1, 4, 8, 1, 0, "drops"),
        "cmd_stats_v2": bpfsys.MapInfo(6, 2, 4, stats_size, 32, 0, "cmd_stats"),
    }
    opened: List[int] = []
    names: Dict[int, str] = {}

    def fake_get(path: str, file_flags: int = 0) -> int:
        assert file_flags == bpfsys.BPF_F_RDONLY
        if os.path.basename(path) not in infos:
            enoent(path)
        fd = os.open(os.devnull, os.O_RDONLY)
        opened.append(fd)
        names[fd] = os.path.basename(path)
        return fd

    def fake_lookup(fd: int, key: bytes, value_size: int, what: str = "") -> bytes:
        (k,) = struct.unpack("<I", key)
        if names[fd] == "drops":
            assert value_size == 8 * ncpu
            return drops.tobytes()
        if names[fd] == "nfs_stats_v1":
            return nfs_cpu[k].tobytes()
        assert value_size == stats_size * ncpu  # 272 is already a multiple of 8
        return per_cpu[k].tobytes()

    monkeypatch.setattr(bpfsys, "obj_get", fake_get)
    monkeypatch.setattr(os.path, "exists", lambda p: os.path.basename(p) in infos)
    monkeypatch.setattr(bpfsys, "map_info", lambda fd, what="": infos[names[fd]])
    monkeypatch.setattr(bpfsys, "map_lookup", fake_lookup)
    monkeypatch.setattr(bpfsys, "possible_cpus", lambda path="": ncpu)
    nfs_cpu = np.zeros((record.NFS_SLOTS, ncpu), dtype=record.CMD_STATS_DTYPE)
    nfs_cpu["hist"][5, 1, 7] = 11  # NFSv3 slot 5 (0x0305), on the second CPU
    got = pc.cmd_stats()
    assert pc.drops() == 13 and pc.available
    smb = got[:record.CMD_SLOTS]
    assert np.array_equal(smb["hist"], per_cpu["hist"].sum(axis=1))
    assert np.array_equal(smb["latency_sum_ns"], per_cpu["latency_sum_ns"].sum(axis=1))
    assert np.array_equal(smb["errors"], per_cpu["errors"].sum(axis=1))
    assert int(got[record.CMD_SLOTS:]["hist"].sum()) == 0  # no nfs tracer
    for fd in opened:  # every map fd closed after the read
        with pytest.raises(OSError):
            os.fstat(fd)
    assert pc.source == ("cmd_stats_v2", "")
    # the nfs tracer's map, read into the rows after SMB's
    infos["nfs_stats_v1"] = bpfsys.MapInfo(6, 4, 4, stats_size, record.NFS_SLOTS, 0, "cmd_stats")
    both = pc.cmd_stats()
    assert pc.source == ("cmd_stats_v2", "nfs_stats_v1") and np.array_equal(both[:record.CMD_SLOTS], got[:32])
    row = int(record.stats_row(0x0305))
    assert row == record.CMD_SLOTS + 5 and int(both["hist"][row, 7]) == 11 and int(both["hist"][32:].sum()) == 11
    del infos["cmd_stats_v2"]  # the smb tracer off, the nfs one on: still available
    only = pc.cmd_stats()
    assert pc.available and pc.source == ("", "nfs_stats_v1") and int(only["hist"][:32].sum()) == 0
    infos["cmd_stats_v2"] = bpfsys.MapInfo(6, 2, 4, stats_size, 32, 0, "cmd_stats")
    del infos["nfs_stats_v1"]
    infos["cmd_stats_v2"] = bpfsys.MapInfo(6, 2, 4, 64, 32, 0, "cmd_stats")  # not our struct
    assert np.array_equal(pc.cmd_stats(), counters.zero_stats()) and pc.source == ("", "")
    assert not pc.available and "unexpected map" in pc.reason
    assert pc.drops() == 13 and not pc.available and "unexpected map" in pc.reason  # drops do not hide it
    # after an upgrade, until the new tracer pins cmd_stats_v2: an aodv2 0.1 tracer's cmd_stats
    del infos["cmd_stats_v2"]
    v1 = np.zeros((record.CMD_SLOTS, ncpu), dtype=record.CMD_STATS_V1_DTYPE)
    for f in ("hist", "latency_sum_ns", "errors"):
        v1[f] = per_cpu[f]
    infos["cmd_stats"] = bpfsys.MapInfo(6, 3, 4, record.CMD_STATS_V1_DTYPE.itemsize, 32, 0, "cmd_stats")
    per_cpu = v1  # what fake_lookup serves now
    stats_size = record.CMD_STATS_V1_DTYPE.itemsize
    old = pc.cmd_stats()
    assert pc.available and pc.source == ("cmd_stats", "") and old.dtype == record.CMD_STATS_DTYPE
    assert np.array_equal(old["hist"], got["hist"]) and np.array_equal(old["errors"], got["errors"])
    assert int(old["ignored"].sum()) == 0


# ---- bpfsys pure parts --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,n",
    [("0\n", 1), ("0-3\n", 4), ("0-1,4-5\n", 4), ("0,2,4", 3), ("0-127", 128), ("0-3,3", 4)],
)
def test_parse_cpu_list(text: str, n: int) -> None:
    assert bpfsys.parse_cpu_list(text) == n


@pytest.mark.parametrize("text", ["", "a-b", "3-1", "0-", "1,,2"])
def test_parse_cpu_list_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        bpfsys.parse_cpu_list(text)


def test_possible_cpus_file(tmp_path: Path) -> None:
    f = tmp_path / "possible"
    f.write_text("0-7\n")
    assert bpfsys.possible_cpus(str(f)) == 8
    with pytest.raises(OSError, match="missing"):
        bpfsys.possible_cpus(str(tmp_path / "missing"))
    assert bpfsys.possible_cpus() >= 1  # this host


def test_attr_packing() -> None:
    a = bpfsys.pack_obj_get(0x1122334455667788, bpfsys.BPF_F_RDONLY)
    assert len(a) == 16 and struct.unpack("<QII", a) == (0x1122334455667788, 0, 8)
    a = bpfsys.pack_lookup(7, 0xAAAA, 0xBBBB)
    assert len(a) == 32 and struct.unpack("<IIQQQ", a) == (7, 0, 0xAAAA, 0xBBBB, 0)
    a = bpfsys.pack_info(5, 88, 0xCCCC)
    assert len(a) == 16 and struct.unpack("<IIQ", a) == (5, 88, 0xCCCC)
    raw = struct.pack("<IIIIII16s", 27, 42, 0, 0, 1 << 22, 0, b"events\0junk") + bytes(48)
    assert bpfsys.parse_map_info(raw) == bpfsys.MapInfo(27, 42, 0, 0, 1 << 22, 0, "events")


def test_unknown_arch_is_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpfsys.platform, "machine", lambda: "sparc64")
    with pytest.raises(OSError, match="sparc64"):
        bpfsys.obj_get("/sys/fs/bpf/aodv2-test/events")  # never the host's pins
    monkeypatch.setattr(bpfsys.platform, "machine", lambda: "aarch64")
    assert bpfsys._nr() == 280


def test_obj_get_missing_path_names_path() -> None:
    """Real syscall: without root or bpffs this fails, and the message must name the path."""
    with pytest.raises(OSError, match="/nonexistent/aodv2/events"):
        bpfsys.obj_get("/nonexistent/aodv2/events")


# ---- fuzz ---------------------------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("ok"), st.integers(1, 30)),
    st.tuples(st.just("foreign"), st.binary(max_size=300).filter(lambda b: len(b) != record.EVENT_SIZE)),
    st.tuples(st.just("rand72"), st.binary(min_size=72, max_size=72)),
    st.tuples(st.just("badver"), st.integers(0, 0xFFFF).filter(lambda v: v != record.EVENT_VERSION)),
    st.tuples(st.just("badsize"), st.integers(0, 0xFFFF).filter(lambda v: v != record.EVENT_SIZE)),
    st.tuples(st.just("discard"), st.binary(max_size=200)),
    st.tuples(st.just("busy"), st.integers(0, 1)),
    st.tuples(st.just("busyraw"), st.binary(max_size=100)),
    st.tuples(st.just("commit"), st.just(0)),
    st.tuples(st.just("drain"), st.one_of(st.none(), st.integers(0, 3000))),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=80), size=st.sampled_from([4096, 8192]))
def test_fuzz_every_valid_record_read_once(
    tmp_path_factory: pytest.TempPathFactory, ops: List[Tuple[str, Any]], size: int
) -> None:
    p = str(tmp_path_factory.getbasetemp() / "fuzz-ring")
    ringfile.create(p, size, replace=True)
    w = FileRingWriter(p)
    r = RingReader.open_file(p)
    want: List[bytes] = []
    got: List[bytes] = []
    exp = {"bad": 0, "foreign": 0, "discarded": 0}
    seq = 0

    def drain(max_bytes: Optional[int] = None) -> None:
        got.extend(e.tobytes() for e in r.drain(max_bytes))
        if w._pending:  # never consumed past a reserved (BUSY) record
            assert int(r._cons[0]) <= w._pending[0][0]

    def room(nbytes: int) -> None:
        if w.free_bytes() < nbytes:
            w.commit_pending()
            while w.free_bytes() < nbytes:
                before = r.pending()
                drain()
                assert r.pending() < before

    for op, arg in ops:
        if op == "ok":
            room(arg * REC_SIZE)
            ev = events(np.arange(seq, seq + arg))
            seq += arg
            assert w.write(ev) == arg
            want.extend(e.tobytes() for e in ev)
        elif op == "busy":
            room(REC_SIZE)
            ev = events([seq])
            seq += 1
            assert w.write_raw(ev.tobytes(), busy=True)
            want.append(ev.tobytes())
        elif op == "busyraw":
            room(ring.round8(len(arg) + 8))
            assert w.write_raw(arg, busy=True)
            if len(arg) == record.EVENT_SIZE and struct.unpack_from("<HH", arg) == (1, 72):
                want.append(arg)
            else:
                exp["bad" if len(arg) == record.EVENT_SIZE else "foreign"] += 1
        elif op == "commit":
            w.commit_pending()
        elif op == "drain":
            drain(arg)
        else:
            if op == "foreign":
                raw, key = arg, "foreign"
            elif op == "discard":
                raw, key = arg, "discarded"
            elif op == "rand72":
                raw = arg
                v, s = struct.unpack_from("<HH", raw)
                key = "" if (v, s) == (record.EVENT_VERSION, record.EVENT_SIZE) else "bad"
            else:
                raw = payload(0, version=arg) if op == "badver" else payload(0, size=arg)
                key = "bad"
            room(ring.round8(len(raw) + 8))
            assert w.write_raw(raw, discard=(op == "discard"))
            if key:
                exp[key] += 1
            else:
                want.append(raw)
    w.commit_pending()
    while r.pending():
        drain()
    assert got == want
    assert (r.bad_records, r.foreign, r.discarded) == (exp["bad"], exp["foreign"], exp["discarded"])
    assert r.records_read == len(want) and r.resyncs == 0
    assert counters.FileCounters(p).drops() == 0
    r.close()
    w.close()


def test_synthetic_tracer_treats_ignored_statuses_as_the_kernel_does(tmp_path: Path) -> None:
    """As bpf/smb.bpf.c: an error with an ignored status is a completion (counted in `ignored`,
    not `errors`), in the ring only when slow; other errors are errors."""
    from aod import smb2
    from aod.synthetic import SyntheticTracer

    p = str(tmp_path / "ring")
    ringfile.create(p, 64 * 1024)
    w = ringfile.FileRingWriter(p)
    eof, denied = smb2.NT_STATUS["STATUS_END_OF_FILE"], smb2.NT_STATUS["STATUS_ACCESS_DENIED"]
    t = SyntheticTracer(w, emit_min_ns=100_000_000, ignored=frozenset({eof}))
    ev = np.concatenate([t.errors(8, 3, eof, 61), t.errors(5, 2, denied, 13)])
    ev["latency_ns"][0] = 400_000_000  # one slow read at EOF
    assert t.emit(ev) == 3
    with RingReader.open_file(p) as r:
        got = r.drain()
    assert sorted((int(k), int(s)) for k, s in zip(got["kind"], got["nt_status"])) == [
        (record.KIND_COMPLETION, eof), (record.KIND_ERROR, denied), (record.KIND_ERROR, denied)]
    st = counters.FileCounters(p).cmd_stats()
    assert (st["ignored"][8], st["errors"][8], st["errors"][5], st["hist"][8].sum()) == (3, 0, 2, 3)
    w.close()
