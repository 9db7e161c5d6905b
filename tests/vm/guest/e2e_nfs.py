"""NFS end to end (guest side; e2e_run.py runs it with its other scenarios): 16_nfs.

The in-guest nfs-kernel-server exports /srv/nfs to 127.0.0.1; it is mounted twice, NFSv4.2 and
NFSv3, hard, timeo=10 (1 s) retrans=2 and actimeo=0 (every stat is an RPC), so each step is
deterministic. With `tracers: [smb, nfs]` and `systemctl enable --now aodv2-tracer@nfs`:
  a. both tracers attached, and `aodv2 status` lists both;
  b. netem on lo slows SMB and NFS at once: two anomalies, latency (SMB) and nfs_latency, each with
     its own bundle (aod_nfslatency_*): the NFS one holds nfs/mountstats, NFS records (tracer 4) over the threshold and
     names its procedures (NFSv4 WRITE ...), no cifs files; the SMB one the reverse;
  c. one slow stat a second (netem): too few for the count rule, an nfs_latency anomaly from the share
     rule (every NFS completion counted in the kernel, nfs_stats_v1, is its denominator), and the NFS
     metric families in aodv2.prom;
  d. nfs-kernel-server stopped under a stat: an nfs_hung anomaly (the request never completes);
  e. `exportfs -u` under the mounts: an nfs_error anomaly whose statuses are named.
Each NFS anomaly names its server (127.0.0.1) and export (127.0.0.1:/srv/nfs).
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional

from guestkit import Checks, Scenario, cursor, log, reload_config, run, wait_for, wait_journal

E: Any = None  # the e2e_run module, set by e2e_run.main
TRACER = "aodv2-tracer@nfs.service"
EXPORT = "/srv/nfs"
MOUNTS = {"4.2": "/mnt/nfs4", "3": "/mnt/nfs3"}
OPTS = "hard,timeo=10,retrans=2,actimeo=0"
TRACER_NFS = 4
THRESHOLD_MS = 300.0
NFS_CONFIG = {"tracers": ["smb", "nfs"],
              "nfs": {"default_threshold_ms": THRESHOLD_MS, "hung_threshold_ms": 3000.0,
                      "errors": {"acceptable_count": 1, "horizon_sec": 10.0}},
              "capture": {"cooldown_sec": 0.0, "max_per_hour": 3600, "concurrency": 4,
                          "action_timeout_sec": 15.0, "lookback_sec": 120.0}}


def server_up() -> bool:
    os.makedirs(EXPORT, exist_ok=True)
    with open("/etc/exports", "w") as f:
        f.write(f"{EXPORT} 127.0.0.1(rw,sync,no_subtree_check,no_root_squash,insecure)\n")
    r = run(["systemctl", "restart", "nfs-kernel-server"], timeout=120)
    if r.returncode:
        log(f"nfs-kernel-server: {r.stderr.strip()}")
    return r.returncode == 0 and run(["exportfs", "-ra"]).returncode == 0


def mount_all() -> Dict[str, str]:
    out = {}
    for vers, mnt in MOUNTS.items():
        os.makedirs(mnt, exist_ok=True)
        r = run(["mount", "-t", "nfs", "-o", f"vers={vers},{OPTS}" + (",nolock" if vers == "3" else ""),
                 f"127.0.0.1:{EXPORT}", mnt], timeout=90)
        out[vers] = "ok" if r.returncode == 0 else r.stderr.strip()[-200:]
    return out


def umount_all() -> None:
    for mnt in MOUNTS.values():
        run(["umount", "-f", "-l", mnt], timeout=30)


class NfsLoad:
    """Writes with fsync, reads and stats on both mounts, in threads, until stopped."""

    def __init__(self, threads: int = 4) -> None:
        self.stop_ev = threading.Event()
        self.ops = 0
        self.errors: List[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        mnt = list(MOUNTS.values())[i % len(MOUNTS)]
        p = os.path.join(mnt, f"load-{i}.bin")
        while not self.stop_ev.is_set():
            try:
                with open(p, "wb") as f:
                    f.write(os.urandom(8192))
                    f.flush()
                    os.fsync(f.fileno())
                os.stat(p)
                with open(p, "rb") as f:
                    f.read()
                self.ops += 1
            except OSError as e:
                self.errors.append(str(e))
                time.sleep(0.2)

    def start(self) -> NfsLoad:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> Dict[str, Any]:
        self.stop_ev.set()
        for t in self.threads:
            t.join(60)
        return {"ops": self.ops, "errors": self.errors[:3]}


def _bundle(c: Checks, cur: int, atype: str) -> Optional[Dict[str, Any]]:
    be = E.wait_bundle(cur, atype, 120)
    if not c.check(f"{atype}: bundle written", be, be and be.get("MESSAGE")):
        return None
    return E.bundle_info(be["AOD_BUNDLE"])


def _two_protocols(c: Checks) -> None:
    cur = cursor()
    smb = E.Load(4, "nfs-smb").prepare()
    nfs = NfsLoad().start()
    E.netem("400ms")
    smb.start()
    try:
        got: Dict[str, Any] = {}
        for atype in ("latency", "nfs_latency"):
            got[atype] = wait_journal(cur, "anomaly", 90, lambda e, t=atype: e.get("AOD_ANOMALY") == t)
        time.sleep(3)
    finally:
        E.netem(None)
        c.detail["smb_load"], c.detail["nfs_load"] = smb.stop(), nfs.stop()
    c.check("SMB and NFS slowed at once: a latency and an nfs_latency anomaly", all(got.values()),
            {k: bool(v) for k, v in got.items()})
    b_nfs, b_smb = _bundle(c, cur, "nfs_latency"), _bundle(c, cur, "latency")
    if b_nfs:
        s, names = b_nfs["summary"], b_nfs["members"]
        c.detail["nfs_bundle"] = {"path": b_nfs["path"], "members": names, "anomaly": s.get("anomaly")}
        c.check("nfs bundle is named aod_nfslatency_*", os.path.basename(b_nfs["path"]).startswith("aod_nfslatency_"))
        ms = b_nfs["data"].get("nfs/mountstats", b"")
        c.check("nfs bundle: nfs/mountstats of both mounts", all(m.encode() in ms for m in MOUNTS.values()),
                len(ms))
        c.check("nfs bundle: no cifs files", not any(n.startswith(("cifs/", "smbinfo/")) for n in names), names)
        ev = b_nfs["events"]
        slow = ev[(ev["tracer_id"] == TRACER_NFS) & (ev["latency_ns"] > THRESHOLD_MS * 1e6)] if ev is not None else []
        c.detail["nfs_slow_records"] = len(slow)
        c.check("nfs bundle: the slow NFS requests in events.npy (tracer 4, over the threshold)", len(slow) > 0)
        by = (s.get("anomaly") or {}).get("details", {}).get("over_threshold_by_command") or {}
        c.detail["nfs_slow_procedures"] = by
        c.check("nfs bundle names the slow procedures (NFSv3/NFSv4 ...)",
                by and all(k.startswith(("NFSv3 ", "NFSv4 ")) for k in by), by)
        det = (s.get("anomaly") or {}).get("details", {})
        _named(c, "nfs_latency", det)
        shown = E.aodv2("show", b_nfs["path"]).stdout
        c.check("aodv2 show of the nfs bundle: protocol, procedures and export", "NFSv" in shown and "nfs" in shown
                and f"exports    127.0.0.1:{EXPORT}" in shown, shown[:600])
    if b_smb:
        names = b_smb["members"]
        by = (b_smb["summary"].get("anomaly") or {}).get("details", {}).get("over_threshold_by_command") or {}
        c.check("smb bundle: cifs/DebugData, no nfs files, SMB commands only",
                "cifs/DebugData" in names and not any(n.startswith("nfs/") for n in names)
                and by and not any(k.startswith("NFS") for k in by), (names, by))


def _hung(c: Checks) -> None:
    cur = cursor()
    run(["systemctl", "stop", "nfs-kernel-server"], timeout=120)
    p = subprocess.Popen(["stat", os.path.join(MOUNTS["4.2"], "hung-probe")],  # noqa: S603,S607
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    a = wait_journal(cur, "anomaly", 60, lambda e: e.get("AOD_ANOMALY") == "nfs_hung")
    c.times["stop_to_nfs_hung_s"] = round(time.monotonic() - t0, 1)
    c.check("NFS server stopped under a hard mount: an nfs_hung anomaly", a, c.times["stop_to_nfs_hung_s"])
    c.check("the stat is still in flight (hard mount)", p.poll() is None)
    b = _bundle(c, cur, "nfs_hung")
    if b:
        ev = b["events"]
        hung = ev[(ev["kind"] == 4) & (ev["tracer_id"] == TRACER_NFS)] if ev is not None else []
        c.check("nfs_hung bundle: NFS hung records and nfs/mountstats",
                len(hung) > 0 and "nfs/mountstats" in b["members"], (len(hung), b["members"]))
        _named(c, "nfs_hung", (b["summary"].get("anomaly") or {}).get("details", {}))
    server_up()
    try:
        p.wait(90)
    except subprocess.TimeoutExpired:
        p.kill()
    c.check("the stat completes once the server is back", p.returncode is not None, p.returncode)


def _named(c: Checks, what: str, details: Dict[str, Any]) -> None:
    got = {k: details.get(k) for k in ("servers", "shares", "unnamed")}
    c.detail[f"{what}_names"] = got
    c.check(f"{what} names its server and export", "127.0.0.1" in (got["servers"] or [])
            and f"127.0.0.1:{EXPORT}" in (got["shares"] or []), got)


def _low_rate(c: Checks) -> None:
    """One stat a second, each slowed by netem: 5 slow ones reach the share rule (50 %, >= 5), never the
    count rule (acceptable_count 1000)."""
    # a share horizon of its own: the rule starts afresh, without the last step's fast completions
    kind, _ = reload_config({**NFS_CONFIG, "latency": {"acceptable_count": 1000, "share_horizon_sec": 20.0}})
    c.check("config reloaded (count rule out of reach)", kind == "ok")
    cur = cursor()
    E.netem("400ms")
    stop = threading.Event()

    def slow_stats() -> None:
        while not stop.is_set():
            run(["stat", os.path.join(MOUNTS["3"], "load-0.bin")], timeout=30)
            stop.wait(1.0)

    t = threading.Thread(target=slow_stats, daemon=True)
    t0 = time.monotonic()
    t.start()
    try:
        a = wait_journal(cur, "anomaly", 90, lambda e: e.get("AOD_ANOMALY") == "nfs_latency")
        c.times["low_rate_nfs_latency_s"] = round(time.monotonic() - t0, 1)
    finally:
        stop.set()
        E.netem(None)
        t.join(60)
    c.check("one slow stat a second: an nfs_latency anomaly", a, c.times["low_rate_nfs_latency_s"])
    b = _bundle(c, cur, "nfs_latency") if a else None
    if b:
        det = (b["summary"].get("anomaly") or {}).get("details", {})
        c.detail["low_rate_details"] = {k: det.get(k) for k in ("trigger", "matches", "completions",
                                                                "observed_share", "over_threshold_by_command")}
        c.check("it came from the share rule, over the kernel's NFS counts", det.get("trigger") == "share"
                and (det.get("completions") or 0) >= (det.get("matches") or 1), c.detail["low_rate_details"])
        per = b["summary"].get("per_command") or {}
        getattr_row = per.get("NFSv3 GETATTR") or {}
        c.check("its summary has the NFS procedures' histograms (all traffic)",
                getattr_row.get("source") == "histogram", {k: v.get("source") for k, v in per.items()})
        _named(c, "low-rate nfs_latency", det)
    text = E.prom()
    c.check("aodv2.prom: NFS procedures counted in the kernel, by procedure",
            'aodv2_nfs_procedures_total{procedure="NFSv3 GETATTR"}' in text
            and "aodv2_nfs_procedure_latency_seconds_bucket" in text,
            [ln for ln in text.splitlines() if ln.startswith("aodv2_nfs_procedures_total")][:6])
    c.check("aodv2.prom: the slow NFS completions by export",
            f'aodv2_nfs_export_slow_latency_seconds_count{{export="127.0.0.1:{EXPORT}"}}' in text,
            [ln for ln in text.splitlines() if ln.startswith("aodv2_nfs_export_slow")][:4])
    reload_config(NFS_CONFIG)


def _unexported(c: Checks) -> None:
    cur = cursor()
    r = run(["exportfs", "-u", f"127.0.0.1:{EXPORT}"])
    c.check("exportfs -u under the mounts", r.returncode == 0, r.stderr.strip())
    for mnt in MOUNTS.values():
        run(["timeout", "20", "ls", "-la", mnt], timeout=30)
        run(["timeout", "20", "stat", os.path.join(mnt, "load-0.bin")], timeout=30)
    a = wait_journal(cur, "anomaly", 60, lambda e: e.get("AOD_ANOMALY") == "nfs_error")
    c.detail["nfs_error_status"] = a and a.get("AOD_STATUS")
    c.check("an nfs_error anomaly with its status named", a and a.get("AOD_STATUS"), c.detail["nfs_error_status"])
    run(["exportfs", "-ra"])


def s16_nfs(c: Checks) -> None:
    c.check("nfs-kernel-server up, exporting /srv/nfs to 127.0.0.1", server_up())
    m = mount_all()
    if not c.check("NFSv4.2 and NFSv3 mounts", all(v == "ok" for v in m.values()), m):
        return
    try:
        kind, _ = reload_config(NFS_CONFIG)
        c.check("config reloaded (tracers: [smb, nfs])", kind == "ok")
        r = run(["systemctl", "enable", "--now", TRACER], timeout=300)
        c.check(f"systemctl enable --now {TRACER}", r.returncode == 0, r.stderr.strip()[-300:])
        attached = wait_for(lambda: '"attached"' in _read("/run/aodv2/tracer-nfs.json"), 300)
        c.check("nfs tracer attached", attached, _read("/run/aodv2/tracer-nfs.json")[:300])
        st = run(["aodv2", "status"]).stdout
        line = next((ln for ln in st.splitlines() if "tracers:" in ln), "")
        c.check("aodv2 status lists both tracers", "nfs attached" in line and "smb attached" in line, line)
        if not attached:
            return
        _two_protocols(c)
        _low_rate(c)
        _hung(c)
        _unexported(c)
    finally:
        E.netem(None)
        server_up()
        umount_all()
        run(["systemctl", "disable", "--now", TRACER], timeout=120)
        reload_config({})


OPTIONAL_EVENTS = ("rpc_task_complete", "xprt_retransmit", "xprt_timer", "xprt_disconnect_auto",
                   "xprt_disconnect_force", "xprt_connect")  # aod/front_nfs.py OPTIONAL


def attach_check(c: Checks) -> None:
    """The matrix's NFS check (no server needed): with sunrpc loaded the nfs tracer attaches, and
    its optional events attached are exactly those available_events lists."""
    run(["modprobe", "nfsv4"])
    kind, _ = reload_config({"tracers": ["smb", "nfs"]})
    c.check("config reloaded (tracers: [smb, nfs])", kind == "ok")
    r = run(["systemctl", "start", TRACER], timeout=300)
    c.check(f"systemctl start {TRACER}", r.returncode == 0, r.stderr.strip()[-300:])
    ok = wait_for(lambda: '"attached"' in _read("/run/aodv2/tracer-nfs.json"), 300)
    state = _read("/run/aodv2/tracer-nfs.json")
    c.check("nfs tracer attached", ok, state[:300])
    events = set(_read("/sys/kernel/tracing/available_events").split())
    want = [t for t in OPTIONAL_EVENTS if f"sunrpc:{t}" in events]
    try:
        got = json.loads(state).get("health", {}).get("attached")
    except ValueError:
        got = None
    c.detail["nfs_optional_attached"] = got
    c.check("nfs tracer: optional sunrpc events attached = those available_events lists", got == want, (got, want))
    run(["systemctl", "stop", TRACER], timeout=120)
    reload_config({})


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


SCENARIOS: List[Scenario] = [("16_nfs", s16_nfs)]
