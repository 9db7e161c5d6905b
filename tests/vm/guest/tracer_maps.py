#!/usr/bin/python3
"""Guest-side dump of the smb tracer's pinned maps for the tracer scenario: servers_v1, trees_v1,
conns_v1, emit_cfg_v1, and the sizes of inflight_v1 / hung_v1, as one JSON line.

Usage: tracer_maps.py PIN_DIR   (PYTHONPATH must hold the repo's aod/)
Also: tracer_maps.py --scan-cost N   (one aging scan of N fake in-flight requests in fresh
kernel maps: CPU ms per scan, batch and per-key)
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
import time


def keys_of(fd: int, ks: int) -> list[bytes]:
    from aod import aging

    out: list[bytes] = []
    cur = ctypes.create_string_buffer(ks)
    nxt = ctypes.create_string_buffer(ks)
    first = True
    while len(out) < 100000:
        try:
            aging._bpf(aging.BPF_MAP_GET_NEXT_KEY, aging._ELEM.pack(fd, 0, 0 if first else ctypes.addressof(cur),
                                                                    ctypes.addressof(nxt), 0), "next")
        except OSError as e:
            if e.errno == errno.ENOENT:
                break
            raise
        out.append(nxt.raw)
        ctypes.memmove(cur, nxt, ks)
        first = False
    return out


def dump(pin_dir: str) -> dict:
    from aod import bpfsys, pins

    out: dict = {}
    for name, ks, vs in ((pins.SERVERS, 8, 64), (pins.TREES, 16, 128), (pins.CONNS, 8, 8),
                         (pins.INFLIGHT, 32, 32), (pins.HUNG, 32, 32), (pins.EMIT_CFG, 4, 16)):
        path = os.path.join(pin_dir, name)
        try:
            fd = bpfsys.obj_get(path, bpfsys.BPF_F_RDONLY)
        except OSError as e:
            out[name] = f"error: {e}"
            continue
        try:
            ks_list = keys_of(fd, ks)
            vals = []
            for k in ks_list:
                try:
                    vals.append(bpfsys.map_lookup(fd, k, vs))
                except OSError:
                    vals.append(b"")
        finally:
            os.close(fd)
        if name in (pins.SERVERS, pins.TREES):
            out[name] = {k.hex(): v.split(b"\0")[0].decode(errors="replace") for k, v in zip(ks_list, vals)}
        elif name == pins.CONNS:
            out[name] = {k.hex(): int.from_bytes(v, "little") for k, v in zip(ks_list, vals)}
        elif name == pins.EMIT_CFG:
            v = vals[0] if vals else bytes(16)
            out[name] = {"emit_min_ns": int.from_bytes(v[:8], "little"), "cmd_mask": int.from_bytes(v[8:12], "little")}
        else:
            out[name] = len(ks_list)
    return out


def scan_cost(n: int) -> dict:
    import numpy as np

    from aod import aging, bpfsys
    from aod.record import INFLIGHT_KEY_DTYPE, INFLIGHT_START_DTYPE

    def create(t: int, entries: int) -> int:
        attr = ctypes.create_string_buffer(bpfsys.pack_create(t, 32, 32, entries, "aodcost"), 72)
        return bpfsys._bpf(bpfsys.BPF_MAP_CREATE, attr, "create")

    lru, hung = create(9, 16384), create(1, 4096)
    now = time.monotonic_ns()
    keys = np.zeros(n, INFLIGHT_KEY_DTYPE)
    keys["sesid"], keys["mid"], keys["cmd"] = 7, np.arange(n), 8
    vals = np.zeros(n, INFLIGHT_START_DTYPE)
    vals["ts"] = now
    for i in range(n):
        k = ctypes.create_string_buffer(keys[i].tobytes(), 32)
        v = ctypes.create_string_buffer(vals[i].tobytes(), 32)
        attr = aging._ELEM.pack(lru, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
        aging._bpf(aging.BPF_MAP_UPDATE_ELEM, attr, "fill")
    res = {"n": n}
    for label, batch in (("batch", None), ("per_key", False)):
        m = aging.RawMaps(lru, hung, 16384)
        m.batch = batch
        sc = aging.Scanner(m, lambda r: None, threshold_ns=3600 * 10**9)
        rounds = 10 if batch is None else 2
        t0 = time.process_time()
        for _ in range(rounds):
            sc.scan()
        res[f"{label}_cpu_ms_per_scan"] = round((time.process_time() - t0) / rounds * 1e3, 2)
        res[f"{label}_inflight_seen"] = sc.stats.inflight
    os.close(lru)
    os.close(hung)
    return res


if __name__ == "__main__":
    if sys.argv[1] == "--scan-cost":
        print(json.dumps(scan_cost(int(sys.argv[2]))))
    else:
        print(json.dumps(dump(sys.argv[1])))
