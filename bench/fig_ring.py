"""Figure 1: ring drain throughput (file-backed ring of BPF layout -> numpy batches).

1a  RingReader.drain vs a per-record struct.unpack loop over the same ring contents,
    interleaved round by round (fill the ring, drain it one way, fill, the other way).
    Only the drain is timed. Records are the real 80 bytes (8 header + 72 event).
1b  the same drains in MB/s vs numpy copying the same ring bytes (memcpy, the ceiling).
1c  writer in a separate process, reader here: N records (10M; 1M with --quick), every
    sequence number (mid) checked in order; the writer never drops (it waits for space).

The writer process is `python -m bench.fig_ring writer RING N`.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Tuple

import numpy as np

from aod import record, ringfile
from aod.ring import BUSY_BIT, DISCARD_BIT, LEN_MASK, REC_SIZE, RingReader

from .common import ROOT, Row, fmt_rate, median, now

RING_BYTES = 4096 * 1024  # RingConfig.size_kb default
EV = struct.Struct("<HHBBHQQQQIIiI16s")  # EVENT_DTYPE, field by field (72 bytes)
HDR = struct.Struct("<I")
assert EV.size == record.EVENT_SIZE


def struct_drain(data: memoryview, cons_arr: Any, prod_arr: Any, size: int) -> List[tuple]:
    """The baseline: what a straightforward reader does, one header + one unpack per record."""
    mask = size - 1
    cons, prod = int(cons_arr[0]), int(prod_arr[0])
    out = []
    while cons < prod:
        off = cons & mask
        (ln,) = HDR.unpack_from(data, off)
        if ln & BUSY_BIT:
            break
        n = ln & LEN_MASK
        if not ln & DISCARD_BIT and n == EV.size:
            p = off + 8
            if p + EV.size <= size:
                t = EV.unpack_from(data, p)
            else:
                t = EV.unpack(bytes(data[p:]) + bytes(data[: p + EV.size - size]))
            if t[0] == record.EVENT_VERSION and t[1] == EV.size:
                out.append(t)
        cons += (n + 8 + 7) & ~7
    cons_arr[0] = cons
    return out


def sample_events(n: int, seed: int = 1) -> np.ndarray:
    """Realistic-looking records (varied fields, not zeros)."""
    rng = np.random.default_rng(seed)
    ev = record.empty(n)
    ev["kind"] = rng.choice([1, 2], n, p=[0.9, 0.1])
    ev["tracer_id"] = record.TRACER_FILE
    ev["command"] = rng.integers(0, 19, n)
    ev["ts_ns"] = time.monotonic_ns() + np.arange(n) * 1000
    ev["latency_ns"] = (rng.lognormal(0, 1, n) * 5e8).astype(np.uint64)
    ev["session_id"] = 0x1C0FFEE00001
    ev["tree_id"] = 5
    ev["nt_status"] = np.where(ev["kind"] == 2, 0xC00000B5, 0)
    ev["pid"] = rng.integers(1000, 5000, n)
    ev["comm"] = b"backup-agent"
    return ev


def throughput(total: int) -> Tuple[List[Row], dict]:
    """1a + 1b, interleaved rounds on one 4 MiB ring until `total` records per method."""
    d = tempfile.mkdtemp(prefix="aodbench-ring-")
    path = os.path.join(d, "ring")
    ringfile.create(path, RING_BYTES)
    w = ringfile.FileRingWriter(path)
    r = RingReader.open_file(path)
    per = w.free_records()
    src = sample_events(per)
    dst = np.empty(RING_BYTES, dtype=np.uint8)
    t = {"aodv2": 0.0, "struct": 0.0, "memcpy": 0.0}
    rounds: dict = {"aodv2": [], "struct": [], "memcpy": []}  # per-round rates (records/s, bytes/s)
    n = {"aodv2": 0, "struct": 0, "memcpy_bytes": 0}
    seq = 0
    try:
        while n["aodv2"] < total or n["struct"] < total:
            for method in ("aodv2", "struct"):
                k = min(w.free_records(), per)
                ev = src[:k]
                ev["mid"] = np.arange(seq, seq + k)
                seq += k
                assert w.write(ev) == k
                nbytes = k * REC_SIZE
                start = int(r._cons[0]) & (RING_BYTES - 1)
                t0 = now()
                if method == "aodv2":
                    got = len(r.drain())
                else:
                    got = len(struct_drain(memoryview(r._data), r._cons, r._prod, r.size))
                dt = now() - t0
                t[method] += dt
                rounds[method].append(k / dt)
                # the ceiling: numpy copying the same ring bytes (after the drain: no cache favour)
                first = min(nbytes, RING_BYTES - start)
                t0 = now()
                np.copyto(dst[:first], r._data[start : start + first])
                if first < nbytes:
                    np.copyto(dst[first:nbytes], r._data[: nbytes - first])
                dt = now() - t0
                t["memcpy"] += dt
                rounds["memcpy"].append(nbytes / dt)
                n["memcpy_bytes"] += nbytes
                assert got == k, (method, got, k)
                n[method] += k
    finally:
        r.close()
        w.close()
        os.unlink(path)
        os.rmdir(d)
    # medians of per-round rates: robust to the odd preempted round on a loaded machine
    rate_a = median(rounds["aodv2"])
    rate_s = median(rounds["struct"])
    mbs_a = rate_a * REC_SIZE / 1e6
    mbs_c = median(rounds["memcpy"]) / 1e6
    mean_a, mean_s = n["aodv2"] / t["aodv2"], n["struct"] / t["struct"]
    raw = {"aodv2_rps": rate_a, "struct_rps": rate_s, "aodv2_MBps": mbs_a, "memcpy_MBps": mbs_c,
           "mean_aodv2_rps": mean_a, "mean_struct_rps": mean_s,
           "mean_memcpy_MBps": n["memcpy_bytes"] / t["memcpy"] / 1e6,
           "rounds": len(rounds["aodv2"]), "records_each": n["aodv2"], "ring_bytes": RING_BYTES}
    ratio = rate_a / rate_s
    rows = [
        Row("1a", "ring drain, records/s (median round)", fmt_rate(rate_a), f"struct.unpack loop: {fmt_rate(rate_s)}",
            f"{ratio:.1f}x (totals: {mean_a / mean_s:.1f}x)", ">= 20x", ratio >= 20, raw,
            note=f"{len(rounds['aodv2'])} rounds of a full 4 MiB ring each, interleaved; totals = all records / "
                 f"all drain time: aodv2 {fmt_rate(mean_a)}, struct {fmt_rate(mean_s)}"),
        Row("1b", "ring drain, MB/s", f"{mbs_a:.0f} MB/s", f"numpy memcpy: {mbs_c:.0f} MB/s",
            f"{mbs_a / mbs_c:.2f} of memcpy", "report", None, raw),
    ]
    return rows, raw


def writer_main(path: str, total: int) -> int:
    """Separate-process producer: total records, mid = 0..total-1, waits for space (no drops)."""
    w = ringfile.FileRingWriter(path)
    chunk = 8192
    src = sample_events(chunk, seed=2)
    seq = 0
    while seq < total:
        k = min(w.free_records(), chunk, total - seq)
        if k <= 0:
            time.sleep(0.0002)
            continue
        ev = src[:k]
        ev["mid"] = np.arange(seq, seq + k)
        seq += w.write(ev)
    drops = int(w._drops[0])
    w.close()
    print(f"written {seq} drops {drops}", flush=True)
    return 0 if drops == 0 else 1


def no_loss(total: int) -> Tuple[List[Row], dict]:
    """1c: cross-process, sequence-checked."""
    d = tempfile.mkdtemp(prefix="aodbench-ring2-")
    path = os.path.join(d, "ring")
    ringfile.create(path, RING_BYTES)
    r = RingReader.open_file(path)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "bench.fig_ring", "writer", path, str(total)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    expect = 0
    gaps = 0
    t_drain = 0.0
    t0 = now()
    deadline = time.monotonic() + max(120.0, total / 1e5)
    try:
        while expect < total and time.monotonic() < deadline:
            if not r.wait(0.05):
                if proc.poll() is not None and r.pending() == 0:
                    break
                continue
            t1 = now()
            b = r.drain()
            t_drain += now() - t1
            mids = b["mid"]
            if len(mids) and not (mids[0] == expect and np.array_equal(mids, np.arange(expect, expect + len(mids)))):
                gaps += 1
                expect = int(mids[-1]) + 1
            else:
                expect += len(mids)
        wall = now() - t0
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stats = r.stats()
        r.close()
        os.unlink(path)
        os.rmdir(d)
    lost = total - stats["records_read"]
    ok = gaps == 0 and lost == 0 and proc.returncode == 0 and stats["bad_records"] == 0 and expect == total
    raw = {"records": total, "received": stats["records_read"], "gaps": gaps, "lost": lost,
           "bad_records": stats["bad_records"], "writer": out.strip(), "wall_s": wall,
           "drain_s": t_drain, "end_to_end_rps": stats["records_read"] / wall}
    rows = [Row("1c", f"no loss, {total / 1e6:g}M records, writer in another process",
                f"{lost} lost, {gaps} seq gaps", f"writer: {out.strip() or 'no output'}",
                f"end to end {fmt_rate(stats['records_read'] / wall)}", "0 lost", ok, raw)]
    return rows, raw


def run(quick: bool) -> List[Row]:
    rows, _ = throughput(1_000_000 if quick else 10_000_000)
    rows2, _ = no_loss(1_000_000 if quick else 10_000_000)
    return rows + rows2


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "writer":
        sys.exit(writer_main(sys.argv[2], int(sys.argv[3])))
    for row in run("--quick" in sys.argv):
        print(row)
