"""Kernel symbol choice for the SMB tracer's kprobe fallback (tracer side, before the ring).

Kernels without the `smb3_cmd_enter` tracepoint are traced with kprobes:
smb2_mid_entry_alloc (entry reads the SMB2 header, return gives the mid
pointer) -> the mid release function. Which release function exists, and how
it receives the mid, changed over time:

  * `_cifs_mid_q_entry_release(struct kref *)`          before 6.0
  * `__release_mid(struct kref *)`                      6.0 .. 6.18
  * `__release_mid(struct TCP_Server_Info *, struct mid_q_entry *)`   6.19+
  * `release_mid(struct mid_q_entry *)`                 last resort (an exported
    put wrapper on some 6.x kernels; fires on every put, not only the last)

In tracepoint mode two kprobes name the connection of each request for the pairing key
(see bpf/smb.bpf.c): smb2_mid_entry_alloc(shdr, server) and cifsd's find_mid(server, buf).

A `struct kref *` points at `mid_q_entry.refcount`, which sits after the
16-byte `qhead` list_head on 64-bit kernels, so the mid is the pointer - 16.
Symbols come from tracefs available_filter_functions (readable in the tracer's sandbox, where
ProtectKernelTunables= hides /proc/kallsyms), else /proc/kallsyms. Everything here is pure
(text in, choice out) and unit-tested.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

ALLOC_SYMBOL = "smb2_mid_entry_alloc"
# cifsd's lookup of the request a response answers: (server, buf). The inner one where it exists
# (5.17+: both smb2_find_mid and the dequeueing variant call it).
RECV_SYMBOLS = ("__smb2_find_mid", "smb2_find_mid")
KREF_OFFSET = 16  # offsetof(struct mid_q_entry, refcount) on 64-bit
SERVER_ARG_SINCE = (6, 19)
_HEX = re.compile(r"[0-9a-fA-F]+")  # __release_mid(server, mid) from this kernel on


class ReleaseProbe(NamedTuple):
    symbol: str
    arg: int  # which argument (0-based) carries the pointer
    offset: int  # pointer - offset = struct mid_q_entry *


class KprobePlan(NamedTuple):
    alloc: str
    release: ReleaseProbe


def symbols(kallsyms_text: str, module: Optional[str] = "cifs") -> set[str]:
    """Function names in `module` (or built in) from /proc/kallsyms text ("ADDR t NAME [MOD]", t/T
    only) or from tracefs available_filter_functions text ("NAME [MOD]", all functions)."""
    out: set[str] = set()
    for line in kallsyms_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and _HEX.fullmatch(parts[0]):  # kallsyms
            if parts[1] not in ("t", "T"):
                continue
            name, mod = parts[2], parts[3] if len(parts) >= 4 else ""
        elif 1 <= len(parts) <= 2:  # available_filter_functions
            name, mod = parts[0], parts[1] if len(parts) == 2 else ""
        else:
            continue
        if mod and module is not None and mod.strip("[]") != module:
            continue
        out.add(name)
    return out


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a `uname -r` string such as '6.1.0-18-amd64'; (0, 0) if unparsable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def choose_release(kallsyms_text: str, release: str) -> Optional[ReleaseProbe]:
    """The mid release function to probe on this kernel, or None."""
    syms = symbols(kallsyms_text)
    if "__release_mid" in syms:
        if kernel_version(release) >= SERVER_ARG_SINCE:
            return ReleaseProbe("__release_mid", 1, 0)
        return ReleaseProbe("__release_mid", 0, KREF_OFFSET)
    if "_cifs_mid_q_entry_release" in syms:
        return ReleaseProbe("_cifs_mid_q_entry_release", 0, KREF_OFFSET)
    if "release_mid" in syms:
        return ReleaseProbe("release_mid", 0, 0)
    return None


def choose_kprobes(kallsyms_text: str, release: str) -> Optional[KprobePlan]:
    """Alloc + release probes for the fallback, or None when this kernel has neither."""
    if ALLOC_SYMBOL not in symbols(kallsyms_text):
        return None
    rel = choose_release(kallsyms_text, release)
    return KprobePlan(ALLOC_SYMBOL, rel) if rel else None


def choose_conn_probes(kallsyms_text: str) -> Optional[tuple[str, str]]:
    """(alloc, recv) symbols that give the pairing key its connection, or None."""
    syms = symbols(kallsyms_text)
    recv = next((r for r in RECV_SYMBOLS if r in syms), None)
    return (ALLOC_SYMBOL, recv) if ALLOC_SYMBOL in syms and recv else None
