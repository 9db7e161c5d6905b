"""`aodv2 demo`: the whole pipeline on a synthetic source, no root, no kernel.

Runs the real core (all threads, real quick actions, real bundles) on a
file-backed ring in a temporary directory, drives a synthetic tracer through a
latency spike on WRITE, an error burst of STATUS_IO_TIMEOUT and a single 2 s
command, prints what is detected as it happens, then a latency table from a
bundle's summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Optional, TextIO

from . import config as config_mod
from . import log, ringfile, smb2
from .actions import ActionEnv
from .bundle import read_bundle
from .collect import BundleResult
from .config import Config, ErrorRule
from .counters import FileCounters
from .daemon import Core
from .ring import RingReader
from .synthetic import SyntheticTracer

C = smb2.COMMANDS
EXPECTED = ("latency", "error", "emergency")


def demo_config(workdir: str) -> Config:
    base = config_mod.defaults()
    return dataclasses.replace(
        base,
        source="<demo>",
        output_dir=os.path.join(workdir, "bundles"),
        watch_interval_sec=1.0,
        ring=dataclasses.replace(base.ring, path=os.path.join(workdir, "ring"), size_kb=1024),
        errors=(ErrorRule(name="io_timeout", statuses=frozenset({smb2.NT_STATUS["STATUS_IO_TIMEOUT"]}),
                          acceptable_count=5),),
        capture=dataclasses.replace(base.capture, action_timeout_sec=5.0, lookback_sec=30.0),
        metrics=dataclasses.replace(base.metrics, textfile_path=os.path.join(workdir, "aodv2.prom"), interval_sec=1.0),
    )


class _Printer(logging.Handler):
    def __init__(self, out: TextIO, t0: float) -> None:
        super().__init__()
        self.out, self.t0 = out, t0

    def emit(self, record: logging.LogRecord) -> None:
        mid = getattr(record, "MESSAGE_ID", "")
        if mid in (log.MESSAGE_IDS["anomaly"], log.MESSAGE_IDS["bundle"], log.MESSAGE_IDS["capture_failed"]) \
                or record.levelno >= logging.WARNING:
            print(f"[{time.monotonic() - self.t0:5.2f}s] {record.getMessage()}", file=self.out, flush=True)


def latency_table(summary: dict) -> str:
    rows = [f"{'command':<16}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for name, s in sorted(summary.get("per_command", {}).items()):
        cells = "".join(f"{v:>10.1f}" if isinstance(v, (int, float)) else f"{'-':>10}"
                        for v in (s.get("p50_ms"), s.get("p99_ms"), s.get("max_ms")))
        rows.append(f"{name:<16}{s.get('count', 0):>8}{cells}")
    return "\n".join(rows)


def run(workdir: Optional[str] = None, out: TextIO = sys.stdout, timeout: float = 25.0) -> int:
    t0 = time.monotonic()
    workdir = workdir or tempfile.mkdtemp(prefix="aodv2-demo-")
    try:
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        cfg = demo_config(os.path.abspath(workdir))
        ringfile.create(cfg.ring.path, cfg.ring.size_kb * 1024, replace=True)
    except OSError as e:
        print(f"aodv2 demo: cannot use {workdir}: {e.strerror or e}", file=sys.stderr)
        return 1
    log.setup(force_stderr=True, level=logging.INFO)
    log.logger.handlers.clear()
    log.logger.addHandler(_Printer(out, t0))
    print(f"aodv2 demo: core on a file-backed ring in {workdir}", file=out)
    results: list[BundleResult] = []
    done = threading.Event()

    def on_result(r: BundleResult) -> None:
        results.append(r)
        if {x.anomaly.type for x in results if x.ok} >= set(EXPECTED):
            done.set()

    reader = RingReader.open_file(cfg.ring.path)
    # real quick actions, but not the host's evidence helper (its answer is about real pids) nor
    # the host's flight recorders (the demo's traffic is synthetic: they would not have it)
    env = ActionEnv(evidence_socket=os.path.join(os.path.abspath(workdir), "evidence.sock"), tracefs=(),
                    run_dir=os.path.abspath(workdir))
    core = Core(cfg, reader, FileCounters(cfg.ring.path), on_result=on_result, collector_env=env)
    core_thread = threading.Thread(target=core.run, name="aodv2-core", daemon=True)
    core_thread.start()
    tracer = SyntheticTracer(ringfile.FileRingWriter(cfg.ring.path),
                             emit_min_ns=int(config_mod.min_threshold_ns(cfg.latency)), ignored=cfg.ignored_statuses)
    # (start s, what) - a timeline of trouble on top of steady traffic
    plan = [
        (2.0, "WRITE latency spike: 40 writes at 600-900 ms",
         lambda: tracer.slow(C["WRITE"], 40, 600, 900, span_ns=400_000_000)),
        (4.5, "error burst: 12 x STATUS_IO_TIMEOUT on READ",
         lambda: tracer.errors(C["READ"], 12, smb2.NT_STATUS["STATUS_IO_TIMEOUT"], err=110)),
        (6.5, "one CREATE taking 2 s (emergency)", lambda: tracer.slow(C["CREATE"], 1, 2000, 2001)),
    ]
    try:
        start = time.monotonic()
        while not done.is_set() and time.monotonic() - start < timeout:
            tracer.emit(tracer.traffic(200, span_ns=100_000_000))  # ~2000 completions/s
            el = time.monotonic() - start
            while plan and el >= plan[0][0]:
                _, what, make = plan.pop(0)
                print(f"[{time.monotonic() - t0:5.2f}s] inject: {what}", file=out, flush=True)
                tracer.emit(make())
            done.wait(0.1)
    finally:
        core.request("stop")
        core_thread.join(10)
        reader.close()
    ok = [r for r in results if r.ok and r.path]
    print(f"\nbundles in {cfg.output_dir}:", file=out)
    for r in ok:
        print(f"  {r.anomaly.type:<10} {r.path}  ({r.bytes} bytes, {r.duration_s:.2f}s)", file=out)
    missing = [t for t in EXPECTED if t not in {r.anomaly.type for r in ok}]
    lat = next((r for r in ok if r.anomaly.type == "latency"), None)
    if lat and lat.path:
        summary = json.loads(read_bundle(lat.path)["summary.json"])
        print(f"\nper-command latency in {os.path.basename(lat.path)} (all traffic in the window):", file=out)
        print(latency_table(summary), file=out)
        print(f"\nits histograms and files: aodv2 show {lat.path}\n"
              f"Prometheus metrics of the run: {cfg.metrics.textfile_path}", file=out)
    elapsed = time.monotonic() - t0
    if missing:
        print(f"\naodv2 demo: FAILED, no bundle for: {', '.join(missing)} ({elapsed:.1f}s)", file=out)
        return 1
    print(f"\naodv2 demo: OK, {len(ok)} bundles in {elapsed:.1f}s", file=out)
    return 0
