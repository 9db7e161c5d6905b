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
ProtectKernelTunables= hides /proc/kallsyms), else /proc/kallsyms.

The layout is decided, per candidate, by what the running kernel says (distributions backport,
so a version number is the last resort): the module's BTF (aod/btf.py, /sys/kernel/btf/cifs)
gives the argument that is the `struct mid_q_entry *` or the `struct kref *` (and where the kref
sits in mid_q_entry); without BTF for it the symbol name decides; only `__release_mid` without
BTF falls back to the kernel version. Where BTF describes a probed function, its parameters must
be what bpf/smb.bpf.c reads (header and server of smb2_mid_entry_alloc, the server of find_mid),
else that probe is refused with a note. Each ReleaseProbe says which source decided (`how`).
Everything here is pure (text and parsed BTF in, choice out) and unit-tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional

from .btf import KernelBtf, Signature, member, signature

ALLOC_SYMBOL = "smb2_mid_entry_alloc"
# cifsd's lookup of the request a response answers: (server, buf). The inner one where it exists
# (5.17+: both smb2_find_mid and the dequeueing variant call it).
RECV_SYMBOLS = ("__smb2_find_mid", "smb2_find_mid")
RELEASE_SYMBOLS = ("__release_mid", "_cifs_mid_q_entry_release", "release_mid")  # in this order
KREF_OFFSET = 16  # offsetof(struct mid_q_entry, refcount) on 64-bit
SERVER_ARG_SINCE = (6, 19)  # __release_mid(server, mid) from this kernel on
_HEX = re.compile(r"[0-9a-fA-F]+")
# the types bpf/smb.bpf.c assumes (BTF names, qualifiers and typedefs resolved)
MID = "struct mid_q_entry *"
KREF = "struct kref *"
SERVER = "struct TCP_Server_Info *"
HDRS = ("struct smb2_hdr *", "struct smb2_sync_hdr *")  # smb2_sync_hdr before 5.14
MAX_ARG = 1  # aod_release reads PT_REGS_PARM1 or PT_REGS_PARM2


@dataclass(frozen=True)
class ReleaseProbe:
    symbol: str
    arg: int  # which argument (0-based) carries the pointer
    offset: int  # pointer - offset = struct mid_q_entry *
    how: str = field(default="", compare=False)  # "by BTF: ...", "by symbol (...)", "by kernel version 6.1 (...)"


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


def _sig(kb: Optional[KernelBtf], sym: str) -> tuple[Optional[Signature], str]:
    """What BTF says of sym: (Signature, "") or (None, why BTF does not decide)."""
    if kb is None:
        return None, "BTF not looked at"
    if kb.btf is None:
        return None, f"no cifs BTF: {kb.why}"
    got, why = signature(kb.btf, sym)
    if got is None and kb.why:  # only vmlinux's BTF: a loadable cifs is not in it
        why = f"no cifs BTF: {kb.why}"
    return got, why


def _text(sym: str, sig: Signature) -> str:
    return f"{sym}({', '.join(f'{p.type} {p.name}'.strip().replace('* ', '*') for p in sig.params)})"


def _mismatch(sym: str, sig: Signature, args: Mapping[int, tuple[str, ...]], ret: tuple[str, ...] = ()) -> str:
    """'' when sig has these argument (and return) types, else what the probe would misread."""
    for i, want in args.items():
        have = sig.params[i].type if i < len(sig.params) else "nothing"
        if have not in want:
            return f"BTF says {_text(sym, sig)}: argument {i} is {have}, not {' or '.join(want)}"
    if ret and sig.ret not in ret:
        return f"BTF says {_text(sym, sig)} returns {sig.ret}, not {' or '.join(ret)}"
    return ""


def _kref_offset(kb: KernelBtf) -> tuple[Optional[int], str]:
    """offsetof(struct mid_q_entry, refcount) from BTF, KREF_OFFSET when BTF lacks the struct."""
    assert kb.btf is not None
    got, why = member(kb.btf, "mid_q_entry", "refcount")
    if got is None:
        return (None, why) if why.startswith("malformed") else (KREF_OFFSET, "")
    if got[1] != "struct kref":
        return None, f"mid_q_entry.refcount is {got[1]}, not struct kref"
    return got[0], ""


def _by_btf(sym: str, sig: Signature, kb: KernelBtf) -> tuple[Optional[ReleaseProbe], str]:
    """The release probe BTF's signature gives, or (None, why it cannot be probed)."""
    types = [p.type for p in sig.params]
    how = f"by BTF: {_text(sym, sig)} in {kb.where}"
    if MID in types:
        arg, off = types.index(MID), 0
    elif KREF in types:
        arg = types.index(KREF)
        kref_off, why = _kref_offset(kb)
        if kref_off is None:
            return None, why
        off = kref_off
    else:
        return None, f"BTF says {_text(sym, sig)}: no {MID} or {KREF} argument"
    if arg > MAX_ARG:
        return None, f"BTF says {_text(sym, sig)}: the mid is argument {arg}; the program reads 0 or 1"
    return ReleaseProbe(sym, arg, off, how), ""


def release_choice(kallsyms_text: str, release: str,
                   kb: Optional[KernelBtf] = None) -> tuple[Optional[ReleaseProbe], list[str]]:
    """The mid release function to probe on this kernel (or None) and notes on refused candidates."""
    syms = symbols(kallsyms_text)
    notes: list[str] = []
    for sym in RELEASE_SYMBOLS:
        if sym not in syms:
            continue
        sig, why = _sig(kb, sym)
        if sig is not None and kb is not None:
            probe, refused = _by_btf(sym, sig, kb)
            if probe is not None:
                return probe, notes
            notes.append(f"{sym} not probed: {refused}")
            continue
        if sym == "__release_mid":  # the one whose layout changed under the same name
            ver = kernel_version(release)
            how = f"by kernel version {ver[0]}.{ver[1]} ({why})"
            if ver >= SERVER_ARG_SINCE:
                return ReleaseProbe(sym, 1, 0, how), notes
            return ReleaseProbe(sym, 0, KREF_OFFSET, how), notes
        how = f"by symbol ({why})"
        if sym == "_cifs_mid_q_entry_release":
            return ReleaseProbe(sym, 0, KREF_OFFSET, how), notes
        return ReleaseProbe(sym, 0, 0, how), notes
    return None, notes


def choose_release(kallsyms_text: str, release: str, kb: Optional[KernelBtf] = None) -> Optional[ReleaseProbe]:
    """The mid release function to probe on this kernel, or None."""
    return release_choice(kallsyms_text, release, kb)[0]


def alloc_check(kb: Optional[KernelBtf], args: Mapping[int, tuple[str, ...]], ret: tuple[str, ...] = ()) -> str:
    """'' when smb2_mid_entry_alloc may be probed for these arguments (BTF agrees, or has none)."""
    sig, _ = _sig(kb, ALLOC_SYMBOL)
    return _mismatch(ALLOC_SYMBOL, sig, args, ret) if sig is not None else ""


def kprobe_choice(kallsyms_text: str, release: str,
                  kb: Optional[KernelBtf] = None) -> tuple[Optional[KprobePlan], list[str]]:
    """Alloc + release probes for the fallback (or None: neither, or refused) and notes why."""
    if ALLOC_SYMBOL not in symbols(kallsyms_text):
        return None, []
    bad = alloc_check(kb, {0: HDRS}, (MID,))  # entry reads the header, return is the mid
    if bad:
        return None, [f"{ALLOC_SYMBOL} not probed: {bad}"]
    rel, notes = release_choice(kallsyms_text, release, kb)
    return (KprobePlan(ALLOC_SYMBOL, rel) if rel else None), notes


def choose_kprobes(kallsyms_text: str, release: str, kb: Optional[KernelBtf] = None) -> Optional[KprobePlan]:
    """Alloc + release probes for the fallback, or None when this kernel has neither."""
    return kprobe_choice(kallsyms_text, release, kb)[0]


def conn_choice(kallsyms_text: str, kb: Optional[KernelBtf] = None) -> tuple[Optional[tuple[str, str]], list[str]]:
    """(alloc, recv) symbols that give the pairing key its connection (or None), and notes on
    probes refused because BTF says they do not take the server where the program reads it."""
    syms = symbols(kallsyms_text)
    notes: list[str] = []
    if ALLOC_SYMBOL not in syms:
        return None, notes
    bad = alloc_check(kb, {1: (SERVER,)})
    if bad:
        return None, [f"{ALLOC_SYMBOL} not probed: {bad}"]
    for recv in RECV_SYMBOLS:
        if recv not in syms:
            continue
        sig, _ = _sig(kb, recv)
        bad = _mismatch(recv, sig, {0: (SERVER,)}) if sig is not None else ""
        if not bad:
            return (ALLOC_SYMBOL, recv), notes
        notes.append(f"{recv} not probed: {bad}")
    return None, notes


def choose_conn_probes(kallsyms_text: str, kb: Optional[KernelBtf] = None) -> Optional[tuple[str, str]]:
    """(alloc, recv) symbols that give the pairing key its connection, or None."""
    return conn_choice(kallsyms_text, kb)[0]
