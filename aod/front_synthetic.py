"""The synthetic tracer's front (tests only): bpf/synthetic.bpf.c writes one record per getppid()
of a chosen process into the shared ring, so tests drive the real ring, the drops counter and a
second producer without any file-share traffic. Nothing to wait for, no maps of its own."""

from __future__ import annotations

from .pins import PinPaths
from .record import TRACER_SYNTHETIC
from .tracepoints import AttachPlan
from .tracerargs import SYNTH_KINDS, Options
from .tracerfront import Front, Health, PlanInput


def plan(p: PlanInput) -> tuple[AttachPlan, Health, tuple[str, ...]]:
    return AttachPlan("syscall", ("syscalls:sys_enter_getppid",)), {}, ()


def defines(opts: Options, paths: PinPaths) -> list[str]:
    return [
        f"-DAOD_SYNTH_PID={opts.synth_pid}",
        f"-DAOD_SYNTH_KIND={SYNTH_KINDS[opts.synth_kind]}",
        f"-DAOD_SYNTH_CMD={opts.synth_command}",
        f"-DAOD_SYNTH_LATENCY_NS={int(opts.synth_latency_ms * 1e6)}ULL",
        f"-DAOD_SYNTH_STATUS={opts.synth_status:#x}U",
        f"-DAOD_SYNTH_ERRNO={opts.synth_errno}",
    ]


FRONT = Front("synthetic", "synthetic.bpf.c", TRACER_SYNTHETIC, plan, defines, lambda paths: {})
