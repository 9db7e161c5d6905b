"""A request tracer (smb, nfs) while attached (tracer layer): the maps it keeps in step with the config, the
aging thread, and the state file it publishes for the core.

Data flow: config -> emit_cfg_v1 (emit filter), ignored_status, aging thresholds -> kernel
program; aging.Scanner -> hung records; everything applied -> /run/aodv2/tracer-smb.json
(tracerstate.py; the core warns when its latency threshold is below emit_min_ns).

A reload (SIGHUP) is map updates only: the programs stay attached, so no record is duplicated
and no request in flight loses its start (the old design loaded a second program first).
tracer.mode (and with it tracepoint or kprobe programs) is chosen at attach: a reload that changes
it logs that a tracer restart applies it. The state file says how it attached ("mode") and what
was asked ("mode_config").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from . import aging, pins, tracerstate
from . import config as config_mod

EMIT_CFG_TABLE = "emit_cfg"  # bcc table names in bpf/smb.bpf.c
INFLIGHT_TABLE = "inflight"
HUNG_TABLE = "hung"
HUNG_REQ_TABLE = "hung_req"
UNPAIRED_TABLE = "unpaired"
RECONN_TABLE = "reconn"
KPROBE_NO_AGING = ("hung-request aging is not supported in kprobe mode (the in-flight map is keyed "
                   "by mid pointer there); no hung records")
PROC_PID_INIT_INO = 0xEFFFFFFC  # inode of the initial pid namespace (include/linux/proc_ns.h)


def trigger_tgid(events_dir: Optional[str], ns_path: str = "/proc/self/ns/pid",
                 init_ino: int = PROC_PID_INIT_INO) -> tuple[int, str]:
    """(pid, "") for the trigger program's AOD_SELF_TGID, or (0, why aging is off). The program
    compares with bpf_get_current_pid_tgid(), a tgid of the initial pid namespace: in a pid namespace
    of its own (a container) os.getpid() is not that number, so the tracer's getppid() would never
    fire the trigger and any process whose host tgid equals it would. bcc attaches every
    TRACEPOINT_PROBE at load: without syscalls:sys_enter_getppid (no CONFIG_FTRACE_SYSCALLS) the
    whole load would fail."""
    try:
        ino = os.stat(ns_path).st_ino
    except OSError as e:
        return 0, f"hung-request aging is off: cannot read {ns_path}: {e.strerror}"
    if ino != init_ino:
        return 0, ("hung-request aging is off: the tracer runs in a pid namespace of its own (a container?), "
                   "where its pid is not the one the kernel program sees; run it in the host pid namespace")
    if events_dir and not os.path.isdir(os.path.join(os.path.dirname(events_dir), "syscalls", "sys_enter_getppid")):
        return 0, ("hung-request aging is off: the kernel has no syscalls:sys_enter_getppid tracepoint "
                   "(CONFIG_FTRACE_SYSCALLS), which hung records are written through")
    return os.getpid(), ""


Log = Callable[[int, str], None]
# loaded bcc object -> (Maps, emit, unpaired count) for the aging scan
AgingFactory = Callable[[Any], tuple[aging.Maps, Callable[[Any], None], Callable[[], int]]]


def emit_cmd_mask(lat: config_mod.LatencyConfig) -> int:
    """Bit s set when completions of command slot s can matter to a detector (finite threshold)."""
    return config_mod.slot_mask(np.isfinite(config_mod.threshold_lookup(lat)))


def aging_threshold_ns(lat: config_mod.LatencyConfig) -> int:
    """The aging scan's threshold (0: off); defaulted from a small emergency threshold, it is never
    below HUNG_MIN_MS (ordinary slowness)."""
    hung = config_mod.hung_threshold_ns(lat)
    return max(hung, int(config_mod.HUNG_MIN_MS * 1e6)) if hung else 0


def applied(cfg: config_mod.Config) -> dict[str, Any]:
    """What a tracer applies from a config (in its protocol's view), as its state file shows it."""
    lat = cfg.latency
    return {"emit_min_ns": config_mod.min_threshold_ns(lat), "emit_cmd_mask": emit_cmd_mask(lat),
            "hung_threshold_ns": aging_threshold_ns(lat), "hung_cmd_mask": config_mod.hung_cmd_mask(lat)}


def write_emit_cfg(table: Any, emit_min_ns: int, cmd_mask: int) -> None:
    """emit_cfg_v1[0] = {emit_min_ns, cmd_mask} on a bcc array table: one map update, which the
    kernel copies whole, so a completion sees the old filter or the new one."""
    leaf = table.Leaf()
    leaf.emit_min_ns, leaf.cmd_mask, leaf.pad = emit_min_ns, cmd_mask, 0
    table[table.Key(0)] = leaf


def _percpu_sum(table: Any) -> int:
    v = table[table.Key(0)]
    try:
        return int(sum(int(getattr(x, "value", x)) for x in v))
    except TypeError:
        return int(getattr(v, "value", v))


def bcc_aging(obj: Any) -> tuple[aging.Maps, Callable[[Any], None], Callable[[], int]]:
    """The scan's maps from a loaded bcc program: its own fds of inflight_v1, hung_v1 and hung_req."""
    get = obj.get_table
    maps = aging.RawMaps(get(INFLIGHT_TABLE).map_fd, get(HUNG_TABLE).map_fd, pins.INFLIGHT_MAX,
                         get(RECONN_TABLE).map_fd)
    unpaired = get(UNPAIRED_TABLE)
    return maps, aging.TriggerEmitter(get(HUNG_REQ_TABLE).map_fd), lambda: _percpu_sum(unpaired)


class TracerLive:
    """Applies a config to an attached request tracer (smb, nfs) and publishes what is in force."""

    def __init__(self, obj: Any, state_dir: Optional[str], log: Log, stop: threading.Event,
                 aging_factory: Optional[AgingFactory] = bcc_aging, health: Optional[dict] = None,
                 aging_supported: bool = True, aging_off: str = "",
                 mode: Optional[tuple[str, str, bool]] = None, name: str = "smb",
                 view: Callable[[config_mod.Config], config_mod.Config] = lambda c: c) -> None:
        """mode: (how it attached, config tracer.mode then, --force-kprobes given) for a tracer that
        has modes (smb); name: the state file's; view: the config as its protocol's rules read it
        (tracerfront.Live.view)."""
        self.obj, self.state_dir, self.log, self.stop = obj, state_dir, log, stop
        self.name, self.view = name, view
        self.extra: dict[str, Any] = {"health": health or {"offered": [], "attached": []}}
        self.mode = mode
        if mode is not None:
            self.extra["mode"] = mode[0]
            self.extra["mode_config"] = "kprobe (--force-kprobes)" if mode[2] else mode[1]
        self.mode_told = mode[1] if mode else ""
        self.lock = threading.Lock()
        self.since = time.time()
        self.state = "attached"
        self.thread: Optional[aging.AgingThread] = None
        if not aging_supported or aging_off:  # kprobe mode, or no usable trigger (trigger_tgid)
            self.extra["aging_unsupported"] = aging_off or KPROBE_NO_AGING
            log(logging.WARNING if aging_off else logging.INFO, aging_off or KPROBE_NO_AGING)
        elif aging_factory is not None:
            try:
                maps, emit, unpaired = aging_factory(obj)
            except Exception as e:  # a table missing from the program: trace on without aging
                self.extra["aging_unsupported"] = f"cannot open the in-flight maps: {e}"
                log(logging.WARNING, f"hung-request aging off: cannot open the in-flight maps: {e}")
                return
            scanner = aging.Scanner(maps, emit, unpaired=unpaired)
            self.thread = aging.AgingThread(scanner, stop, self._publish_aging,
                                            lambda m: log(logging.WARNING, m))

    def apply(self, cfg: config_mod.Config) -> dict[str, Any]:
        """Emit filter and aging thresholds from cfg (attach and reload); returns what is in force.
        tracer.mode applies at attach only: a reload that changes it says a restart is needed."""
        mine = self.view(cfg)
        conf = applied(mine)
        if self.mode is not None and cfg.tracer.mode != self.mode_told:
            self.mode_told = cfg.tracer.mode
            attached, at_start, forced = self.mode
            self.log(logging.WARNING, f"tracer.mode is now {cfg.tracer.mode} (was {at_start}); it applies when "
                     "the tracer attaches: still in " + (f"{attached} mode (--force-kprobes overrides tracer.mode)"
                     if forced else f"{attached} mode until 'systemctl restart aodv2-tracer@smb'")
                     if cfg.tracer.mode != at_start else
                     f"tracer.mode is back to {at_start}, as when the tracer attached ({attached} mode)")
        try:
            write_emit_cfg(self.obj.get_table(EMIT_CFG_TABLE), conf["emit_min_ns"], conf["emit_cmd_mask"])
        except Exception as e:  # bcc raises plain Exception/KeyError: the old filter stays
            self.log(logging.WARNING, f"cannot update the emit filter map: {e}")
            with self.lock:
                conf["emit_min_ns"] = self.extra.get("emit_min_ns", conf["emit_min_ns"])
                conf["emit_cmd_mask"] = self.extra.get("emit_cmd_mask", conf["emit_cmd_mask"])
        if self.thread is None:
            conf["hung_threshold_ns"] = 0
        else:
            self.thread.set_config(conf["hung_threshold_ns"], config_mod.hung_codes(mine.latency))
        with self.lock:
            self.extra.update(conf)
        return conf

    def start(self) -> None:
        if self.thread is not None:
            self.thread.start()

    def publish(self, state: Optional[str] = None) -> Optional[str]:
        with self.lock:
            if state is not None and state != self.state:
                self.state, self.since = state, time.time()
            if self.thread is not None:
                self.extra["aging"] = self.thread.scanner.stats.as_dict()
            return tracerstate.write_state(self.state_dir, self.name, self.state, dict(self.extra), self.since)

    def _publish_aging(self, stats: dict) -> None:
        with self.lock:
            if self.state != "attached":
                return
        err = self.publish()
        if err:
            self.log(logging.WARNING, err)

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join()
