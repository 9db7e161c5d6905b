"""`aodv2 tracer` arguments (tracer layer, first step): which tracer, which config, where its BPF
sources and pins are, the synthetic tracer's record, and the clang -I/-D flags built from them
and the config (cflags). aod/tracer.py re-exports these names.

`--force-kprobes` is the command-line form of config `tracer.mode: kprobe` and overrides it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import config as config_mod
from .pins import PinPaths
from .record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT
from .tracepoints import EX_CONFIG, EX_USAGE, SetupError

DEFAULT_BPF_DIR = "/usr/share/aodv2/bpf"
DEFAULT_PIN_DIR = "/sys/fs/bpf/aodv2"

# the tracers (aod/tracerfront.py fronts; listed here for the argument parser, which they import)
TRACERS = ("smb", "nfs", "synthetic")

SYNTH_KINDS = {"completion": KIND_COMPLETION, "error": KIND_ERROR, "reconnect": KIND_RECONNECT}


@dataclass(frozen=True)
class Options:
    name: str
    config: str = config_mod.DEFAULT_CONFIG_PATH
    bpf_dir: Optional[str] = None  # None: installed dir, or the checkout's bpf/
    pin_dir: Optional[str] = None  # None: directory of config ring.path
    force_kprobes: bool = False
    synth_pid: int = 0
    synth_kind: str = "completion"
    synth_command: int = 8
    synth_latency_ms: float = 0.0
    synth_status: int = 0
    synth_errno: int = 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # no sys.exit from inside a library call
        raise SetupError(f"{self.prog}: {message}", EX_USAGE)


def _int0(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aodv2 tracer", description="Load one aodv2 eBPF tracer and hold it until SIGTERM.")
    p.add_argument("name", metavar="NAME", help=f"tracer to run: {', '.join(TRACERS)}")
    p.add_argument("--config", default=config_mod.DEFAULT_CONFIG_PATH,
                   help="config file (default %(default)s)")
    p.add_argument("--bpf-dir", help=f"BPF C sources (default {DEFAULT_BPF_DIR}, or bpf/ of a checkout)")
    p.add_argument("--pin-dir", help=f"bpffs directory of the ring and maps (default: directory of "
                                     f"config ring.path, {DEFAULT_PIN_DIR})")
    p.add_argument("--force-kprobes", action="store_true",
                   help="smb: use the kprobe fallback even if the tracepoints exist (as config "
                        "tracer.mode: kprobe, which it overrides)")
    g = p.add_argument_group("synthetic tracer (tests only)")
    g.add_argument("--pid", type=_int0, default=0, help="follow getppid() of this tgid (0: every process)")
    g.add_argument("--kind", choices=sorted(SYNTH_KINDS), default="completion")
    g.add_argument("--command", type=_int0, default=8, help="SMB2 command id to write (default READ)")
    g.add_argument("--latency-ms", type=float, default=0.0)
    g.add_argument("--status", type=_int0, default=0, help="NT status to write")
    g.add_argument("--errno", type=_int0, default=0, help="positive errno to write")
    return p


def parse_args(argv: Sequence[str]) -> Options:
    """Options from argv (the verb excluded). Raises SetupError(EX_USAGE)."""
    ns = parser().parse_args(list(argv))
    if ns.name not in TRACERS:
        raise SetupError(f"aodv2 tracer: unknown tracer {ns.name!r}; expected one of {', '.join(TRACERS)}",
                         EX_USAGE)
    synth_given = (ns.pid, ns.kind, ns.command, ns.latency_ms, ns.status, ns.errno) != (
        0, "completion", 8, 0.0, 0, 0)
    if ns.name != "synthetic" and synth_given:
        raise SetupError("aodv2 tracer: --pid/--kind/--command/--latency-ms/--status/--errno "
                         "are for the synthetic tracer only", EX_USAGE)
    from .tracerfront import fronts

    if ns.force_kprobes and not fronts()[ns.name].modes:
        raise SetupError("aodv2 tracer: --force-kprobes is for the smb tracer only", EX_USAGE)
    if not (0 <= ns.pid < 2**32 and 0 <= ns.command < 2**16 and 0 <= ns.status < 2**32
            and 0 <= ns.errno < 2**31 and 0 <= ns.latency_ms < 1e9):
        raise SetupError("aodv2 tracer: --pid/--command/--status/--errno/--latency-ms out of range", EX_USAGE)
    return Options(ns.name, ns.config, ns.bpf_dir, ns.pin_dir, ns.force_kprobes, ns.pid, ns.kind,
                   ns.command, ns.latency_ms, ns.status, ns.errno)


def default_bpf_dir() -> str:
    """The checkout's bpf/ when aod/ runs from one, else the installed directory."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpf")
    if os.path.isfile(os.path.join(here, "aod_event.h")):
        return here
    return DEFAULT_BPF_DIR


# ---------------------------------------------------------------- compiler flags


def ring_pages(size_kb: int, page_size: int) -> int:
    size = size_kb * 1024
    if size < page_size or size % page_size or size & (size - 1):
        raise SetupError(f"ring.size_kb {size_kb} must be a power of two and a multiple of the "
                         f"{page_size // 1024} KiB page size", EX_CONFIG)
    return size // page_size


def cflags(opts: Options, cfg: config_mod.Config, paths: PinPaths, bpf_dir: str,
           defines: Sequence[str] = (), page_size: int = 4096, self_tgid: int = 0) -> list[str]:
    """-I/-D flags for bpf/<name>.bpf.c (argv elements for clang; no shell involved): the ring's, the
    front's own (tracerfront.Front.defines) and the plan's. Nothing a reload may change is compiled
    in (the emit filter is a map); self_tgid: the tracer's pid, whose getppid() fires the aging
    trigger (0: no aging)."""
    from .tracerfront import fronts

    front = fronts()[opts.name]
    out = [
        f"-I{bpf_dir}",
        f"-DAOD_TRACER_ID={front.tracer_id}",
        f"-DAOD_RING_PAGES={ring_pages(cfg.ring.size_kb, page_size)}",
        f'-DAOD_RING_PIN="{paths.ring}"',
        f'-DAOD_DROPS_PIN="{paths.drops}"',
    ] + front.defines(opts, paths) + ([f"-DAOD_SELF_TGID={self_tgid}"] if self_tgid else [])
    return out + [f"-D{d}" for d in defines]
