#!/usr/bin/python3
"""Guest-side check that aod.ring.RingReader.open_pinned drains the real kernel ring.

Ring stage of tracer -> ring -> dispatch, on a real kernel: opens the pinned ring
with the project's reader (aod/ copied into the share by run.py --copy), waits
with its epoll wakeup and drains until FILE exists, then prints reader.stats().
ring_probe.py's 40-byte records are not aod events, so they show up as `foreign`.

Usage: aod_ring_check.py SRC_ROOT PIN UNTIL_FILE [MAX_SECONDS]
"""
from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    src, pin, until = sys.argv[1], sys.argv[2], sys.argv[3]
    max_s = float(sys.argv[4]) if len(sys.argv) > 4 else 300.0
    sys.path.insert(0, src)
    from aod.ring import RingReader  # noqa: E402

    events = 0
    wakeups = 0
    deadline = time.monotonic() + max_s
    with RingReader.open_pinned(pin) as r:
        while time.monotonic() < deadline:
            if r.wait(0.2):
                wakeups += 1
            events += len(r.drain())
            if os.path.exists(until):
                time.sleep(0.2)
                events += len(r.drain())
                break
        out = dict(r.stats(), events=events, wakeups=wakeups, wakeup_mode=r.wakeup,
                   ring_bytes=r.size, pending=r.pending())
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
