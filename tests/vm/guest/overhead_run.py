#!/usr/bin/python3
"""Bench figure 6 in the VM: the smb tracer's cost on SMB throughput (guest side of scenarios/overhead.sh).

Sits at the top of the data flow (kernel cifs tracepoints -> bpf/smb.bpf.c -> ring): it
loads the real producer once, through aod.tracer.run() itself (config, pin checks,
tracepoint plan, cflags, bcc compile and load, exactly what `aodv2 tracer smb` does),
with a load hook that keeps the bcc object. Then it alternates short rounds of the
SMB workload (workload.py, the one tracer.sh times) with the programs detached and
attached, in ABBA order (off,on | on,off | ...) so a linear drift of the VM's speed
cancels within each two pairs. Detach/attach only closes/reopens the perf events of
the already-loaded programs (bcc detach_tracepoint/attach_tracepoint): nothing is
recompiled between rounds.

    overhead_run.py --config FILE --mount DIR --out JSON [--pairs 120] [--target-s 0.75] [--files N]

Many short rounds rather than a few long ones: under TCG on a shared host the time of
one pair's rounds varies by 15-35% (bursts of host load: other VMs, test runs), and in
the first runs the noise per pair fell faster with shorter rounds than the 1/sqrt(round
length) of white noise, so for the same minutes many ~0.75 s pairs resolve more than a
few 4 s ones. workload.py's main() runs in this process (no interpreter start per
round) and is timed here with perf_counter (it rounds its own seconds to 0.01 s).

With kernel.bpf_stats_enabled=1 during all rounds (it only times program runs, so
detached rounds are unaffected; attached rounds pay the two clock reads per run, which
makes the loss slightly pessimistic) every round also records the programs' run_cnt and
run_time_ns deltas: attached rounds must show runs, detached rounds none.
Writes one JSON line to --out; exits 0 when the measurement is complete and consistent,
1 when a round check failed, 3 when the tracer could not be loaded.

--compare recorder (figure 6r, scenarios/overhead_recorder.sh): the tracer stays attached in
every round and the rounds alternate, in the same ABBA order, between the trace recorder off
and on. On = recordtrace.apply() with the default TraceRecorderConfig (the tracefs instance
instances/aodv2 with the cifs events of DEFAULT_TRACE_EVENTS, an overwrite ring of buffer_kb
per CPU, trace_clock boot), what aodv2-recorder@trace does; off = recordtrace.remove() (the
instance gone; --recorder-off disable keeps it with its events disabled). The state is set
before every round (outside the timed part), then --settle-s of sleep. ftrace's cost does not
show in bpf_stats, so the throughput ratio per pair is the measure, as in figure 6. Round
checks: every round has the tracer's attachments and BPF runs; an "on" round's instance has
only cifs events enabled, its trace header's entries-written grew and the head of `trace`
shows cifs events; an "off" round has no instance (or, with disable, no event enabled and no
entry written) and no cifs event enabled in the top-level instance.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import random
import re
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from aod import log, recordtrace, tracer  # PYTHONPATH=/share: the tree's aod/ copied by --copy aod
from aod.configrecorder import TraceRecorderConfig

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "workload.py")
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"
CALIB_FILES = 20
MIN_FILES, MAX_FILES = 10, 600
LOAD_TIMEOUT_S = 900.0


def say(msg: str) -> None:
    print(f"[overhead] {msg}", flush=True)


class _Quiet:
    """Notifier stand-in: no sd_notify from a benchmark."""

    def ready(self, status: str = "") -> None: ...
    def status(self, text: str) -> None: ...
    def stopping(self) -> None: ...


# ---------------------------------------------------------------- the real tracer, loaded once


class Held:
    """aod.tracer.run() in a thread, its bcc object kept by the load hook."""

    def __init__(self, config: str, bpf_dir: Optional[str], name: str = "smb") -> None:
        self.opts = tracer.Options(name, config=config, bpf_dir=bpf_dir)
        self.env = tracer.Env(notifier=_Quiet(), state_dir=None, load=self._load)
        self.loaded = threading.Event()
        self.bpf: Any = None
        self.plan: Optional[tracer.AttachPlan] = None
        self.rc: Optional[int] = None
        self.thread = threading.Thread(target=self._run, name="tracer", daemon=True)

    def _load(self, bcc: Any, source: str, flags: list, plan: tracer.AttachPlan, ring: str) -> tracer.Loaded:
        got = tracer.bcc_load(bcc, source, flags, plan, ring)
        self.bpf, self.plan = got.obj, plan
        self.loaded.set()
        return got

    def _run(self) -> None:
        self.rc = tracer.run(self.opts, self.env)
        self.loaded.set()  # wake the waiter if run() failed before loading

    def start(self, timeout: float) -> bool:
        self.thread.start()
        self.loaded.wait(timeout)
        return self.bpf is not None

    def stop(self) -> Optional[int]:
        self.env.stop.set()
        self.thread.join(10)
        return self.rc

    # attach state: tracepoints by name (bcc's autoload names them tracepoint__<sys>__<event>)
    def attach(self) -> None:
        assert self.plan is not None
        for tp in self.plan.tracepoints:
            key = tp.encode()
            if key not in self.bpf.tracepoint_fds:
                self.bpf.attach_tracepoint(tp=key, fn_name=b"tracepoint__" + key.replace(b":", b"__"))
        for kind, sym, fn in self.plan.kprobes + self.plan.optional_kprobes:
            ev = (b"r_" if kind == "kretprobe" else b"p_") + sym.encode().replace(b"+", b"_").replace(b".", b"_")
            if fn.encode() in self.bpf.kprobe_fds.get(ev, {}):
                continue
            if kind == "kretprobe":
                self.bpf.attach_kretprobe(event=sym, fn_name=fn)
            else:
                self.bpf.attach_kprobe(event=sym, fn_name=fn)

    def detach(self) -> None:
        assert self.plan is not None
        for key in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(key)
        for kind, sym, fn in self.plan.kprobes + self.plan.optional_kprobes:
            try:
                if kind == "kretprobe":
                    self.bpf.detach_kretprobe(sym, fn)
                else:
                    self.bpf.detach_kprobe(sym, fn)
            except Exception:  # bcc raises plain Exception when it is not attached
                pass

    def attached(self) -> int:
        return len(self.bpf.tracepoint_fds) + sum(len(v) for v in self.bpf.kprobe_fds.values())

    def prog_stats(self) -> Tuple[int, int]:
        """(run_cnt, run_time_ns) summed over the loaded programs (their fdinfo)."""
        runs = ns = 0
        for fn in list(self.bpf.funcs.values()):
            try:
                with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                    info = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            runs += int(info.get("run_cnt", "0"))
            ns += int(info.get("run_time_ns", "0"))
        return runs, ns


# ---------------------------------------------------------------- the trace recorder, toggled (--compare recorder)


HEADER_RE = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")
EVENT_LINE_RE = re.compile(r"\s\d+\.\d+:\s+([A-Za-z0-9_]+):")
TRACE_HEAD_BYTES = 16384


def parse_trace_head(text: str) -> Tuple[Optional[int], Optional[int], List[str]]:
    """(entries-in-buffer, entries-written, event names of the complete lines) of the head of `trace`."""
    m = HEADER_RE.search(text)
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # cut by the read size
    names = [e.group(1) for ln in lines if not ln.startswith("#") for e in [EVENT_LINE_RE.search(ln)] if e]
    return (int(m.group(1)), int(m.group(2)), names) if m else (None, None, names)


def _read_or_none(path: str, size: int = 65536) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(size)
    except OSError:
        return None


class Recorder:
    """aodv2's tracefs instance, on (recordtrace.apply, default config) or off (removed, or events disabled)."""

    def __init__(self, root: str, off_mode: str = "remove", cfg: Optional[TraceRecorderConfig] = None) -> None:
        self.root, self.off_mode = root, off_mode
        self.cfg = cfg or TraceRecorderConfig()
        self.inst = recordtrace.instance_path(root)
        self.applied: Optional[recordtrace.Applied] = None

    def set(self, state: str) -> None:
        if state == "on":
            self.applied = recordtrace.apply(self.root, self.cfg)
        elif self.off_mode == "remove":
            why = recordtrace.remove(self.root)
            if why:
                raise RuntimeError(why)
        else:  # disable: the instance and its buffer stay, no event enabled
            if not os.path.isdir(self.inst):
                recordtrace.apply(self.root, self.cfg)
            with open(os.path.join(self.inst, "events", "enable"), "w") as f:
                f.write("0")

    def cleanup(self) -> Optional[str]:
        return recordtrace.remove(self.root)

    def snapshot(self) -> Dict[str, Any]:
        """What the instance holds now (read outside the timed part of a round)."""
        top = _read_or_none(os.path.join(self.root, "events", "cifs", "enable"))
        snap: Dict[str, Any] = {"instance": os.path.isdir(self.inst), "top_cifs": top.strip() if top else None,
                                "enabled": [], "in_buffer": None, "written": None, "head_events": []}
        if snap["instance"]:
            ev = _read_or_none(os.path.join(self.inst, "set_event")) or ""
            snap["enabled"] = sorted(ln.strip() for ln in ev.splitlines() if ln.strip())
            head = _read_or_none(os.path.join(self.inst, "trace"), TRACE_HEAD_BYTES) or ""
            snap["in_buffer"], snap["written"], snap["head_events"] = parse_trace_head(head)
        return snap


def written_delta(before: Dict[str, Any], after: Dict[str, Any]) -> Optional[int]:
    if before.get("written") is None or after.get("written") is None:
        return None
    return int(after["written"]) - int(before["written"])


def recorder_round_problems(k: int, state: str, off_mode: str, before: Dict[str, Any], after: Dict[str, Any],
                            attachments: int, bpf_runs: int) -> List[str]:
    """Did round k run in the state it claims? The tracer attached throughout; the recorder on or off."""
    out: List[str] = []
    if attachments == 0 or bpf_runs == 0:
        out.append(f"round {k}: the tracer must stay attached, yet {attachments} attachments and {bpf_runs} runs")
    for when, snap in (("before", before), ("after", after)):
        if snap.get("top_cifs") != "0":
            out.append(f"round {k}: top-level tracefs events/cifs/enable is {snap.get('top_cifs')!r} {when} "
                       "the round (cifs events recorded outside the instance)")
    delta = written_delta(before, after)
    if state == "on":
        if not (before["instance"] and after["instance"]):
            return out + [f"round {k}: recorder on, yet no instance (before {before['instance']}, "
                          f"after {after['instance']})"]
        enabled = after["enabled"]
        if not enabled or any(not e.startswith("cifs:") for e in enabled):
            out.append(f"round {k}: recorder on, yet the enabled events are {enabled}")
        if delta is None or delta <= 0:
            out.append(f"round {k}: recorder on, yet entries-written went {before['written']} -> {after['written']}")
        names = {e.split(":", 1)[1] for e in enabled if ":" in e}
        head = after["head_events"]
        if not head or any(n not in names for n in head):
            out.append(f"round {k}: recorder on, yet the head of trace shows {sorted(set(head))[:8]}")
    elif off_mode == "remove":
        if before["instance"] or after["instance"]:
            out.append(f"round {k}: recorder off (removed), yet the instance exists (before {before['instance']}, "
                       f"after {after['instance']})")
    else:
        if before["enabled"] or after["enabled"]:
            on = after["enabled"] or before["enabled"]
            out.append(f"round {k}: recorder off (disabled), yet events enabled: {on}")
        if delta != 0:
            out.append(f"round {k}: recorder off (disabled), yet entries-written went {before['written']} -> "
                       f"{after['written']}")
    return out


# ---------------------------------------------------------------- workload and statistics


_WORKLOAD_MAIN: List[Callable[[], int]] = []


def workload(mount: str, files: int) -> Dict[str, Any]:
    """One run of workload.py's main() in this process, its JSON line, and "seconds" timed here.

    In-process (the module is loaded once): no interpreter start per round, and a
    perf_counter time around main() instead of workload.py's 0.01 s rounding, which
    matters for sub-second rounds.
    """
    if not _WORKLOAD_MAIN:
        spec = importlib.util.spec_from_file_location("aod_vm_workload", WORKLOAD)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _WORKLOAD_MAIN.append(mod.main)
    buf = io.StringIO()
    argv = sys.argv
    sys.argv = [WORKLOAD, mount, "-n", str(files)]
    try:
        with contextlib.redirect_stdout(buf):
            t0 = time.perf_counter()
            _WORKLOAD_MAIN[0]()
            took = time.perf_counter() - t0
    finally:
        sys.argv = argv
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"workload.py printed no JSON: {buf.getvalue()[-500:]!r}")
    out = json.loads(lines[-1])
    out["workload_seconds"], out["seconds"] = out["seconds"], round(took, 4)
    return out


def abba(pairs: int) -> List[Tuple[int, str]]:
    """(pair, state) in run order: off,on | on,off | off,on ..."""
    out: List[Tuple[int, str]] = []
    for i in range(pairs):
        out += [(i, s) for s in (("off", "on") if i % 2 == 0 else ("on", "off"))]
    return out


def quartiles(xs: Sequence[float]) -> Tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (0.0, 0.0)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def _p10(xs: Sequence[float]) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[0]


def bootstrap_median(xs: Sequence[float], n: int = 4000, seed: int = 6) -> Tuple[float, float]:
    """95% percentile-bootstrap interval of the median (fixed seed: the same data gives the same interval)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def summarize(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Pair ratios (throughput with/without = off_s / on_s), their median, min-time ratio, spreads."""
    by_pair: Dict[int, Dict[str, float]] = {}
    for r in rounds:
        by_pair.setdefault(r["pair"], {})[r["state"]] = r["seconds"]
    pairs = [p for _, p in sorted(by_pair.items()) if "off" in p and "on" in p]
    ratios = [p["off"] / p["on"] for p in pairs]
    if not ratios:
        return {}
    losses = [1 - x for x in ratios]
    off = [r["seconds"] for r in rounds if r["state"] == "off"]
    on = [r["seconds"] for r in rounds if r["state"] == "on"]
    q25, q75 = quartiles(losses)
    lo, hi = bootstrap_median(losses)
    on_runs = sum(r["bpf_runs"] for r in rounds if r["state"] == "on")
    on_ns = sum(r["bpf_run_time_ns"] for r in rounds if r["state"] == "on")
    return {
        "workload_seconds_off": off, "workload_seconds_on": on,
        "pair_ratios": [round(x, 4) for x in ratios],
        "median_pair_ratio": round(statistics.median(ratios), 4),
        "median_pair_loss": round(statistics.median(losses), 4),
        "pair_loss_q25": round(q25, 4), "pair_loss_q75": round(q75, 4), "pair_loss_iqr": round(q75 - q25, 4),
        "median_loss_ci95": [round(lo, 4), round(hi, 4)],
        "min_ratio": round(min(off) / min(on), 4), "min_loss": round(1 - min(off) / min(on), 4),
        # the 10th percentiles: the fast end like the minimum, but not one lucky round
        "p10_loss": round(1 - _p10(off) / _p10(on), 4) if len(off) >= 10 and len(on) >= 10 else None,
        "median_off_s": round(statistics.median(off), 3), "median_on_s": round(statistics.median(on), 3),
        "bpf_runs": on_runs, "bpf_run_time_ns": on_ns,
        "bpf_ns_per_run": round(on_ns / on_runs, 1) if on_runs else None,
        "bpf_cpu_share_of_workload": round(on_ns / (sum(on) * 1e9), 6) if on else None,
    }


# ---------------------------------------------------------------- main


def set_bpf_stats(value: str) -> Optional[str]:
    try:
        with open(BPF_STATS) as f:
            old = f.read().strip()
        with open(BPF_STATS, "w") as f:
            f.write(value)
        return old
    except OSError as e:
        say(f"cannot set {BPF_STATS}: {e}")
        return None


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="aodv2 config for the tracer (ring path, thresholds)")
    ap.add_argument("--mount", required=True, help="CIFS (or, with --tracer nfs, NFS) mount the workload runs on")
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--bpf-dir", help="BPF sources (default: bpf/ beside the aod/ package)")
    ap.add_argument("--pairs", type=int, default=120, help="off/on pairs, in ABBA order (default %(default)s)")
    ap.add_argument("--target-s", type=float, default=0.75, help="seconds one round should take (default 0.75)")
    ap.add_argument("--files", type=int, default=0, help="files per round (default: calibrated to --target-s)")
    ap.add_argument("--compare", choices=("tracer", "recorder"), default="tracer",
                    help="tracer: its programs detached/attached (figure 6, default); recorder: the tracer "
                         "attached throughout, the trace recorder's instance off/on (figure 6r)")
    ap.add_argument("--recorder-off", choices=("remove", "disable"), default="remove",
                    help="--compare recorder: 'off' removes the instance (default) or disables its events")
    ap.add_argument("--settle-s", type=float, default=0.0,
                    help="sleep after setting a round's state, before timing it (default 0)")
    ap.add_argument("--tracefs", help="tracefs root (default: the mounted one)")
    ap.add_argument("--tracer", choices=("smb", "nfs"), default="smb",
                    help="the tracer measured (--compare tracer): smb on a CIFS mount (figure 6), nfs on an NFS "
                         "mount (figure 6n, scenarios/overhead_nfs.sh)")
    args = ap.parse_args(argv)
    if args.pairs < 2 or not os.path.isdir(args.mount):
        ap.error("--pairs must be >= 2 and --mount an existing directory")
    log.setup(force_stderr=True)
    t0 = time.monotonic()
    rec: Optional[Recorder] = None
    if args.compare == "recorder":
        root = args.tracefs or recordtrace.find_tracefs()
        if root is None:
            say("no tracefs with instances/ is mounted: the trace recorder cannot run")
            return 3
        rec = Recorder(root, args.recorder_off)
        if os.path.isdir(rec.inst):
            say(f"{rec.inst} exists before the run; removing it ({rec.cleanup()})")

    held = Held(args.config, args.bpf_dir, args.tracer)
    if not held.start(LOAD_TIMEOUT_S):
        say(f"the {args.tracer} tracer did not load (aod.tracer.run exit {held.stop()}); see its log lines above")
        return 3
    load_s = time.monotonic() - t0
    assert held.plan is not None
    n_programs = len(held.bpf.funcs)
    say(f"tracer loaded in {load_s:.1f} s: {held.plan.mode} mode, {held.attached()} attachments, "
        f"{n_programs} programs")
    old_stats = set_bpf_stats("1")
    rounds: List[Dict[str, Any]] = []
    problems: List[str] = []
    files = args.files
    calib: List[float] = []
    try:
        if rec is None:
            held.detach()
        else:  # the tracer stays attached in every round; the recorder is what changes
            held.attach()
            rec.set("on")
            applied = rec.applied
            assert applied is not None
            say(f"recorder instance {applied.instance}: {len(applied.events)} events enabled, clock "
                f"{applied.clock}, {applied.buffer_kb} KiB/CPU; missing {applied.missing}, failed {applied.failed}")
            if not {"cifs/smb3_cmd_enter", "cifs/smb3_cmd_done"} <= set(applied.events):
                raise RuntimeError(f"the recorder did not enable smb3_cmd_enter/done: {applied.as_dict()}")
            if applied.failed:
                problems.append(f"recorder events that could not be enabled: {applied.failed}")
            rec.set("off")
        for _ in range(4):  # the first run is cold; size the rounds from the fastest of the others
            calib.append(workload(args.mount, CALIB_FILES)["seconds"])
        if files <= 0:
            best = max(min(calib[1:]), 0.05)
            files = int(min(MAX_FILES, max(MIN_FILES, round(CALIB_FILES * args.target_s / best))))
        say(f"calibration with {CALIB_FILES} files: {calib} s -> {files} files per round")
        warm = workload(args.mount, files)["seconds"]  # one full-size round, not counted
        say(f"warm-up round: {warm} s")
        for k, (pair, state) in enumerate(abba(args.pairs)):
            if rec is not None:
                rec.set(state)
            elif state == "on":
                held.attach()
            else:
                held.detach()
            if args.settle_s > 0:
                time.sleep(args.settle_s)
            n_att = held.attached()
            snap0 = rec.snapshot() if rec is not None else None
            r0, ns0 = held.prog_stats()
            w = workload(args.mount, files)
            r1, ns1 = held.prog_stats()
            row = {"round": k, "pair": pair, "state": state, "seconds": w["seconds"], "attachments": n_att,
                   "bpf_runs": r1 - r0, "bpf_run_time_ns": ns1 - ns0, "ops": w["ops"], "errors": w["errors"]}
            if rec is not None and snap0 is not None:
                snap1 = rec.snapshot()
                row["trace_written"] = written_delta(snap0, snap1)
                row["trace_in_buffer"] = snap1["in_buffer"]
                row["trace_head_events"] = sorted(set(snap1["head_events"]))
                problems += recorder_round_problems(k, state, rec.off_mode, snap0, snap1, n_att, row["bpf_runs"])
            rounds.append(row)
            if k % 20 == 19:  # little console output while rounds run (the serial console is slow)
                say(f"{k + 1} rounds; last: {json.dumps(row)}")
            if w["errors"]:
                problems.append(f"round {k}: workload errors {w.get('first_errors')}")
            if rec is None and state == "off" and (n_att or row["bpf_runs"]):
                problems.append(f"round {k}: detached, yet {n_att} attachments and {row['bpf_runs']} runs")
            if rec is None and state == "on" and (n_att == 0 or row["bpf_runs"] == 0):
                problems.append(f"round {k}: attached, yet {n_att} attachments and {row['bpf_runs']} runs")
    except Exception as e:  # a workload, bcc or tracefs failure: keep what was measured, say why it stopped
        problems.append(f"aborted after {len(rounds)} rounds: {type(e).__name__}: {e}")
    finally:
        if rec is not None:
            why = rec.cleanup()
            if why:
                problems.append(why)
        if old_stats is not None:
            set_bpf_stats(old_stats)
        rc = held.stop()
    out = summarize(rounds) if rounds else {}
    out.update({
        "compare": args.compare,
        "tracer": args.tracer,
        "kernel": os.uname().release, "mode": held.plan.mode, "tracepoints": list(held.plan.tracepoints),
        "programs": n_programs, "compile_attach_s": round(load_s, 1), "files_per_round": files,
        "calibration_s": calib, "pairs": args.pairs, "order": "ABBA", "settle_s": args.settle_s, "rounds": rounds,
        "bpf_stats_enabled_during_rounds": old_stats is not None, "tracer_exit": rc,
        "problems": problems, "elapsed_s": round(time.monotonic() - t0, 1),
        "note": "qemu TCG guest; one bcc load, programs detached/attached between rounds (no recompile); "
                "throughput ratio per pair = off_s / on_s, loss = 1 - ratio",
    })
    if rec is not None:
        written = [r["trace_written"] or 0 for r in rounds if r["state"] == "on"]
        out.update({
            "recorder_off": rec.off_mode, "tracefs": rec.root,
            "recorder": rec.applied.as_dict() if rec.applied else None,
            "trace_entries_written_on": sum(written),
            "trace_entries_per_on_round": round(sum(written) / len(written), 1) if written else None,
            "bpf_runs_off": sum(r["bpf_runs"] for r in rounds if r["state"] == "off"),
            "note": "qemu TCG guest; one bcc load, the smb tracer attached in every round; the trace recorder's "
                    f"tracefs instance off ({rec.off_mode}) / on (recordtrace.apply, default config) between "
                    "rounds; throughput ratio per pair = off_s / on_s, loss = 1 - ratio (the recorder's added loss)",
        })
    with open(args.out, "w") as f:
        f.write(json.dumps(out) + "\n")
    if out.get("pair_ratios"):
        say(f"median pair loss {100 * out['median_pair_loss']:+.2f}% (95% CI {out['median_loss_ci95']}), "
            f"IQR {100 * out['pair_loss_iqr']:.2f}%, min-time loss {100 * out['min_loss']:+.2f}%, "
            f"p10-time loss {out['p10_loss']}, "
            f"bpf share {out['bpf_cpu_share_of_workload']}"
            + (f", trace entries per on round {out['trace_entries_per_on_round']}" if rec is not None else ""))
    for p in problems:
        say(f"PROBLEM {p}")
    return 1 if problems or rc != 0 or not rounds else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
