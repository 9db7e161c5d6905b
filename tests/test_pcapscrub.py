"""pcapscrub: a bundle's pcap holds no file data, even of READs and WRITEs larger than a segment."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from aod.pcapscrub import keep_len, scrub

SECRET = b"TOPSECRET-FILE-DATA" * 8


def tcp_frame(payload: bytes, linktype: int = 276, v6: bool = False, tcp_opts: int = 12,
              vlan: bool = False) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", 50000, 445, 1, 1, ((20 + tcp_opts) // 4) << 4, 0x18, 65535, 0, 0)
    tcp += b"\x01" * tcp_opts
    if v6:
        ip = struct.pack(">IHBB", 6 << 28, len(tcp) + len(payload), 6, 64) + b"\x00" * 32
        etype = 0x86DD
    else:
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, b"\x7f\0\0\1",
                         b"\x7f\0\0\1")
        etype = 0x0800
    if linktype == 276:
        link = struct.pack(">HHIHBB8s", etype, 0, 1, 772, 0, 6, b"\0" * 8)
    elif linktype == 113:
        link = struct.pack(">HHH8sH", 0, 772, 6, b"\0" * 8, etype)
    else:
        link = b"\x02" * 12 + (struct.pack(">HH", 0x8100, 5) if vlan else b"") + struct.pack(">H", etype)
    return link + ip + tcp + payload


def smb2_write(data: bytes) -> bytes:
    hdr = b"\xfeSMB" + struct.pack("<HHIHHIIQIIQ16s", 64, 1, 0, 9, 1, 0, 0, 7, 0, 1, 1, b"\0" * 16)
    body = hdr + struct.pack("<HHIQ16sIIHHI", 49, 0x70, len(data), 0, b"\0" * 16, 0, 0, 0, 0, 0) + data
    return struct.pack(">I", len(body)) + body


def pcap(linktype: int, frames: list[bytes], snaplen: int = 65535) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for i, f in enumerate(frames):
        cap = f[:snaplen]
        out.append(struct.pack("<IIII", 1_800_000_000 + i, 0, len(cap), len(f)) + cap)
    return b"".join(out)


@pytest.mark.parametrize("linktype,v6,vlan", [(276, False, False), (113, False, False), (1, False, True),
                                              (276, True, False), (1, True, False)])
def test_continuation_segments_are_cut_to_their_headers(linktype: int, v6: bool, vlan: bool) -> None:
    start = tcp_frame(smb2_write(SECRET)[:100], linktype, v6, vlan=vlan)  # a PDU-start segment
    cont = tcp_frame(SECRET, linktype, v6, vlan=vlan)  # the rest of the WRITE: file data first
    ack = tcp_frame(b"", linktype, v6, vlan=vlan)
    out, cut = scrub(pcap(linktype, [start, cont, ack]))
    assert cut == 1 and SECRET[:8] not in out
    assert start in out and ack in out  # kept whole (the snaplen bounds PDU starts)
    assert keep_len(linktype, cont) == len(ack)  # exactly the link, IP and TCP headers
    # the cut record keeps the segment's wire length
    off = 24 + 16 + len(start)
    incl, orig = struct.unpack_from("<II", out, off + 8)
    assert incl == len(ack) and orig == len(cont)


def test_unknown_link_types_and_non_tcp_keep_nothing_they_cannot_judge() -> None:
    assert keep_len(147, b"\x00" * 100) == 0  # a DLT_USER link type: not parsed, nothing kept
    udp = bytearray(tcp_frame(SECRET, 276))
    udp[20 + 9] = 17
    assert keep_len(276, bytes(udp)) == 20  # the link header only
    frag = bytearray(tcp_frame(SECRET, 276))
    frag[20 + 6:20 + 8] = struct.pack(">H", 0x2001)  # a non-first fragment
    assert keep_len(276, bytes(frag)) == 20


def test_a_short_payload_that_does_not_show_an_smb_header_is_cut() -> None:
    f = tcp_frame(b"\x00\x00\x01", 276)  # 3 bytes: could be anything
    assert keep_len(276, f) == len(f) - 3


def test_malformed_input_is_refused_not_raised() -> None:
    assert scrub(b"") == (b"", 0) and scrub(b"x" * 40) == (b"", 0)
    good = pcap(276, [tcp_frame(SECRET, 276)])
    out, cut = scrub(good[:-5])  # a truncated last record is left out
    assert cut == 0 and len(out) == 24


def test_tcpdump_reads_the_scrubbed_pcap(tmp_path: Path) -> None:
    exe = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/usr/bin")
    if exe is None:
        pytest.skip("tcpdump not installed (tests/run installs it)")
    frames = [tcp_frame(smb2_write(SECRET)[:100]), tcp_frame(SECRET), tcp_frame(b"")]
    out, cut = scrub(pcap(276, frames))
    p = tmp_path / "x.pcap"
    p.write_bytes(out)
    r = subprocess.run([exe, "-nr", str(p)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3 and cut == 1, r.stderr


def smb2_read_response(data: bytes) -> bytes:
    hdr = b"\xfeSMB" + struct.pack("<HHIHHIIQIIQ16s", 64, 1, 0, 8, 1, 1, 0, 7, 0, 1, 1, b"\0" * 16)
    body = hdr + struct.pack("<HBBIII", 17, 0x50, 0, len(data), 0, 0) + data
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("msg,keep", [(smb2_read_response(SECRET), 4 + 64 + 16), (smb2_write(SECRET), 4 + 64 + 48)])
def test_a_segment_beginning_a_read_or_write_keeps_the_fixed_part_never_its_data(msg: bytes, keep: int) -> None:
    """Even where the snaplen reaches the data: a raw-IP link (no link header), no TCP timestamps."""
    ip_frame = tcp_frame(msg, linktype=276, tcp_opts=0)[20:]  # the same frame on a raw-IP (tun) link
    n = keep_len(101, ip_frame)
    assert n == 20 + 20 + keep
    assert SECRET[:8] not in ip_frame[:n] and ip_frame[n - 4:n] == msg[keep - 4:keep]


def test_an_encrypted_message_keeps_its_transform_header_only() -> None:
    msg = b"\x00\x00\x10\x00" + b"\xfdSMB" + b"\x11" * 48 + SECRET
    f = tcp_frame(msg, 276)
    assert keep_len(276, f) == len(f) - len(msg) + 4 + 52
