#!/usr/bin/python3
"""What an unprivileged user can reach of a running aodv2 (guest side of scenarios/faults.sh).

Sits outside the data flow: it probes the edges of ring -> ... -> collect from the outside.
Run as the user under test (faults_run.py starts it with setpriv), or as root for the positive
control that shows every probe can succeed:

    faults_user.py --out DIR --bundle PATH --ring PIN --sock PATH [--kill PID]

Prints one JSON object: {probe: {"ok": bool, "errno": "EACCES" | None, "detail": str}}
plus "uid" and "cap_eff". A probe never raises.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import signal
import socket
import struct
import sys
from typing import Any, Callable, Dict

NR_BPF = 321  # x86_64
BPF_OBJ_GET = 7


def probe(fn: Callable[[], Any]) -> Dict[str, Any]:
    try:
        detail = fn()
        return {"ok": True, "errno": None, "detail": str(detail)[:200]}
    except OSError as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errno or 0, str(e.errno)), "detail": str(e)[:200]}


def bpf_obj_get(pin: str) -> int:
    """bpf(BPF_OBJ_GET, {pathname, bpf_fd=0, file_flags=0}); returns the map fd (closed here)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    path = ctypes.create_string_buffer(os.fsencode(pin))
    attr = ctypes.create_string_buffer(128)  # union bpf_attr, zeroed
    struct.pack_into("=QII", attr, 0, ctypes.addressof(path), 0, 0)
    fd = libc.syscall(ctypes.c_long(NR_BPF), ctypes.c_long(BPF_OBJ_GET), attr, ctypes.c_uint(16))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), pin)
    os.close(fd)
    return fd


def read_file(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read(4096))


def open_ring(pin: str) -> str:
    fd = os.open(pin, os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return "opened"


def connect(path: str) -> str:
    last: Any = None
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.settimeout(5)
            s.connect(path)
            return f"connected ({kind.name})"
        except OSError as e:
            if e.errno != errno.EPROTOTYPE:
                raise
            last = e
        finally:
            s.close()
    raise last


def cap_eff() -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return line.split()[1]
    return "?"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/var/log/aodv2")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ring", default="/sys/fs/bpf/aodv2/events")
    ap.add_argument("--sock", default="/run/aodv2/control.sock")
    ap.add_argument("--kill", type=int, default=0, help="also send SIGUSR1 to this pid")
    a = ap.parse_args()
    r: Dict[str, Any] = {"uid": os.getuid(), "euid": os.geteuid(), "cap_eff": cap_eff()}
    r["list_out_dir"] = probe(lambda: len(os.listdir(a.out)))
    r["read_bundle"] = probe(lambda: read_file(a.bundle))
    r["read_history"] = probe(lambda: read_file(os.path.join(a.out, "anomalies.jsonl")))
    r["bpf_obj_get_ring"] = probe(lambda: bpf_obj_get(a.ring))
    r["open_ring_file"] = probe(lambda: open_ring(a.ring))
    r["list_pin_dir"] = probe(lambda: len(os.listdir(os.path.dirname(a.ring))))
    r["connect_control"] = probe(lambda: connect(a.sock))
    if a.kill:
        r["kill_usr1"] = probe(lambda: os.kill(a.kill, signal.SIGUSR1))
    print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
