"""Raw bpf(2) helpers via ctypes: open pinned maps and read them (ring layer, below ring.py).

Only what the core needs to read what the tracers pinned in bpffs: BPF_OBJ_GET,
BPF_MAP_LOOKUP_ELEM, BPF_MAP_GET_NEXT_KEY (iteration, `map_items`) and
BPF_OBJ_GET_INFO_BY_FD, plus BPF_MAP_CREATE/BPF_OBJ_PIN so
the core can create the shared ring when it starts first. No bcc, no libbpf. The attr
packing is pure and unit-tested on the host; the syscalls need a kernel and root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
from typing import NamedTuple, Optional

# bpf(2) syscall number per architecture (asm/unistd.h)
SYSCALL_NR = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15

BPF_F_RDONLY = 1 << 3  # file_flags for BPF_OBJ_GET

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_RINGBUF = 27

# attr layouts (union bpf_attr members); little-endian hosts only (x86_64, aarch64)
_OBJ_GET = struct.Struct("<QII")  # u64 pathname, u32 bpf_fd, u32 file_flags
_LOOKUP = struct.Struct("<IIQQQ")  # u32 map_fd, pad, u64 key, u64 value, u64 flags
_INFO = struct.Struct("<IIQ")  # u32 bpf_fd, u32 info_len, u64 info
# u32 map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, char map_name[16]
_CREATE = struct.Struct("<IIIIIII16s")  # BPF_MAP_CREATE prefix, fields as in the line above
# struct bpf_map_info prefix: type, id, key_size, value_size, max_entries, map_flags, name[16]
_MAP_INFO = struct.Struct("<IIIIII16s")
MAP_INFO_LEN = 88  # sizeof(struct bpf_map_info) in 6.x; the kernel accepts shorter/longer


class MapInfo(NamedTuple):
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


def pack_obj_get(path_ptr: int, file_flags: int = 0) -> bytes:
    return _OBJ_GET.pack(path_ptr, 0, file_flags)


def pack_lookup(map_fd: int, key_ptr: int, value_ptr: int, flags: int = 0) -> bytes:
    return _LOOKUP.pack(map_fd, 0, key_ptr, value_ptr, flags)


def pack_info(fd: int, info_len: int, info_ptr: int) -> bytes:
    return _INFO.pack(fd, info_len, info_ptr)


def parse_map_info(raw: bytes) -> MapInfo:
    t, i, ks, vs, me, fl, name = _MAP_INFO.unpack_from(raw)
    return MapInfo(t, i, ks, vs, me, fl, name.split(b"\0", 1)[0].decode("ascii", "replace"))


def parse_cpu_list(text: str) -> int:
    """Number of CPUs in a kernel cpu list such as '0-3,6,8-9' (the mask's weight, as libbpf)."""
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        raise ValueError("empty cpu list")
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad cpu list {text!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad cpu range {part!r} in {text!r}")
        cpus.update(range(a, b + 1))
    return len(cpus)


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Per-CPU map values hold one slot per possible CPU."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError) as e:
        raise OSError(errno.EIO, f"cannot read possible CPUs from {path}: {e}") from e


_libc: Optional[ctypes.CDLL] = None


def _nr() -> int:
    m = platform.machine().lower()
    if m not in SYSCALL_NR:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown for architecture {m!r}")
    return SYSCALL_NR[m]


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:  # type: ignore[type-arg]
    """Run one bpf(2) command; OSError(errno, "<what>: <reason>") on failure."""
    global _libc
    try:
        nr = _nr()
    except OSError as e:
        raise OSError(e.errno, f"{what}: {e.strerror}") from None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), attr, ctypes.c_long(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(ret)


def obj_get(path: str, file_flags: int = 0) -> int:
    """fd of the map or program pinned at `path` (caller closes it). errno is kept, so
    callers can tell ENOENT (not pinned yet) from EPERM (not root)."""
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(pack_obj_get(ctypes.addressof(cpath), file_flags), _OBJ_GET.size)
    return _bpf(BPF_OBJ_GET, attr, f"cannot open pinned BPF object {path}")


def map_lookup(fd: int, key: bytes, value_size: int, what: str = "") -> bytes:
    """Raw value bytes; for per-CPU maps pass round_up(value_size, 8) * possible_cpus().

    `what` (the pinned path) goes into the error message.
    """
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = ctypes.create_string_buffer(
        pack_lookup(fd, ctypes.addressof(k), ctypes.addressof(v)), _LOOKUP.size
    )
    _bpf(BPF_MAP_LOOKUP_ELEM, attr, f"cannot read BPF map {what or fd}")
    return v.raw


def map_next_key(fd: int, key: Optional[bytes], key_size: int, what: str = "") -> Optional[bytes]:
    """The key after `key` (the first key when None); None at the end (ENOENT)."""
    k = ctypes.create_string_buffer(key or b"", key_size) if key is not None else None
    nxt = ctypes.create_string_buffer(key_size)
    attr = ctypes.create_string_buffer(
        pack_lookup(fd, ctypes.addressof(k) if k is not None else 0, ctypes.addressof(nxt)), _LOOKUP.size
    )
    try:
        _bpf(BPF_MAP_GET_NEXT_KEY, attr, f"cannot iterate BPF map {what or fd}")
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return nxt.raw


def map_items(path: str, limit: int) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Up to `limit` (key, value) pairs of the map pinned at `path`, opened read-only
    (BPF_F_RDONLY). Returns (items, truncated). A key deleted between next_key and lookup
    is skipped; a hash map being changed while iterated may restart from its first key
    (the kernel's behaviour), so duplicates are dropped. Raises OSError (errno kept)."""
    fd = obj_get(path, BPF_F_RDONLY)
    try:
        info = map_info(fd, path)
        out: dict[bytes, bytes] = {}
        key: Optional[bytes] = None
        for _ in range(max(limit, 0) * 2 + 16):  # bounded even if the map keeps changing
            key = map_next_key(fd, key, info.key_size, path)
            if key is None:
                return list(out.items()), False
            if key in out:
                continue
            if len(out) >= limit:
                return list(out.items()), True
            try:
                out[key] = map_lookup(fd, key, info.value_size, path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        return list(out.items()), True
    finally:
        os.close(fd)


def map_info(fd: int, what: str = "") -> MapInfo:
    buf = ctypes.create_string_buffer(MAP_INFO_LEN)
    attr = ctypes.create_string_buffer(pack_info(fd, MAP_INFO_LEN, ctypes.addressof(buf)), _INFO.size)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, f"cannot get info of BPF map {what or fd}")
    return parse_map_info(buf.raw)


def pack_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str) -> bytes:
    return _CREATE.pack(map_type, key_size, value_size, max_entries, 0, 0, 0, name.encode()[:15])


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    """fd of a new BPF map (flags 0, as bcc's BPF_TABLE makes them)."""
    attr = ctypes.create_string_buffer(pack_create(map_type, key_size, value_size, max_entries, name),
                                       _CREATE.size)
    return _bpf(BPF_MAP_CREATE, attr, f"cannot create BPF map {name} (type {map_type}, {max_entries} entries)")


def ringbuf_create(size: int, name: str = "events") -> int:
    """fd of a new BPF ring buffer of `size` bytes (a power-of-two multiple of the page size)."""
    attr = ctypes.create_string_buffer(pack_create(BPF_MAP_TYPE_RINGBUF, 0, 0, size, name), _CREATE.size)
    return _bpf(BPF_MAP_CREATE, attr, f"cannot create a {size}-byte BPF ring buffer")


def obj_pin(fd: int, path: str) -> None:
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(_OBJ_GET.pack(ctypes.addressof(cpath), fd, 0), _OBJ_GET.size)
    _bpf(BPF_OBJ_PIN, attr, f"cannot pin BPF object at {path}")


def ensure_pinned_ringbuf(path: str, size: int) -> bool:
    """Create and pin the shared ring at `path` unless it exists. True if this call created it.

    Either the core or a tracer may start first; whoever comes first creates the ring,
    the other opens it. A concurrent pin by the other side (EEXIST) is not an error.
    """
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = ringbuf_create(size)
    try:
        obj_pin(fd, path)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
        return False
    finally:
        os.close(fd)
    chmod_nofollow(path, 0o600)
    return True


def chmod_nofollow(path: str, mode: int) -> None:
    """chmod the pin at `path` itself: never through a symlink put there since it was pinned (the
    kernel pins 0600 & ~umask already). Raises OSError (ELOOP: path is a symlink now)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, f"{path} is a symbolic link now: not changed")
        os.chmod(f"/proc/self/fd/{fd}", mode)  # the inode this fd holds, not a name looked up again
    finally:
        os.close(fd)
