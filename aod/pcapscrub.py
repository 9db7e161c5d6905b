"""Packet recorder scrub: no file data in a bundle's pcap (collect layer, after pcapfreeze.py).

ring -> dispatch -> detect -> **collect** (recorderstep.py: pcapfreeze.freeze, then scrub) -> retain.

No snap length keeps exactly the headers: the link and TCP headers vary (a raw-IP tunnel without
TCP timestamps reaches READ data at byte 124), and a READ or WRITE larger than one segment
continues in segments that begin with file data. So each frame is cut here: a TCP segment that
begins an SMB message (NetBIOS session header + 0xFE/0xFD/0xFC 'SMB') keeps the SMB2 header and
its command's fixed part, never the variable buffer (data, names); any other segment keeps its
TCP header only. The original length stays, so Wireshark still sees each segment and its size.
A frame that cannot be parsed down to TCP (another link type, an IPv6 extension header, a
fragment) is cut after its link header. Segments with no payload (SYN, ACK, FIN, RST) stay whole.
Only the first message of a segment is kept: a compound's later ones are cut.
"""

from __future__ import annotations

import struct

_SMB_MAGIC = (b"\xfeSMB", b"\xfdSMB", b"\xfcSMB")  # SMB2/3, transform (encrypted), compressed
_ETH, _SLL, _SLL2, _RAW, _RAW4 = 1, 113, 276, 101, 228
_IPV4, _IPV6, _VLAN = 0x0800, 0x86DD, (0x8100, 0x88A8)
_TCP = 6
_SMB2_HDR, _TRANSFORM, _COMPRESSION = 64, 52, 16
_FIXED_MAX = 88  # the largest fixed part of an SMB2 command body (a CREATE response)


def _link(linktype: int, pkt: bytes) -> tuple[int, int]:
    """(offset of the network header, its ethertype); (-1, 0) when the link type is unknown."""
    if linktype == _SLL2 and len(pkt) >= 20:
        return 20, struct.unpack_from(">H", pkt, 0)[0]
    if linktype == _SLL and len(pkt) >= 16:
        return 16, struct.unpack_from(">H", pkt, 14)[0]
    if linktype == _ETH and len(pkt) >= 14:
        off, etype = 14, struct.unpack_from(">H", pkt, 12)[0]
        while etype in _VLAN and len(pkt) >= off + 4:
            etype, off = struct.unpack_from(">H", pkt, off + 2)[0], off + 4
        return off, etype
    if linktype in (_RAW, _RAW4) and pkt:
        return 0, _IPV4 if pkt[0] >> 4 == 4 else _IPV6
    return -1, 0


def keep_len(linktype: int, pkt: bytes) -> int:
    """How many captured bytes of one frame may stay in a bundle."""
    off, etype = _link(linktype, pkt)
    if off < 0:
        return 0
    if etype == _IPV4 and len(pkt) >= off + 20:
        ihl = (pkt[off] & 0x0F) * 4
        frag = struct.unpack_from(">H", pkt, off + 6)[0] & 0x1FFF
        if pkt[off + 9] != _TCP or frag or ihl < 20:
            return off
        tcp = off + ihl
    elif etype == _IPV6 and len(pkt) >= off + 40:
        if pkt[off + 6] != _TCP:  # an extension header: not followed
            return off
        tcp = off + 40
    else:
        return off
    if len(pkt) < tcp + 13:
        return min(len(pkt), tcp)
    data = tcp + (pkt[tcp + 12] >> 4) * 4
    payload = pkt[data:]
    if not payload:
        return len(pkt)
    if payload[0] != 0 or payload[4:8] not in _SMB_MAGIC:
        return data  # file data, or too short to tell: the headers only
    return min(len(pkt), data + 4 + _smb_keep(payload[4:]))


def _smb_keep(msg: bytes) -> int:
    """Bytes of an SMB message that are headers: the transform or compression header, or the
    64-byte SMB2 header and its command's fixed part (StructureSize, without the variable buffer:
    a READ response's or WRITE request's data, names, EAs, ioctl buffers)."""
    if msg[:4] == b"\xfdSMB":
        return _TRANSFORM
    if msg[:4] == b"\xfcSMB":
        return _COMPRESSION
    if len(msg) < _SMB2_HDR + 2:
        return len(msg)
    size = struct.unpack_from("<H", msg, _SMB2_HDR)[0]
    return _SMB2_HDR + min(size & ~1, _FIXED_MAX)


def scrub(pcap: bytes) -> tuple[bytes, int]:
    """(the pcap with every frame cut to keep_len, frames cut). A malformed pcap gives (b"", 0)."""
    if len(pcap) < 24:
        return b"", 0
    magic = pcap[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        return b"", 0
    linktype = struct.unpack_from(end + "I", pcap, 20)[0]
    rhdr = struct.Struct(end + "IIII")
    parts = [pcap[:24]]
    off, cut = 24, 0
    while off + 16 <= len(pcap):
        sec, frac, incl, orig = rhdr.unpack_from(pcap, off)
        pkt = pcap[off + 16:off + 16 + incl]
        if len(pkt) < incl:
            break
        keep = keep_len(linktype, pkt)
        if keep < incl:
            cut += 1
            parts.append(rhdr.pack(sec, frac, keep, orig))
            parts.append(pkt[:keep])
        else:
            parts.append(pcap[off:off + 16 + incl])
        off += 16 + incl
    return b"".join(parts), cut
