"""Pinned BPF objects beside the ring (ring layer): their names, layout versions and upkeep.

Pins in bpffs outlive the processes and the package, so an upgraded core or tracer
meets the maps an older one pinned. A map whose layout changes gets a new name
(`pin_name`): a newer tracer creates its own beside the old one, never reuses a map
of another layout, and removes the older pin once its own is attached
(`remove_stale`); the core reads the older layout until then (counters.py), for one
release. The ring (records carry their version) and `drops` have not changed.

The tracer also keeps `ignored_status` (NT status -> 1, a hash) equal to config
ignored_statuses (`sync_ignored`): the kernel program drops those statuses as errors.

Maps added for hung requests and names (issue 13) carry their layout version in the name from
the start (`_v1`): inflight_v1, hung_v1 (aod_key -> aod_start), servers_v1, trees_v1, conns_v1,
emit_cfg_v1 (bpf/aod_event.h; aod/record.py dtypes). Other processes read them: the evidence
helper the in-flight table, aod/names.py the server and share names.

Where the pins live and whether what is pinned there can be reused: PinPaths, pin_paths,
prepare_pin_dir, check_pinned, create_missing (the tracer calls them before loading).
create_missing pins every map the program declares before bcc compiles it: bcc before 0.22
(Debian 11 ships 0.18) only opens a BPF_TABLE_PINNED map that exists ("bpf_table X failed to
open"); later bcc opens the same maps. One path on every suite.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import stat
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from . import bpfsys, log
from . import config as config_mod
from .record import (
    CMD_SLOTS,
    CMD_STATS_V1_DTYPE,
    CMD_STATS_VERSION,
    EMIT_CFG_DTYPE,
    HOST_LEN,
    HUNG_MAX,
    IGNORED_MAX,
    INFLIGHT_KEY_DTYPE,
    INFLIGHT_START_DTYPE,
    SERVERS_MAX,
    TREE_KEY_DTYPE,
    TREES_MAX,
    UNC_LEN,
)
from .tracepoints import EX_CONFIG, EX_OSERR, SetupError


def pin_name(base: str, version: int) -> str:
    """bpffs name of a pinned map at a layout version: `base` for 1, `base_vN` after (bpffs
    refuses a name with a dot: EPERM)."""
    return base if version <= 1 else f"{base}_v{version}"


CMD_STATS = pin_name("cmd_stats", CMD_STATS_VERSION)  # cmd_stats_v2: struct aod_cmd_stats
CMD_STATS_V1 = pin_name("cmd_stats", CMD_STATS_VERSION - 1)  # aodv2 0.1: struct aod_cmd_stats_v1
IGNORED = "ignored_status"
INFLIGHT = "inflight_v1"  # lru_hash: requests in flight
HUNG = "hung_v1"  # hash: requests the aging scan moved out of the LRU
SERVERS = "servers_v1"  # lru_hash: u64 conn_id -> char[64] hostname
TREES = "trees_v1"  # lru_hash: {u64 sesid; u32 tid; u32 pad} -> char[128] UNC
CONNS = "conns_v1"  # lru_hash: u64 struct TCP_Server_Info * (aod_key.conn) -> u64 conn_id
EMIT_CFG = "emit_cfg_v1"  # array[1]: {u64 emit_min_ns; u32 cmd_mask; u32 pad}
INFLIGHT_MAX = 16384  # LRU entries for requests in flight
# the nfs tracer's own maps (bpf/nfs.bpf.c; same layouts as the smb ones, cmd stats by NFS slot)
NFS_STATS = "nfs_stats_v1"  # percpu_array[NFS_SLOTS] of struct aod_cmd_stats
NFS_IGNORED = "nfs_ignored_v1"  # hash: benign status (errno or NFS4ERR_*) -> 1
NFS_INFLIGHT = "nfs_inflight_v1"
NFS_HUNG = "nfs_hung_v1"
NFS_EMIT_CFG = "nfs_emit_cfg_v1"
# older layouts a current tracer replaces: name -> (map type, key size, value size, entries)
STALE = {CMD_STATS_V1: (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, CMD_STATS_V1_DTYPE.itemsize, CMD_SLOTS)}


def remove_stale(pin_dir: str) -> list[str]:
    """Unlink the pins of older layouts in pin_dir, and only pins of exactly that layout (the
    maps go once no program holds them). Returns what was done; never raises."""
    gone = []
    for name, (mtype, key, value, entries) in STALE.items():
        path = os.path.join(pin_dir, name)
        try:
            fd = bpfsys.obj_get(path, bpfsys.BPF_F_RDONLY)
        except OSError as e:
            if e.errno != errno.ENOENT:
                gone.append(f"{path} (not removed: {e.strerror or e})")
            continue
        try:
            info = bpfsys.map_info(fd, path)
        except OSError as e:
            gone.append(f"{path} (not removed: {e.strerror or e})")
            continue
        finally:
            os.close(fd)
        if (info.type, info.key_size, info.value_size, info.max_entries) != (mtype, key, value, entries):
            gone.append(f"{path} (not removed: not an aodv2 map of the older layout)")
            continue
        try:
            os.unlink(path)
            gone.append(path)
        except OSError as e:
            gone.append(f"{path} (not removed: {e.strerror})")
    return gone


def sync_ignored(table: Any, statuses: Iterable[int]) -> tuple[int, int]:
    """Make a bcc hash table of u32 -> u32 hold exactly `statuses` (value 1): the ones no longer
    wanted deleted first (they are errors again, as wanted), then the new ones added (so the map
    never holds more than the larger of the two lists). (added, removed)."""
    want = {int(s) for s in statuses}
    have = {int(k.value) for k in table.keys()}
    for s in sorted(have - want):
        try:
            del table[table.Key(s)]
        except KeyError:
            pass
    for s in sorted(want - have):
        table[table.Key(s)] = table.Leaf(1)
    return len(want - have), len(have - want)


# ---------------------------------------------------------------- paths and shapes

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]+$")  # goes into a C string literal


@dataclass(frozen=True)
class PinPaths:
    dir: str
    ring: str
    drops: str
    cmd_stats: str
    ignored: str
    inflight: str = ""
    hung: str = ""
    servers: str = ""
    trees: str = ""
    conns: str = ""
    emit_cfg: str = ""

    def maps(self) -> tuple[str, ...]:
        return (self.ring, self.drops, self.cmd_stats, self.ignored, self.inflight, self.hung, self.servers,
                self.trees, self.conns, self.emit_cfg)

    def pin(self, name: str) -> str:
        """Another map beside the ring (a front's own: NFS_*)."""
        return os.path.join(self.dir, name)


def pin_paths(ring: config_mod.RingConfig, pin_dir: Optional[str] = None) -> PinPaths:
    """Ring at config ring.path (or --pin-dir/<its basename>); drops, cmd_stats_v2, ignored_status and
    the _v1 maps beside it."""
    d = os.path.normpath(pin_dir) if pin_dir else os.path.dirname(os.path.normpath(ring.path))
    base = os.path.basename(ring.path) or "events"
    j = os.path.join
    paths = PinPaths(d, j(d, base), j(d, "drops"), j(d, CMD_STATS), j(d, IGNORED), j(d, INFLIGHT), j(d, HUNG),
                     j(d, SERVERS), j(d, TREES), j(d, CONNS), j(d, EMIT_CFG))
    for p in paths.maps():
        if not _SAFE_PATH.match(p) or ".." in p.split("/"):
            raise SetupError(f"pin path {p!r} must be absolute and use only A-Z a-z 0-9 _ . + - /", EX_CONFIG)
    return paths



def bpffs_mount(path: str, mountinfo_text: str) -> Optional[str]:
    """Mount point of the bpf filesystem that holds `path`, or None (pure; /proc/self/mountinfo text)."""
    best: Optional[tuple[str, str]] = None
    for line in mountinfo_text.splitlines():
        pre, sep, post = line.partition(" - ")
        f = pre.split()
        if not sep or len(f) < 5 or not post.split():
            continue
        mnt = f[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
        inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= len(best[0])):
            best = (mnt, post.split()[0])
    return best[0] if best and best[1] == "bpf" else None


def prepare_pin_dir(paths: PinPaths, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Check bpffs is mounted under the pin dir; create the dir 0700. Raises SetupError."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise SetupError(f"cannot read {mountinfo}: {e.strerror}", EX_OSERR) from None
    if bpffs_mount(paths.dir, text) is None:
        raise SetupError(f"no bpf filesystem is mounted at or above {paths.dir}; mount it with "
                         "'mount -t bpf bpf /sys/fs/bpf' (systemd does this at boot)", EX_OSERR)
    try:
        os.makedirs(paths.dir, mode=0o700, exist_ok=True)
        st = os.stat(paths.dir)
    except OSError as e:
        raise SetupError(f"cannot create pin directory {paths.dir}: {e.strerror}", EX_OSERR) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SetupError(f"{paths.dir} exists and is not a directory", EX_OSERR)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:  # others could plant symlinks or their own maps
        raise SetupError(f"pin directory {paths.dir} is owned by uid {st.st_uid} or writable by other users "
                         f"(mode {st.st_mode & 0o7777:o}); remove it ('rm -r {paths.dir}') to let the tracer "
                         "create it 0700", EX_CONFIG)
    if st.st_mode & 0o077:
        log.emit("tracer", logging.WARNING,
                 f"AOD pin directory {paths.dir} is accessible to other users (mode {st.st_mode & 0o777:o}); "
                 "expected 0700", AOD_PIN_DIR=paths.dir)


# BPF_F_RDONLY, BPF_F_WRONLY, BPF_F_RDONLY_PROG, BPF_F_WRONLY_PROG: a map made so cannot serve the tracer
# (the program's writes are refused at load: exit 70 and a restart every 10 s; or the scan's reads)
_ACCESS_FLAGS = (1 << 3) | (1 << 4) | (1 << 7) | (1 << 8)
BPF_MAP_TYPE_ARRAY = 2  # (bpfsys names only the types the core opens)
BPF_MAP_TYPE_LRU_HASH = 9


def request_maps(stats: str, slots: int, ignored: str, inflight: str, hung: str, emit_cfg: str
                 ) -> dict[str, tuple[int, int, int, int]]:
    """Shapes of a request tracer's maps (smb, nfs): statistics, ignored statuses, in flight, hung,
    emit filter."""
    from .bpfsys import BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_ARRAY
    from .record import CMD_STATS_DTYPE

    key, start = INFLIGHT_KEY_DTYPE.itemsize, INFLIGHT_START_DTYPE.itemsize
    return {stats: (BPF_MAP_TYPE_PERCPU_ARRAY, 4, CMD_STATS_DTYPE.itemsize, slots),
            ignored: (BPF_MAP_TYPE_HASH, 4, 4, IGNORED_MAX),
            inflight: (BPF_MAP_TYPE_LRU_HASH, key, start, INFLIGHT_MAX),
            hung: (BPF_MAP_TYPE_HASH, key, start, HUNG_MAX),
            emit_cfg: (BPF_MAP_TYPE_ARRAY, 4, EMIT_CFG_DTYPE.itemsize, 1)}


def smb_maps(paths: PinPaths) -> dict[str, tuple[int, int, int, int]]:
    maps = request_maps(paths.cmd_stats, CMD_SLOTS, paths.ignored, paths.inflight, paths.hung, paths.emit_cfg)
    maps[paths.servers] = (BPF_MAP_TYPE_LRU_HASH, 8, HOST_LEN, SERVERS_MAX)
    maps[paths.trees] = (BPF_MAP_TYPE_LRU_HASH, TREE_KEY_DTYPE.itemsize, UNC_LEN, TREES_MAX)
    maps[paths.conns] = (BPF_MAP_TYPE_LRU_HASH, 8, 8, SERVERS_MAX)
    return maps


def nfs_maps(paths: PinPaths) -> dict[str, tuple[int, int, int, int]]:
    from .record import NFS_SLOTS

    p = paths.pin
    return request_maps(p(NFS_STATS), NFS_SLOTS, p(NFS_IGNORED), p(NFS_INFLIGHT), p(NFS_HUNG), p(NFS_EMIT_CFG))


# expected shapes of maps that may already be pinned: path -> (type, key, value, max_entries)
def expected_maps(paths: PinPaths, name: str) -> dict[str, tuple[int, int, int, int]]:
    from .bpfsys import BPF_MAP_TYPE_PERCPU_ARRAY
    from .tracerfront import fronts

    maps = {paths.drops: (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1)}
    front = fronts().get(name)
    if front is not None:
        maps.update(front.maps(paths))
    return maps


def create_missing(paths: PinPaths, ring_bytes: int, name: str) -> list[str]:
    """Create and pin (0600) every map of `name`'s program that is not pinned yet, with the shapes
    check_pinned expects; a concurrent pin of the same path (EEXIST) is not an error. Returns the
    paths created; raises SetupError when a map cannot be created or pinned."""
    want = {paths.ring: (bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, ring_bytes)}
    want.update(expected_maps(paths, name))
    try:  # before 5.11 maps are charged against RLIMIT_MEMLOCK (bcc lifts it too, but later)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        pass  # the unit's LimitMEMLOCK=infinity covers it; else map_create says EPERM
    made: list[str] = []
    found: set[str] = set()
    for path, (mtype, ks, vs, entries) in want.items():
        if os.path.lexists(path):
            found.add(path)
            continue
        base = os.path.basename(path)
        mname = re.sub(r"[^A-Za-z0-9_.]", "_", base.split("_v")[0] if "_v" in base else base)  # kernel: EINVAL
        try:
            fd = bpfsys.map_create(mtype, ks, vs, entries, mname)
        except OSError as e:
            raise SetupError(f"cannot create the map for {path}: {e}", EX_OSERR) from None
        try:
            bpfsys.obj_pin(fd, path)
        except OSError as e:
            if e.errno == errno.EEXIST:
                found.add(path)
                continue
            raise SetupError(f"cannot pin {path}: {e}", EX_OSERR) from None
        finally:
            os.close(fd)
        try:
            bpfsys.chmod_nofollow(path, 0o600)
        except OSError:
            pass  # replaced since it was pinned: the check below says what is there now
        made.append(path)
    # what was there already or appeared meanwhile was not seen by the tracer's check_pinned: bcc
    # would open it (through a symlink too) unchecked
    check_pinned(paths, ring_bytes, name, only=found | set(made))
    return made


def check_pinned(paths: PinPaths, ring_bytes: int, name: str, only: Optional[set[str]] = None) -> list[str]:
    """Inspect maps a previous run pinned (they are reused, never deleted); `only`: just those paths.

    Returns warnings; raises SetupError when a pinned object cannot be reused.
    """
    from . import bpfsys

    warnings: list[str] = []
    want = {paths.ring: (bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, ring_bytes)}
    want.update(expected_maps(paths, name))
    for path, (mtype, ks, vs, entries) in want.items():
        if only is not None and path not in only:
            continue
        if os.path.islink(path):  # bpffs has symlinks: bcc would follow it to a map we never checked
            raise SetupError(f"{path} is a symbolic link; remove it ('rm {path}') to let the tracer create "
                             "the map", EX_CONFIG)
        try:
            owner = os.lstat(path).st_uid
        except FileNotFoundError:
            continue
        except OSError as e:
            raise SetupError(f"cannot inspect pinned {path}: {e}", EX_OSERR) from None
        if owner != os.geteuid():  # pinned by someone else: they may read or feed what it holds
            raise SetupError(f"{path} is pinned by uid {owner}, not by this user; remove it ('rm {path}') to "
                             "let the tracer create the map", EX_CONFIG)
        try:
            fd = bpfsys.obj_get(path, bpfsys.BPF_F_RDONLY)
            try:
                info = bpfsys.map_info(fd, path)
            finally:
                os.close(fd)
        except OSError as e:
            raise SetupError(f"cannot inspect pinned {path}: {e}", EX_OSERR) from None
        if info.map_flags & _ACCESS_FLAGS:
            raise SetupError(f"{path} is pinned read-only or write-only (map flags {info.map_flags:#x}): the "
                             f"tracer could not use it; remove it ('rm {path}') to let the tracer create it",
                             EX_CONFIG)
        if info.type != mtype or (path != paths.ring and (info.key_size, info.value_size, info.max_entries)
                                  != (ks, vs, entries)):
            raise SetupError(
                f"{path} is pinned with a different layout (type {info.type}, key {info.key_size}, "
                f"value {info.value_size}, entries {info.max_entries}); stop every aodv2 unit and "
                f"remove it ('rm {path}') to let the tracer create it again", EX_CONFIG)
        if path == paths.ring and info.max_entries != entries:
            warnings.append(f"the pinned ring {path} holds {info.max_entries // 1024} KiB but the config "
                            f"asks for {entries // 1024} KiB; reusing it (restart every aodv2 unit after "
                            f"removing it to resize)")
    return warnings
