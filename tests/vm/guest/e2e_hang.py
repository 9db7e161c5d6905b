"""Issue 13 scenarios of the e2e VM run (same boot; e2e_run.py appends SCENARIOS and sets E).

11 hang:    a writer (unprivileged, write+fsync) on a share whose smbd processes are all frozen
            (SIGSTOP, found by /proc/PID/exe): a `hung` anomaly while the write is blocked, its
            bundle holds the writer's stack, DebugData with the outstanding request, the in-flight
            table and the connection state, written before any reconnect; after SIGCONT the write
            completes and each hung request has exactly one hung record.
12 health:  `connect` from a mount against a port where nothing listens (kernels with
            smb3_connect_err); `reconnect` names the server when smbd is killed under the mount;
            every health tracepoint the kernel offers is attached (aodv2 status --json).
13 reload:  reloads under steady traffic: the completions aodv2 counts equal the kernel's
            /proc/fs/cifs/Stats per-command counts (nothing duplicated, nothing lost), and a request
            in flight across a reload keeps its latency.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from guestkit import (
    Checks,
    Scenario,
    cursor,
    journal,
    log,
    mono_us,
    proc_state,
    reload_config,
    run,
    wait_for,
    wait_journal,
)

E: Any = None  # the e2e_run module (helpers, ARGS), set by e2e_run.main
SMB_USER = os.environ.get("SMB_USER", "aodtest")
SMB_CRED = os.environ.get("SMB_CRED", "/root/.aodtest.cred")
USER_MNT = "/mnt/smb-user"
EVENTS_DIR = "/sys/kernel/tracing/events/cifs"
HUNG_MS = 3000.0
KIND_HUNG = 4
HEALTH_TPS = ("smb3_credit_timeout", "smb3_insufficient_credits", "smb3_reconnect_with_invalid_credits",
              "smb3_connect_err", "smb3_connect_done", "smb3_key_expired", "smb3_kerberos_auth",
              "smb3_slow_rsp", "smb3_reconnect")


def smbd_pids() -> List[int]:
    """Every smbd process, by /proc/PID/exe (newer samba renames its children's comm)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.path.basename(os.readlink(f"/proc/{d}/exe")) == "smbd":
                    out.append(int(d))
            except OSError:
                pass
    return out


def signal_all(pids: List[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def user_mount() -> bool:
    """The share again at USER_MNT, owned by SMB_USER (the root mount is uid=0, mode 0755)."""
    os.makedirs(USER_MNT, exist_ok=True)
    if run(["findmnt", "-t", "cifs", USER_MNT]).returncode == 0:
        return True
    r = run(["mount", "-t", "cifs", "//127.0.0.1/share", USER_MNT, "-o",
             f"credentials={SMB_CRED},vers=3.1.1,uid={SMB_USER},gid={SMB_USER},forceuid,forcegid"], timeout=60)
    return r.returncode == 0


WRITER = r"""
import os, sys, time
p, stop = sys.argv[1], sys.argv[2]
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
buf = os.urandom(65536)
i = 0
while not os.path.exists(stop):
    os.pwrite(fd, buf, (i % 64) * 65536)
    os.fsync(fd)
    i += 1
    print(i, time.monotonic(), flush=True)
    time.sleep(0.1)
os.close(fd)
print("done", i, flush=True)
"""


class Writer:
    """write+fsync in a loop as SMB_USER (setpriv); progress lines read in a thread."""

    def __init__(self, path: str) -> None:
        self.stop_file = f"/tmp/aod-writer-stop-{os.getpid()}"
        if os.path.exists(self.stop_file):
            os.unlink(self.stop_file)
        self.proc = subprocess.Popen(  # noqa: S603,S607
            ["setpriv", f"--reuid={SMB_USER}", f"--regid={SMB_USER}", "--clear-groups",
             "python3", "-c", WRITER, path, self.stop_file],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.count = 0
        self.last = time.monotonic()
        self.done = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("done"):
                self.done = True
            else:
                self.count += 1
                self.last = time.monotonic()

    def stop(self, timeout: float = 60) -> Tuple[Optional[int], str]:
        with open(self.stop_file, "w"):
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
        err = self.proc.stderr.read()[-300:] if self.proc.stderr else ""
        os.unlink(self.stop_file)
        return rc, err


def member(data: Dict[str, bytes], word: str) -> Tuple[str, str]:
    """The first bundle member whose name contains `word`, as text ("", "") if none."""
    for name, blob in sorted(data.items(), key=lambda kv: not kv[0].endswith(".txt")):  # text first
        if word in name.lower():
            return name, blob.decode("utf-8", "replace")
    return "", ""


def hung_lines(first: int) -> List[Dict[str, Any]]:
    """anomalies.jsonl hung lines from line `first` on (captured: details.requests; refused: requests)."""
    return [x for x in E.history_lines()[first:] if x.get("type") == "hung"]


def request_keys(lines: List[Dict[str, Any]]) -> List[Tuple[Any, ...]]:
    keys = []
    for x in lines:
        for r in (x.get("details") or {}).get("requests") or x.get("requests") or []:
            keys.append((r.get("session_id"), r.get("mid"), r.get("command")))
    return keys


def s11_hang(c: Checks) -> None:
    kind, e = reload_config({"latency": {"hung_threshold_ms": HUNG_MS, "hung_group_ms": 100.0}})
    c.check(f"config reloaded (hung_threshold_ms {HUNG_MS:g})", kind == "ok", e and e.get("MESSAGE"))
    sock = E._stat("/run/aodv2/evidence.sock")
    c.check("evidence socket enabled, /run/aodv2/evidence.sock root-only",
            run(["systemctl", "is-enabled", "aodv2-evidence.socket"]).stdout.strip() == "enabled"
            and sock and sock.st_uid == 0 and sock.st_mode & 0o777 == 0o600, sock and oct(sock.st_mode))
    if not c.check("user mount of the share", user_mount()):
        return
    hung0 = E.prom_sum(E.prom(), "aodv2_hung_requests_total")
    w = Writer(os.path.join(USER_MNT, f"hang-{os.getpid()}.bin"))
    frozen: List[int] = []
    try:
        c.check("writer runs as an unprivileged user (5 fsyncs)", wait_for(lambda: w.count >= 5, 60, 0.2), w.count)
        cur, first_line = cursor(), len(E.history_lines())
        frozen = smbd_pids()
        t_freeze = mono_us()
        signal_all(frozen, signal.SIGSTOP)
        c.detail["smbd_pids"] = frozen
        c.check("every smbd frozen (state T)", frozen and wait_for(
            lambda: all(proc_state(p) == "T" for p in frozen), 10, 0.1), [proc_state(p) for p in frozen])
        alert = wait_journal(cur, "anomaly", HUNG_MS / 1000 + 60, lambda x: x.get("AOD_ANOMALY") == "hung", step=0.2)
        if not c.check("journal: hung anomaly", alert, alert and alert.get("MESSAGE")):
            return
        c.times["freeze_to_hung_alert_s"] = secs = round((E.entry_mono_us(alert) - t_freeze) / 1e6, 2)
        c.check(f"alert within the hung threshold + 5 s ({HUNG_MS / 1000 + 5:g} s)", secs <= HUNG_MS / 1000 + 5, secs)
        c.detail["alert"] = {k: v for k, v in alert.items() if k.startswith("AOD_") or k == "MESSAGE"}
        c.check("the write is still blocked at the alert", time.monotonic() - w.last >= HUNG_MS / 1000 and not w.done,
                round(time.monotonic() - w.last, 1))
        c.check("the alert names the share (\\\\127.0.0.1\\share)", "\\\\127.0.0.1\\share" in json.dumps(
            c.detail["alert"]).replace("\\\\", "\\"), c.detail["alert"].get("MESSAGE"))
        be = E.wait_bundle(cur, "hung", 120)
        if not c.check("hung bundle written while smbd is frozen", be, be and be.get("AOD_BUNDLE")):
            return
        c.times["freeze_to_bundle_s"] = round((E.entry_mono_us(be) - t_freeze) / 1e6, 2)
        c.check("smbd still frozen when the bundle was written",
                all(proc_state(p) == "T" for p in frozen), [proc_state(p) for p in frozen])
        rec = [x for x in journal(cur, mid="anomaly") if x.get("AOD_ANOMALY") == "reconnect"]
        c.check("no reconnect before the bundle", not rec, rec and rec[0].get("MESSAGE"))
        b = E.bundle_info(be["AOD_BUNDLE"])
        data, wpid = b["data"], w.proc.pid
        c.detail["members"] = sorted(data)
        name, stacks = member(data, "stack")
        kids = run(["pgrep", "-P", str(wpid)]).stdout.split()  # setpriv execs python: same pid
        pids = {str(wpid), *kids}
        blocks = [blk for blk in re.split(r"\n(?=\S)", stacks) if any(re.search(rf"\b{p}\b", blk[:200]) for p in pids)]
        c.check(f"{name or 'stacks'}: the writer's kernel stack with cifs frames",
                any(re.search(r"cifs|smb2|smb3", blk) for blk in blocks), blocks[:1] or stacks[:300])
        c.check(f"{name or 'stacks'}: a cifsd thread", re.search(r"^\d+ \d+ cifsd ", stacks, re.M), stacks[:300])
        _, dbg = member(data, "debugdata")
        pend = re.findall(r"State: \d+ com: (\d+) pid: (\d+) cbdata: \S+ mid (\d+)", dbg)
        c.detail["debugdata_pending"] = pend[:10]
        c.check("DebugData shows the writer's outstanding request (MIDs: State .. com .. pid <writer>)",
                any(p in pids for _, p, _ in pend), pend[:10] or dbg[-400:])
        name, inf = member(data, "inflight")
        rows = [ln for ln in inf.splitlines() if re.search(r"\bhung\b.*\b(WRITE|FLUSH)\b", ln)
                and any(re.search(rf"\s{p}\s", ln) for p in pids)]
        c.check(f"{name or 'inflight'}: the writer's request in the in-flight table, map hung, share named",
                rows and "\\127.0.0.1\\share" in rows[0], rows[:2] or inf[:400])
        name, conn = member(data, "connection")
        c.check(f"{name or 'connections'}: TCP state of the SMB connection (:445, rtt)",
                ":445" in conn and "rtt" in conn, conn[:300])
        acts = {a["name"]: a for a in b["summary"].get("actions", [])}
        c.detail["actions"] = {k: (a.get("status"), a.get("error", "")[:80]) for k, a in acts.items()}
        guarded = b["summary"].get("guarded_mounts")
        c.detail["guarded_mounts"] = guarded
        c.check("no action touched the hung mounts (smbinfo skipped, guarded_mounts names them)",
                acts.get("smbinfo", {}).get("status") in (None, "skipped") and guarded
                and USER_MNT in json.dumps(guarded), [acts.get("smbinfo"), guarded])
        started = {k: a.get("started_s") for k, a in acts.items() if k in ("cifs_debug", "task_stacks")}
        c.times["debugdata_started_s"] = started.get("cifs_debug")
        c.check("DebugData and the stacks started within 1 s of the capture", started and all(
            v is not None and v < 1.0 for v in started.values()), started)
    finally:
        signal_all(frozen, signal.SIGCONT)
    t = time.monotonic()
    n = w.count
    resumed = wait_for(lambda: w.count > n, 90, 0.2)
    c.times["sigcont_to_write_done_s"] = round(time.monotonic() - t, 1)
    rc, err = w.stop()
    c.check("after SIGCONT the write completes", resumed and rc == 0, (rc, err))
    c.check("the mount works after SIGCONT", run(["ls", USER_MNT], timeout=60).returncode == 0)
    time.sleep(2 * HUNG_MS / 1000)  # late hung records (second scans must not re-report)
    lines = hung_lines(first_line)
    keys = request_keys(lines)
    c.detail["hung_records"] = {"lines": len(lines), "requests": keys[:20]}
    c.check("each hung request has exactly one hung record (anomalies.jsonl, captured or not)",
            keys and len(keys) == len(set(keys)), keys[:20])
    hung1 = E.prom_sum(E.prom(), "aodv2_hung_requests_total")
    c.check("aodv2_hung_requests_total grew by the records on file", hung1 - hung0 == len(keys),
            [hung0, hung1, len(keys)])
    run(["umount", USER_MNT], timeout=60)


def status_json() -> Dict[str, Any]:
    try:
        return json.loads(E.aodv2("status", "--json").stdout or "{}")
    except ValueError:
        return {}


def s12_health(c: Checks) -> None:
    kind, _ = reload_config({})
    c.check("config reloaded", kind == "ok")
    offered = sorted(t for t in HEALTH_TPS if os.path.isdir(os.path.join(EVENTS_DIR, t)))
    c.detail["kernel_offers"] = offered

    def settled() -> Optional[Dict[str, Any]]:
        h = ((status_json().get("tracer_detail") or {}).get("smb") or {}).get("health") or {}
        done = h.get("offered") and sorted(h.get("attached") or []) == sorted(h["offered"])
        return h if done and set(offered) - {"smb3_reconnect"} <= set(h["offered"]) else None

    # polled for up to 20 s: one CI run read a status right after the reload that failed a check below
    t = time.monotonic()
    health = wait_for(settled, 20, 1.0) or ((status_json().get("tracer_detail") or {}).get("smb") or {}).get(
        "health") or {}
    c.times["status_health_s"] = round(time.monotonic() - t, 1)
    c.detail["status_health"] = health
    c.check("aodv2 status: the tracer offers every health tracepoint the kernel has",
            offered and set(offered) - {"smb3_reconnect"} <= set(health.get("offered") or []), health)
    c.check("aodv2 status: every offered health tracepoint is attached",
            health.get("offered") and sorted(health.get("attached") or []) == sorted(health["offered"]), health)
    if "smb3_connect_err" in offered:
        cur = cursor()
        os.makedirs("/mnt/smb-noport", exist_ok=True)
        r = run(["mount", "-t", "cifs", "//127.0.0.1/share", "/mnt/smb-noport", "-o",
                 f"credentials={SMB_CRED},vers=3.1.1,port=4455"], timeout=90)
        c.check("mount against a port where nothing listens fails", r.returncode != 0, r.stderr[-200:])
        a = wait_journal(cur, "anomaly", 30, lambda x: x.get("AOD_ANOMALY") == "connect", step=0.5)
        c.check("journal: connect anomaly", a, a and a.get("MESSAGE"))
        c.check("connect names the server (127.0.0.1)", a and "127.0.0.1" in json.dumps(a), a and a.get("MESSAGE"))
    else:
        c.detail["connect"] = "smb3_connect_err absent on this kernel: tested on the host only"
    cur = cursor()
    run(["systemctl", "kill", "-s", "SIGKILL", "smbd.service"])
    time.sleep(1)
    run(["ls", E.ARGS.mount], timeout=90)  # the client notices the closed connection
    run(["systemctl", "restart", "smbd.service"], timeout=90)
    a = wait_journal(cur, "anomaly", 90, lambda x: x.get("AOD_ANOMALY") == "reconnect", step=0.5)
    c.check("journal: reconnect anomaly after smbd was killed", a, a and a.get("MESSAGE"))
    c.check("reconnect names the server (127.0.0.1)", a and "127.0.0.1" in json.dumps(a), a and a.get("MESSAGE"))
    back = wait_for(lambda: run(["ls", E.ARGS.mount], timeout=30).returncode == 0, 120, 2.0)
    c.check("the mount works after smbd is back", back)


ECHO = 13


def aging_detail() -> Dict[str, Any]:
    """The smb tracer's aging counters (aodv2 status --json: tracer_detail.smb.aging)."""
    return ((status_json().get("tracer_detail") or {}).get("smb") or {}).get("aging") or {}


def kernel_cmd_counts() -> Dict[int, int]:
    """Per-command completed requests from /proc/fs/cifs/Stats (CONFIG_CIFS_STATS2 table), all servers."""
    out: Dict[int, int] = {}
    with open("/proc/fs/cifs/Stats") as f:
        text = f.read()
    for m in re.finditer(r"^\s*(\d+)\s+(\d+)\s+\d+\s+\d+\s+\d+\s*$", text, re.M):
        out[int(m.group(1))] = out.get(int(m.group(1)), 0) + int(m.group(2))
    return out


def aod_cmd_counts() -> Dict[str, float]:
    text = E.prom()
    out: Dict[str, float] = {}
    for m in re.finditer(r'^aodv2_smb_commands_total\{command="([A-Z_0-9]+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def settled_counts() -> Tuple[Dict[int, int], Dict[str, float]]:
    """Both counters once the textfile caught up (two equal reads 1.5 s apart)."""
    last: Any = None
    for _ in range(20):
        now = (kernel_cmd_counts(), aod_cmd_counts())
        if now == last:
            return now
        last = now
        time.sleep(1.5)
    return last


def s13_reload_exact(c: Checks) -> None:
    kind, _ = reload_config({})
    c.check("config reloaded", kind == "ok")
    if not c.check("/proc/fs/cifs/Stats has the per-command table (CONFIG_CIFS_STATS2)", kernel_cmd_counts()):
        return
    from aod.smb2 import command_name  # installed package
    k0, a0 = settled_counts()
    unpaired0 = aging_detail().get("unpaired")
    load = E.Load(4, "reload13").prepare().start()
    slow: Dict[str, Any] = {}

    def one_slow() -> None:  # a request in flight across the reload
        p = os.path.join(E.ARGS.mount, f"span-{os.getpid()}")
        open(p, "w").close()
        time.sleep(1.5)
        t = time.monotonic()
        os.stat(p)
        slow["wall_s"] = time.monotonic() - t
        os.unlink(p)

    tracer0 = E.main_pid(E.TRACER)
    try:
        for i, ms in enumerate((200.0, 250.0, 300.0)):
            cur = cursor()
            if i == 1:
                E.netem("600ms")
                th = threading.Thread(target=one_slow)
                th.start()
                time.sleep(1.8)
            kind, _ = reload_config({"latency": {"default_threshold_ms": ms}})
            c.check(f"reload {i + 1} under traffic (threshold {ms:g} ms)", kind == "ok")
            te = wait_for(lambda mark=cur: next((x for x in journal(mark, (E.TRACER,))
                                                 if "reloaded" in x.get("MESSAGE", "")), None), 60, 0.5)
            c.check(f"reload {i + 1} reached the tracer", te, te and te.get("MESSAGE"))
            if i == 1:
                th.join(60)
                E.netem(None)
            time.sleep(2)
    finally:
        E.netem(None)
        stats = load.stop()
    c.detail["load"] = stats
    c.check("tracer kept its PID (no restart)", E.main_pid(E.TRACER) == tracer0)
    k1, a1 = settled_counts()
    # ECHO: its completion is never traced (smb2_echo_callback), so the tracer does not track it
    kd = {command_name(k): v - k0.get(k, 0) for k, v in k1.items() if v - k0.get(k, 0) and k != ECHO}
    ad = {k: v - a0.get(k, 0) for k, v in a1.items() if v - a0.get(k, 0)}
    c.detail["completions"] = {"kernel": kd, "aodv2": ad}
    c.check("aodv2 counted exactly the kernel's completions per command across 3 reloads",
            kd and kd == {k: int(v) for k, v in ad.items()}, {"kernel": kd, "aodv2": ad})
    unpaired1 = aging_detail().get("unpaired")
    c.check("no completion lost its in-flight entry across the reloads (tracer's unpaired count unchanged)",
            unpaired0 is not None and unpaired1 == unpaired0, [unpaired0, unpaired1])
    c.check("the request spanning reload 2 took its netem time (>= 1 s)", slow.get("wall_s", 0) >= 1.0, slow)
    c.times["span_request_wall_s"] = round(slow.get("wall_s", 0), 2)
    log(f"request across the reload took {slow.get('wall_s')} s")


SCENARIOS: List[Scenario] = [("11_hang", s11_hang), ("12_health", s12_health), ("13_reload_exact", s13_reload_exact)]
