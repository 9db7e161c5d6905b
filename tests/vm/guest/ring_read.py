#!/usr/bin/python3
"""Guest-side standalone reader of a PINNED BPF ring buffer (VM harness).

The ring stage of tracer -> ring -> dispatch, done the way DESIGN.md describes
and independent of aod/ (so the harness can check the kernel facts on its own):
bpf(BPF_OBJ_GET) on the pin, mmap the consumer page RW and producer page + 2x data
RO, walk 8-byte record headers (BUSY bit 31, DISCARD bit 30), advance consumer_pos.

Usage: ring_read.py [--pin P] [--until-file F] [--max-seconds S] [--record-size 40]
Prints one JSON summary: map id, ring size, records, per-command counts and
latency medians (for ring_probe.py's 40-byte records).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import statistics
import struct
import sys
import time
from typing import Dict, List

NR_BPF = 321            # x86_64
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BUSY = 1 << 31
DISCARD = 1 << 30
PAGE = mmap.PAGESIZE

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    r = libc.syscall(NR_BPF, cmd, buf, len(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(path.encode())
    attr = struct.pack("<QII", ctypes.addressof(p), 0, 0)
    return bpf(BPF_OBJ_GET, attr)


def map_info(fd: int) -> Dict[str, int]:
    info = ctypes.create_string_buffer(80)
    attr = struct.pack("<IIQ", fd, len(info), ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    typ, mid, ksz, vsz, max_entries, flags = struct.unpack_from("<6I", info.raw)
    return {"type": typ, "id": mid, "max_entries": max_entries}


class Ring:
    """Consumer side of a BPF ring buffer map fd."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self.mask = size - 1
        self.cons = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.prod = mmap.mmap(fd, PAGE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)

    def drain(self, out: List[bytes]) -> int:
        cpos = struct.unpack_from("<Q", self.cons, 0)[0]
        ppos = struct.unpack_from("<Q", self.prod, 0)[0]
        n = 0
        while cpos < ppos:
            off = PAGE + (cpos & self.mask)
            hdr = struct.unpack_from("<I", self.prod, off)[0]
            if hdr & BUSY:
                break                       # producer still writing this one
            length = hdr & ~(BUSY | DISCARD)
            if not hdr & DISCARD:
                # data is mapped twice back to back, so a wrapped record is contiguous
                out.append(bytes(self.prod[off + 8: off + 8 + length]))
                n += 1
            cpos += (length + 8 + 7) & ~7
            struct.pack_into("<Q", self.cons, 0, cpos)
        return n


CMD_NAMES = {0: "NEGOTIATE", 1: "SESSION_SETUP", 3: "TREE_CONNECT", 5: "CREATE", 6: "CLOSE",
             7: "FLUSH", 8: "READ", 9: "WRITE", 14: "QUERY_DIRECTORY", 16: "QUERY_INFO",
             17: "SET_INFO"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin", default="/sys/fs/bpf/aodv2/events")
    ap.add_argument("--until-file", help="stop (after a final drain) once this file exists")
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--record-size", type=int, default=40)
    ap.add_argument("--poll", type=float, default=0.05)
    args = ap.parse_args()
    deadline = time.monotonic() + args.max_seconds
    while not os.path.exists(args.pin):
        if time.monotonic() > deadline:
            print(json.dumps({"error": f"{args.pin} never appeared"}))
            return 1
        time.sleep(0.2)
    fd = obj_get(args.pin)
    info = map_info(fd)
    ring = Ring(fd, info["max_entries"])
    recs: List[bytes] = []
    t0 = time.monotonic()
    while True:
        ring.drain(recs)
        if args.until_file and os.path.exists(args.until_file):
            time.sleep(0.2)
            ring.drain(recs)
            break
        if time.monotonic() > deadline:
            break
        time.sleep(args.poll)
    per_cmd: Dict[str, int] = {}
    lats: Dict[str, List[float]] = {}
    bad = 0
    for r in recs:
        if len(r) != args.record_size:
            bad += 1
            continue
        ts, ses, mid, lat, tid, cmd, _pad = struct.unpack("<QQQQIHH", r)
        name = CMD_NAMES.get(cmd, str(cmd))
        per_cmd[name] = per_cmd.get(name, 0) + 1
        if lat:
            lats.setdefault(name, []).append(lat / 1e6)
    all_lat = [x for v in lats.values() for x in v]
    print(json.dumps({
        "map_id": info["id"], "map_type": info["type"], "ring_bytes": info["max_entries"],
        "records": len(recs), "bad_size": bad, "seconds": round(time.monotonic() - t0, 1),
        "per_cmd": per_cmd,
        "median_latency_ms": round(statistics.median(all_lat), 2) if all_lat else None,
        "median_latency_ms_per_cmd": {k: round(statistics.median(v), 2) for k, v in lats.items()},
    }, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
