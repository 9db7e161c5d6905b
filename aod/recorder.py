"""`aodv2 recorder trace|pcap`: the flight recorder units (aodv2-recorder@NAME.service).

Beside the flow: they record before any anomaly; the core freezes their record into a bundle
at a capture (collect layer: tracefreeze.py, pcapfreeze.py). systemd starts and restarts them.

trace: owns the tracefs instance (recordtrace.py) and keeps it in step with the config: on
SIGHUP, and every few seconds for configured events that appear later (the cifs module loads
after boot). At stop it removes the instance. Type=notify.
Disabled in the config, it waits for a reload that enables it.
pcap (recordpcap.py): runs tcpdump as its child and restarts it on a reload that changes it.

Both publish /run/aodv2/recorder-NAME.json (tracerstate.py) for `aodv2 status` and the core.
Exit codes: 0 stopped, 2 usage, 69 tcpdump missing, 70 tracefs refused
a write (retried by systemd), 71 tracefs not mounted or the ring directory unsafe, 78 bad config.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Optional

from . import config as config_mod
from . import log, recordtrace, tracerstate
from .notify import Notifier

NAMES = ("trace", "pcap")
RESCAN_SEC = 5.0
DISABLED = "recorder.trace.enabled is false"
EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_SOFTWARE, EX_OSERR, EX_CONFIG = 0, 2, 69, 70, 71, 78


def _say(name: str, level: int, message: str, **fields: Any) -> None:
    log.emit("recorder", level, f"AOD recorder {name}: {message}", AOD_RECORDER=name, **fields)


def _publish(state_dir: Optional[str], name: str, state: str, extra: dict[str, Any]) -> None:
    err = tracerstate.write_state(state_dir, name, state, extra, prefix="recorder")
    if err:
        _say(name, logging.WARNING, err)


def _failed(state_dir: Optional[str], name: str, why: str, extra: Optional[dict[str, Any]] = None) -> None:
    """Say why the recorder cannot record, in the journal and in its state file."""
    _say(name, logging.ERROR, why)
    _publish(state_dir, name, "failed", {**(extra or {}), "error": why})


def _load(path: str, name: str) -> Optional[config_mod.Config]:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        _say(name, logging.ERROR, f"invalid config, not recording:\n{e}")
        return None


# ---------------------------------------------------------------- trace


def _trace_status(a: recordtrace.Applied) -> str:
    miss = f", {len(a.missing)} not on this kernel (yet)" if a.missing else ""
    fail = f", {len(a.failed)} refused" if a.failed else ""
    return (f"recording {len(a.events)} events{miss}{fail} in {a.instance} "
            f"({a.buffer_kb} KiB per CPU, clock {a.clock}, read from {a.read})")


def _wait(stop: threading.Event, hup: threading.Event, seconds: float) -> None:
    """Until stop or hup is set, or seconds passed (a SIGHUP is seen within 0.2 s)."""
    deadline = time.monotonic() + seconds
    while not (stop.is_set() or hup.is_set()) and time.monotonic() < deadline:
        stop.wait(0.2)


def run_trace(cfg_path: str, state_dir: Optional[str], notifier: Any,
              roots: tuple[str, ...] = recordtrace.TRACEFS_ROOTS,
              stop: Optional[threading.Event] = None, hup: Optional[threading.Event] = None) -> int:
    """Keep the instance in step with the config until stop. Disabled in the config, it waits
    (state "disabled", no instance) for a reload that enables it, so `systemctl reload aodv2` is
    all it takes either way."""
    stop = stop or threading.Event()
    hup = hup or threading.Event()
    cfg = _load(cfg_path, "trace")
    if cfg is None:
        return EX_CONFIG
    root = recordtrace.find_tracefs(roots)
    # names the instance once we made it: only that one is reconfigured or removed (/run: per boot)
    owner = os.path.join(state_dir, "recorder-trace.instance") if state_dir else None
    applied: Optional[recordtrace.Applied] = None
    first, last_err, hup_seen = True, "", False
    while not stop.is_set():
        try:
            if not cfg.recorder.trace.enabled:
                if applied is not None or first:
                    err = recordtrace.remove(root, owner=owner) if root else None
                    _say("trace", logging.INFO, f"recorder.trace.enabled is false in {cfg_path}: not recording"
                         + (f" ({err})" if err else ""))
                    _publish(state_dir, "trace", "disabled", {"error": DISABLED})
                    (notifier.ready if first else notifier.status)("disabled in the config")
                    applied, first = None, False
            elif root is None:
                why = f"tracefs is not mounted (looked for {' and '.join(r + '/instances' for r in roots)})"
                _failed(state_dir, "trace", why)
                return EX_OSERR
            elif applied is None or hup_seen or applied.missing or not os.path.isdir(applied.instance):
                gone = applied is not None and not os.path.isdir(applied.instance)
                again = recordtrace.apply(root, cfg.recorder.trace, owner)
                if gone:
                    _say("trace", logging.WARNING, f"{again.instance} was removed by someone else: recreated")
                if applied is None or gone or hup_seen or again.events != applied.events:
                    _report(state_dir, again, notifier, first)
                applied, first = again, False
            last_err = ""
        except recordtrace.TraceSetupError as e:
            if applied is None and first:  # nothing recording yet: systemd retries (70), not a foreign one (71)
                _failed(state_dir, "trace", str(e))
                return EX_OSERR if isinstance(e, recordtrace.ForeignInstance) else EX_SOFTWARE
            if str(e) != last_err:  # the old settings stay; said once per problem
                _say("trace", logging.WARNING, f"{e}; keeping what was recording")
            last_err = str(e)
        _wait(stop, hup, RESCAN_SEC)
        hup_seen = hup.is_set()
        if hup_seen:
            hup.clear()
            new = _load(cfg_path, "trace")
            hup_seen = new is not None  # an invalid config keeps the running one, untouched
            cfg = new or cfg
    err = recordtrace.remove(root, owner=owner) if root and applied is not None else None
    if err:
        _say("trace", logging.WARNING, err)
    if applied is not None:
        _publish(state_dir, "trace", "stopped", {"error": err} if err else {})
    return EX_OK


def _report(state_dir: Optional[str], a: recordtrace.Applied, notifier: Any, first: bool) -> None:
    status = _trace_status(a)
    _publish(state_dir, "trace", "recording", a.as_dict())
    level = logging.WARNING if a.failed else logging.INFO
    detail = "".join(f"; {ev}: {why}" for ev, why in a.failed.items())
    _say("trace", level, status + (f"; missing: {', '.join(a.missing)}" if a.missing else "") + detail)
    (notifier.ready if first else notifier.status)(status)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="aodv2 recorder", description="run one flight recorder "
                                 "(aodv2-recorder@NAME.service)")
    ap.add_argument("name", choices=NAMES)
    ap.add_argument("--config", default=config_mod.DEFAULT_CONFIG_PATH)
    ap.add_argument("--state-dir", default=tracerstate.RUN_DIR)
    args = ap.parse_args(argv)
    log.setup()
    stop, hup = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    if args.name == "pcap":
        from .recordpcap import run_pcap

        return run_pcap(args.config, args.state_dir, Notifier(), stop=stop, hup=hup)
    return run_trace(args.config, args.state_dir, Notifier(), stop=stop, hup=hup)
