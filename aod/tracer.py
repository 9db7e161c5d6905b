"""`aodv2 tracer NAME`: load one eBPF tracer with bcc and hold it (producer side of the ring).

Data flow: kernel (cifs tracepoints, or a test syscall) -> bpf/NAME.bpf.c ->
pinned ring <pin dir>/events + pinned per-CPU maps `drops`, `cmd_stats` ->
core (ring.py, counters.py). The smb tracer also runs the in-flight aging scan
(aging.py, a thread) and fills the pinned name maps; its attach plan is tracepoints.py,
its pins pins.py.

One process per tracer, run by systemd as aodv2-tracer@NAME.service:
sd_notify READY=1 with STATUS=waiting while the cifs tracepoints are missing (module
not loaded yet is normal), compile and attach when they appear (STATUS=attached), then
sleep until SIGTERM/SIGINT and exit 0. SIGHUP re-reads the config and updates maps only
(emit filter, ignored statuses, hung threshold): nothing is rebuilt or re-attached, so a
reload loses and duplicates nothing. tracer.mode (auto | tracepoint | kprobe; --force-kprobes
= kprobe) is applied at attach only: a reload that changes it logs that a restart is needed.
The ring and maps are pinned in bpffs and reused, never recreated, so either
side can restart at any time. bcc is imported lazily: only this command needs it.

Exit statuses (list 2 69 71 78 in RestartPreventExitStatus=):
  0 stopped by a signal, 2 bad arguments, 69 bcc missing, 70 load/attach
  failed, 71 bpffs not mounted or pin dir unusable, 78 bad config, or no way
  to trace SMB on this kernel.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from . import config as config_mod
from . import log, pins, tracerlive, tracerstate
from .btf import BTF_DIR
from .pins import PinPaths, bpffs_mount, check_pinned, expected_maps, pin_paths, prepare_pin_dir  # noqa: F401
from .tracepoints import (  # noqa: F401  (re-exported: the tracer's public names)
    EX_CONFIG,
    EX_OK,
    EX_OSERR,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    EX_USAGE,
    HEALTH_TRACEPOINTS,
    REQUIRED_TRACEPOINTS,
    SMB_TRACEPOINTS,
    AttachPlan,
    SetupError,
    find_events_dir,
    function_list,
    health_lists,
    health_notes,
    optional_defines,
    parse_format,
    plan_smb,
    smb_plan,
    usable_tracepoints,
)
from .tracerargs import (  # noqa: F401  (re-exported)
    DEFAULT_BPF_DIR,
    DEFAULT_PIN_DIR,
    SYNTH_KINDS,
    TRACERS,
    Options,
    cflags,
    default_bpf_dir,
    parse_args,
    parser,
    ring_pages,
)
from .tracerfront import Front, PlanInput, fronts
from .tracerlive import emit_cmd_mask  # noqa: F401  (re-exported)

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CIFS_MODULE_DIR = "/sys/module/cifs"
POLL_SEC = 1.5  # waiting for the cifs module

BCC_MISSING = (
    "bcc is not installed: install python3-bpfcc (Debian/Ubuntu) or python3-bcc (Fedora/RHEL); "
    "it is not on PyPI (the PyPI 'bcc' package is unrelated)"
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


class SubsystemWatch:
    """`ready()` for wait_until: the events dir of a tracefs system, or the loaded module (seen
    twice, no tracepoints: "", an old kernel)."""

    def __init__(self, tracefs: Sequence[str], module_dir: str = CIFS_MODULE_DIR, system: str = "cifs") -> None:
        self.tracefs = tuple(tracefs)
        self.module_dir = module_dir
        self.system = system
        self._module_seen = False

    def __call__(self) -> Optional[str]:
        d = find_events_dir(self.tracefs, self.system)
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
    module_dir: Optional[str] = None  # None: /sys/module/<the front's module>
    kallsyms: str = "/proc/kallsyms"
    btf_dir: str = BTF_DIR  # vmlinux and cifs BTF: the kprobes' signatures
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
    create_pins: Callable[[PinPaths, int, str], list] = pins.create_missing  # bcc < 0.22 opens pins only
    notifier: Any = None  # aod.notify.Notifier-like: ready(status), status(text), stopping()
    state_dir: Optional[str] = None  # main() sets /run/aodv2: tracer-NAME.json tells the core our state
    aging_factory: Optional[tracerlive.AgingFactory] = tracerlive.bcc_aging  # None: no aging scan
    trigger_tgid: Callable[[Optional[str]], tuple[int, str]] = tracerlive.trigger_tgid  # AOD_SELF_TGID


def _emit(level: int, name: str, message: str, **fields: Any) -> None:
    log.emit("tracer", level, f"AOD tracer {name}: {message}", AOD_TRACER=name, **fields)


def _state(state_dir: Optional[str], name: str, state: str) -> None:
    err = tracerstate.write_state(state_dir, name, state)
    if err:
        _emit(logging.WARNING, name, err)


def _setup_failed(env: Env, name: str, e: SetupError) -> int:
    """A setup step failed (before the load, or filling the maps after it): say so; its exit status."""
    _emit(logging.ERROR, name, str(e), AOD_EXIT=e.code)
    env.notifier.status(f"failed: {e}"[:200])
    return e.code


def _sync_ignored(name: str, loaded: Loaded, statuses: frozenset[int]) -> None:
    """Fill the ignored_status map from the config (a program without the map is skipped)."""
    get = getattr(loaded.obj, "get_table", None)
    if get is None:
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


def _reload(opts: Options, env: Env, loaded: Loaded, live: Optional[tracerlive.TracerLive], what: str,
            front: Front) -> None:
    """SIGHUP (systemctl reload aodv2 propagates here): re-read the config and update the maps
    (ignored statuses, emit filter, hung threshold). Nothing is rebuilt or re-attached, so
    nothing is lost or duplicated. A bad config keeps everything as it is. The ring and pin
    paths never change here."""
    name = opts.name
    env.notifier.status("reloading: updating the maps")
    try:
        try:
            cfg = config_mod.load(opts.config)
        except config_mod.ConfigError as e:
            _emit(logging.ERROR, name, f"reload rejected, keeping the running config: {e}".replace("\n", "; "))
            return
        if front.live is None or live is None:
            _emit(logging.INFO, name, "config reloaded; nothing of it applies to this tracer")
            return
        _sync_ignored(name, loaded, front.live.ignored(cfg))
        conf = live.apply(cfg)
        err = live.publish()
        if err:
            _emit(logging.WARNING, name, err)
        _emit(logging.INFO, name, f"reloaded (maps updated, nothing rebuilt or re-attached): completions >= "
              f"{conf['emit_min_ns'] / 1e6:g} ms emitted, hung threshold "
              f"{conf['hung_threshold_ns'] / 1e6:g} ms", AOD_EMIT_MIN_NS=conf["emit_min_ns"],
              AOD_HUNG_THRESHOLD_NS=conf["hung_threshold_ns"])
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
        front = fronts()[name]
        bpf_dir = opts.bpf_dir or default_bpf_dir()
        source = os.path.join(bpf_dir, front.source)
        if not os.path.isfile(source):
            raise SetupError(f"BPF source {source} not found (--bpf-dir)", EX_CONFIG)
        paths = pin_paths(cfg.ring, opts.pin_dir)
        ring_bytes = ring_pages(cfg.ring.size_kb, env.page_size) * env.page_size
        prepare_pin_dir(paths, env.mountinfo)
        for w in env.check_pinned(paths, ring_bytes, name):
            _emit(logging.WARNING, name, w, AOD_RING=paths.ring)
        env.create_pins(paths, ring_bytes, name)

        mode = "kprobe" if opts.force_kprobes else cfg.tracer.mode  # the flag overrides tracer.mode
        events_dir: Optional[str] = None
        if front.system:
            system = front.system
            module_dir = env.module_dir or os.path.join("/sys/module", front.module)

            def on_wait() -> None:
                # READY now, not at attach: a start job pending until the module loads (maybe never)
                # would keep boot from finishing (`systemctl is-system-running --wait` hangs).
                _state(env.state_dir, name, "waiting")
                env.notifier.ready(f"waiting for {system} tracepoints")
                _emit(logging.INFO, name, f"waiting for the {front.module} module (tracepoints in "
                      f"{' or '.join(env.tracefs)}/events/{system})")
                if not any(os.path.isdir(os.path.join(t, "events")) for t in env.tracefs):
                    _emit(logging.WARNING, name, f"tracefs is not mounted at {' or '.join(env.tracefs)}; "
                          "mount it ('mount -t tracefs tracefs /sys/kernel/tracing') or the wait never ends")

            events_dir = wait_until(SubsystemWatch(env.tracefs, module_dir, system), env.stop, sleep,
                                    env.poll_sec, on_wait)
            if events_dir is None:
                _emit(logging.INFO, name, f"stopped before the {front.module} module appeared")
                return EX_OK
        plan, health, notes = front.plan(PlanInput(events_dir, env.tracefs, env.kallsyms, env.release,
                                                   env.btf_dir, mode))
        for note in notes:
            _emit(logging.INFO, name, note)

        aging = front.live is not None and front.live.aging and plan.mode in front.aging_in
        self_tgid, aging_off = env.trigger_tgid(events_dir) if aging else (0, "")
        flags = cflags(opts, cfg, paths, bpf_dir, plan.defines, env.page_size, self_tgid)
        try:
            loaded = env.load(bcc, source, flags, plan, paths.ring)
        except Exception as e:  # bcc raises plain Exception with the compiler/verifier text on stderr
            raise SetupError(f"loading {source} failed: {e}", EX_SOFTWARE) from None
    except SetupError as e:
        return _setup_failed(env, name, e)

    live: Optional[tracerlive.TracerLive] = None
    aging_stop = threading.Event()
    try:
        what = f"{loaded.attached} tracepoints" + (f", {loaded.kprobes} kprobes" if loaded.kprobes else "")
        _warn_failed(name, loaded)
        if front.live is not None:
            _sync_ignored(name, loaded, front.live.ignored(cfg))
            if front.live.setup is not None:
                try:
                    _emit(logging.INFO, name, front.live.setup(loaded.obj))
                except Exception as e:  # bcc: plain Exception/KeyError
                    raise SetupError(f"cannot fill the maps of {source}: {e}", EX_SOFTWARE) from None
            live = tracerlive.TracerLive(loaded.obj, env.state_dir, lambda lv, m: _emit(lv, name, m), aging_stop,
                                         env.aging_factory, health, aging, aging_off,
                                         (plan.mode, mode, opts.force_kprobes) if front.modes else None,
                                         name, front.live.view)
            conf = live.apply(cfg)
            for gone in pins.remove_stale(paths.dir):
                _emit(logging.INFO, name, f"removed the pin of an older layout: {gone}")
            err = live.publish("attached")  # before READY: the core's STATUS is right at once
            if err:
                _emit(logging.WARNING, name, err)
            live.start()
            _emit(logging.INFO, name, f"health tracepoints attached: {len(health['attached'])} of "
                  f"{len(health['offered'])} offered ({', '.join(health['attached']) or 'none'})")
            _emit(logging.INFO, name, f"emit filter: completions >= {conf['emit_min_ns'] / 1e6:g} ms; hung "
                  f"threshold {conf['hung_threshold_ns'] / 1e6:g} ms (0: aging off), scanned every "
                  f"{tracerlive.aging.SCAN_INTERVAL_SEC * 1e3:g} ms", AOD_EMIT_MIN_NS=conf["emit_min_ns"],
                  AOD_HUNG_THRESHOLD_NS=conf["hung_threshold_ns"])
        else:
            _state(env.state_dir, name, "attached")
        env.notifier.ready(f"attached ({what})")
        _emit(logging.INFO, name, f"attached ({what}, {plan.mode} mode); writing to {paths.ring}",
              AOD_RING=paths.ring, AOD_MODE=plan.mode)
        while not sleep(1.0):
            if env.reload.is_set():
                env.reload.clear()
                _reload(opts, env, loaded, live, what, front)
    except SetupError as e:
        return _setup_failed(env, name, e)
    finally:
        env.notifier.stopping()
        aging_stop.set()
        if live is not None:
            live.close()
            live.publish("stopped")
        else:
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
