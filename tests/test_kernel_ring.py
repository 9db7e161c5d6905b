"""The pinned-ring reader against the real kernel on this host, no VM needed.

As root, the test mounts a private bpffs, lets the core's code create and pin a
BPF ring buffer (as `aodv2 run` does when it starts before any tracer), and loads
a tiny hand-assembled BPF program that copies its input packet into the ring
with bpf_ringbuf_output. BPF_PROG_TEST_RUN then makes the kernel produce real
records: reading them checks the mmap layout, wrap, epoll wake-up and the
BUSY/DISCARD handling of RingReader.open_pinned on kernel-written data.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from aod import bpfsys
from aod.record import EVENT_SIZE, empty
from aod.ring import RingReader

BPF_PROG_LOAD, BPF_PROG_TEST_RUN = 5, 10
BPF_PROG_TYPE_SOCKET_FILTER = 1
FN_SKB_LOAD_BYTES, FN_RINGBUF_OUTPUT = 26, 130


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ringbuf_copy_prog(map_fd: int) -> bytes:
    """r6 = ctx; skb_load_bytes(ctx, 0, fp-72, 72); ringbuf_output(map, fp-72, 72, 0); return 0."""
    n = EVENT_SIZE
    return b"".join([
        insn(0xBF, 6, 1),  # r6 = r1
        insn(0xBF, 1, 6),  # r1 = r6
        insn(0xB7, 2, imm=0),  # r2 = 0
        insn(0xBF, 3, 10),  # r3 = fp
        insn(0x07, 3, imm=-n),  # r3 += -72
        insn(0xB7, 4, imm=n),  # r4 = 72
        insn(0x85, imm=FN_SKB_LOAD_BYTES),
        insn(0x55, 0, off=7, imm=0),  # if r0 != 0 goto exit
        insn(0x18, 1, 1, imm=map_fd), insn(0),  # r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
        insn(0xBF, 2, 10),  # r2 = fp
        insn(0x07, 2, imm=-n),  # r2 += -72
        insn(0xB7, 3, imm=n),  # r3 = 72
        insn(0xB7, 4, imm=0),  # r4 = 0 (flags)
        insn(0x85, imm=FN_RINGBUF_OUTPUT),
        insn(0xB7, 0, imm=0),  # r0 = 0
        insn(0x95),  # exit
    ])


def prog_load(code: bytes) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(struct.pack(
        "<IIQQIIQII16s", BPF_PROG_TYPE_SOCKET_FILTER, len(code) // 8, ctypes.addressof(insns),
        ctypes.addressof(lic), 1, len(log), ctypes.addressof(log), 0, 0, b"aod_test"), 128)
    try:
        return bpfsys._bpf(BPF_PROG_LOAD, attr, "cannot load test BPF program")
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror}\n{log.value.decode(errors='replace')}") from None


def test_run(prog_fd: int, payload: bytes, repeat: int = 1) -> None:
    data = bytes(14) + payload  # the test run pulls an Ethernet header off the front
    buf = ctypes.create_string_buffer(data, len(data))
    attr = ctypes.create_string_buffer(struct.pack(
        "<IIIIQQII", prog_fd, 0, len(data), 0, ctypes.addressof(buf), 0, repeat, 0), 80)
    bpfsys._bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")


test_run.__test__ = False  # type: ignore[attr-defined]



def make_event(seq: int) -> bytes:
    e = empty(1)
    e["kind"], e["tracer_id"], e["command"] = 1, 2, 9
    e["mid"], e["latency_ns"], e["ts_ns"] = seq, seq * 1000, 10**9 + seq
    e["comm"] = b"kernel-test"
    return e.tobytes()


@pytest.fixture
def kring(bpffs: Path) -> Iterator[tuple[str, int]]:
    path = str(bpffs / "aodv2" / "events")
    assert bpfsys.ensure_pinned_ringbuf(path, 4096 * 4)  # 16 KiB: 204 records of 80 bytes
    assert not bpfsys.ensure_pinned_ringbuf(path, 4096 * 4)  # second start reuses it
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert (os.stat(os.path.dirname(path)).st_mode & 0o777) == 0o700
    fd = bpfsys.obj_get(path)
    info = bpfsys.map_info(fd, path)
    assert (info.type, info.max_entries) == (bpfsys.BPF_MAP_TYPE_RINGBUF, 16384)
    prog = prog_load(ringbuf_copy_prog(fd))
    yield path, prog
    os.close(prog)
    os.close(fd)


def test_reads_kernel_written_records_across_wrap(kring: tuple[str, int]) -> None:
    path, prog = kring
    with RingReader.open_pinned(path) as r:
        assert len(r.drain()) == 0 and not r.wait(0.05)
        seq = 0
        got: list[np.ndarray] = []
        for _ in range(12):  # 12 x 50 records through a 204-record ring: wraps twice
            for _ in range(50):
                test_run(prog, make_event(seq))
                seq += 1
            assert r.wait(1.0)
            got.append(r.drain())
        allev = np.concatenate(got)
        assert len(allev) == seq == 600
        assert (allev["mid"] == np.arange(600)).all()
        assert (allev["latency_ns"] == np.arange(600) * 1000).all()
        assert set(allev["comm"]) == {b"kernel-test"}
        assert r.stats()["bad_records"] == 0


def test_full_kernel_ring_loses_new_records_not_old_ones(kring: tuple[str, int]) -> None:
    path, prog = kring
    for seq in range(300):  # more than fits: the kernel refuses the rest
        test_run(prog, make_event(seq))
    with RingReader.open_pinned(path) as r:
        ev = r.drain()
        assert 150 < len(ev) < 300
        assert (ev["mid"] == np.arange(len(ev))).all()
        test_run(prog, make_event(1000))  # room again after the drain
        assert list(r.drain()["mid"]) == [1000]


def test_foreign_size_records_from_kernel_are_counted_and_skipped(kring: tuple[str, int]) -> None:
    path, prog = kring
    bad = bytearray(make_event(1))
    bad[0:2] = (99).to_bytes(2, "little")  # unknown version
    test_run(prog, make_event(0))
    test_run(prog, bytes(bad))
    test_run(prog, make_event(2))
    with RingReader.open_pinned(path) as r:
        assert list(r.drain()["mid"]) == [0, 2]
        assert r.stats()["bad_records"] == 1


def test_tracer_pins_every_map_before_bcc_opens_them(bpffs: Path) -> None:
    """bcc 0.18 (Debian 11) only opens pinned maps that exist: create_missing pins them all with the
    shapes check_pinned accepts, 0600; a second call (or a core that pinned the ring first) keeps them."""
    from aod import config as config_mod
    from aod import pins

    paths = pins.pin_paths(config_mod.RingConfig(path=str(bpffs / "aodv2" / "events")))
    os.makedirs(paths.dir, mode=0o700)
    assert bpfsys.ensure_pinned_ringbuf(paths.ring, 256 * 1024)  # the core came first
    made = pins.create_missing(paths, 256 * 1024, "smb")
    assert sorted(made) == sorted(p for p in paths.maps() if p != paths.ring)
    assert pins.check_pinned(paths, 256 * 1024, "smb") == []  # every shape as expected
    for p in paths.maps():
        assert os.stat(p).st_mode & 0o777 == 0o600, p
    fd = bpfsys.obj_get(paths.cmd_stats, bpfsys.BPF_F_RDONLY)
    try:
        info = bpfsys.map_info(fd, paths.cmd_stats)
    finally:
        os.close(fd)
    assert info.type == bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY and info.max_entries > 1
    assert pins.create_missing(paths, 256 * 1024, "smb") == []
    os.unlink(paths.cmd_stats)
    assert pins.create_missing(paths, 256 * 1024, "synthetic") == []  # synthetic pins drops (and the ring) only
    assert pins.create_missing(paths, 256 * 1024, "smb") == [paths.cmd_stats]
