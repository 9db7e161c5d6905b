#!/usr/bin/python3
"""Drive the synthetic tracer: write our pid to PIDFILE, wait for GOFILE, call getppid() N times.

Pinned to one CPU: the synthetic tracer numbers its records with a per-CPU sequence (mid), so
the test's "N distinct mids" holds only if every call runs on the same CPU (a migration mid-run
gave 946 distinct of 1000 under a loaded host).

Usage: tracer_getppid.py PIDFILE GOFILE N
"""
from __future__ import annotations

import os
import sys
import time

pidfile, gofile, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pidfile + ".tmp", pidfile)
deadline = time.monotonic() + 600
while not os.path.exists(gofile) and time.monotonic() < deadline:
    time.sleep(0.1)
t = time.monotonic()
for _ in range(n):
    os.getppid()
print(f'{{"getppid_calls": {n}, "seconds": {time.monotonic() - t:.3f}}}')
