#!/usr/bin/python3
"""Guest-side reader for the tracer scenario: drain the pinned ring with the project's
aod.ring.RingReader until UNTIL_FILE exists, then print one JSON summary line.

Ring stage of tracer -> ring -> dispatch on a real kernel. Also reads the pinned
`drops` and `cmd_stats` maps (aod.counters.PinnedCounters) and the ring's map id.

Usage: tracer_read.py --pin /sys/fs/bpf/aodv2/events [--until-file F] [--max-seconds S]
       (PYTHONPATH must hold the repo's aod/)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin", required=True)
    ap.add_argument("--until-file")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--dump", help="also save the drained events as .npy here")
    a = ap.parse_args()

    import numpy as np

    from aod import bpfsys, smb2
    from aod.counters import PinnedCounters
    from aod.record import CMD_SLOTS, EVENT_DTYPE, KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT
    from aod.ring import RingReader

    batches = []
    deadline = time.monotonic() + a.max_seconds
    with RingReader.open_pinned(a.pin) as r:
        while True:
            r.wait(0.2)
            batches.append(r.drain())
            if a.until_file is None or os.path.exists(a.until_file) or time.monotonic() > deadline:
                time.sleep(0.3)
                batches.append(r.drain())
                break
        stats = r.stats()
        ring_bytes = r.size
    ev = np.concatenate(batches) if batches else np.zeros(0, EVENT_DTYPE)
    if a.dump:
        np.save(a.dump, ev)

    fd = bpfsys.obj_get(a.pin, bpfsys.BPF_F_RDONLY)
    try:
        map_id = bpfsys.map_info(fd, a.pin).id
    finally:
        os.close(fd)
    pc = PinnedCounters(os.path.dirname(a.pin))
    drops = pc.drops()
    cs = pc.cmd_stats()[:CMD_SLOTS]  # the smb tracer's rows (the nfs tracer's follow them)

    comp = ev[ev["kind"] == KIND_COMPLETION]
    smbc = comp[comp["tracer_id"] == 1]
    per_cmd = {}
    for c in sorted(set(int(x) for x in smbc["command"])):
        lat = smbc["latency_ns"][smbc["command"] == c] / 1e6
        per_cmd[smb2.command_name(c)] = {"n": int(len(lat)), "median_ms": round(float(np.median(lat)), 2)}
    errs = ev[ev["kind"] == KIND_ERROR]
    err_list = sorted({(smb2.command_name(int(e["command"])), f"0x{int(e['nt_status']):08X}", int(e["err"]),
                        e["comm"].decode(errors="replace")) for e in errs})
    tracers = sorted(set(int(x) for x in ev["tracer_id"]))
    median = round(statistics.median((smbc["latency_ns"] / 1e6).tolist()), 2) if len(smbc) else None
    rec = ev[ev["kind"] == KIND_RECONNECT]
    out = {
        "records": int(len(ev)),
        "by_tracer": {str(t): int((ev["tracer_id"] == t).sum()) for t in tracers},
        "completions": int(len(smbc)),
        "median_latency_ms": median,
        "per_cmd": per_cmd,
        "errors": [list(e) for e in err_list],
        "reconnects": int(len(rec)),
        "reconnect_statuses": sorted({f"0x{int(s):08X}" for s in rec["nt_status"]}),
        "bad_version": int((ev["version"] != 1).sum() + (ev["size"] != 72).sum()),
        "comms": sorted({c.decode(errors="replace") for c in smbc["comm"]})[:12],
        "pids_nonzero": bool(len(smbc) == 0 or (smbc["pid"] != 0).all()),
        "negotiates": [[int(e["pid"]), e["comm"].decode(errors="replace"), round(int(e["latency_ns"]) / 1e6, 1)]
                       for e in smbc[smbc["command"] == 0]],
        "synthetic_mids_unique": int(len(set(int(m) for m in ev[ev["tracer_id"] == 2]["mid"]))),
        "map_id": map_id,
        "ring_bytes": ring_bytes,
        "drops": drops,
        "cmd_stats_total": int(cs["hist"].sum()),
        "cmd_stats_errors": int(cs["errors"].sum()),
        "cmd_stats_ignored": int(cs["ignored"].sum()),
        "cmd_stats_source": pc.source[0],  # the smb tracer's map (pc.source: one per tracer map)
        "ignored_completions": sorted({(smb2.command_name(int(e["command"])), f"0x{int(e['nt_status']):08X}")
                                       for e in comp[comp["nt_status"] != 0]}),
        "cmd_stats_by_cmd": {smb2.command_name(i): int(cs["hist"][i].sum()) for i in range(len(cs))
                             if cs["hist"][i].sum()},
        "reader": stats,
    }
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
