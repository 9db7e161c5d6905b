"""Tracer fronts (tracer layer): what one protocol's tracer declares for the shared loader.

The loader (aod/tracer.py) does what every tracer needs: config, bcc, the pinned ring and its
counters, waiting for the kernel subsystem, compiling with the -D constants, the live maps and
the aging scan (aod/tracerlive.py), reload, sd_notify and the state file. A front, like each bcc
tool's short Python beside its C, says only what differs:
  - its BPF source and tracer id (bpf/NAME.bpf.c, AOD_TRACER_*);
  - the tracefs system it waits for, and the module that brings it (None: attach at once);
  - plan(): how to attach on this kernel (tracepoints, kprobes, -D defines, notes, health lists);
  - defines(): its -D constants (pin paths of its own maps, ...);
  - maps(): the shapes of its pinned maps (checked before bcc opens them, created on old bcc);
  - live: the config it keeps applied while attached (emit filter, aging, benign statuses) and
    what it loads into its maps at attach (setup).
Fronts: front_smb.py, front_nfs.py, front_synthetic.py (tests only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from . import config as config_mod
from .pins import PinPaths
from .tracepoints import AttachPlan

if TYPE_CHECKING:
    from .tracerargs import Options

Health = dict[str, list[str]]  # {"offered": [...], "attached": [...]} (state file)
MapShapes = dict[str, tuple[int, int, int, int]]  # pin path -> (type, key size, value size, entries)


@dataclass(frozen=True)
class PlanInput:
    """What a front's plan() may look at on the running kernel."""

    events_dir: Optional[str]  # tracefs events/<system> ("" or None: the system has no events dir)
    tracefs: Sequence[str]
    kallsyms: str
    release: str
    btf_dir: str
    mode: str  # tracer.mode, or "kprobe" with --force-kprobes (smb only)


@dataclass(frozen=True)
class Live:
    """What an attached tracer keeps in step with the config (aod/tracerlive.TracerLive)."""

    view: Callable[[config_mod.Config], config_mod.Config]  # the config as this protocol's rules read it
    ignored: Callable[[config_mod.Config], frozenset[int]]  # the ignored_status map's keys
    setup: Optional[Callable[[Any], str]] = None  # fill maps at attach (bcc object -> a log line)
    aging: bool = True  # the program has the in-flight maps and the getppid trigger


@dataclass(frozen=True)
class Front:
    name: str
    source: str  # file under the BPF dir
    tracer_id: int
    plan: Callable[[PlanInput], tuple[AttachPlan, Health, tuple[str, ...]]]
    defines: Callable[[Options, PinPaths], list[str]]
    maps: Callable[[PinPaths], MapShapes]
    system: Optional[str] = None  # tracefs events system to wait for
    module: str = ""  # kernel module providing it (/sys/module/<module>)
    live: Optional[Live] = None
    aging_in: tuple[str, ...] = ("tracepoint",)  # plan modes with the aging trigger
    modes: bool = False  # attaches by tracer.mode (tracepoint or kprobe; --force-kprobes): smb


def fronts() -> Mapping[str, Front]:
    """Every tracer, by name (imported here: the fronts import the loader's helpers)."""
    from . import front_nfs, front_smb, front_synthetic

    return {f.name: f for f in (front_smb.FRONT, front_nfs.FRONT, front_synthetic.FRONT)}
