"""A small BTF reader for the kprobe choice (tracer side, before the attach plan).

Data flow: /sys/kernel/btf/cifs (split BTF of the module, on top of /sys/kernel/btf/vmlinux) ->
Btf.func_params("__release_mid") -> [Param("midEntry", "struct mid_q_entry *"), ...] ->
aod/kallsyms.py picks the argument the BPF program reads (and refuses a probe whose signature
is not what bpf/smb.bpf.c assumes) -> aod/tracepoints.py builds the attach plan.

BTF is the kernel's compact type format (include/uapi/linux/btf.h): a header, a type section
(records of 12 bytes plus a kind-specific tail) and a string section. A module's BTF is split
BTF: its type ids continue after the base's last one, and a name offset below the base's string
size points into the base's strings. Only what the choice needs is decoded: type offsets (one
walk, to find type ids), FUNC -> FUNC_PROTO parameters, struct members, and type names with
qualifiers and typedefs resolved. The input is bounded (MAX_BYTES); a malformed blob gives
(None, reason), never an exception to the caller. Requires /sys/kernel/btf/<module>, i.e.
CONFIG_DEBUG_INFO_BTF_MODULES (5.11+); Debian 11's 5.10 has vmlinux BTF only.
"""

from __future__ import annotations

import os
import struct
from array import array
from typing import NamedTuple, Optional

BTF_DIR = "/sys/kernel/btf"
MAGIC = 0xEB9F
MAX_BYTES = 64 << 20  # vmlinux BTF is 4-8 MiB on distribution kernels
MAX_DEPTH = 32  # qualifier/typedef/pointer chain when naming a type

# kinds (BTF_KIND_*) and the size of each kind's tail after the 12-byte record: (fixed, per vlen)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_TAIL = {INT: (4, 0), PTR: (0, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
         FWD: (0, 0), TYPEDEF: (0, 0), VOLATILE: (0, 0), CONST: (0, 0), RESTRICT: (0, 0), FUNC: (0, 0),
         FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), FLOAT: (0, 0), DECL_TAG: (4, 0),
         TYPE_TAG: (0, 0), ENUM64: (0, 12)}
_SKIP = (CONST, VOLATILE, RESTRICT, TYPE_TAG, TYPEDEF)  # resolved through when naming a type


class BtfError(Exception):
    """A malformed or unsupported blob (caught in parse/load: callers get a reason)."""


class Param(NamedTuple):
    name: str
    type: str  # 'struct kref *', 'char *', '_Bool' (qualifiers and typedefs resolved)


class Btf:
    """One parsed blob; `base` is vmlinux's for a module's split BTF. Raises BtfError."""

    def __init__(self, data: bytes, base: Optional[Btf] = None) -> None:
        if len(data) < 24:
            raise BtfError(f"{len(data)} bytes: shorter than a BTF header")
        if struct.unpack_from("<H", data)[0] == MAGIC:
            self.end = "<"
        elif struct.unpack_from(">H", data)[0] == MAGIC:
            self.end = ">"
        else:
            raise BtfError("no BTF magic 0xeb9f")
        version, _flags, hdr_len, t_off, t_len, s_off, s_len = struct.unpack_from(self.end + "BBIIIII", data, 2)
        if version != 1 or not 24 <= hdr_len <= len(data):
            raise BtfError(f"unsupported BTF version {version} or header length {hdr_len}")
        size = len(data) - hdr_len
        if t_off % 4 or t_off + t_len > size or s_off + s_len > size:
            raise BtfError("type or string section outside the blob")
        self.base = base
        self.start_id: int = base.start_id + base.count if base else 1
        self.str_base: int = base.str_base + base.str_len if base else 0
        self.strs = bytes(data[hdr_len + s_off:hdr_len + s_off + s_len])
        self.str_len: int = s_len
        if s_len and self.strs[-1] != 0 or base is None and s_len and self.strs[0] != 0:
            raise BtfError("string section not NUL-delimited")
        self.types = bytes(data[hdr_len + t_off:hdr_len + t_off + t_len])
        self.offs = array("I")  # byte offset of each type record in self.types
        self._rec = struct.Struct(self.end + "III")
        self._walk()
        self._funcs: Optional[dict[str, int]] = None

    @property
    def count(self) -> int:
        return len(self.offs)

    def _walk(self) -> None:
        """Offsets of every record: one pass, bounded by the section size (12+ bytes a record)."""
        data, n, pos, unpack, offs = self.types, len(self.types), 0, self._rec.unpack_from, self.offs
        while pos < n:
            if pos + 12 > n:
                raise BtfError(f"type record {len(offs) + self.start_id} truncated")
            info = unpack(data, pos)[1]
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            tail = _TAIL.get(kind)
            if tail is None:
                raise BtfError(f"type {len(offs) + self.start_id}: unknown kind {kind}")
            offs.append(pos)
            pos += 12 + tail[0] + tail[1] * vlen
        if pos != n:
            raise BtfError("last type record runs past the type section")

    # ------------------------------------------------------------ records and names

    def _owner(self, tid: int) -> Btf:
        btf: Optional[Btf] = self
        while btf is not None and tid < btf.start_id:
            btf = btf.base
        if btf is None or tid - btf.start_id >= btf.count:
            raise BtfError(f"type id {tid} out of range")
        return btf

    def record(self, tid: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, name_off, size_or_type) of type `tid` (> 0)."""
        btf = self._owner(tid)
        name_off, info, st = btf._rec.unpack_from(btf.types, btf.offs[tid - btf.start_id])
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, name_off, st

    def _tail(self, tid: int, index: int, fmt: str) -> tuple[int, ...]:
        """The index-th entry (struct format `fmt`) of type tid's tail."""
        btf = self._owner(tid)
        return struct.unpack_from(btf.end + fmt, btf.types,
                                  btf.offs[tid - btf.start_id] + 12 + index * struct.calcsize(fmt))

    def name(self, off: int) -> str:
        """The string at a name offset (split BTF: below str_base it is in a base's section)."""
        btf: Optional[Btf] = self
        while btf is not None and off < btf.str_base:
            btf = btf.base
        if btf is None or off - btf.str_base >= btf.str_len:
            raise BtfError(f"name offset {off} out of range")
        i = off - btf.str_base
        return btf.strs[i:btf.strs.index(b"\0", i)].decode("utf-8", "replace")

    def type_name(self, tid: int, start: int = 0) -> str:
        """C-ish name: 'struct kref *', 'char *', 'int[]', 'void'; qualifiers and typedefs resolved.
        start: links followed already (a loop, through arrays too, ends at MAX_DEPTH)."""
        stars = ""
        for depth in range(start, MAX_DEPTH):
            if tid == 0:
                return "void" + (" " + stars if stars else "")
            kind, _vlen, flag, name_off, ref = self.record(tid)
            if kind in _SKIP:
                tid = ref
                continue
            if kind == PTR:
                stars += "*"
                tid = ref
                continue
            name = self.name(name_off) or "(anon)"
            if kind in (STRUCT, UNION, ENUM, ENUM64, FWD):
                tag = {STRUCT: "struct", UNION: "union", FWD: "union" if flag else "struct"}.get(kind, "enum")
                name = f"{tag} {name}"
            elif kind == ARRAY:
                name = self.type_name(self._tail(tid, 0, "I")[0], depth + 1) + "[]"
            elif kind == FUNC_PROTO:
                name = "fn"
            return name + (" " + stars if stars else "")
        raise BtfError(f"type chain longer than {MAX_DEPTH} (a loop?)")

    # ------------------------------------------------------------ queries

    def find_func(self, name: str) -> Optional[int]:
        """Type id of the FUNC `name` in this blob (not its base), or None."""
        if self._funcs is None:
            funcs: dict[str, int] = {}
            unpack = self._rec.unpack_from
            for i, off in enumerate(self.offs):
                name_off, info, _ = unpack(self.types, off)
                if (info >> 24) & 0x1F == FUNC:
                    funcs.setdefault(self.name(name_off), self.start_id + i)
            self._funcs = funcs
        return self._funcs.get(name)

    def func_params(self, name: str) -> Optional[tuple[Param, ...]]:
        """Parameters of FUNC `name`, or None when this blob has no such function."""
        proto = self._proto(name)
        if proto is None:
            return None
        vlen = self.record(proto)[1]
        out = []
        for i in range(vlen):
            name_off, ptype = self._tail(proto, i, "II")
            out.append(Param(self.name(name_off), "..." if ptype == 0 and i == vlen - 1 else self.type_name(ptype)))
        return tuple(out)

    def func_return(self, name: str) -> Optional[str]:
        """Return type name of FUNC `name`, or None when this blob has no such function."""
        proto = self._proto(name)
        return None if proto is None else self.type_name(self.record(proto)[4])

    def _proto(self, name: str) -> Optional[int]:
        tid = self.find_func(name)
        if tid is None:
            return None
        proto = self.record(tid)[4]
        if self.record(proto)[0] != FUNC_PROTO:
            raise BtfError(f"FUNC {name} does not point at a FUNC_PROTO")
        return proto

    def member(self, struct_name: str, member: str) -> Optional[tuple[int, str]]:
        """(byte offset, type name) of struct_name.member, or None when not here (base included)."""
        btf: Optional[Btf] = self
        while btf is not None:
            unpack = btf._rec.unpack_from
            for i, off in enumerate(btf.offs):
                name_off, info, _ = unpack(btf.types, off)
                if (info >> 24) & 0x1F != STRUCT or btf.name(name_off) != struct_name:
                    continue
                tid = btf.start_id + i
                for j in range(info & 0xFFFF):
                    m_name, m_type, m_off = btf._tail(tid, j, "III")
                    if btf.name(m_name) == member:
                        bits = m_off & 0xFFFFFF if info >> 31 else m_off
                        return bits // 8, self.type_name(m_type)
            btf = btf.base
        return None


class Signature(NamedTuple):
    params: tuple[Param, ...]
    ret: str  # return type name


def signature(btf: Btf, name: str) -> tuple[Optional[Signature], str]:
    """(Signature, "") of FUNC `name` in btf; (None, why) when it has none or the blob is malformed
    there (a record pointing out of range is found only when followed)."""
    try:
        params = btf.func_params(name)
        if params is None:
            return None, f"no FUNC {name} in its BTF"
        return Signature(params, btf.func_return(name) or "void"), ""
    except (BtfError, struct.error, ValueError, IndexError) as e:
        return None, f"malformed BTF at FUNC {name}: {e}"


def member(btf: Btf, struct_name: str, name: str) -> tuple[Optional[tuple[int, str]], str]:
    """((byte offset, type name), "") of struct_name.name; (None, why) when not found or malformed."""
    try:
        got = btf.member(struct_name, name)
    except (BtfError, struct.error, ValueError, IndexError) as e:
        return None, f"malformed BTF at struct {struct_name}: {e}"
    return (got, "") if got is not None else (None, f"no struct {struct_name} with member {name} in its BTF")


def parse(data: bytes, base: Optional[Btf] = None) -> tuple[Optional[Btf], str]:
    """(Btf, "") or (None, why not)."""
    if len(data) > MAX_BYTES:
        return None, f"larger than {MAX_BYTES >> 20} MiB"
    try:
        return Btf(data, base), ""
    except (BtfError, struct.error, ValueError, IndexError) as e:
        return None, f"malformed BTF: {e}"


def read_blob(path: str, limit: int = MAX_BYTES) -> tuple[Optional[bytes], str]:
    """The file's bytes (at most limit), or (None, why not)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    if len(data) > limit:
        return None, f"{path} is larger than {limit >> 20} MiB"
    return data, ""


def load(path: str, base_path: Optional[str] = None) -> tuple[Optional[Btf], str]:
    """Parse the BTF at path (split on base_path's when given): (Btf, "") or (None, reason)."""
    base = None
    if base_path:
        base, why = load(base_path)
        if base is None:
            return None, f"base {why}"
    raw, why = read_blob(path)
    if raw is None:
        return None, why
    btf, why = parse(raw, base)
    return btf, (f"{path}: {why}" if why else "")


class KernelBtf(NamedTuple):
    """Where a module's functions are described: btf None means nowhere (`why` says why)."""

    btf: Optional[Btf]
    where: str  # the file the module's types were read from
    why: str = ""  # no module BTF: the reason (also set when only vmlinux's could be read)


def module_btf(module: str = "cifs", btf_dir: str = BTF_DIR) -> KernelBtf:
    """The module's split BTF on vmlinux's. Without the module file: vmlinux's BTF (a module built
    in has its functions there; a loadable one's are then found nowhere), `why` saying so."""
    vmlinux = os.path.join(btf_dir, "vmlinux")
    path = os.path.join(btf_dir, module)
    if os.path.exists(path):
        btf, why = load(path, vmlinux)
        return KernelBtf(btf, path, why)
    why = f"{path} missing; module BTF needs CONFIG_DEBUG_INFO_BTF_MODULES, 5.11+"
    if not os.path.exists(vmlinux):
        return KernelBtf(None, vmlinux, f"{why}; {vmlinux} missing too (CONFIG_DEBUG_INFO_BTF)")
    btf, err = load(vmlinux)
    return KernelBtf(btf, vmlinux, why if btf is not None else f"{why}; {err}")
