"""A tiny BTF encoder for tests (the format aod/btf.py reads; include/uapi/linux/btf.h).

Builds a base blob (like /sys/kernel/btf/vmlinux) and split blobs on top of it (like
/sys/kernel/btf/cifs: type ids continue after the base's, and a name may be taken from the
base's string section, as pahole does when it deduplicates against vmlinux). Also the cifs
kernels the kprobe choice must tell apart, and a directory laid out like /sys/kernel/btf.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional, Sequence

from aod import btf as B


class Builder:
    """Types and strings of one blob. Every add returns the new type id."""

    def __init__(self, base: Optional[Builder] = None) -> None:
        self.base = base
        self.start_id = base.start_id + len(base.types) if base else 1
        self.str_base = base.str_base + len(base.strs) if base else 0
        self.strs = bytearray() if base else bytearray(b"\0")
        self.offsets: dict[str, int] = {} if base else {"": 0}
        self.types: list[tuple[int, int, int, bytes]] = []  # (name_off, info, size_or_type, tail)

    def s(self, name: str) -> int:
        """Name offset: the base's when it has the string (split BTF), else added here."""
        b: Optional[Builder] = self
        while b is not None:
            if name in b.offsets:
                return b.str_base + b.offsets[name]
            b = b.base
        self.offsets[name] = len(self.strs)
        self.strs += name.encode() + b"\0"
        return self.str_base + self.offsets[name]

    def add(self, kind: int, name: str = "", vlen: int = 0, ref: int = 0, tail: bytes = b"", flag: int = 0) -> int:
        self.types.append((self.s(name) if name else 0, (flag << 31) | (kind << 24) | vlen, ref, tail))
        return self.start_id + len(self.types) - 1

    def int_(self, name: str, size: int = 4) -> int:
        return self.add(B.INT, name, ref=size, tail=struct.pack("<I", size * 8))

    def ptr(self, t: int) -> int:
        return self.add(B.PTR, ref=t)

    def const(self, t: int) -> int:
        return self.add(B.CONST, ref=t)

    def typedef(self, name: str, t: int) -> int:
        return self.add(B.TYPEDEF, name, ref=t)

    def fwd(self, name: str) -> int:
        return self.add(B.FWD, name)

    def struct(self, name: str, members: Sequence[tuple[str, int, int]], size: int) -> int:
        """members: (name, type id, byte offset)."""
        tail = b"".join(struct.pack("<III", self.s(n), t, off * 8) for n, t, off in members)
        return self.add(B.STRUCT, name, len(members), size, tail)

    def func(self, name: str, params: Sequence[tuple[str, int]], ret: int = 0) -> int:
        tail = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        proto = self.add(B.FUNC_PROTO, vlen=len(params), ref=ret, tail=tail)
        return self.add(B.FUNC, name, vlen=1, ref=proto)  # vlen: linkage (global)

    def blob(self, end: str = "<") -> bytes:
        types = b"".join(struct.pack(end + "III", n, info, ref) + _retail(tail, end)
                         for n, info, ref, tail in self.types)
        hdr = struct.pack(end + "HBBIIIII", B.MAGIC, 1, 0, 24, 0, len(types), len(types), len(self.strs))
        return hdr + types + bytes(self.strs)


def _retail(tail: bytes, end: str) -> bytes:
    """Tails are built little-endian (u32 words): swap them for a big-endian blob."""
    if end == "<":
        return tail
    return b"".join(struct.pack(">I", w) for (w,) in struct.iter_unpack("<I", tail))


class Kernel:
    """A vmlinux base with the kernel types cifs uses, and a cifs split blob to fill."""

    def __init__(self, names_in_base: Sequence[str] = ()) -> None:
        v = self.vmlinux = Builder()
        self.int = v.int_("int")
        self.char = v.int_("char", 1)
        self.uint = v.int_("unsigned int")
        self.bool = v.typedef("bool", v.int_("_Bool", 1))
        self.refcount = v.struct("refcount_struct", [("refs", self.int, 0)], 4)
        self.kref = v.struct("kref", [("refcount", self.refcount, 0)], 4)
        self.list_head = v.start_id + len(v.types)  # self-referential: its pointer is the next id
        v.struct("list_head", [("next", self.list_head + 1, 0), ("prev", self.list_head + 1, 8)], 16)
        v.ptr(self.list_head)
        for n in names_in_base:  # strings pahole finds in vmlinux's section and does not repeat
            v.s(n)
        c = self.cifs = Builder(v)
        self.server = c.struct("TCP_Server_Info", [("pending", self.int, 0)], 8)
        self.hdr = c.struct("smb2_hdr", [("Command", self.uint, 12)], 64)

    def mid(self, kref_at: int = 16, kref_type: Optional[int] = None) -> int:
        c = self.cifs
        return c.struct("mid_q_entry", [("qhead", self.list_head, 0),
                                        ("refcount", self.kref if kref_type is None else kref_type, kref_at)], 256)

    def p(self, t: int, const: bool = False) -> int:
        return self.cifs.ptr(self.cifs.const(t) if const else t)

    def alloc(self, mid: int, hdr: Optional[int] = None, server: Optional[int] = None) -> None:
        """smb2_mid_entry_alloc(const struct smb2_hdr *shdr, struct TCP_Server_Info *server)."""
        self.cifs.func("smb2_mid_entry_alloc", [("shdr", self.p(self.hdr if hdr is None else hdr, True)),
                                                ("server", self.p(self.server if server is None else server))],
                       self.p(mid))

    def find_mid(self, name: str = "__smb2_find_mid", first: Optional[int] = None) -> None:
        """__smb2_find_mid(struct TCP_Server_Info *server, char *buf, bool dequeue)."""
        self.cifs.func(name, [("server", self.p(self.server) if first is None else first),
                              ("buf", self.p(self.char)), ("dequeue", self.bool)], self.int)

    def write(self, btf_dir: Path, module: bool = True) -> Path:
        """vmlinux (and cifs) files laid out like /sys/kernel/btf."""
        btf_dir.mkdir(parents=True, exist_ok=True)
        (btf_dir / "vmlinux").write_bytes(self.vmlinux.blob())
        if module:
            (btf_dir / "cifs").write_bytes(self.cifs.blob())
        return btf_dir


def kref_kernel(release_name: str = "__release_mid", names_in_base: Sequence[str] = ()) -> Kernel:
    """6.0 .. 6.18 layout: __release_mid(struct kref *refcount) (or _cifs_mid_q_entry_release)."""
    k = Kernel(names_in_base)
    mid = k.mid()
    k.alloc(mid)
    k.find_mid()
    k.cifs.func(release_name, [("refcount", k.p(k.kref))])
    k.cifs.func("release_mid", [("mid", k.p(mid))])
    return k


def server_mid_kernel() -> Kernel:
    """6.19 layout: __release_mid(struct TCP_Server_Info *server, struct mid_q_entry *mid)."""
    k = Kernel()
    mid = k.mid()
    k.alloc(mid)
    k.find_mid()
    k.cifs.func("__release_mid", [("server", k.p(k.server)), ("midEntry", k.p(mid))])
    return k


def load(kernel: Kernel, tmp: Path, module: bool = True) -> B.KernelBtf:
    return B.module_btf("cifs", str(kernel.write(tmp / "btf", module)))
