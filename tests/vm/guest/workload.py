#!/usr/bin/python3
"""Guest-side SMB workload for the VM harness (drives the kernel cifs client).

Source of the events at the top of tracer -> ring -> dispatch: for N files it
creates, writes, fsyncs, reads back, stats, lists and deletes them under DIR.

Usage: workload.py DIR [-n 30] [--size 4096] [--keep]
Prints one JSON line: ops done, seconds, errors (an error does not abort the run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--keep", action="store_true", help="do not delete the files")
    args = ap.parse_args()
    d = os.path.join(args.dir, f"wl-{os.getpid()}")
    ops = 0
    errors: list = []
    data = os.urandom(args.size)
    t0 = time.monotonic()

    def op(fn, *a):  # type: ignore[no-untyped-def]
        nonlocal ops
        ops += 1
        try:
            return fn(*a)
        except OSError as e:
            errors.append(f"{fn.__name__}: {e}")
            return None

    def write(p: str) -> None:
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read(p: str) -> None:
        with open(p, "rb") as f:
            if f.read() != data:
                errors.append(f"read: {p}: content mismatch")

    op(os.makedirs, d)
    names = [os.path.join(d, f"f{i:04d}.bin") for i in range(args.n)]
    for p in names:
        op(write, p)
    for p in names:
        op(read, p)
        op(os.stat, p)
    op(os.listdir, d)
    if not args.keep:
        for p in names:
            op(os.unlink, p)
        op(os.rmdir, d)
    print(json.dumps({"workload": d, "files": args.n, "ops": ops,
                      "seconds": round(time.monotonic() - t0, 2),
                      "errors": len(errors), "first_errors": errors[:5]}), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
