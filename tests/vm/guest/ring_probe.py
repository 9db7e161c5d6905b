#!/usr/bin/python3
"""Guest-side bcc probe for the VM harness: cifs tracepoints -> PINNED BPF ring buffer.

Test-bed stand-in for the real tracer (first stage of tracer -> ring -> dispatch ...):
it proves that bcc 0.26 creates (or reuses) a ring pinned at PIN and that
smb3_cmd_enter/smb3_cmd_done produce records in it.

Record (little-endian, 40 bytes): u64 ts_ns, u64 sesid, u64 mid, u64 latency_ns,
u32 tid, u16 cmd, u16 pad.  latency_ns is 0 when the enter was not seen.

Usage: ring_probe.py [--pin /sys/fs/bpf/aodv2/events] [--pages 64] [--ready FILE]
Runs until SIGTERM/SIGINT; on exit prints a JSON line with its counters.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time

PROG = r"""
struct key_t { u64 sesid; u64 mid; };
struct ev_t { u64 ts_ns; u64 sesid; u64 mid; u64 latency_ns; u32 tid; u16 cmd; u16 pad; };

/* Same members as bcc's BPF_RINGBUF_OUTPUT; the section name pins it. */
struct events_table_t {
  int key;
  u32 leaf;
  int (*ringbuf_output) (void *, u64, u64);
  void* (*ringbuf_reserve) (u64);
  void (*ringbuf_discard) (void *, u64);
  void (*ringbuf_submit) (void *, u64);
  u32 max_entries;
};
__attribute__((section("maps/ringbuf:__PIN__")))
struct events_table_t events = { .max_entries = __PAGES__ * PAGE_SIZE };

BPF_TABLE("lru_hash", struct key_t, u64, start, 4096);
BPF_ARRAY(stats, u64, 3);   /* 0 enter, 1 done emitted, 2 ring full */

static inline void bump(int i) {
  u64 *v = stats.lookup(&i);
  if (v) __sync_fetch_and_add(v, 1);
}

TRACEPOINT_PROBE(cifs, smb3_cmd_enter) {
  struct key_t k = {};
  k.sesid = args->sesid;
  k.mid = args->mid;
  u64 ts = bpf_ktime_get_ns();
  start.update(&k, &ts);
  bump(0);
  return 0;
}

TRACEPOINT_PROBE(cifs, smb3_cmd_done) {
  struct key_t k = {};
  k.sesid = args->sesid;
  k.mid = args->mid;
  struct ev_t ev = {};
  ev.ts_ns = bpf_ktime_get_ns();
  ev.sesid = args->sesid;
  ev.mid = args->mid;
  ev.tid = args->tid;
  ev.cmd = args->cmd;
  u64 *t0 = start.lookup(&k);
  if (t0) {
    ev.latency_ns = ev.ts_ns - *t0;
    start.delete(&k);
  }
  if (events.ringbuf_output(&ev, sizeof(ev), 0) == 0)
    bump(1);
  else
    bump(2);
  return 0;
}
"""

PIN_RE = re.compile(r"^/sys/fs/bpf/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin", default="/sys/fs/bpf/aodv2/events")
    ap.add_argument("--pages", type=int, default=64, help="ring size in pages (power of 2)")
    ap.add_argument("--ready", help="file to create once attached")
    args = ap.parse_args()
    if not PIN_RE.match(args.pin) or args.pages <= 0 or args.pages & (args.pages - 1):
        print("ring_probe: bad --pin or --pages", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(args.pin), exist_ok=True)  # bpffs dir must exist first
    from bcc import BPF  # lazy: only the guest has bcc

    existed = "reused" if os.path.exists(args.pin) else "created"
    t0 = time.monotonic()
    text = PROG.replace("__PIN__", args.pin).replace("__PAGES__", str(args.pages))
    b = BPF(text=text)
    compile_s = time.monotonic() - t0
    print(json.dumps({"probe": "attached", "pin": args.pin, "pinned": os.path.exists(args.pin),
                      "compile_s": round(compile_s, 1), "ring": existed}), flush=True)
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(f"{compile_s:.1f}\n")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    st = b["stats"]
    vals = [int(st[st.Key(i)].value) for i in range(3)]
    print(json.dumps({"probe": "exit", "enter": vals[0], "emitted": vals[1],
                      "ring_full": vals[2]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
