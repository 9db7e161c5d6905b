"""The nfs tracer's front (tracer layer): bpf/nfs.bpf.c on the sunrpc tracepoints; the loader
(aod/tracer.py) does the rest.

Waits for events/sunrpc (sunrpc loads with the first NFS mount, or with nfsd). Required: the four
request events the program pairs (rpc_task_begin, rpc_request, rpc_task_end, rpc_stats_latency);
optional, attached where the kernel has them and listed as offered/attached in the state file:
rpc_task_complete and the transport events (5.10 lacks xprt_retransmit).
At attach it loads the procedure names of aod/nfsproc.py into the program's `procs` map; while
attached it keeps the emit filter, hung threshold (confignfs.nfs_view) and nfs.benign_statuses.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import config as config_mod
from . import nfsproc, pins
from .confignfs import nfs_view
from .pins import PinPaths
from .record import TRACER_NFS
from .tracepoints import EX_CONFIG, TRIGGER_TRACEPOINT, AttachPlan, SetupError, usable_tracepoints
from .tracerargs import Options
from .tracerfront import Front, Health, Live, PlanInput

TASK = ("task_id", "client_id")
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "rpc_task_begin": TASK,
    "rpc_request": TASK + ("version", "progname", "procname"),
    "rpc_task_end": TASK + ("status",),
    "rpc_stats_latency": TASK + ("xid", "version", "progname", "procname", "execute"),
}
OPTIONAL: Mapping[str, tuple[str, ...]] = {
    "rpc_task_complete": TASK,
    "xprt_retransmit": TASK + ("xid", "ntrans", "version", "progname"),
    "xprt_timer": ("xid", "status"),
    "xprt_disconnect_auto": (),
    "xprt_disconnect_force": (),
    "xprt_connect": (),
}


def plan(p: PlanInput) -> tuple[AttachPlan, Health, tuple[str, ...]]:
    tps = usable_tracepoints(p.events_dir, {**REQUIRED, **OPTIONAL})
    missing = [f"sunrpc:{t} ({tps.get(t) or 'not offered by this kernel'})" for t in REQUIRED if tps.get(t) != ""]
    if missing:
        raise SetupError(f"cannot trace NFS on this kernel: it lacks {', '.join(missing)}", EX_CONFIG)
    extra = [t for t in OPTIONAL if tps.get(t) == ""]
    both = list(REQUIRED) + extra
    health = {"offered": [t for t in OPTIONAL if t in tps], "attached": extra}
    notes = tuple(f"sunrpc:{t} not offered by this kernel: skipped" for t in OPTIONAL if t not in tps)
    notes += tuple(f"sunrpc:{t} not used: {why}" for t, why in tps.items() if why)
    return (AttachPlan("tracepoint", tuple(f"sunrpc:{t}" for t in both) + (TRIGGER_TRACEPOINT,),
                       defines=tuple(f"AOD_HAVE_{t.upper()}=1" for t in extra), notes=notes), health, notes)


def defines(opts: Options, paths: PinPaths) -> list[str]:
    p = paths.pin
    return [
        f"-DAOD_INFLIGHT_MAX={pins.INFLIGHT_MAX}",
        f'-DAOD_STATS_PIN="{p(pins.NFS_STATS)}"',
        f'-DAOD_IGNORED_PIN="{p(pins.NFS_IGNORED)}"',
        f'-DAOD_INFLIGHT_PIN="{p(pins.NFS_INFLIGHT)}"',
        f'-DAOD_HUNG_PIN="{p(pins.NFS_HUNG)}"',
        f'-DAOD_EMIT_CFG_PIN="{p(pins.NFS_EMIT_CFG)}"',
    ]


def ignored(cfg: config_mod.Config) -> frozenset[int]:
    return cfg.nfs.benign_statuses


def setup(obj: Any) -> str:
    """Load the procedure names into the program's `procs` map (bcc table)."""
    table = obj.get_table("procs")
    n = 0
    for key, code in nfsproc.name_keys():
        k = table.Key()
        k.version = int.from_bytes(key[:4], "little")
        k.name = key[4:].rstrip(b"\0")
        table[k] = table.Leaf(code)
        n += 1
    return f"procedure names loaded: {n} (NFSv3 and NFSv4.x)"


FRONT = Front("nfs", "nfs.bpf.c", TRACER_NFS, plan, defines, pins.nfs_maps, system="sunrpc", module="sunrpc",
              live=Live(nfs_view, ignored, setup))
