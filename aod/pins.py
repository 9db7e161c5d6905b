"""Pinned BPF objects beside the ring (ring layer): their names, layout versions and upkeep.

Pins in bpffs outlive the processes and the package, so an upgraded core or tracer
meets the maps an older one pinned. A map whose layout changes gets a new name
(`pin_name`): a newer tracer creates its own beside the old one, never reuses a map
of another layout, and removes the older pin once its own is attached
(`remove_stale`); the core reads the older layout until then (counters.py), for one
release. The ring (records carry their version) and `drops` have not changed.

The tracer also keeps `ignored_status` (NT status -> 1, a hash) equal to config
ignored_statuses (`sync_ignored`): the kernel program drops those statuses as errors.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Iterable

from . import bpfsys
from .record import CMD_SLOTS, CMD_STATS_V1_DTYPE, CMD_STATS_VERSION


def pin_name(base: str, version: int) -> str:
    """bpffs name of a pinned map at a layout version: `base` for 1, `base_vN` after (bpffs
    refuses a name with a dot: EPERM)."""
    return base if version <= 1 else f"{base}_v{version}"


CMD_STATS = pin_name("cmd_stats", CMD_STATS_VERSION)  # cmd_stats_v2: struct aod_cmd_stats
CMD_STATS_V1 = pin_name("cmd_stats", CMD_STATS_VERSION - 1)  # aodv2 0.1: struct aod_cmd_stats_v1
IGNORED = "ignored_status"
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
