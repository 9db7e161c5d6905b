#!/usr/bin/python3
"""The kernel-matrix smoke run: the guest-side driver of tests/vm/scenarios/matrix.sh (issue 15).

One boot per extra Debian suite (bullseye, trixie) proves on that suite's kernel, bcc, Python and
systemd what the full bookworm runs prove at length: the installed .deb (cifs tracepoints or the
kprobe fallback -> tracer -> pinned ring -> dispatch -> detect -> collect -> retain).

    matrix_run.py --deb /share/aodv2_*.deb --report /share/matrix-report.json [--only N,N]

Scenarios: 1 install + enable (e2e_run.s1), 2 the tracepoint path attached (mode, health events
attached or reported absent; the nfs tracer attached, its optional sunrpc events as available_events
lists), 3 one real latency anomaly and its bundle (read with `aodv2 show`),
4 the kprobe path forced by `tracer.mode: kprobe` in the config (attached by the kernel's own
symbols, and a latency anomaly from its records), 5 purge (e2e_run.s10). Every scenario asserts;
the report has the seconds of each (tests/vm/e2e_summary.py prints it on the host).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, Dict, List

import e2e_nfs
import e2e_run
import guestkit
from e2e_run import TRACER, bundle_info, netem, slow_until, wait_bundle
from guestkit import CORE, Checks, Scenario, active, cursor, journal, log, prop, reload_config, run, wait_for

ARGS: argparse.Namespace
LAT_DELAY = f"{e2e_run.LAT_DELAY_MS}ms"


def tracer_attached(mark: int, timeout: float = 300) -> Dict[str, Any]:
    """The tracer's 'attached (...)' journal record after `mark` ({} if none in time)."""
    def find() -> Dict[str, Any]:
        for e in journal(mark, units=(TRACER,)):
            if re.search(r"\battached \(.*mode\)", str(e.get("MESSAGE", ""))):
                return e
        return {}
    return wait_for(find, timeout, 1.0) or {}


def tracer_lines(mark: int) -> List[str]:
    return [str(e.get("MESSAGE", "")) for e in journal(mark, units=(TRACER,))]


def s2_tracepoint(c: Checks) -> None:
    e = tracer_attached(0)
    c.detail["attached"] = e.get("MESSAGE")
    c.check("tracer attached in tracepoint mode", e.get("AOD_MODE") == "tracepoint", e.get("MESSAGE"))
    lines = tracer_lines(0)
    health = next((x for x in lines if "health tracepoints attached" in x), "")
    c.detail["health"] = health
    c.detail["not_used"] = [x for x in lines if "not used" in x or "not in this kernel" in x][:20]
    c.check("health tracepoints: attached ones listed, absent ones reported", health, health)
    c.check("tracer STATUS says attached (the mode is in aodv2 status, below)",
            prop("StatusText", TRACER).startswith("attached"), prop("StatusText", TRACER))
    st = run(["aodv2", "status"])
    c.detail["status"] = st.stdout[-1500:]
    c.check("aodv2 status: tracer smb attached in tracepoint mode",
            st.returncode == 0 and "tracer smb attached in tracepoint mode" in st.stdout, st.stdout[-400:])
    rec = [ln.strip() for ln in st.stdout.splitlines() if "trace recorder:" in ln]
    c.detail["trace_recorder"] = rec
    c.check("aodv2 status: the trace recorder records this kernel's cifs events (instances/aodv2)",
            rec and re.search(r"trace recorder: recording [1-9]\d* events in \S+/instances/aodv2", rec[0]), rec)
    e2e_nfs.attach_check(c)


def latency_bundle(c: Checks, tag: str) -> None:
    """A netem slowdown until a latency alert; its bundle holds the evidence; `aodv2 show` reads it."""
    cur = cursor()
    alert, stats = slow_until(cur, LAT_DELAY, 16, 90, "latency", tag, extra=2.0)
    c.detail["workload"] = stats
    if not c.check("journal: latency anomaly on \\\\127.0.0.1\\share",
                   alert and "latency" in alert.get("MESSAGE", "") and "127.0.0.1" in alert.get("MESSAGE", ""),
                   alert and alert.get("MESSAGE")):
        return
    be = wait_bundle(cur, "latency", 120)
    if not c.check("journal: bundle written", be, be and be.get("MESSAGE")):
        return
    b = bundle_info(be["AOD_BUNDLE"])
    mem = b["members"]
    c.detail["bundle"] = {"path": b["path"], "bytes": b["bytes"], "members": len(mem)}
    for rel in ("cifs/DebugData", "cifs/Stats", "kernel.log", "journal.log", "events.npy", "summary.json"):
        c.check(f"bundle holds {rel} (non-empty)", len(b["data"].get(rel, b"")) > 0, len(b["data"].get(rel, b"")))
    acts = {a["name"]: a["status"] for a in b["summary"].get("actions", [])}
    c.detail["actions"] = acts
    c.check("actions kernel_log, journal, cifs_debug, mounts ok",
            all(acts.get(a) == "ok" for a in ("kernel_log", "journal", "cifs_debug", "mounts")), acts)
    ev = b["events"]
    slow = int((ev["latency_ns"] >= 300e6).sum()) if ev is not None and "latency_ns" in (ev.dtype.names or ()) else 0
    c.detail["slow_events"] = slow
    c.check("the bundle's events hold slow completions (>= 300 ms)", slow > 0, slow)
    trace = b["data"].get("recorder/trace.txt", b"").decode("utf-8", "replace").splitlines()
    cifs = [ln for ln in trace if re.search(r"\] \S*\s*\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d: smb3_cmd_", ln)]
    c.detail["trace_lines"] = {"all": len(trace), "cifs_with_wall_clock": len(cifs)}
    c.check("trace_recorder ok: recorder/trace.txt holds cifs lines with wall-clock times",
            acts.get("trace_recorder") == "ok" and cifs, (acts.get("trace_recorder"), trace[:4]))
    sh = run(["aodv2", "show", b["path"]], timeout=60)
    c.check("aodv2 show reads the bundle and prints the trace around the trigger",
            sh.returncode == 0 and "latency" in sh.stdout and "trace recorder:" in sh.stdout,
            (sh.stdout + sh.stderr).strip()[-300:])


def s3_latency(c: Checks) -> None:
    kind, _ = reload_config({"capture": {"cooldown_sec": 1.0}})
    c.check("config reloaded (cooldown 1 s)", kind == "ok")
    latency_bundle(c, "mlat")


def s4_kprobe(c: Checks) -> None:
    e2e_run.settle(5.0, 60.0)
    mark = cursor()
    guestkit.write_config({"capture": {"cooldown_sec": 1.0}, "tracer": {"mode": "kprobe"}})
    ck = run(["aodv2", "check-config", guestkit.CONFIG])
    c.check("check-config accepts tracer.mode: kprobe", ck.returncode == 0, (ck.stdout + ck.stderr).strip()[-300:])
    r = run(["systemctl", "restart", TRACER], timeout=300)
    c.check("systemctl restart aodv2-tracer@smb", r.returncode == 0, r.stderr.strip()[-300:])
    e = tracer_attached(mark)
    c.detail["attached"] = e.get("MESSAGE")
    c.check("tracer attached in kprobe mode", e.get("AOD_MODE") == "kprobe", e.get("MESSAGE"))
    lines = tracer_lines(mark)
    fb = next((x for x in lines if "kprobe fallback" in x), "")
    c.detail["fallback"] = fb
    c.check("the kprobe functions were chosen from this kernel's symbols", fb, fb)
    c.check("core still active", active(CORE))
    st = wait_for(lambda: (lambda o: o if "attached in kprobe mode" in o else "")(run(["aodv2", "status"]).stdout), 30)
    c.check("aodv2 status: tracer smb attached in kprobe mode (tracer.mode kprobe)", st, st and st[-300:])
    latency_bundle(c, "mkp")
    guestkit.write_config({"capture": {"cooldown_sec": 1.0}})
    r = run(["systemctl", "restart", TRACER], timeout=300)
    c.check("back to tracepoint mode", r.returncode == 0 and wait_for(lambda: active(TRACER), 120))


SCENARIOS: List[Scenario] = [
    ("1_install_enable", e2e_run.s1_install_enable),
    ("2_tracepoint", s2_tracepoint),
    ("3_latency", s3_latency),
    ("4_kprobe", s4_kprobe),
    ("5_purge", e2e_run.s10_purge),
]


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--deb", required=True)
    ap.add_argument("--report", default="/share/matrix-report.json")
    ap.add_argument("--keep-dir", default="/share/matrix-bundles")
    ap.add_argument("--mount", default="/mnt/smb")
    ap.add_argument("--only", default="")
    ARGS = ap.parse_args()
    e2e_nfs.E = e2e_run
    e2e_run.ARGS = argparse.Namespace(deb=ARGS.deb, keep_dir=ARGS.keep_dir, slow_after=2.0, mount=ARGS.mount)
    guestkit.setup("matrix", e2e_run.BASE)
    os.makedirs(ARGS.keep_dir, exist_ok=True)
    info = {"deb": os.path.basename(ARGS.deb), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    log(f"kernel {os.uname().release}")
    return guestkit.run_scenarios(SCENARIOS, ARGS.report, ARGS.only, always=("1",),
                                  diag_units=(CORE, "aodv2-tracer@*"), cleanup=lambda: netem(None), info=info)


if __name__ == "__main__":
    sys.exit(main())
