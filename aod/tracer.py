"""`aodv2 tracer NAME`: load one eBPF tracer with bcc and hold it (producer side of the ring).

Data flow: kernel (cifs tracepoints, or a test syscall) -> bpf/NAME.bpf.c ->
pinned ring <pin dir>/events + pinned per-CPU maps `drops`, `cmd_stats` ->
core (ring.py, counters.py).

One process per tracer, run by systemd as aodv2-tracer@NAME.service:
sd_notify READY=1 with STATUS=waiting while the cifs tracepoints are missing (module
not loaded yet is normal), compile and attach when they appear (STATUS=attached), then
sleep until SIGTERM/SIGINT and exit 0.
The ring and maps are pinned in bpffs and reused, never recreated, so either
side can restart at any time. bcc is imported lazily: only this command needs it.

Exit statuses (list 2 69 71 78 in RestartPreventExitStatus=):
  0 stopped by a signal, 2 bad arguments, 69 bcc missing, 70 load/attach
  failed, 71 bpffs not mounted or pin dir unusable, 78 bad config, or no way
  to trace SMB on this kernel.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from . import config as config_mod
from . import kallsyms, log, pins, tracerstate
from .record import (
    CMD_SLOTS,
    IGNORED_MAX,
    KIND_COMPLETION,
    KIND_ERROR,
    KIND_RECONNECT,
    TRACER_SMB,
    TRACER_SYNTHETIC,
)

EX_OK = 0
EX_USAGE = 2
EX_UNAVAILABLE = 69  # bcc (python3-bpfcc) missing
EX_SOFTWARE = 70  # BPF compile, load or attach failed
EX_OSERR = 71  # bpffs not mounted, pin dir unusable
EX_CONFIG = 78  # invalid config, or nothing to attach to on this kernel

DEFAULT_BPF_DIR = "/usr/share/aodv2/bpf"
DEFAULT_PIN_DIR = "/sys/fs/bpf/aodv2"
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CIFS_MODULE_DIR = "/sys/module/cifs"
POLL_SEC = 1.5  # waiting for the cifs module
INFLIGHT_MAX = 16384  # LRU entries for requests in flight

BCC_MISSING = (
    "bcc is not installed: install python3-bpfcc (Debian/Ubuntu) or python3-bcc (Fedora/RHEL); "
    "it is not on PyPI (the PyPI 'bcc' package is unrelated)"
)

# what each tracer compiles and which tracer_id it writes
TRACERS: Mapping[str, tuple[str, int]] = {
    "smb": ("smb.bpf.c", TRACER_SMB),
    "synthetic": ("synthetic.bpf.c", TRACER_SYNTHETIC),
}

# cifs tracepoint -> fields bpf/smb.bpf.c reads; each found one sets -DAOD_HAVE_<NAME>
CMD_FIELDS = ("tid", "sesid", "cmd", "mid")
SMB_TRACEPOINTS: Mapping[str, tuple[str, ...]] = {
    "smb3_cmd_enter": CMD_FIELDS,
    "smb3_cmd_done": CMD_FIELDS,
    "smb3_cmd_err": CMD_FIELDS + ("status", "rc"),
    "smb3_reconnect": ("currmid",),
    "smb3_ses_expired": CMD_FIELDS,
}
REQUIRED_TRACEPOINTS = ("smb3_cmd_enter", "smb3_cmd_done")

SYNTH_KINDS = {"completion": KIND_COMPLETION, "error": KIND_ERROR, "reconnect": KIND_RECONNECT}

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]+$")  # goes into a C string literal


class SetupError(Exception):
    """A clear one-line reason plus the exit status to use."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- arguments


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
                   help="smb: use the kprobe fallback even if the tracepoints exist (testing)")
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
    if ns.force_kprobes and ns.name != "smb":
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


# ---------------------------------------------------------------- pins and cflags


@dataclass(frozen=True)
class PinPaths:
    dir: str
    ring: str
    drops: str
    cmd_stats: str
    ignored: str


def pin_paths(ring: config_mod.RingConfig, pin_dir: Optional[str] = None) -> PinPaths:
    """Ring at config ring.path (or --pin-dir/<its basename>); drops, cmd_stats_v2, ignored_status beside it."""
    d = os.path.normpath(pin_dir) if pin_dir else os.path.dirname(os.path.normpath(ring.path))
    base = os.path.basename(ring.path) or "events"
    paths = PinPaths(d, os.path.join(d, base), os.path.join(d, "drops"), os.path.join(d, pins.CMD_STATS),
                     os.path.join(d, pins.IGNORED))
    for p in (paths.ring, paths.drops, paths.cmd_stats, paths.ignored):
        if not _SAFE_PATH.match(p) or ".." in p.split("/"):
            raise SetupError(f"pin path {p!r} must be absolute and use only A-Z a-z 0-9 _ . + - /", EX_CONFIG)
    return paths


def emit_cmd_mask(lat: config_mod.LatencyConfig) -> int:
    """Bit s set when completions of command slot s can matter to a detector (finite threshold)."""
    finite = [t != float("inf") for t in config_mod.threshold_lookup(lat)]
    mask = 0
    for slot in range(CMD_SLOTS - 1):
        if finite[slot]:
            mask |= 1 << slot
    if any(finite[CMD_SLOTS - 1:]):  # the last slot holds every command id >= 31
        mask |= 1 << (CMD_SLOTS - 1)
    return mask


def ring_pages(size_kb: int, page_size: int) -> int:
    size = size_kb * 1024
    if size < page_size or size % page_size or size & (size - 1):
        raise SetupError(f"ring.size_kb {size_kb} must be a power of two and a multiple of the "
                         f"{page_size // 1024} KiB page size", EX_CONFIG)
    return size // page_size


def cflags(opts: Options, cfg: config_mod.Config, paths: PinPaths, bpf_dir: str,
           defines: Sequence[str] = (), page_size: int = 4096) -> list[str]:
    """-I/-D flags for bpf/<name>.bpf.c (argv elements for clang; no shell involved)."""
    tracer_id = TRACERS[opts.name][1]
    out = [
        f"-I{bpf_dir}",
        f"-DAOD_TRACER_ID={tracer_id}",
        f"-DAOD_RING_PAGES={ring_pages(cfg.ring.size_kb, page_size)}",
        f'-DAOD_RING_PIN="{paths.ring}"',
        f'-DAOD_DROPS_PIN="{paths.drops}"',
        f'-DAOD_STATS_PIN="{paths.cmd_stats}"',
    ]
    if opts.name == "smb":
        out += [
            f"-DAOD_EMIT_MIN_NS={config_mod.min_threshold_ns(cfg.latency)}ULL",
            f"-DAOD_EMIT_CMD_MASK={emit_cmd_mask(cfg.latency):#x}U",
            f"-DAOD_INFLIGHT_MAX={INFLIGHT_MAX}",
            f'-DAOD_IGNORED_PIN="{paths.ignored}"',
        ]
    elif opts.name == "synthetic":
        out += [
            f"-DAOD_SYNTH_PID={opts.synth_pid}",
            f"-DAOD_SYNTH_KIND={SYNTH_KINDS[opts.synth_kind]}",
            f"-DAOD_SYNTH_CMD={opts.synth_command}",
            f"-DAOD_SYNTH_LATENCY_NS={int(opts.synth_latency_ms * 1e6)}ULL",
            f"-DAOD_SYNTH_STATUS={opts.synth_status:#x}U",
            f"-DAOD_SYNTH_ERRNO={opts.synth_errno}",
        ]
    return out + [f"-D{d}" for d in defines]


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
    if st.st_mode & 0o077:
        log.emit("tracer", logging.WARNING,
                 f"AOD pin directory {paths.dir} is accessible to other users (mode {st.st_mode & 0o777:o}); "
                 "expected 0700", AOD_PIN_DIR=paths.dir)


# expected shapes of maps that may already be pinned: path attr -> (type, key, value, max_entries)
def expected_maps(paths: PinPaths, name: str) -> dict[str, tuple[int, int, int, int]]:
    from .bpfsys import BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_ARRAY
    from .record import CMD_STATS_DTYPE

    maps = {paths.drops: (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1)}
    if name == "smb":
        maps[paths.cmd_stats] = (BPF_MAP_TYPE_PERCPU_ARRAY, 4, CMD_STATS_DTYPE.itemsize, CMD_SLOTS)
        maps[paths.ignored] = (BPF_MAP_TYPE_HASH, 4, 4, IGNORED_MAX)
    return maps


def check_pinned(paths: PinPaths, ring_bytes: int, name: str) -> list[str]:
    """Inspect maps a previous run pinned (they are reused, never deleted).

    Returns warnings; raises SetupError when a pinned object cannot be reused.
    """
    from . import bpfsys

    warnings: list[str] = []
    want = {paths.ring: (bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, ring_bytes)}
    want.update(expected_maps(paths, name))
    for path, (mtype, ks, vs, entries) in want.items():
        if not os.path.exists(path):
            continue
        try:
            fd = bpfsys.obj_get(path, bpfsys.BPF_F_RDONLY)
            try:
                info = bpfsys.map_info(fd, path)
            finally:
                os.close(fd)
        except OSError as e:
            raise SetupError(f"cannot inspect pinned {path}: {e}", EX_OSERR) from None
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


# ---------------------------------------------------------------- tracefs


def parse_format(text: str) -> dict[str, str]:
    """Field name -> C type from a tracefs event `format` file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        decl = line[len("field:"):].split(";", 1)[0].strip()
        decl = re.sub(r"\[[^]]*\]", "", decl).strip()
        m = re.match(r"(.*?)([A-Za-z_][A-Za-z0-9_]*)$", decl)
        if m:
            out[m.group(2)] = m.group(1).strip()
    return out


def find_events_dir(tracefs: Sequence[str], system: str = "cifs") -> Optional[str]:
    for root in tracefs:
        d = os.path.join(root, "events", system)
        if os.path.isdir(d):
            return d
    return None


def usable_tracepoints(events_dir: Optional[str], wanted: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Tracepoints under events_dir whose format has every field we read -> reason-or-'' map.

    Returns {name: ""} for usable ones and {name: "why not"} for present-but-unusable ones.
    """
    out: dict[str, str] = {}
    if not events_dir:
        return out
    for tp, fields in wanted.items():
        fmt = os.path.join(events_dir, tp, "format")
        try:
            with open(fmt, encoding="utf-8", errors="replace") as f:
                have = parse_format(f.read())
        except OSError:
            continue
        missing = [x for x in fields if x not in have]
        out[tp] = f"format lacks {', '.join(missing)}" if missing else ""
    return out


@dataclass(frozen=True)
class AttachPlan:
    mode: str  # "tracepoint" | "kprobe" | "syscall"
    tracepoints: tuple[str, ...]  # "system:event", attached by bcc (TRACEPOINT_PROBE)
    kprobes: tuple[tuple[str, str, str], ...] = ()  # ("kprobe"|"kretprobe", symbol, function)
    defines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # things worth one log line
    optional_kprobes: tuple[tuple[str, str, str], ...] = ()  # attach failure: a warning, not an error


def function_list(tracefs: Sequence[str], kallsyms_path: str) -> tuple[Optional[str], str]:
    """(text, where from) of the kernel's function names: tracefs available_filter_functions
    (the unit's ProtectKernelTunables= hides /proc/kallsyms), else kallsyms_path; (None, tried)."""
    tried = [os.path.join(t, "available_filter_functions") for t in tracefs] + [kallsyms_path]
    for path in tried:
        text = _read(path)
        if text:
            return text, path
    return None, " or ".join(tried)


def plan_smb(tps: Mapping[str, str], kallsyms_text: Optional[str], release: str,
             force_kprobes: bool = False, symbols_from: str = "/proc/kallsyms") -> AttachPlan:
    """How to trace SMB here: tracepoints if enter+done are usable, else kprobes. Raises SetupError."""
    usable = [t for t in SMB_TRACEPOINTS if tps.get(t) == ""]
    notes = tuple(f"cifs:{t} not used: {why}" for t, why in tps.items() if why)
    have_required = all(t in usable for t in REQUIRED_TRACEPOINTS)
    if have_required and not force_kprobes:
        plan = AttachPlan("tracepoint", tuple(f"cifs:{t}" for t in usable),
                          defines=tuple(f"AOD_HAVE_{t.upper()}=1" for t in usable), notes=notes)
        conn = kallsyms.choose_conn_probes(kallsyms_text or "")
        if conn is None:
            where = (f"are not in {symbols_from}" if kallsyms_text
                     else f"cannot be looked up: cannot read {symbols_from}")
            return dataclasses.replace(plan, notes=notes + (
                f"no connection probes ({kallsyms.ALLOC_SYMBOL} and one of {'/'.join(kallsyms.RECV_SYMBOLS)} "
                f"{where}): requests are paired without their connection, so two "
                "connections or channels with the same message id in flight may share an entry",))
        return dataclasses.replace(
            plan, optional_kprobes=(("kprobe", conn[0], "aod_conn_alloc"), ("kprobe", conn[1], "aod_conn_recv")),
            defines=plan.defines + ("AOD_CONN_PROBES=1",),
            notes=notes + (f"pairing key names the connection: kprobes on {conn[0]} and {conn[1]}",))
    kp = kallsyms.choose_kprobes(kallsyms_text or "", release)
    if kp is None:
        raise SetupError(
            "cannot trace SMB on this kernel: the cifs tracepoints smb3_cmd_enter/smb3_cmd_done are "
            f"missing or unusable and no kprobe fallback symbols ({kallsyms.ALLOC_SYMBOL} and a mid release "
            f"function) are in {symbols_from}" + ("" if kallsyms_text else " (not readable)"), EX_CONFIG)
    extra = [t for t in usable if t not in REQUIRED_TRACEPOINTS]
    rel = kp.release
    return AttachPlan(
        "kprobe",
        tuple(f"cifs:{t}" for t in extra),
        (("kprobe", kp.alloc, "aod_alloc_enter"), ("kretprobe", kp.alloc, "aod_alloc_return"),
         ("kprobe", rel.symbol, "aod_release")),
        ("AOD_KPROBE_MODE=1", f"AOD_RELEASE_ARG={rel.arg}", f"AOD_RELEASE_OFF={rel.offset}")
        + tuple(f"AOD_HAVE_{t.upper()}=1" for t in extra),
        notes + (f"kprobe fallback: {kp.alloc} -> {rel.symbol} (arg {rel.arg}, offset {rel.offset})",),
    )


def wait_until(ready: Callable[[], Optional[str]], stop: threading.Event, sleep: Callable[[float], bool],
               poll_sec: float = POLL_SEC, on_wait: Optional[Callable[[], None]] = None) -> Optional[str]:
    """Poll `ready()` every poll_sec until it returns a value; None if stopped first.

    `sleep(t)` returns True when the stop was requested (threading.Event.wait semantics).
    `on_wait` runs once, before the first sleep.
    """
    waited = False
    while not stop.is_set():
        got = ready()
        if got is not None:
            return got
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        if sleep(poll_sec):
            return None
    return None


class CifsWatch:
    """`ready()` for wait_until: the cifs events dir, or the loaded module (seen twice, no tracepoints)."""

    def __init__(self, tracefs: Sequence[str], module_dir: str = CIFS_MODULE_DIR) -> None:
        self.tracefs = tuple(tracefs)
        self.module_dir = module_dir
        self._module_seen = False

    def __call__(self) -> Optional[str]:
        d = find_events_dir(self.tracefs)
        if d is not None:
            return d
        if os.path.isdir(self.module_dir):
            if self._module_seen:  # loaded for a full poll and still no tracepoints: old kernel
                return ""
            self._module_seen = True
        return None


# ---------------------------------------------------------------- loading


class Loaded:
    """What a loader returns: something holding the attachment until close()."""

    def __init__(self, obj: Any, attached: int, kprobes: int = 0, failed: Sequence[str] = ()) -> None:
        self.obj = obj
        self.attached = attached  # tracepoints
        self.kprobes = kprobes
        self.failed = list(failed)  # optional kprobes that did not attach: "symbol: error"

    def close(self) -> None:
        cleanup = getattr(self.obj, "cleanup", None)
        if cleanup is not None:
            cleanup()


def import_bcc() -> Any:
    import bcc  # type: ignore[import-not-found]

    return bcc


def bcc_load(bcc: Any, source: str, flags: list[str], plan: AttachPlan, ring_path: str) -> Loaded:
    """Compile + load with bcc (tracepoints attach by themselves), then attach kprobes."""
    b = None
    for attempt in range(2):
        existed = os.path.exists(ring_path)
        try:
            b = bcc.BPF(src_file=source.encode(), cflags=flags)
            break
        except Exception:
            # two tracers creating the pins at once: the loser's pin fails; the ring exists now
            if attempt or existed or not os.path.exists(ring_path):
                raise
            time.sleep(0.5)
    assert b is not None
    for kind, sym, fn in plan.kprobes:
        (b.attach_kretprobe if kind == "kretprobe" else b.attach_kprobe)(event=sym, fn_name=fn)
    failed = []
    for _kind, sym, fn in plan.optional_kprobes:
        try:
            b.attach_kprobe(event=sym, fn_name=fn)
        except Exception as e:  # bcc: plain Exception("Failed to attach BPF program ...")
            failed.append(f"{sym}: {e}")
    n = b.num_open_tracepoints() if hasattr(b, "num_open_tracepoints") else len(plan.tracepoints)
    return Loaded(b, int(n), len(plan.kprobes) + len(plan.optional_kprobes) - len(failed), failed)


# ---------------------------------------------------------------- main


@dataclass
class Env:
    """Everything main() touches outside Python; tests replace parts of it."""

    tracefs: tuple[str, ...] = TRACEFS_CANDIDATES
    module_dir: str = CIFS_MODULE_DIR
    kallsyms: str = "/proc/kallsyms"
    mountinfo: str = "/proc/self/mountinfo"
    release: str = field(default_factory=lambda: os.uname().release)
    page_size: int = field(default_factory=lambda: os.sysconf("SC_PAGE_SIZE"))
    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)  # set on SIGHUP
    sleep: Optional[Callable[[float], bool]] = None  # default: stop.wait
    poll_sec: float = POLL_SEC
    import_bcc: Callable[[], Any] = import_bcc
    load: Callable[[Any, str, list, AttachPlan, str], Loaded] = bcc_load
    check_pinned: Callable[[PinPaths, int, str], list] = check_pinned
    notifier: Any = None  # aod.notify.Notifier-like: ready(status), status(text), stopping()
    state_dir: Optional[str] = None  # main() sets /run/aodv2: tracer-NAME.json tells the core our state


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _emit(level: int, name: str, message: str, **fields: Any) -> None:
    log.emit("tracer", level, f"AOD tracer {name}: {message}", AOD_TRACER=name, **fields)


def _state(state_dir: Optional[str], name: str, state: str) -> None:
    err = tracerstate.write_state(state_dir, name, state)
    if err:
        _emit(logging.WARNING, name, err)


def _sync_ignored(name: str, loaded: Loaded, statuses: frozenset[int]) -> None:
    """Fill the ignored_status map from config (smb tracer; a program without the map is skipped)."""
    get = getattr(loaded.obj, "get_table", None)
    if name != "smb" or get is None:
        return
    try:
        added, removed = pins.sync_ignored(get(pins.IGNORED), statuses)
    except Exception as e:  # bcc raises plain Exception/KeyError: keep tracing, filter unchanged
        _emit(logging.WARNING, name, f"cannot update the ignored statuses map: {e}")
        return
    if added or removed:
        _emit(logging.INFO, name, f"ignored statuses: {len(statuses)} ({added} added, {removed} removed)")


def _warn_failed(name: str, loaded: Loaded) -> None:
    for err in loaded.failed:
        _emit(logging.WARNING, name, f"connection probe not attached ({err}); requests are paired "
              "without their connection where it is missing")


def _reload(opts: Options, env: Env, running: config_mod.Config, loaded: Loaded, flags: list,
            make_flags: Callable[[config_mod.Config], list], load: Callable[[list], Loaded],
            what: str) -> tuple[Loaded, list]:
    """SIGHUP (systemctl reload aodv2 propagates here): rebuild the program if the config
    changes what it compiles in (emit filter), attach the new one, then drop the old one.
    Anything wrong keeps the running program. The ring and pin paths never change here."""
    name = opts.name
    env.notifier.status("reloading: rebuilding the emit filter")
    try:
        try:
            cfg = config_mod.load(opts.config)
        except config_mod.ConfigError as e:
            _emit(logging.ERROR, name, f"reload rejected, keeping the running program: {e}".replace("\n", "; "))
            return loaded, flags
        new_flags = make_flags(dataclasses.replace(cfg, ring=running.ring))
        _sync_ignored(name, loaded, cfg.ignored_statuses)  # a map update: no rebuild needed
        if new_flags == flags:
            _emit(logging.INFO, name, "config reloaded; nothing the program compiles in changed")
            return loaded, flags
        try:
            new = load(new_flags)
        except Exception as e:  # compile or verifier error: the old program stays attached
            _emit(logging.ERROR, name, f"reload failed, keeping the running program: {e}")
            return loaded, flags
        _sync_ignored(name, new, cfg.ignored_statuses)  # the same pinned map: a no-op unless it was missing
        loaded.close()
        _warn_failed(name, new)
        min_ms = config_mod.min_threshold_ns(cfg.latency) / 1e6
        _emit(logging.INFO, name, f"reloaded: the new emit filter is attached (completions >= {min_ms:g} ms)")
        return new, new_flags
    finally:
        env.notifier.ready(f"attached ({what})")


def run(opts: Options, env: Env) -> int:
    """Load, attach, hold until env.stop is set. Returns an exit status (never raises SetupError)."""
    if env.notifier is None:
        from .notify import Notifier

        env.notifier = Notifier()
    sleep = env.sleep or env.stop.wait
    name = opts.name
    try:
        try:
            cfg = config_mod.load(opts.config)
        except config_mod.ConfigError as e:
            raise SetupError(f"invalid config: {e}".replace("\n", "; "), EX_CONFIG) from None
        try:
            bcc = env.import_bcc()
        except ImportError:
            raise SetupError(BCC_MISSING, EX_UNAVAILABLE) from None
        bpf_dir = opts.bpf_dir or default_bpf_dir()
        source = os.path.join(bpf_dir, TRACERS[name][0])
        if not os.path.isfile(source):
            raise SetupError(f"BPF source {source} not found (--bpf-dir)", EX_CONFIG)
        paths = pin_paths(cfg.ring, opts.pin_dir)
        ring_bytes = ring_pages(cfg.ring.size_kb, env.page_size) * env.page_size
        prepare_pin_dir(paths, env.mountinfo)
        for w in env.check_pinned(paths, ring_bytes, name):
            _emit(logging.WARNING, name, w, AOD_RING=paths.ring)

        if name == "smb":
            def on_wait() -> None:
                # READY now, not at attach: a start job pending until cifs loads (maybe never)
                # would keep boot from finishing (`systemctl is-system-running --wait` hangs).
                _state(env.state_dir, name, "waiting")
                env.notifier.ready("waiting for cifs tracepoints")
                _emit(logging.INFO, name, "waiting for the cifs module (tracepoints in "
                      f"{' or '.join(env.tracefs)}/events/cifs)")
                if not any(os.path.isdir(os.path.join(t, "events")) for t in env.tracefs):
                    _emit(logging.WARNING, name, f"tracefs is not mounted at {' or '.join(env.tracefs)}; "
                          "mount it ('mount -t tracefs tracefs /sys/kernel/tracing') or the wait never ends")

            events_dir = wait_until(CifsWatch(env.tracefs, env.module_dir), env.stop, sleep,
                                    env.poll_sec, on_wait)
            if events_dir is None:
                _emit(logging.INFO, name, "stopped before the cifs module appeared")
                return EX_OK
            tps = usable_tracepoints(events_dir or None, SMB_TRACEPOINTS)
            funcs, funcs_from = function_list(env.tracefs, env.kallsyms)
            plan = plan_smb(tps, funcs, env.release, opts.force_kprobes, funcs_from)
        else:
            plan = AttachPlan("syscall", ("syscalls:sys_enter_getppid",))
        for note in plan.notes:
            _emit(logging.INFO, name, note)

        flags = cflags(opts, cfg, paths, bpf_dir, plan.defines, env.page_size)
        try:
            loaded = env.load(bcc, source, flags, plan, paths.ring)
        except Exception as e:  # bcc raises plain Exception with the compiler/verifier text on stderr
            raise SetupError(f"loading {source} failed: {e}", EX_SOFTWARE) from None
    except SetupError as e:
        _emit(logging.ERROR, name, str(e), AOD_EXIT=e.code)
        env.notifier.status(f"failed: {e}"[:200])
        return e.code

    try:
        what = f"{loaded.attached} tracepoints" + (f", {loaded.kprobes} kprobes" if loaded.kprobes else "")
        _warn_failed(name, loaded)
        _sync_ignored(name, loaded, cfg.ignored_statuses)
        if name == "smb":
            for gone in pins.remove_stale(paths.dir):
                _emit(logging.INFO, name, f"removed the pin of an older layout: {gone}")
        _state(env.state_dir, name, "attached")  # before READY: the core's STATUS is right at once
        env.notifier.ready(f"attached ({what})")
        _emit(logging.INFO, name, f"attached ({what}, {plan.mode} mode); writing to {paths.ring}",
              AOD_RING=paths.ring, AOD_MODE=plan.mode)
        while not sleep(1.0):
            if env.reload.is_set():
                env.reload.clear()
                loaded, flags = _reload(opts, env, cfg, loaded, flags, lambda c: cflags(
                    opts, c, paths, bpf_dir, plan.defines, env.page_size), lambda f: env.load(
                    bcc, source, f, plan, paths.ring), what)
    finally:
        env.notifier.stopping()
        _state(env.state_dir, name, "stopped")
        loaded.close()
    _emit(logging.INFO, name, "detached")
    return EX_OK


def main(argv: list[str]) -> int:
    """Entry point of `aodv2 tracer`; argv excludes the verb."""
    log.setup()
    try:
        opts = parse_args(argv)
    except SetupError as e:
        if e.code == EX_USAGE:
            parser().print_usage(sys.stderr)
        print(e, file=sys.stderr)
        return e.code
    env = Env(state_dir=tracerstate.RUN_DIR)

    def _stop(signum: int, frame: Any) -> None:
        env.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, lambda *_: env.reload.set())
    return run(opts, env)
