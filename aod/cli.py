"""Command line: `aodv2 run | demo | check-config | status | collect | show | list | tracer | recorder |
evidence | stop-hook | version`.

Exit codes: 0 ok, 1 failure, 2 usage or invalid config (check-config), 3 core not
running (status, collect), 77 not permitted (not root), 78 invalid config (run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Optional

from . import __version__
from . import config as config_mod
from .tracerstate import RUN_DIR

EX_USAGE = 2
EX_NOPERM = 77
EX_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aodv2", description="Always-on diagnostics for Linux SMB/CIFS clients.")
    p.add_argument("--version", action="version", version=f"aodv2 {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    r = sub.add_parser("run", help="run the core daemon (aodv2.service)")
    r.add_argument("--config", default=config_mod.DEFAULT_CONFIG_PATH, help="config file (default %(default)s)")
    r.add_argument("--ring-file", metavar="PATH",
                   help="read a file-backed ring instead of the pinned BPF ring (no root needed)")
    r.add_argument("--state-dir", default=RUN_DIR,
                   help="publish status.json and the control socket here (default %(default)s)")
    d = sub.add_parser("demo", help="run the whole pipeline on synthetic traffic in a temp dir (no root)")
    d.add_argument("--dir", help="work in DIR instead of a new temporary directory")
    c = sub.add_parser("check-config", help="validate a config file; exit 0 if valid, 2 with every error if not")
    c.add_argument("file", nargs="?", default=config_mod.DEFAULT_CONFIG_PATH)
    # the running core (aod/status.py, aod/control.py)
    st = sub.add_parser("status", help="what the running core reports; exit 0 running, 3 not running, 1 hung")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--state-dir", default=RUN_DIR, help="the core's state directory (default %(default)s)")
    co = sub.add_parser("collect", help="capture now through the running core and print the bundle path")
    co.add_argument("--reason", default="aodv2 collect", help="why; recorded as the capture's rule")
    co.add_argument("--timeout", type=_positive, default=600.0, help="seconds to wait for the bundle (%(default)s)")
    co.add_argument("--state-dir", default=RUN_DIR, help="the core's state directory (default %(default)s)")
    t = sub.add_parser("tracer", help="run one eBPF tracer (aodv2-tracer@NAME.service)", add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER)
    rc = sub.add_parser("recorder", help="run one flight recorder (aodv2-recorder@NAME.service: trace or pcap)",
                        add_help=False)
    rc.add_argument("args", nargs=argparse.REMAINDER)
    ev = sub.add_parser("evidence", help="answer one evidence request on stdin (aodv2-evidence@.service; root)")
    ev.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)  # tests: a fake /proc
    ev.add_argument("--pin-dir", default="/sys/fs/bpf/aodv2", help="pinned maps of the tracers (%(default)s)")
    sh = sub.add_parser("stop-hook", help="aodv2.service's ExecStopPost: stop the tracers on a stop, not on a restart")
    sh.add_argument("unit", nargs="?", default="aodv2.service", help="the core's unit name (%%n)")
    sub.add_parser("version", help="print the version")
    # bundles (aod/bundleview.py)
    s = sub.add_parser("show", help="a bundle's summary, latency histograms and members; --extract unpacks it")
    s.add_argument("bundle", metavar="BUNDLE", help="bundle path, or a bare name in the output directory")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--extract", metavar="DIR", help="unpack safely into DIR (created 0700; never through a symlink; "
                   "at most 10000 members) instead")
    s.add_argument("--dir", help="where to look up a bare BUNDLE name (default: output_dir of --config)")
    s.add_argument("--config", help=f"config file (default {config_mod.DEFAULT_CONFIG_PATH})")
    ls = sub.add_parser("list", help="the bundles in the output directory, oldest first")
    ls.add_argument("--dir", help="list DIR instead of the config's output_dir")
    ls.add_argument("--config", help=f"config file (default {config_mod.DEFAULT_CONFIG_PATH})")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from . import status

    try:
        code, text = status.report(args.state_dir, args.json)  # a malformed status.json: StatusError
    except status.StatusError as e:
        if args.json:
            print(json.dumps({"running": False, "assessment": "absent", "error": str(e)}))
        print(f"aodv2: {e}", file=sys.stderr)
        return e.code
    print(text)
    return code


def cmd_collect(args: argparse.Namespace) -> int:
    from . import control

    try:
        path = control.collect(control.clean_reason(args.reason), args.state_dir, args.timeout)
    except control.ControlError as e:
        print(f"aodv2: {e}", file=sys.stderr)
        return e.code
    print(path)
    return 0


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v < 1e7:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return v


def _open_ring(cfg: config_mod.Config, ring_file: Optional[str]):  # type: ignore[no-untyped-def]
    from . import log
    from .notify import Notifier

    if ring_file:
        from . import ringfile
        from .counters import FileCounters
        from .ring import RingReader

        if not os.path.exists(ring_file):
            ringfile.create(ring_file, cfg.ring.size_kb * 1024)
        return RingReader.open_file(ring_file), FileCounters(ring_file)
    from .bpfsys import ensure_pinned_ringbuf
    from .counters import PinnedCounters
    from .ring import RingReader

    n = Notifier()
    warned = False
    while not os.path.exists(cfg.ring.path):
        try:  # the core may start before any tracer: create the shared ring itself
            if ensure_pinned_ringbuf(cfg.ring.path, cfg.ring.size_kb * 1024):
                log.emit("tracer", log.logging.INFO, f"AOD created the pinned ring {cfg.ring.path}",
                         AOD_RING=cfg.ring.path)
            break
        except OSError as e:
            if not warned:
                log.emit("tracer", log.logging.WARNING,
                         f"AOD waiting for the pinned ring {cfg.ring.path}: cannot create it ({e})",
                         AOD_RING=cfg.ring.path)
                n.status(f"waiting for ring {cfg.ring.path}: no tracer attached")
                warned = True
        time.sleep(1.0)
    return RingReader.open_pinned(cfg.ring.path), PinnedCounters(os.path.dirname(cfg.ring.path))


def cmd_run(args: argparse.Namespace) -> int:
    from . import log
    from .daemon import Core, install_signals

    log.setup()
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        log.emit("fatal", log.logging.ERROR, f"AOD cannot start: invalid config: {e}", AOD_CONFIG=args.config)
        return EX_CONFIG
    if args.ring_file is None and os.geteuid() != 0:
        log.emit("fatal", log.logging.ERROR,
                 f"AOD cannot start: reading the pinned BPF ring {cfg.ring.path} needs root; "
                 "run as root or pass --ring-file PATH for a file-backed ring")
        return EX_NOPERM
    if args.ring_file:
        cfg = dataclasses.replace(cfg, ring=dataclasses.replace(cfg.ring, path=args.ring_file))
    for w in cfg.warnings:
        log.emit("started", log.logging.WARNING, f"AOD config: {w}", AOD_CONFIG=args.config)
    from . import zstdcodec

    why = zstdcodec.problem()
    if why:  # detection runs; every capture fails with this message until it is installed
        log.emit("started", log.logging.WARNING, f"AOD captures will fail: {why}")
    try:
        ring, counters = _open_ring(cfg, args.ring_file)
    except OSError as e:
        log.emit("fatal", log.logging.ERROR, f"AOD cannot open the ring {cfg.ring.path}: {e}",
                 AOD_RING=cfg.ring.path)
        return 1
    core = Core(cfg, ring, counters, config_path=args.config, tracer_dir=None if args.ring_file else RUN_DIR,
                ring_file=args.ring_file, state_dir=args.state_dir)
    install_signals(core)
    from .reaper import REAPER

    REAPER.kill_untagged = True  # the daemon's only children are its commands: an untagged orphan escaped one
    return core.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.file)
    except config_mod.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print(f"{args.file}: {len(e.errors)} error(s)", file=sys.stderr)
        return EX_USAGE
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.file}: OK")
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    from . import evidence

    return evidence.main(args.proc, args.pin_dir)


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["tracer"], ["recorder"]):  # their arguments go to their own parser as they are:
        args = argparse.Namespace(verb=argv[0], args=argv[1:])  # argparse's REMAINDER refuses a leading --help
    else:
        args = _parser().parse_args(argv)
    try:
        if args.verb == "run":
            return cmd_run(args)
        if args.verb == "demo":
            from . import demo

            return demo.run(workdir=args.dir)
        if args.verb == "check-config":
            return cmd_check_config(args)
        if args.verb == "status":
            return cmd_status(args)
        if args.verb == "collect":
            return cmd_collect(args)
        if args.verb in ("show", "list"):
            from . import bundleview

            return bundleview.cmd_show(args) if args.verb == "show" else bundleview.cmd_list(args)
        if args.verb == "tracer":
            from . import tracer

            return int(tracer.main(args.args))
        if args.verb == "recorder":
            from . import recorder

            return recorder.main(args.args)
        if args.verb == "evidence":
            return cmd_evidence(args)
        if args.verb == "stop-hook":
            from . import unitstop

            return unitstop.main([args.unit])
        print(f"aodv2 {__version__}")
        return 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
