"""The smb tracer's front (tracer layer): bpf/smb.bpf.c on the cifs tracepoints, or the kprobe
fallback; the loader (aod/tracer.py) does the rest.

Waits for events/cifs (the module loads at the first mount). Its plan is aod/tracepoints.py's
(tracepoints, connection probes, kprobe fallback chosen by the running kernel's symbols and BTF),
its maps the smb request maps plus the server and share names (aod/pins.py smb_maps); while
attached it keeps the emit filter, the hung threshold and the ignored NT statuses of the config.
"""

from __future__ import annotations

from . import config as config_mod
from . import pins
from .pins import PinPaths
from .record import TRACER_SMB
from .tracepoints import AttachPlan, smb_plan
from .tracerargs import Options
from .tracerfront import Front, Health, Live, PlanInput


def plan(p: PlanInput) -> tuple[AttachPlan, Health, tuple[str, ...]]:
    return smb_plan(p.events_dir or None, p.tracefs, p.kallsyms, p.release, p.mode, p.btf_dir)


def defines(opts: Options, paths: PinPaths) -> list[str]:
    return [
        f'-DAOD_STATS_PIN="{paths.cmd_stats}"',
        f"-DAOD_INFLIGHT_MAX={pins.INFLIGHT_MAX}",
        f'-DAOD_IGNORED_PIN="{paths.ignored}"',
        f'-DAOD_INFLIGHT_PIN="{paths.inflight}"',
        f'-DAOD_HUNG_PIN="{paths.hung}"',
        f'-DAOD_SERVERS_PIN="{paths.servers}"',
        f'-DAOD_TREES_PIN="{paths.trees}"',
        f'-DAOD_CONNS_PIN="{paths.conns}"',
        f'-DAOD_EMIT_CFG_PIN="{paths.emit_cfg}"',
    ]


def view(cfg: config_mod.Config) -> config_mod.Config:
    return cfg


def ignored(cfg: config_mod.Config) -> frozenset[int]:
    return cfg.ignored_statuses


FRONT = Front("smb", "smb.bpf.c", TRACER_SMB, plan, defines, pins.smb_maps, system="cifs", module="cifs",
              live=Live(view, ignored), modes=True)
