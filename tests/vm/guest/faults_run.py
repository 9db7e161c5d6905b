#!/usr/bin/python3
"""aodv2 faults and security on a real systemd host: the guest-side driver of scenarios/faults.sh.

Drives the installed .deb from the outside (systemctl, journalctl, signals, mounts) to prove
that collect (quick actions, bundle writes) fails soft and that the daemon's files, ring,
signals and control socket are closed to an unprivileged user:

    faults_run.py --write-config        (before the first start: the quiet test config)
    faults_run.py --report /share/faults-report.json [--only 1,2,2b,3]

  security  user `aodtest` cannot list/read /var/log/aodv2, open the pinned ring (bpf or open),
            signal the core, reach /run/aodv2/control.sock, or use `aodv2 status|collect`;
            modes 0700/0600; root runs the same probes as a positive control.
  hang      smbd frozen (SIGSTOP) under the CIFS mount: a manual capture kills smbinfo at
            capture.action_timeout_sec, the other actions succeed, the core survives.
  stopped   smbd stopped (connection closed, cifs reconnecting): smbinfo fails or is killed,
            the rest of the bundle is written; the mount recovers once smbd is back.
  disk      /var/log/aodv2 on a 4 MiB ext4 loop: full -> capture_failed (ENOSPC, path), freed ->
            bundle; read-only -> capture_failed (EROFS); rw -> bundle; core never restarts.

Needs: root, aodv2 installed and active with the config faults.sh writes, samba serving the
mount at --mount, user aodtest. Writes {part: {"pass", "detail": {"checks", ...}, "seconds", times}}
(the e2e report's shape: tests/vm/e2e_summary.py prints either)
and exits 0 iff every part passed. The shared helpers (journal, config, checks, the loop) are in guestkit.py.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import stat
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import faults_harden
import guestkit
from guestkit import (
    CORE,
    MID,
    OUT,
    PIN_DIR,
    Checks,
    Scenario,
    active,
    cursor,
    journal,
    log,
    main_pid,
    proc_state,
    prop,
    read_bundle,
    reload_config,
    run,
    summary_of,
    wait_for,
    wait_journal,
    write_config,
)

RING = PIN_DIR + "/events"
RUN_DIR = "/run/aodv2"
SOCK = RUN_DIR + "/control.sock"
USER = "aodtest"
HERE = os.path.dirname(os.path.abspath(__file__))
# Quiet: nothing but SIGUSR1 captures (no latency, hung, error, reconnect or health anomalies from the
# freeze: the hung threshold defaults to the emergency one, 600 s).
BASE: Dict[str, Any] = {
    "watch_interval_sec": 1.0,
    "latency": {"mode": "excludeonly", "default_threshold_ms": 600000.0, "exclude": ["CHANGE_NOTIFY"],
                "acceptable_count": 1000000, "emergency_threshold_ms": 600000.0},
    "errors": [],
    "reconnect": {"enabled": False},
    "health": {"credits": {"enabled": False}, "connect": {"enabled": False}, "auth": {"enabled": False}},
    "capture": {"cooldown_sec": 0.0, "max_per_hour": 3600, "concurrency": 4,
                "action_timeout_sec": 15.0, "lookback_sec": 30.0},
}
HANG_TIMEOUT = 5.0  # capture.action_timeout_sec for the hang part
HANG_MARGIN = 20.0  # the capture must finish within HANG_TIMEOUT + this (TCG, loaded host)
LOOP_MB = 4

ARGS: argparse.Namespace


def as_user(argv: List[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--"] + argv, timeout)


def core_state() -> Dict[str, Any]:
    return {"active": active(), "pid": prop("MainPID"), "restarts": prop("NRestarts")}


def manual(e: Dict[str, Any]) -> bool:
    return e.get("AOD_ANOMALY") == "manual"


def usr1_capture(timeout: float = 90) -> Tuple[Optional[Dict[str, Any]], float]:
    """`systemctl kill -s USR1 aodv2`; the manual capture's bundle or capture_failed record, seconds."""
    mark = cursor()
    t = time.monotonic()
    r = run(["systemctl", "kill", "-s", "USR1", CORE])
    if r.returncode:
        log(f"systemctl kill -s USR1: {r.stderr.strip()}")
    e = wait_journal(mark, ("bundle", "capture_failed"), timeout,
                     lambda e: manual(e) and (bool(e.get("AOD_BUNDLE")) or "failed" in e.get("MESSAGE", "")))
    return e, round(time.monotonic() - t, 1)


def mode_of(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"missing ({e.strerror})"
    return f"{stat.S_IMODE(st.st_mode):04o} uid={st.st_uid}"


# ---------------------------------------------------------------- 1: security

def denied(r: Dict[str, Any], key: str, allowed: Tuple[str, ...] = ("EACCES", "EPERM")) -> bool:
    p = r.get(key) or {}
    return p.get("ok") is False and p.get("errno") in allowed


def probes(user: bool, bundle: str, kill: int = 0) -> Dict[str, Any]:
    argv = ["/usr/bin/python3", os.path.join(HERE, "faults_user.py"), "--out", OUT, "--bundle", bundle,
            "--ring", RING, "--sock", SOCK] + (["--kill", str(kill)] if kill else [])
    r = as_user(argv) if user else run(argv)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"rc={r.returncode} {r.stdout[-300:]} {r.stderr[-300:]}"}


def s_security(c: Checks) -> None:
    pw = run(["getent", "passwd", USER]).stdout.strip()
    c.check(f"user {USER} exists and is not root", pw and pw.split(":")[2] != "0", pw)
    ev, secs = usr1_capture()
    c.times["usr1_to_bundle_s"] = secs
    if not c.check("root: SIGUSR1 wrote a bundle", ev and ev.get("AOD_BUNDLE"), ev and ev.get("MESSAGE")) or not ev:
        return
    bundle = ev["AOD_BUNDLE"]
    c.detail["bundle"] = bundle
    modes = {p: mode_of(p) for p in (OUT, bundle, os.path.join(OUT, "anomalies.jsonl"), PIN_DIR, RING, RUN_DIR, SOCK)}
    c.detail["modes"] = modes
    c.check(f"{OUT} is 0700 root", modes[OUT] == "0700 uid=0", modes[OUT])
    c.check("bundle file is 0600 root", modes[bundle] == "0600 uid=0", modes[bundle])
    c.check(f"{PIN_DIR} is 0700 root", modes[PIN_DIR] == "0700 uid=0", modes[PIN_DIR])
    c.check(f"{RUN_DIR} is 0700 root", modes[RUN_DIR] == "0700 uid=0", modes[RUN_DIR])
    c.check("control socket exists, a socket, 0600 root",
            os.path.exists(SOCK) and stat.S_ISSOCK(os.stat(SOCK).st_mode) and modes[SOCK] == "0600 uid=0",
            modes[SOCK])
    c.detail["unprivileged_bpf_disabled"] = open("/proc/sys/kernel/unprivileged_bpf_disabled").read().strip()

    # positive control: the same probes as root succeed (so a "denied" below means the permission)
    root = probes(False, bundle)
    c.detail["root_probes"] = root
    c.check("root control: list, read bundle, BPF_OBJ_GET the ring all succeed",
            all((root.get(k) or {}).get("ok") for k in ("list_out_dir", "read_bundle", "bpf_obj_get_ring")), root)

    pid = main_pid()
    state0 = core_state()
    n0 = len(glob.glob(os.path.join(OUT, "aod_*.tar.zst")))
    mark = cursor()
    u = probes(True, bundle, kill=pid)
    c.detail["user_probes"] = u
    c.check(f"probes ran as {USER} with no capabilities",
            u.get("uid") not in (None, 0) and u.get("cap_eff") == "0000000000000000",
            {k: u.get(k) for k in ("uid", "cap_eff")})
    c.check(f"user cannot list {OUT} (EACCES)", denied(u, "list_out_dir", ("EACCES",)), u.get("list_out_dir"))
    c.check("user cannot read the bundle by its exact path (EACCES)", denied(u, "read_bundle", ("EACCES",)),
            u.get("read_bundle"))
    cat = as_user(["cat", bundle])
    c.check("user `cat BUNDLE` fails with Permission denied", cat.returncode != 0 and "Permission denied" in cat.stderr,
            cat.stderr.strip())
    ls = as_user(["ls", OUT])
    c.check(f"user `ls {OUT}` fails with Permission denied", ls.returncode != 0 and "Permission denied" in ls.stderr,
            ls.stderr.strip())
    c.check("user cannot read anomalies.jsonl (EACCES)", denied(u, "read_history", ("EACCES",)), u.get("read_history"))
    c.check("user cannot bpf(BPF_OBJ_GET) the pinned ring (EACCES/EPERM)", denied(u, "bpf_obj_get_ring"),
            u.get("bpf_obj_get_ring"))
    c.check("user cannot open the pinned ring as a file (EACCES)", denied(u, "open_ring_file", ("EACCES",)),
            u.get("open_ring_file"))
    c.check(f"user cannot list {PIN_DIR} (EACCES)", denied(u, "list_pin_dir", ("EACCES",)), u.get("list_pin_dir"))
    c.check("user cannot connect() to the control socket (EACCES/EPERM)", denied(u, "connect_control"),
            u.get("connect_control"))
    c.check("user cannot signal the core: kill -USR1 MainPID fails with EPERM", denied(u, "kill_usr1", ("EPERM",)),
            u.get("kill_usr1"))
    sh = as_user(["kill", "-USR1", str(pid)])
    c.check("user `kill -USR1 MainPID` fails (Operation not permitted)",
            sh.returncode != 0 and "not permitted" in sh.stderr, sh.stderr.strip())
    time.sleep(8)  # a capture (if one had been triggered) takes ~3-10 s here
    recs = [e for e in journal(mark) if e.get("MESSAGE_ID") in (MID["bundle"], MID["capture_failed"])]
    n1 = len(glob.glob(os.path.join(OUT, "aod_*.tar.zst")))
    c.check("no capture after the user's signals (no bundle, no record)", n1 == n0 and not recs,
            f"{n0} -> {n1} bundles, {len(recs)} records")
    state1 = core_state()
    c.check("core unaffected (same pid, active, no restart)", state1 == state0 and state1["active"], [state0, state1])

    st = run(["aodv2", "status"], timeout=60)
    c.check("root control: `aodv2 status` exits 0", st.returncode == 0,
            f"rc={st.returncode}: {(st.stdout + st.stderr).strip()[-200:]}")
    for verb in ("status", "collect"):
        r = as_user(["aodv2", verb], timeout=60)
        out = (r.stdout + r.stderr).strip()
        c.detail[f"user_aodv2_{verb}"] = {"rc": r.returncode, "output": out[-300:]}
        c.check(f"user `aodv2 {verb}` exits 77 with a 'needs root' message",
                r.returncode == 77 and "needs root" in out and "Traceback" not in out,
                f"rc={r.returncode}: {out[-200:]}")


# ---------------------------------------------------------------- 2: a quick action hangs

def smbd_pids() -> List[int]:
    cg = prop("ControlGroup", "smbd.service")
    if not cg:  # unit not running
        return []
    try:
        with open(f"/sys/fs/cgroup{cg}/cgroup.procs") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def no_smbinfo() -> bool:
    return not run(["pgrep", "-x", "smbinfo"]).stdout.strip()


def mount_works(tag: str, timeout: float) -> Tuple[bool, str]:
    p = os.path.join(ARGS.mount, f"faults-{tag}-{os.getpid()}.txt")
    code = ("import sys\np=sys.argv[1]\nopen(p,'w').write('aodv2 faults\\n')\n"
            "assert open(p).read()=='aodv2 faults\\n'\nimport os\nos.unlink(p)\n")
    r = run(["python3", "-c", code, p], timeout=timeout)
    return r.returncode == 0, (r.stderr.strip()[-200:] or "ok")


def capture_actions(c: Checks, what: str, min_s: float) -> Optional[Dict[str, Dict[str, Any]]]:
    """SIGUSR1 with smbd down: a bundle, its AOD_DURATION in [min_s, HANG_TIMEOUT + HANG_MARGIN];
    summary.json's actions by name (None: no bundle)."""
    ev, secs = usr1_capture(timeout=HANG_TIMEOUT + 90)
    c.times["usr1_to_record_s"] = secs
    if not c.check(f"a bundle is written {what}", ev and ev.get("AOD_BUNDLE"), ev and ev.get("MESSAGE")) or not ev:
        return None
    dur = float(ev.get("AOD_DURATION") or 0)
    c.times["capture_duration_s"] = dur
    c.check(f"capture finished within action_timeout_sec + {HANG_MARGIN:g} s (AOD_DURATION)",
            min_s <= dur <= HANG_TIMEOUT + HANG_MARGIN, dur)
    acts = {a["name"]: a for a in summary_of(read_bundle(ev["AOD_BUNDLE"])[1]).get("actions", [])}
    c.detail["actions"] = {k: {"status": a.get("status"), "duration_s": a.get("duration_s"),
                               "error": (a.get("error") or "")[:200]} for k, a in acts.items()}
    return acts


def others_ok(c: Checks, acts: Dict[str, Dict[str, Any]]) -> None:
    """The actions that do not touch the server succeeded."""
    for a in ("cifs_stats", "mounts", "kernel_log", "journal", "cifs_debug"):
        c.check(f"summary.json: {a} ok", acts.get(a, {}).get("status") == "ok", c.detail["actions"].get(a))


def nothing_left(c: Checks, state0: Dict[str, Any]) -> None:
    c.check("no smbinfo process left behind", wait_for(no_smbinfo, 10), run(["pgrep", "-ax", "smbinfo"]).stdout)
    state1 = core_state()
    c.check("core still active, same pid, no restart", state1 == state0 and state1["active"], [state0, state1])


def s_hang(c: Checks) -> None:
    kind, _ = reload_config({"capture": {"action_timeout_sec": HANG_TIMEOUT}})
    c.check(f"systemctl reload: capture.action_timeout_sec = {HANG_TIMEOUT:g}", kind == "ok", kind)
    ok, why = mount_works("before", 60)
    c.check("mount works before the freeze", ok, why)
    state0 = core_state()
    pids = smbd_pids()
    c.detail["smbd_pids"] = pids
    run(["systemctl", "kill", "-s", "SIGSTOP", "smbd.service"])
    t_freeze = time.monotonic()
    try:
        stopped = wait_for(lambda: pids and all(proc_state(p) == "T" for p in smbd_pids()), 10, 0.2)
        c.check("every smbd process is stopped (SIGSTOP, TCP connection kept)", stopped,
                {p: proc_state(p) for p in smbd_pids()})
        # the mount really hangs: a lookup of a new name needs the server
        probe = subprocess.Popen(["stat", os.path.join(ARGS.mount, f"faults-probe-{os.getpid()}")],  # noqa: S603,S607
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)
        hung = probe.poll() is None
        probe.kill()
        c.check("a lookup on the mount hangs while smbd is stopped", hung, f"stat rc={probe.poll()}")
        mark = cursor()
        acts = capture_actions(c, "despite the hung server", HANG_TIMEOUT)
        if acts is None:
            return
        sm = acts.get("smbinfo", {})
        c.check("summary.json: smbinfo timed out and was killed",
                sm.get("status") == "timeout" and f"timed out after {HANG_TIMEOUT:g}s (killed)" in sm.get("error", ""),
                c.detail["actions"].get("smbinfo"))
        c.check("smbinfo ran about action_timeout_sec", HANG_TIMEOUT <= float(sm.get("duration_s") or 0)
                <= HANG_TIMEOUT + 5, sm.get("duration_s"))
        others_ok(c, acts)
        af = [e for e in journal(mark, mid="action_failed") if e.get("AOD_ACTION") == "smbinfo"]
        c.check("journal: action_failed for smbinfo (AOD_STATUS=timeout)",
                af and af[0].get("AOD_STATUS") == "timeout", af and af[0].get("MESSAGE"))
        nothing_left(c, state0)
    finally:
        run(["systemctl", "kill", "-s", "SIGCONT", "smbd.service"])
        c.times["frozen_s"] = round(time.monotonic() - t_freeze, 1)
        log(f"smbd continued after {c.times['frozen_s']} s")
    t = time.monotonic()
    ok, why = mount_works("after", 120)
    c.times["mount_recovered_s"] = round(time.monotonic() - t, 1)
    c.check("after SIGCONT the mount works again (write, read, delete)", ok, why)
    c.check("core still active after the thaw", active())
    kind, _ = reload_config({})
    c.check("config restored (action_timeout_sec 15)", kind == "ok", kind)


def smbd_listening() -> bool:
    return bool(run(["ss", "-Hltn", "sport = :445"]).stdout.strip())


def s_stopped(c: Checks) -> None:
    """The server goes away (connection closed, cifs reconnecting): smbinfo fails or is killed."""
    kind, _ = reload_config({"capture": {"action_timeout_sec": HANG_TIMEOUT}})
    c.check(f"systemctl reload: capture.action_timeout_sec = {HANG_TIMEOUT:g}", kind == "ok", kind)
    state0 = core_state()
    r = run(["systemctl", "stop", "smbd.service"], timeout=120)
    t_stop = time.monotonic()
    try:
        c.check("systemctl stop smbd: no smbd left, nothing on :445",
                r.returncode == 0 and not smbd_pids() and not smbd_listening(), r.stderr.strip())
        acts = capture_actions(c, "with the server down", 0.0)
        if acts is None:
            return
        sm = acts.get("smbinfo", {})
        c.check("summary.json: smbinfo failed or timed out, with the reason",
                sm.get("status") in ("failed", "timeout") and "/mnt/smb" in sm.get("error", ""),
                c.detail["actions"].get("smbinfo"))
        others_ok(c, acts)
        nothing_left(c, state0)
    finally:
        run(["systemctl", "start", "smbd.service"], timeout=120)
        c.times["server_down_s"] = round(time.monotonic() - t_stop, 1)
    c.check("smbd listening again", wait_for(smbd_listening, 60), None)
    t = time.monotonic()
    ok = wait_for(lambda: mount_works("restarted", 30)[0], 180, 2.0)
    c.times["mount_recovered_s"] = round(time.monotonic() - t, 1)
    c.check("the mount works again after smbd restarts (cifs reconnected)", ok, c.times["mount_recovered_s"])
    kind, _ = reload_config({})
    c.check("config restored (action_timeout_sec 15)", kind == "ok", kind)


# ---------------------------------------------------------------- 3: full and read-only disk

def start_core(c: Checks, what: str) -> None:
    mark = cursor()
    r = run(["systemctl", "start", CORE], timeout=180)
    c.check(f"{what}: systemctl start aodv2", r.returncode == 0, r.stderr.strip()[-200:])
    ready = wait_journal(mark, "ready", 90)
    c.check(f"{what}: core ready", ready and active(), ready and ready.get("MESSAGE"))


def slug(what: str) -> str:
    return what.replace(" ", "_").replace("-", "_")


def expect_failure(c: Checks, what: str, reason: str) -> None:
    state0 = core_state()
    ev, secs = usr1_capture()
    c.times[f"{slug(what)}_usr1_to_record_s"] = secs
    msg = (ev or {}).get("MESSAGE", "")
    c.detail[f"{slug(what)}_message"] = msg
    c.detail[f"{slug(what)}_path"] = (ev or {}).get("AOD_PATH")
    c.check(f"{what}: journal capture_failed names the path and '{reason}'",
            ev and ev.get("MESSAGE_ID") == MID["capture_failed"] and OUT in msg and reason in msg
            and str(ev.get("AOD_PATH", "")).startswith(OUT) and "Traceback" not in msg, msg)
    time.sleep(2)
    state1 = core_state()
    c.check(f"{what}: core still active, same pid, NRestarts unchanged", state1 == state0 and state1["active"],
            [state0, state1])
    left = [n for n in os.listdir(OUT) if n.startswith(".stage-") or n.endswith(".partial")]
    c.check(f"{what}: no stage dir or partial left behind", not left, left)


def expect_bundle(c: Checks, what: str) -> None:
    ev, secs = usr1_capture()
    c.times[f"{slug(what)}_usr1_to_bundle_s"] = secs
    p = (ev or {}).get("AOD_BUNDLE", "")
    c.check(f"{what}: capture succeeds (bundle on the small disk)",
            p and p.startswith(OUT + "/") and os.path.getsize(p) > 0, ev and ev.get("MESSAGE"))


def fill(c: Checks) -> str:
    """Fill OUT with filler files until df says 0 bytes free (a sync can release reserved blocks)."""
    df = "?"
    for i in range(4):
        r = run(["dd", "if=/dev/zero", f"of={OUT}/filler{i}", "bs=64k" if i == 0 else "bs=1k"], timeout=120)
        run(["sync"])
        df = run(["df", "--output=avail", "-B1", OUT]).stdout.split()[-1]
        c.detail.setdefault("fill", []).append({"dd": r.stderr.strip().splitlines()[:1], "avail": df})
        if df == "0":
            break
    return df


def s_disk(c: Checks) -> None:
    img = "/var/tmp/aodv2-faults.img"
    before = sorted(os.listdir(OUT))
    restarts0 = prop("NRestarts")
    run(["systemctl", "stop", CORE], timeout=120)
    mounted = False
    try:
        r = run(["truncate", "-s", f"{LOOP_MB}M", img])
        r = run(["mkfs.ext4", "-q", "-F", "-m", "0", img]) if r.returncode == 0 else r
        r = run(["mount", "-o", "loop", img, OUT]) if r.returncode == 0 else r
        mounted = r.returncode == 0
        if not c.check(f"{LOOP_MB} MiB ext4 loop-mounted at {OUT}", mounted, r.stderr.strip()):
            return
        os.chmod(OUT, 0o700)
        start_core(c, "on the small disk")
        c.check(f"{OUT} is a mount point", run(["mountpoint", "-q", OUT]).returncode == 0)
        df = fill(c)
        c.check("filled: dd stopped with 'No space left on device', 0 bytes free", df == "0", f"avail {df}")
        expect_failure(c, "full", "No space left on device")
        for f in glob.glob(f"{OUT}/filler*"):
            os.unlink(f)
        run(["sync"])
        expect_bundle(c, "freed")
        r = run(["mount", "-o", "remount,ro", OUT])
        c.check("remounted read-only", r.returncode == 0, r.stderr.strip())
        expect_failure(c, "read-only", "Read-only file system")
        r = run(["mount", "-o", "remount,rw", OUT])
        c.check("remounted read-write", r.returncode == 0, r.stderr.strip())
        expect_bundle(c, "rw again")
        c.check("NRestarts unchanged through the disk faults", prop("NRestarts") == restarts0,
                f"{restarts0} -> {prop('NRestarts')}")
    finally:
        run(["systemctl", "stop", CORE], timeout=120)
        if mounted:
            r = run(["umount", OUT])
            c.check(f"loop fs unmounted from {OUT}", r.returncode == 0, r.stderr.strip())
        if os.path.exists(img):
            os.unlink(img)
    c.check(f"{OUT} restored: the original dir, 0700 root, its bundles back",
            run(["mountpoint", "-q", OUT]).returncode != 0 and mode_of(OUT) == "0700 uid=0"
            and sorted(os.listdir(OUT)) == before, f"{mode_of(OUT)}; {len(before)} entries before")
    start_core(c, "restored")


PARTS: List[Scenario] = [
    ("1_security", s_security),
    ("2_action_hangs", s_hang),
    ("2b_server_stopped", s_stopped),
    ("3_disk_full_readonly", s_disk),
    *faults_harden.PARTS,
]


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", default="/share/faults-report.json")
    ap.add_argument("--mount", default="/mnt/smb")
    ap.add_argument("--only", default="", help="comma-separated part numbers, e.g. 2,3")
    ap.add_argument("--write-config", action="store_true", help="only write the quiet test config and exit")
    ARGS = ap.parse_args()
    guestkit.setup("faults", BASE)
    faults_harden.F = sys.modules[__name__]
    if ARGS.write_config:
        write_config({})
        return 0
    return guestkit.run_scenarios(PARTS, ARGS.report, ARGS.only, word="part")


if __name__ == "__main__":
    sys.exit(main())
