"""Figure 5: capture, anomaly -> finished .tar.zst, all default quick actions.

aod.collect.capture() against a fake host (bench/fakehost.py: 2 MB DebugData, 50k-line
journal, 3 cifs mounts, tools on PATH), with 10k events in the anomaly. Timed from the
call to the bundle being on disk. Baseline in the same run, what a shell script would do
with the same inputs and the CLI tools: run the same tools into files, cp the proc
files, then `tar -c | zstd -3`. Compression ratio = bytes collected / bundle bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import List

import numpy as np

from aod import config as config_mod
from aod.actions import ACTION_NAMES
from aod.anomaly import Anomaly
from aod.collect import capture

from . import fakehost
from .common import Row, median, now
from .fig_detect import window_events


def make_anomaly(n: int = 10_000) -> Anomaly:
    ev = window_events(n)
    now_ns = time.monotonic_ns()
    ev["ts_ns"] = now_ns - 1_000_000_000 + np.sort(np.random.default_rng(5).integers(0, 10**9, n))
    return Anomaly("latency", "over_threshold>=10", n, time.time(), now_ns, now_ns - 10**9, now_ns,
                   events=ev, commands=(9,))


def baseline_capture(paths: dict, out: str) -> int:
    """The shell-script way, argv only: tools to files, cp, tar | zstd. Returns bundle bytes."""
    stage = tempfile.mkdtemp(dir=os.path.dirname(out))
    b = paths["bin"]
    cmds = [([f"{b}/journalctl", "-k", "--no-pager"], "kernel.log"), ([f"{b}/journalctl", "--no-pager"], "journal.log")]
    cmds += [([f"{b}/smbinfo", sub, m], f"smbinfo{i}{sub}.txt") for i, m in enumerate(fakehost.MOUNTS)
             for sub in ("filefsfullsizeinfo", "fileallinfo")]
    procs = []
    for argv, dest in cmds:
        f = open(os.path.join(stage, dest), "wb")
        procs.append((subprocess.Popen(argv, stdout=f), f))
    os.makedirs(os.path.join(stage, "cifs"))
    for name in ("DebugData", "Stats", "open_files"):
        shutil.copyfile(os.path.join(paths["proc"], "fs", "cifs", name), os.path.join(stage, "cifs", name))
    shutil.copyfile(os.path.join(paths["proc"], "mounts"), os.path.join(stage, "mounts"))
    shutil.copyfile(os.path.join(paths["var_log"], "syslog"), os.path.join(stage, "syslog.log"))
    for p, f in procs:
        p.wait()
        f.close()
    with open(out, "wb") as f:
        tar = subprocess.Popen(["tar", "-C", stage, "-cf", "-", "."], stdout=subprocess.PIPE)
        zst = subprocess.run(["zstd", "-3", "-q", "-c"], stdin=tar.stdout, stdout=f, check=True)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        assert zst.returncode == 0 and tar.returncode == 0
    shutil.rmtree(stage)
    return os.path.getsize(out)


def run(quick: bool) -> List[Row]:
    root = tempfile.mkdtemp(prefix="aodbench-capture-")
    try:
        paths = fakehost.build(root)
        env = fakehost.env_for(paths)
        base = config_mod.defaults()
        cfg = config_mod.Config(output_dir=os.path.join(root, "out"), capture=base.capture)
        have_cli = bool(shutil.which("zstd") and shutil.which("tar"))
        t_a: List[float] = []
        t_b: List[float] = []
        res = None
        bsize = 0
        for i in range(2 if quick else 7):
            a = make_anomaly()
            t0 = now()
            res = capture(a, cfg, env)
            t_a.append(now() - t0)
            if have_cli:
                t0 = now()
                bsize = baseline_capture(paths, os.path.join(root, f"baseline{i}.tar.zst"))
                t_b.append(now() - t0)
        assert res is not None
        statuses = {x["name"]: x["status"] for x in res.actions}
        collected = sum(int(x["bytes"]) for x in res.actions) + len(res.anomaly.events.tobytes())
        ratio_c = collected / max(res.bytes, 1)
        all_ok = res.ok and all(statuses.get(n) == "ok" for n in ACTION_NAMES)
        d = median(t_a)
        raw = {"capture_s": d, "runs_s": [round(x, 3) for x in t_a], "bundle_bytes": res.bytes,
               "collected_bytes": collected, "compression_ratio": ratio_c, "statuses": statuses,
               "baseline_s": median(t_b) if t_b else None, "baseline_bundle_bytes": bsize}
        base_s = f"tar|zstd -3 CLI: {median(t_b):.2f} s" if t_b else "tar/zstd CLI not installed"
        ratio = f"{d / median(t_b):.2f}x" if t_b else "-"
        bad = "" if all_ok else " (actions not ok: " + ",".join(k for k, v in statuses.items() if v != "ok") + ")"
        return [
            Row("5a", "capture, anomaly -> .tar.zst", f"{d:.2f} s{bad}", base_s, ratio, "<= 1 s",
                d <= 1.0 and all_ok, raw),
            Row("5b", "capture, compression ratio", f"{ratio_c:.1f}:1 ({collected / 1e6:.1f} MB -> "
                f"{res.bytes / 1e6:.2f} MB)", f"tar|zstd -3 CLI: {bsize / 1e6:.2f} MB" if bsize else "-",
                f"{bsize / max(res.bytes, 1):.2f} size vs CLI" if bsize else "-", "report", None, raw),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for row in run(False):
        print(row)
