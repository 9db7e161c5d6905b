"""Packet recorder freeze: window, order, byte cap, precision, and a ring of untrusted files."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

from aod import pcapfreeze
from aod.pcapfreeze import MAGIC_NS, MAGIC_US, PcapFreeze, freeze, ring_files

NS = 1_000_000_000
T0 = 1_800_000_000  # seconds
NOW = float(T0 + 100)
Rec = Tuple[int, bytes]  # (timestamp in ns, packet bytes)


def pcap(recs: List[Rec], *, endian: str = "<", nano: bool = False, linktype: int = 1,
         snaplen: int = 65535, tail: bytes = b"") -> bytes:
    """A classic pcap file; tail is appended raw (a partial or corrupt record)."""
    out = [struct.pack(endian + "IHHiIII", MAGIC_NS if nano else MAGIC_US, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data in recs:
        sec, rem = divmod(ts, NS)
        out.append(struct.pack(endian + "IIII", sec, rem if nano else rem // 1000, len(data), len(data) + 7))
        out.append(data)
    return b"".join(out) + tail


def read_pcap(data: bytes) -> Tuple[Tuple[str, bool, int, int], List[Tuple[int, bytes, int]]]:
    """A tiny independent reader: ((endian, nano, snaplen, linktype), [(ts ns, bytes, orig_len)])."""
    endian = "<" if struct.unpack_from("<I", data)[0] in (MAGIC_US, MAGIC_NS) else ">"
    magic, major, minor, _z, _s, snaplen, linktype = struct.unpack_from(endian + "IHHiIII", data)
    assert magic in (MAGIC_US, MAGIC_NS) and (major, minor) == (2, 4)
    nano = magic == MAGIC_NS
    recs, off = [], 24
    while off < len(data):
        sec, frac, incl, orig = struct.unpack_from(endian + "IIII", data, off)
        assert incl <= orig and incl <= snaplen
        assert frac < (NS if nano else 1_000_000)
        recs.append((sec * NS + frac * (1 if nano else 1000), data[off + 16:off + 16 + incl], orig))
        off += 16 + incl
    assert off == len(data), "trailing bytes in the frozen pcap"
    return (endian, nano, snaplen, linktype), recs


def at(sec: float) -> int:
    return round(sec * NS)


def put(d: Path, name: str, data: bytes, age: float) -> Path:
    """Write a ring file with mtime NOW - age (the freeze orders files by mtime)."""
    p = d / name
    p.write_bytes(data)
    mt = at(NOW - age)
    os.utime(p, ns=(mt, mt))
    return p


def payload(tag: str, size: int = 60) -> bytes:
    return tag.encode().ljust(size, b".")


def tags(res: PcapFreeze) -> List[str]:
    return [d.rstrip(b".").decode() for _ts, d, _o in read_pcap(res.data)[1]]


@pytest.mark.parametrize("newest", ["a", "b"])
def test_window_across_two_files_interleaved(tmp_path: Path, newest: str) -> None:
    # a: big-endian nanoseconds at T0+80.x; b: little-endian microseconds in between
    a = [(at(T0 + 80 + i) + 123_456_789, payload(f"a{i}")) for i in range(20)]
    b = [(at(T0 + 80 + i) + 600_000_000, payload(f"b{i}")) for i in range(20)]
    put(tmp_path, "smb.pcap0", pcap(a, endian=">", nano=True, linktype=1, snaplen=9000), 1 if newest == "b" else 0)
    put(tmp_path, "smb.pcap1", pcap(b, endian="<", nano=False, linktype=1, snaplen=4000), 0 if newest == "b" else 1)
    res = freeze(str(tmp_path), NOW, 15.0, 10 << 20)
    (endian, nano, snaplen, linktype), recs = read_pcap(res.data)
    # window [T0+85, T0+105]: a5..a19 and b5..b19, interleaved a5 b5 a6 b6 ...
    assert tags(res) == [t for i in range(5, 20) for t in (f"a{i}", f"b{i}")]
    assert res.packets == 30 and not res.truncated and res.notes == []
    assert (endian, nano, snaplen, linktype) == ((">", True, 9000, 1) if newest == "a" else ("<", False, 4000, 1))
    ts = [r[0] for r in recs]
    assert ts == sorted(ts)
    a_ts = a[5][0] if nano else a[5][0] // 1000 * 1000  # ns -> us truncates
    assert ts[0] == a_ts and ts[1] == b[5][0]
    assert res.first_ts == pytest.approx(ts[0] / NS) and res.last_ts == pytest.approx(ts[-1] / NS)
    assert all(o == len(d) + 7 for _t, d, o in recs)  # orig_len carried over
    assert set(res.files) == {"smb.pcap0", "smb.pcap1"}
    assert res.files[0] == "smb.pcap0"  # chronological: a5 comes first


def test_window_bounds_and_future_records(tmp_path: Path) -> None:
    recs = [(at(NOW - 10) - 1, payload("early")), (at(NOW - 10), payload("edge")), (at(NOW), payload("now")),
            (at(NOW + 4.9), payload("skew")), (at(NOW + 6), payload("f1")), (at(NOW + 3600), payload("f2"))]
    put(tmp_path, "smb.pcap0", pcap(recs, nano=True), 0)
    res = freeze(str(tmp_path), NOW, 10.0, 1 << 20)
    assert tags(res) == ["edge", "now", "skew"]
    assert res.notes == ["2 records more than 5 s after now dropped"]


def test_tcpdump_reads_the_frozen_pcap(tmp_path: Path) -> None:
    tcpdump = shutil.which("tcpdump") or ("/usr/sbin/tcpdump" if os.access("/usr/sbin/tcpdump", os.X_OK) else None)
    if tcpdump is None:
        pytest.skip("tcpdump is not installed (neither on PATH nor /usr/sbin/tcpdump)")
    eth = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06"  # broadcast, ARP ethertype
    a = [(at(T0 + 90 + i), eth + payload(f"a{i}", 46)) for i in range(12)]
    b = [(at(T0 + 90.5 + i), eth + payload(f"b{i}", 46)) for i in range(12)]
    put(tmp_path, "smb.pcap0", pcap(a, endian=">", nano=True), 1)
    put(tmp_path, "smb.pcap1", pcap(b, tail=b"\x01\x02\x03"), 0)
    res = freeze(str(tmp_path), NOW, 7.0, 1 << 20)  # from T0 + 93: a3..a11, b3..b11
    assert res.packets == 18
    out = tmp_path / "frozen.pcap"
    out.write_bytes(res.data)
    os.chmod(tmp_path, 0o755)
    os.chmod(out, 0o644)  # tcpdump may drop root privileges
    r = subprocess.run([tcpdump, "-nn", "-t", "-r", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 18, r.stdout
    assert "truncated" not in r.stderr.lower()


def test_cap_drops_the_oldest(tmp_path: Path) -> None:
    recs = [(at(T0 + 90 + i), payload(f"p{i}", 100)) for i in range(10)]
    put(tmp_path, "smb.pcap0", pcap(recs), 0)
    full = 24 + 10 * (16 + 100)
    res = freeze(str(tmp_path), NOW, 60.0, full)
    assert res.packets == 10 and not res.truncated and len(res.data) == full
    res = freeze(str(tmp_path), NOW, 60.0, 24 + 3 * 116 + 115)
    assert res.truncated and res.packets == 3 and len(res.data) == 24 + 3 * 116
    assert tags(res) == ["p7", "p8", "p9"]
    assert res.first_ts == pytest.approx(T0 + 97)
    assert any("7 oldest records dropped" in n for n in res.notes)
    res = freeze(str(tmp_path), NOW, 60.0, 100)
    assert res.truncated and res.packets == 0 and res.data == b""


@pytest.mark.parametrize("tail", [b"\x01\x02\x03", struct.pack("<IIII", T0 + 99, 0, 60, 60) + b"half"])
def test_partial_tail_of_newest_silent_of_older_noted(tmp_path: Path, tail: bytes) -> None:
    old = [(at(T0 + 90 + i), payload(f"o{i}")) for i in range(3)]
    new = [(at(T0 + 95 + i), payload(f"n{i}")) for i in range(3)]
    put(tmp_path, "smb.pcap0", pcap(new, tail=tail), 0)
    put(tmp_path, "smb.pcap9", pcap(old), 5)
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["o0", "o1", "o2", "n0", "n1", "n2"] and res.notes == []
    put(tmp_path, "smb.pcap9", pcap(old, tail=tail), 5)
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["o0", "o1", "o2", "n0", "n1", "n2"]
    assert res.notes == [f"smb.pcap9: partial record at offset {24 + 3 * 76} dropped"]


@pytest.mark.parametrize("incl,orig", [(61, 60), (262145, 300000), (70000, 70000)])
def test_corrupt_record_ends_the_file_earlier_records_kept(tmp_path: Path, incl: int, orig: int) -> None:
    good = [(at(T0 + 90 + i), payload(f"g{i}")) for i in range(2)]
    bad = struct.pack("<IIII", T0 + 92, 0, incl, orig) + b"x" * 61
    after = pcap([(at(T0 + 93), payload("after"))])[24:]
    put(tmp_path, "smb.pcap0", pcap(good, snaplen=65535, tail=bad + after), 0)
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["g0", "g1"]
    assert res.notes == [f"smb.pcap0: corrupt record at offset {24 + 2 * 76}, rest of file skipped"]


def test_foreign_linktype_skipped(tmp_path: Path) -> None:
    put(tmp_path, "smb.pcap0", pcap([(at(T0 + 91), payload("old"))], linktype=113), 2)
    put(tmp_path, "smb.pcap1", pcap([(at(T0 + 92), payload("mid"))], endian=">", linktype=1), 1)
    put(tmp_path, "smb.pcap2", pcap([(at(T0 + 93), payload("new"))], linktype=1), 0)
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["mid", "new"]
    assert read_pcap(res.data)[0] == ("<", False, 65535, 1)
    assert res.notes == ["smb.pcap0: skipped, linktype 113 differs from 1"]
    assert res.files == ["smb.pcap1", "smb.pcap2"]


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    ring.mkdir()
    put(ring, "smb.pcap0", pcap([(at(T0 + 95), payload("mine"))]), 3)
    outside = put(tmp_path, "outside.pcap", pcap([(at(T0 + 96), payload("SECRET"))]), 0)
    (ring / "smb.pcap5").symlink_to("/etc/passwd")
    (ring / "smb.pcap6").symlink_to(outside)
    for name in ("smb.pcap5", "smb.pcap6"):  # make the links the newest entries
        os.utime(ring / name, ns=(at(NOW), at(NOW)), follow_symlinks=False)
    res = freeze(str(ring), NOW, 60.0, 1 << 20)
    assert tags(res) == ["mine"] and res.files == ["smb.pcap0"]
    assert b"SECRET" not in res.data
    passwd = Path("/etc/passwd").read_bytes()
    if passwd:
        assert passwd[:32] not in res.data
    assert sum("smb.pcap5: skipped, cannot open without following links" in n for n in res.notes) == 1
    assert sum("smb.pcap6: skipped, cannot open without following links" in n for n in res.notes) == 1
    assert len(res.notes) == 2
    # the ring directory itself is a symlink: not followed either
    link = tmp_path / "ringlink"
    link.symlink_to(ring)
    res = freeze(str(link), NOW, 60.0, 1 << 20)
    assert res.data == b"" and res.notes[0].startswith(f"no packet ring at {link} (")


@pytest.mark.timeout(20)
def test_fifo_and_directory_skipped_without_hanging(tmp_path: Path) -> None:
    put(tmp_path, "smb.pcap0", pcap([(at(T0 + 95), payload("ok"))]), 0)
    os.mkfifo(tmp_path / "smb.pcap7")
    (tmp_path / "smb.pcap8").mkdir()
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["ok"]
    assert sorted(res.notes) == ["smb.pcap7: skipped, not a regular file", "smb.pcap8: skipped, not a regular file"]


def test_non_matching_names_ignored(tmp_path: Path) -> None:
    put(tmp_path, "smb.pcap03", pcap([(at(T0 + 95), payload("ring"))]), 0)
    for name in ("smb.pcap.tmp", "other.pcap0", "smb.pcap", "smb.pcap1a", "smb.pcap-2", "xsmb.pcap1", "smb.pcap\u0661"):
        put(tmp_path, name, pcap([(at(T0 + 96), payload("stray"))]), 0)
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["ring"] and res.notes == [] and res.files == ["smb.pcap03"]
    for name in ("smb.pcap10", "smb.pcap00", "smb.pcap2"):
        put(tmp_path, name, b"", 0)
    assert ring_files(str(tmp_path)) == ["smb.pcap00", "smb.pcap2", "smb.pcap03", "smb.pcap10"]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert ring_files(fd, prefix="other.pcap") == ["other.pcap0"]
    finally:
        os.close(fd)


def test_missing_dir_empty_ring_and_not_a_dir(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    res = freeze(str(gone), NOW, 60.0, 1 << 20)
    assert res == PcapFreeze(b"", 0, None, None, [], False, [f"no packet ring at {gone} (No such file or directory)"])
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert res.data == b"" and res.packets == 0 and len(res.notes) == 1 and "empty packet ring" in res.notes[0]
    afile = put(tmp_path, "plain", b"x", 0)
    res = freeze(str(afile), NOW, 60.0, 1 << 20)
    assert res.data == b"" and res.notes == [f"no packet ring at {afile} (Not a directory)"]


def test_bad_files_noted_newest_short_file_silent(tmp_path: Path) -> None:
    put(tmp_path, "smb.pcap0", b"\x00" * 100, 3)  # foreign magic
    put(tmp_path, "smb.pcap1", pcap([(at(T0 + 95), payload("ok"))], nano=True), 2)
    put(tmp_path, "smb.pcap2", b"\xd4\xc3", 1)  # short, and not the newest
    put(tmp_path, "smb.pcap3", b"", 0)  # just rotated: tcpdump has not written the header yet
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["ok"] and read_pcap(res.data)[0][1] is True
    assert sorted(res.notes) == ["smb.pcap0: skipped, not a classic pcap file",
                                 "smb.pcap2: skipped, not a classic pcap file"]


def test_nothing_in_window_and_bad_window(tmp_path: Path) -> None:
    put(tmp_path, "smb.pcap0", pcap([(at(T0 + 10), payload("old"))]), 0)
    res = freeze(str(tmp_path), NOW, 5.0, 1 << 20)
    assert res.data == b"" and res.packets == 0 and res.first_ts is None and res.notes == ["no packets in the last 5 s"]
    res = freeze(str(tmp_path), NOW, float("nan"), 1 << 20)
    assert res.data == b"" and "bad freeze window" in res.notes[0]


def test_read_bound_reads_newest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = pcap([(at(T0 + 90 + i), payload(f"o{i}")) for i in range(10)])
    new = pcap([(at(T0 + 95 + i * 0.1), payload(f"n{i}")) for i in range(10)])
    put(tmp_path, "smb.pcap1", old, 1)
    put(tmp_path, "smb.pcap0", new, 0)  # wrapped around: the lower number is the newer file
    part = 24 + 76 * 3 + 10
    monkeypatch.setattr(pcapfreeze, "READ_TOTAL_MIN", 0)
    monkeypatch.setattr(pcapfreeze, "READ_TOTAL_FACTOR", 1)
    res = freeze(str(tmp_path), NOW, 60.0, len(new) + part)  # the budget is READ_TOTAL_FACTOR x cap_bytes
    assert tags(res) == [f"o{i}" for i in range(3)] + [f"n{i}" for i in range(10)]
    assert res.notes == [f"smb.pcap1: read only the first {part} of {len(old)} bytes (read bound)"]
    monkeypatch.setattr(pcapfreeze, "READ_TOTAL_FACTOR", 0)
    monkeypatch.setattr(pcapfreeze, "READ_TOTAL_MIN", len(new))  # the minimum applies
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == [f"n{i}" for i in range(10)]
    assert res.notes == ["smb.pcap1: not read, read bound of the freeze reached"]
    monkeypatch.setattr(pcapfreeze, "READ_TOTAL_MIN", 1 << 20)
    monkeypatch.setattr(pcapfreeze, "READ_FILE_MAX", 24 + 76 * 2)
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert tags(res) == ["o0", "o1", "n0", "n1"]
    assert len(res.notes) == 2 and all("(read bound)" in n for n in res.notes)


def test_snaplen_covers_records_of_older_files(tmp_path: Path) -> None:
    put(tmp_path, "smb.pcap0", pcap([(at(T0 + 91), payload("big", 5000))], snaplen=9000), 1)
    put(tmp_path, "smb.pcap1", pcap([(at(T0 + 92), payload("small"))], endian=">", snaplen=4000), 0)
    res = freeze(str(tmp_path), NOW, 60.0, 1 << 20)
    assert read_pcap(res.data)[0] == (">", False, 5000, 1) and tags(res) == ["big", "small"]
    res = freeze(str(tmp_path), NOW, 8.5, 1 << 20)
    assert read_pcap(res.data)[0] == (">", False, 4000, 1) and tags(res) == ["small"]


def test_a_passed_deadline_reads_no_more_files(tmp_path: Path) -> None:
    import time

    put(tmp_path, "smb.pcap0", pcap([(at(NOW - 1), payload("x"))]), 0)
    res = freeze(str(tmp_path), NOW, 10.0, 1 << 20, deadline=time.monotonic() - 1)
    assert res.packets == 0 and any("the action deadline passed" in n for n in res.notes), res.notes
    assert freeze(str(tmp_path), NOW, 10.0, 1 << 20, deadline=time.monotonic() + 60).packets == 1
