"""Figure 4: sustained load and idle cost of the core, measured alone in its own process.

The core runs as `python -m aod.cli run --config X --ring-file R` (default config, except
output_dir in a temp dir); a producer process (`python -m bench.fig_load producer ...`)
offers 200k SMB completions/s for the duration. Every completion goes into the ring
file's counters (per-command log2 histograms, as the BPF tracer's per-CPU maps); which
completions also travel through the ring as records depends on the scenario:

  mix     1% of traffic through the ring (2k records/s): errors of benign statuses
          (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_END_OF_FILE), what the tracer emits on a
          healthy client where no completion is over the 500 ms threshold. This is the
          production shape: the ring is quiet at high IOPS.
  stress  100% of traffic through the ring (200k records/s, sub-threshold completions and
          benign errors): the ring path at full rate; no detector fires.
  idle    the core alone, no traffic at all.

CPU = delta(utime+stime) of the core PID from /proc/PID/stat over the measured interval
(after a 2 s warm-up) / wall time. RSS = max sampled VmRSS, and VmHWM at the end.
"No drops" = the producer's ring-full drop counter stays 0, the core has consumed every
byte (consumer_pos == producer_pos) after the run, and it logged no drop/corrupt warnings.
Baselines in the same run: the producer's own CPU; the RSS of an idle python+numpy process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

from aod import ringfile, smb2
from aod.record import KIND_COMPLETION, KIND_ERROR

from .common import ROOT, Row, cpu_seconds, status_kb, thread_stats

RATE = 200_000
TICK = 0.01
WARMUP = 2.0  # seconds before measuring (1 s with --quick)
BENIGN = [smb2.NT_STATUS["STATUS_OBJECT_NAME_NOT_FOUND"], smb2.NT_STATUS["STATUS_END_OF_FILE"]]


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---- producer process ------------------------------------------------------------------------

def producer_main(path: str, mode: str, rate: int, seconds: float) -> int:
    from aod.synthetic import SyntheticTracer

    w = ringfile.FileRingWriter(path)
    tr = SyntheticTracer(w, emit_min_ns=500_000_000, seed=4)
    pool = tr.traffic(rate, span_ns=0)  # one second of traffic, reused with fresh ts/mid
    rng = np.random.default_rng(8)
    err = rng.random(rate) < 0.01
    pool["kind"][err] = KIND_ERROR
    pool["nt_status"][err] = rng.choice(BENIGN, int(err.sum()))
    offsets = np.arange(rate, dtype=np.int64) * (10**9 // rate)
    ring_mask = np.ones(rate, bool) if mode == "stress" else pool["kind"] != KIND_COMPLETION
    sent = ringed = written = 0
    mid = 0
    drop_times: List[float] = []  # seconds into the run of each tick that dropped
    start = time.monotonic()
    cpu0 = time.process_time()
    while True:
        el = time.monotonic() - start
        if el >= seconds:
            break
        due = min(int(el * rate) + int(TICK * rate), int(seconds * rate)) - sent
        while due > 0:
            i = sent % rate
            k = min(due, rate - i, 20_000)
            chunk = pool[i : i + k]
            chunk["ts_ns"] = time.monotonic_ns() - offsets[k - 1] + offsets[:k]
            chunk["mid"] = np.arange(mid, mid + k, dtype=np.uint64)
            mid += k
            w.record_stats(chunk)
            out = chunk[ring_mask[i : i + k]]
            if len(out):
                ringed += len(out)
                n = w.write(out)
                written += n
                if n < len(out) and (not drop_times or el - drop_times[-1] >= 0.1):
                    drop_times.append(round(el, 2))
            sent += k
            due -= k
        nxt = start + (int((time.monotonic() - start) / TICK) + 1) * TICK
        time.sleep(max(0.0, nxt - time.monotonic()))
    wall = time.monotonic() - start
    drops = int(w._drops[0])
    w.close()
    print(json.dumps({"offered": sent, "ring_records": ringed, "written": written, "drops": drops,
                      "wall_s": wall, "rate": sent / wall, "cpu_s": time.process_time() - cpu0,
                      "drop_times_s": drop_times[:50]}), flush=True)
    return 0


# ---- measuring the core ----------------------------------------------------------------------

def _positions(path: str) -> tuple:
    with open(path, "rb") as f:
        cons = int.from_bytes(os.pread(f.fileno(), 8, ringfile.CONS_OFF), "little")
        prod = int.from_bytes(os.pread(f.fileno(), 8, ringfile.PROD_OFF), "little")
    return cons, prod


def python_numpy_rss_kb() -> int:
    """Baseline: RSS of an idle interpreter that imported numpy."""
    p = subprocess.Popen([sys.executable, "-c", "import numpy, sys, time; print(1, flush=True); time.sleep(30)"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        time.sleep(0.3)
        return status_kb(p.pid, "VmRSS")
    finally:
        p.kill()
        p.wait()


def scenario(mode: str, seconds: float, root: str, warmup: float = WARMUP, core_env: Optional[Dict[str, str]] = None,
             profile_dir: Optional[str] = None) -> Dict[str, Any]:
    d = os.path.join(root, mode)
    os.makedirs(d)
    ring = os.path.join(d, "ring")
    cfgp = os.path.join(d, "aodv2.yaml")
    with open(cfgp, "w") as f:
        f.write(f"output_dir: {os.path.join(d, 'out')}\n")
    ringfile.create(ring, 4096 * 1024)
    err = open(os.path.join(d, "core.stderr"), "w+")
    core = subprocess.Popen([sys.executable, "-m", "aod.cli", "run", "--config", cfgp, "--ring-file", ring,
                             "--state-dir", os.path.join(d, "run")],
                            cwd=ROOT, env={**_env(), **(core_env or {})}, stdout=subprocess.DEVNULL, stderr=err)
    prod: Optional[subprocess.Popen] = None
    res: Dict[str, Any] = {"mode": mode, "seconds": seconds}
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "core ready" not in open(err.name).read():
            if core.poll() is not None:
                raise RuntimeError(f"core exited {core.returncode}: {open(err.name).read()[-500:]}")
            time.sleep(0.05)
        if mode != "idle":
            prod = subprocess.Popen(
                [sys.executable, "-m", "bench.fig_load", "producer", ring, mode, str(RATE), str(seconds + warmup)],
                cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
        time.sleep(warmup)
        spy = None
        if profile_dir and shutil.which("py-spy"):  # sampled profile of the core, all threads
            res["profile"] = os.path.join(profile_dir, f"core-{mode}.collapsed")
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(core.pid), "--duration", str(int(seconds)),
                                    "--rate", "100", "--format", "raw", "--output", res["profile"]],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        th0 = thread_stats(core.pid)
        c0, t0 = cpu_seconds(core.pid), time.monotonic()
        rss: List[int] = []
        while time.monotonic() - t0 < seconds:
            time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - t0))))
            rss.append(status_kb(core.pid, "VmRSS"))
        c1, t1 = cpu_seconds(core.pid), time.monotonic()
        th1 = thread_stats(core.pid)
        names = thread_names(core.pid)
        res["threads"] = {
            names.get(tid, f"tid{tid}"): {
                "cpu_pct": round((th1[tid][0] - th0.get(tid, (0, 0))[0]) / (t1 - t0) * 100, 3),
                "switches_per_s": round((th1[tid][1] - th0.get(tid, (0, 0))[1]) / (t1 - t0), 1)}
            for tid in sorted(th1)}
        if spy is not None:
            spy.wait(30)
        res.update(cpu_pct=(c1 - c0) / (t1 - t0) * 100, rss_max_kb=max(rss), vmhwm_kb=status_kb(core.pid, "VmHWM"))
        if prod is not None:
            out, _ = prod.communicate(timeout=60)
            res["producer"] = json.loads(out.strip().splitlines()[-1])
            res["producer_cpu_pct"] = res["producer"]["cpu_s"] / res["producer"]["wall_s"] * 100
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cons, prod_pos = _positions(ring)
            if cons == prod_pos:
                break
            time.sleep(0.05)
        res["unconsumed_bytes"] = prod_pos - cons
        res["core_alive"] = core.poll() is None
    finally:
        if prod is not None and prod.poll() is None:
            prod.kill()
            prod.wait()
        if core.poll() is None:
            core.send_signal(signal.SIGTERM)
            try:
                core.wait(15)
            except subprocess.TimeoutExpired:
                core.kill()
                core.wait()
        err.close()
    text = open(err.name).read()
    res["warnings"] = [ln for ln in text.splitlines() if any(w in ln for w in ("dropped", "corrupt", "restarted"))]
    res["core_exit"] = core.returncode
    drops = res.get("producer", {}).get("drops", 0)
    res["no_drops"] = drops == 0 and res.get("unconsumed_bytes", 1) == 0 and not res["warnings"]
    return res


def thread_names(pid: int) -> Dict[int, str]:
    """tid -> Python thread name, from `py-spy dump` (empty without py-spy: tids are shown)."""
    if not shutil.which("py-spy"):
        return {}
    try:
        out = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \(\w+\): "([^"]*)"', out, re.M)}


WORKERS = ("Dispatcher.run", "Watcher.run", "Collector.run", "Retention.run", "Core.run")


def summarize_profile(path: str, top: int = 12) -> str:
    """py-spy raw (collapsed) stacks -> samples per worker thread and top leaf functions."""
    per_worker: Dict[str, int] = {}
    leaves: Dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            k = int(n)
            total += k
            frames = stack.split(";")
            w = next((x.split(" ")[0] for x in frames if x.split(" ")[0] in WORKERS), "other")
            per_worker[w] = per_worker.get(w, 0) + k
            leaves[frames[-1]] = leaves.get(frames[-1], 0) + k
    out = [f"{total} samples (100 Hz, active only) by worker: "
           + ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items(), key=lambda x: -x[1]))]
    out += [f"  {n:6d}  {leaf}" for leaf, n in sorted(leaves.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(out)


def profile(mode: str, seconds: float, out_dir: str) -> str:
    """A separate, sampled run of one scenario (py-spy slows the core: not used for the table)."""
    root = tempfile.mkdtemp(prefix="aodbench-prof-")
    try:
        r = scenario(mode, seconds, root, profile_dir=out_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "profile" not in r or not os.path.exists(r["profile"]):
        return f"{mode}: no profile (py-spy not installed?)"
    return f"{mode} ({r['profile']}):\n" + summarize_profile(r["profile"])


def run(quick: bool, seconds: Optional[float] = None) -> List[Row]:
    secs = seconds or (2.0 if quick else 60.0)
    root = tempfile.mkdtemp(prefix="aodbench-load-")
    try:
        base_kb = python_numpy_rss_kb()
        out = {m: scenario(m, secs, root, warmup=1.0 if quick else WARMUP) for m in ("mix", "stress", "idle")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    base = f"python+numpy idle: {base_kb / 1024:.0f} MB"
    for m, fig, cpu_t, rss_t in (("mix", "4a", 25.0, 80), ("stress", "4b", 25.0, 80), ("idle", "4c", 0.5, 60)):
        r = out[m]
        r["baseline_rss_kb"] = base_kb
        p = r.get("producer", {})
        label = {"mix": f"load 200k/s offered, 1% via ring, {secs:g} s",
                 "stress": f"load 200k/s, all via ring, {secs:g} s", "idle": f"idle, no traffic, {secs:g} s"}[m]
        if m == "idle":
            drops_txt, cpu_base = "", "one core: 100%"
        else:
            drops_txt = (f", {p.get('drops', '?')} drops, {r['unconsumed_bytes']} B unread"
                         f", {p.get('rate', 0) / 1e3:.0f}k/s achieved")
            cpu_base = f"producer: {r.get('producer_cpu_pct', float('nan')):.1f}%"
        ok_cpu = r["cpu_pct"] <= cpu_t and (m == "idle" or (r["no_drops"] and p.get("rate", 0) >= 0.95 * RATE))
        rows.append(Row(fig + ".cpu", label, f"CPU {r['cpu_pct']:.2f}% of a core{drops_txt}", cpu_base,
                        f"{r['cpu_pct'] / 100:.4f} core", f"<= {cpu_t:g}%" + ("" if m == "idle" else ", 0 drops"),
                        ok_cpu, r))
        hwm = r["vmhwm_kb"] / 1024
        rows.append(Row(fig + ".rss", label, f"RSS max {r['rss_max_kb'] / 1024:.1f} MB, HWM {hwm:.1f} MB", base,
                        f"{r['vmhwm_kb'] / base_kb:.2f}x", f"HWM <= {rss_t} MB", hwm <= rss_t, r))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "producer":
        sys.exit(producer_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    for row in run("--quick" in sys.argv):
        print(row.fig, row.name, row.value, row.baseline, row.ratio, row.verdict)
