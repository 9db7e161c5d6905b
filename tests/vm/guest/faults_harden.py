"""aodv2 faults, hardening parts (issue 14), appended to faults_run.py's PARTS:

  4 core restart   the core SIGSTOPped: the watchdog kills and restarts it, and aodv2-tracer@smb
                   keeps its MainPID (not PartOf= the core; the stop-hook leaves it). A manual
                   `systemctl restart aodv2` leaves it too; `systemctl stop aodv2` stops both
                   before it returns; `systemctl start aodv2` starts both again.
  5 hostile dir    output_dir owned by user aodtest, then a root-owned output_dir under a parent
                   aodtest owns: the core refuses to start (exit 78, one journal line naming the
                   path and the owner), no restart loop, nothing written there; restored, it starts.
  6 fifo           a FIFO planted at /var/log/aodv2/anomalies.jsonl: a capture still writes its
                   bundle, the history failure is one journal line naming the file, the core
                   answers `aodv2 status` and obeys SIGTERM (a restart finishes promptly).

Runs in the guest with faults_run.py's helpers (`F`, set by faults_run before the parts run).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import time
from typing import Any, List, Tuple

from guestkit import (
    CORE,
    OUT,
    Checks,
    active,
    cursor,
    journal,
    main_pid,
    prop,
    run,
    timespan_s,
    wait_for,
    wait_journal,
    write_config,
)

F: Any = None  # faults_run, set by its main()
TRACER = "aodv2-tracer@smb.service"
DROPIN_DIR = "/run/systemd/system/aodv2.service.d"
DROPIN = DROPIN_DIR + "/faults-hostile.conf"


def inactive(unit: str) -> bool:
    return run(["systemctl", "is-active", unit]).stdout.strip() in ("inactive", "failed")


def attached() -> bool:
    return "tracers attached: smb" in prop("StatusText")


def fresh_start_limit() -> None:
    """These parts start the core on purpose more often than StartLimitBurst=5 in 10 min allows
    (parts 2-3 restart it too): forget the earlier starts, as an admin would after a fix."""
    run(["systemctl", "reset-failed", CORE])


# ---------------------------------------------------------------- 4: core restart

def s_core_restart(c: Checks) -> None:
    fresh_start_limit()
    c.check("core and tracer active", wait_for(lambda: active() and active(TRACER) and attached(), 300, 1.0),
            prop("StatusText"))
    wd_s = timespan_s(prop("WatchdogUSec")) or 30.0
    core, tpid = main_pid(), main_pid(TRACER)
    tn0 = prop("NRestarts", TRACER)
    mark = cursor()
    t = time.monotonic()
    os.kill(core, signal.SIGSTOP)
    back = wait_for(lambda: main_pid() not in (0, core) and active(), wd_s + 180, 1.0)
    c.times["sigstop_to_core_back_s"] = round(time.monotonic() - t, 1)
    wd = [e for e in journal(mark) if "atchdog timeout" in e.get("MESSAGE", "")]
    c.check("systemd: 'Watchdog timeout' for aodv2.service", wd, wd and wd[0].get("MESSAGE"))
    c.check("watchdog restarted the core (new MainPID, active)", back, [core, main_pid()])
    hook = [e.get("MESSAGE", "") for e in journal(mark) if "stop-hook" in e.get("MESSAGE", "")]
    c.detail["stop_hook_after_watchdog"] = hook[:2]
    c.check("stop-hook: tracers left running after the watchdog kill", any("left running" in m for m in hook), hook)
    c.check("tracer kept its MainPID through the watchdog restart", main_pid(TRACER) == tpid and active(TRACER),
            [tpid, main_pid(TRACER)])
    c.check("tracer NRestarts unchanged", prop("NRestarts", TRACER) == tn0, [tn0, prop("NRestarts", TRACER)])
    c.check("new core sees the tracer attached", wait_for(attached, 60, 1.0), prop("StatusText"))

    r = run(["systemctl", "restart", CORE], timeout=180)
    c.check("systemctl restart aodv2: the tracer keeps its MainPID",
            r.returncode == 0 and main_pid(TRACER) == tpid and active(TRACER), [r.returncode, tpid, main_pid(TRACER)])

    t = time.monotonic()
    r = run(["systemctl", "stop", CORE], timeout=180)
    c.times["systemctl_stop_s"] = round(time.monotonic() - t, 1)
    both = inactive(CORE) and inactive(TRACER)  # right after `systemctl stop` returns: no waiting
    c.check("systemctl stop aodv2 stops the core and the tracer before it returns", r.returncode == 0 and both,
            [r.returncode, run(["systemctl", "is-active", CORE, TRACER]).stdout.split()])
    fresh_start_limit()
    t = time.monotonic()
    r = run(["systemctl", "start", CORE], timeout=180)
    ok = r.returncode == 0 and wait_for(lambda: main_pid(TRACER) not in (0, tpid) and active(TRACER)
                                        and attached(), 400, 1.0)
    c.times["systemctl_start_to_attached_s"] = round(time.monotonic() - t, 1)
    c.check("systemctl start aodv2 starts the tracer again (new MainPID, attached)", ok and main_pid(TRACER) != tpid,
            [tpid, main_pid(TRACER), prop("StatusText")])


# ---------------------------------------------------------------- 5: hostile output_dir

def refused(c: Checks, what: str, out: str, owner: str) -> None:
    write_config({"output_dir": out})
    mark = cursor()
    n0 = prop("NRestarts")
    r = run(["systemctl", "restart", CORE], timeout=180)
    time.sleep(12)  # RestartSec=5s: a restart loop would show within this
    msgs = [e.get("MESSAGE", "") for e in journal(mark) if e.get("_PID") != "1"]
    uid = str(pwd.getpwnam(owner).pw_uid)
    hit = [m for m in msgs if out in m and (owner in m or uid in m)]
    c.detail[f"{what}_journal"] = hit[:2] or msgs[-5:]
    c.check(f"{what}: systemctl restart fails, the core is not active", r.returncode != 0 and not active(),
            [r.returncode, prop("ActiveState")])
    c.check(f"{what}: exit status 78 (no restart loop)", prop("ExecMainStatus") == "78"
            and prop("NRestarts") == n0, [prop("ExecMainStatus"), n0, prop("NRestarts")])
    tb = any("Traceback" in m for m in msgs)
    c.check(f"{what}: one journal line names {out} and its owner {owner}", hit and not tb, hit[:1])
    files = sorted(os.listdir(out))
    c.check(f"{what}: nothing written in {out}", not files, files)


def s_hostile_dir(c: Checks) -> None:
    fresh_start_limit()
    user = F.USER
    a, b = "/srv/aodv2-hostile", "/srv/aodv2-hostile-parent"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
    os.mkdir(a, 0o755)
    shutil.chown(a, user, user)
    os.mkdir(b, 0o755)
    shutil.chown(b, user, user)
    os.mkdir(b + "/out", 0o700)  # root's, 0700, but its parent is aodtest's: aodtest can rename it
    os.makedirs(DROPIN_DIR, exist_ok=True)
    with open(DROPIN, "w") as f:
        f.write(f"[Service]\nReadWritePaths={a} {b}\n")
    run(["systemctl", "daemon-reload"])
    try:
        refused(c, "owned_by_user", a, user)
        refused(c, "parent_owned_by_user", b + "/out", user)
    finally:
        os.unlink(DROPIN)
        run(["systemctl", "daemon-reload"])
        write_config({})
        run(["systemctl", "reset-failed", CORE])
        F.start_core(c, "restored output_dir")
        for d in (a, b):
            shutil.rmtree(d, ignore_errors=True)
    c.check("restored: tracer still active (never restarted by the core's failures)", active(TRACER))


# ---------------------------------------------------------------- 6: FIFO at anomalies.jsonl

def s_fifo(c: Checks) -> None:
    fresh_start_limit()
    hist = OUT + "/anomalies.jsonl"
    keep = hist + ".faults-keep"
    if os.path.lexists(hist):
        os.rename(hist, keep)
    os.mkfifo(hist, 0o600)
    state0 = F.core_state()
    try:
        mark = cursor()
        ev, secs = F.usr1_capture()
        c.times["fifo_usr1_to_bundle_s"] = secs
        c.check("a capture with a FIFO at anomalies.jsonl still writes its bundle", ev and ev.get("AOD_BUNDLE"),
                ev and ev.get("MESSAGE"))
        line = wait_journal(mark, ("capture_failed",), 30, lambda e: "anomalies.jsonl" in e.get("MESSAGE", ""))
        c.detail["fifo_message"] = line and line.get("MESSAGE")
        c.check("journal: the history failure names anomalies.jsonl", line, line and line.get("MESSAGE"))
        t = time.monotonic()
        r = run(["aodv2", "status", "--json"], timeout=60)
        c.times["status_s"] = round(time.monotonic() - t, 1)
        c.check("aodv2 status answers (no thread stuck in open())", r.returncode == 0, r.stderr[-200:])
        state1 = F.core_state()
        c.check("core same pid, NRestarts unchanged", state1 == state0, [state0, state1])
        t = time.monotonic()
        r = run(["systemctl", "restart", CORE], timeout=180)
        c.times["restart_with_fifo_s"] = round(time.monotonic() - t, 1)
        kills = [e for e in journal(mark) if "SIGKILL" in e.get("MESSAGE", "") or "timed out" in e.get("MESSAGE", "")]
        secs = c.times["restart_with_fifo_s"]
        c.check("the core obeys SIGTERM: restart < 25 s, no stop timeout", r.returncode == 0 and not kills
                and secs < 25, [secs, [k.get("MESSAGE") for k in kills]])
    finally:
        os.unlink(hist)
        if os.path.lexists(keep):
            os.rename(keep, hist)
    c.check("core active after the FIFO is gone", wait_for(active, 60))


PARTS: List[Tuple[str, Any]] = [
    ("4_core_restart", s_core_restart),
    ("5_hostile_output_dir", s_hostile_dir),
    ("6_fifo_history", s_fifo),
]
