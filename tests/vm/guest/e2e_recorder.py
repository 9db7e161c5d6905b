"""The flight recorders end to end (guest side; e2e_run.py runs these with its other scenarios).

- mark(): a marker written at one moment into the trace instance (trace_marker) and the journal
  (logger); check_trace() then finds it in a bundle's recorder/trace.txt and compares the times.
- 14_packet_recorder: recorder.pcap.enabled + `systemctl enable --now aodv2-recorder@pcap`, a file
  with a marker string written to the share, a netem slowdown until a latency alert: the bundle's
  recorder/smb.pcap opens with tcpdump -r, holds SMB2 packets from before the alert, its WRITE
  requests are cut (caplen < len), and the marker is absent.
- 15_recorder_faults: the recorders killed, the tracefs instance gone, the ring's disk full: a
  capture completes each time and its summary says what was missing and why.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from guestkit import Checks, Scenario, active, cursor, journal, log, reload_config, run, wait_for

E: Any = None  # the e2e_run module, set by e2e_run.main
TRACE_UNIT = "aodv2-recorder@trace.service"
PCAP_UNIT = "aodv2-recorder@pcap.service"
INSTANCE = "/sys/kernel/tracing/instances/aodv2"
PCAP_DIR = "/var/lib/aodv2/pcap"
_TS = re.compile(r"\[\d{3,}\]\s+(?:\S+\s+)?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d): ")
SMB2_WRITE = 9


def wall_of(line: str) -> Optional[float]:
    m = _TS.search(line)
    return datetime.datetime.fromisoformat(m.group(1)).timestamp() if m else None


def mark(mount: str) -> Tuple[str, float]:
    """Some light traffic on mount for 6 s (the record to look back on), then a marker in the trace
    instance and the journal at one moment: (text, our wall time)."""
    for _ in range(3):
        run(["ls", "-la", mount])
        time.sleep(3)
    text = "aodv2-e2e-marker-" + secrets.token_hex(6)
    t = time.time()
    with open(os.path.join(INSTANCE, "trace_marker"), "w") as f:
        f.write(text)
    run(["logger", "-t", "aodv2-e2e", text])
    return text, t


def check_install(c: Checks) -> None:
    """After `systemctl enable --now aodv2`: the trace recorder runs and status shows it."""
    c.check(f"{TRACE_UNIT} active (enabled with the core)", wait_for(lambda: active(TRACE_UNIT), 60))
    c.check("instances/aodv2 exists with trace_clock boot",
            wait_for(lambda: "[boot]" in _read(os.path.join(INSTANCE, "trace_clock")), 30),
            _read(os.path.join(INSTANCE, "trace_clock")))
    def status() -> str:  # not E.aodv2: the matrix (matrix_run.py) runs this scenario too
        return run(["aodv2", "status"]).stdout

    st = wait_for(lambda: (lambda o: o if "trace recorder: recording" in o else "")(status()), 30)
    c.detail["status_recorders"] = [ln for ln in (st or status()).splitlines() if "recorder" in ln]
    c.check("aodv2 status: 'trace recorder: recording N events' and 'packet recorder: off'",
            st and re.search(r"trace recorder: recording \d+ events", st) and "packet recorder: off" in st,
            c.detail["status_recorders"])


def _tagged(tag: str) -> List[Dict[str, Any]]:
    out = []
    for line in run(["journalctl", "-b", "-o", "json", "--no-pager", "-t", tag], timeout=60).stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(65536)
    except OSError as e:
        return f"<{e}>"


def check_trace(c: Checks, b: Dict[str, Any], alert: Dict[str, Any], marker: Tuple[str, float]) -> None:
    """s3's latency bundle: cifs lines from >= 5 s before the alert, wall-clock times that agree
    with the journal's (the marker), no raw seconds since boot."""
    acts = {a["name"]: a for a in b["summary"].get("actions", [])}
    c.check("action trace_recorder ok", acts.get("trace_recorder", {}).get("status") == "ok",
            acts.get("trace_recorder"))
    text = b["data"].get("recorder/trace.txt", b"").decode("utf-8", "replace")
    events = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    c.detail["trace_header"] = [ln for ln in text.splitlines() if ln.startswith("#")][:6]
    c.detail["trace_lines"] = len(events)
    raw = [ln for ln in events if wall_of(ln) is None]
    c.check("every trace line has a wall-clock time (no raw seconds since boot)", events and not raw, raw[:3])
    alert_t = E.entry_wall(alert)
    cifs = [(wall_of(ln), ln) for ln in events if "smb3_cmd_" in ln]
    early = [w for w, _ in cifs if w is not None and w <= alert_t - 5.0]
    c.times["trace_first_before_alert_s"] = round(alert_t - min(w for w, _ in cifs if w), 1) if cifs else None
    c.check("cifs trace lines (smb3_cmd_*) from at least 5 s before the alert", early,
            {"alert": alert_t, "cifs_lines": len(cifs), "first": cifs[0][1][:160] if cifs else None})
    slow = [ln for w, ln in cifs if "smb3_cmd_done" in ln and w is not None and alert_t - 10 <= w <= alert_t]
    c.detail["trace_done_last_10s_before_alert"] = len(slow)
    c.check("completions of the slowdown in the trace (smb3_cmd_done in the 10 s before the alert)", slow,
            [ln[:160] for _, ln in cifs[-3:]])
    text_m, _ = marker
    line = next((ln for ln in events if text_m in ln), None)
    jr = [e for e in _tagged("aodv2-e2e") if e.get("MESSAGE") == text_m] if line else []
    if c.check("the marker written to trace_marker is in the bundle's trace", line, text_m) and \
            c.check("the marker's journal entry found", jr, text_m):
        diff = abs(wall_of(line) - E.entry_wall(jr[-1]))  # type: ignore[operator]
        c.times["marker_trace_vs_journal_s"] = round(diff, 3)
        c.check("trace wall-clock time within 1 s of the journal's for the marker", diff < 1.0, diff)


# ---------------------------------------------------------------- pcap


def pcap_records(data: bytes) -> Tuple[int, List[Tuple[float, int, int, bytes]]]:
    """(linktype, [(ts, caplen, len, bytes)]) of a classic pcap."""
    if len(data) < 24:
        return -1, []
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    magic = struct.unpack(end + "I", data[:4])[0]
    div = 1e9 if magic == 0xA1B23C4D else 1e6
    link = struct.unpack(end + "I", data[20:24])[0]
    out, off = [], 24
    while off + 16 <= len(data):
        s, frac, cap, ln = struct.unpack(end + "IIII", data[off:off + 16])
        out.append((s + frac / div, cap, ln, data[off + 16:off + 16 + cap]))
        off += 16 + cap
    return link, out


def smb2_commands(pkt: bytes) -> List[Tuple[int, bool]]:
    """(command, is_response) of each SMB2 header in the captured bytes."""
    out = []
    for m in re.finditer(rb"\xfeSMB", pkt):
        h = pkt[m.start():m.start() + 20]
        if len(h) >= 20:
            out.append((struct.unpack("<H", h[12:14])[0], bool(struct.unpack("<I", h[16:20])[0] & 1)))
    return out


def _tcpdump_pid() -> int:
    try:
        with open("/run/aodv2/recorder-pcap.json") as f:
            pid = json.load(f).get("tcpdump_pid")
    except (OSError, ValueError):
        return 0
    return pid if isinstance(pid, int) and os.path.exists(f"/proc/{pid}") else 0


def s14_packet_recorder(c: Checks) -> None:
    kind, _ = reload_config({"recorder": {"pcap": {"enabled": True}}, "capture": {"cooldown_sec": 0.0}})
    c.check("config reloaded (recorder.pcap.enabled: true)", kind == "ok")
    r = run(["systemctl", "enable", "--now", PCAP_UNIT], timeout=120)
    c.check(f"systemctl enable --now {PCAP_UNIT}", r.returncode == 0, r.stderr.strip()[-300:])
    c.check(f"{PCAP_UNIT} active", wait_for(lambda: active(PCAP_UNIT), 30))
    c.check("the ring's first file appears (smb.pcap0)",
            wait_for(lambda: os.path.exists(os.path.join(PCAP_DIR, "smb.pcap0")), 30), sorted(os.listdir(PCAP_DIR))
            if os.path.isdir(PCAP_DIR) else "no dir")
    st = E.aodv2("status").stdout
    c.check("aodv2 status: 'packet recorder: recording tcp port 445'", "packet recorder: recording tcp port 445" in st,
            [ln for ln in st.splitlines() if "recorder" in ln])
    pid0 = _tcpdump_pid()
    kind, _ = reload_config({"recorder": {"pcap": {"enabled": True}}, "capture": {"cooldown_sec": 0.0}})
    time.sleep(2)
    c.check("systemctl reload aodv2 (pcap unchanged) reaches the recorder and leaves tcpdump running",
            kind == "ok" and active(PCAP_UNIT) and pid0 and _tcpdump_pid() == pid0, (kind, pid0, _tcpdump_pid()))
    secret = ("AODV2SECRET" + secrets.token_hex(8)).encode()
    with open(os.path.join(E.ARGS.mount, "pcap-marker.bin"), "wb") as f:
        f.write(secret * 4096)  # ~110 KB: many full-size WRITE packets
    run(["sync"])
    time.sleep(2)
    cur = cursor()
    alert, stats = E.slow_until(cur, "400ms", 8, 60, "latency", "pcap")
    c.detail["workload"] = stats
    if not c.check("latency alert under netem", alert, stats):
        return
    be = E.wait_bundle(cur, "latency", 120)
    if not c.check("bundle written", be, be and be.get("MESSAGE")):
        return
    b = E.bundle_info(be["AOD_BUNDLE"])
    acts = {a["name"]: a for a in b["summary"].get("actions", [])}
    c.detail["packet_recorder_action"] = acts.get("packet_recorder")
    c.check("action packet_recorder ok", acts.get("packet_recorder", {}).get("status") == "ok",
            acts.get("packet_recorder"))
    data = b["data"].get("recorder/smb.pcap", b"")
    path = "/tmp/aodv2-e2e.pcap"
    with open(path, "wb") as f:
        f.write(data)
    r = run(["tcpdump", "-nr", path], timeout=60)
    c.detail["tcpdump_r"] = {"rc": r.returncode, "lines": len(r.stdout.splitlines()), "stderr": r.stderr[-200:]}
    c.check("tcpdump -r opens the bundle's pcap", r.returncode == 0 and r.stdout.strip(), c.detail["tcpdump_r"])
    link, recs = pcap_records(data)
    alert_t = E.entry_wall(alert)
    smb = [(t, cap, ln, smb2_commands(p)) for t, cap, ln, p in recs]
    smb = [x for x in smb if x[3]]
    c.detail["pcap"] = {"linktype": link, "packets": len(recs), "smb2_packets": len(smb),
                        "first_s_before_alert": round(alert_t - recs[0][0], 1) if recs else None}
    c.check("SMB2 packets from before the alert", any(t < alert_t for t, *_ in smb), c.detail["pcap"])
    writes = [(cap, ln) for t, cap, ln, cmds in smb if (SMB2_WRITE, False) in cmds]
    c.detail["write_requests"] = {"n": len(writes), "first": writes[:3]}
    c.check("WRITE requests captured shorter than on the wire (caplen < len)",
            writes and all(cap < ln for cap, ln in writes), c.detail["write_requests"])
    c.check("the marker string written to the share is absent from the pcap", secret not in data and
            secret[:11] not in data, len(data))
    os.unlink(path)


# ---------------------------------------------------------------- faults


def _collect(c: Checks, what: str) -> Dict[str, Any]:
    """`aodv2 collect` -> the bundle's actions by name ({} if no bundle)."""
    r = E.aodv2("collect", "--reason", f"e2e {what}", timeout=180)
    path = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    ok = c.check(f"{what}: aodv2 collect completes with a bundle", r.returncode == 0 and os.path.isfile(path),
                 (r.returncode, r.stdout[-200:], r.stderr[-300:]))
    if not ok:
        return {}
    b = E.bundle_info(path)
    return {a["name"]: a for a in b["summary"].get("actions", [])}


def s15_recorder_faults(c: Checks) -> None:
    # 1. both recorders killed (SIGKILL: no clean-up): the capture completes and names their state
    run(["systemctl", "kill", "-s", "SIGKILL", TRACE_UNIT, PCAP_UNIT])
    time.sleep(1)
    acts = _collect(c, "recorders killed")
    tr, pc = acts.get("trace_recorder", {}), acts.get("packet_recorder", {})
    c.detail["killed"] = {"trace": tr, "pcap": pc}
    c.check("killed: trace_recorder still froze the instance (it outlives its unit) and says the unit is down",
            tr.get("status") == "ok" and "down" in tr.get("error", ""), tr)
    c.check("killed: packet_recorder froze the ring left behind and says the recorder is down",
            pc.get("status") == "ok" and "down" in pc.get("error", ""), pc)
    c.check("killed: systemd restarts both (Restart=on-failure)",
            wait_for(lambda: active(TRACE_UNIT) and active(PCAP_UNIT), 60, 1.0))
    # 2. the tracefs instance gone: stopped recorder (it removes the instance) -> missing, and why
    run(["systemctl", "stop", TRACE_UNIT], timeout=60)
    c.check("stopping the trace recorder removes instances/aodv2", not os.path.isdir(INSTANCE))
    acts = _collect(c, "instance missing")
    tr = acts.get("trace_recorder", {})
    c.detail["instance_missing"] = tr
    c.check("instance missing: trace_recorder missing, the error names the instance and the unit's state",
            tr.get("status") == "missing" and "instances/aodv2" in tr.get("error", "")
            and "stopped" in tr.get("error", ""), tr)
    # removed under a running recorder: it recreates the instance and says so
    cur = cursor()
    run(["systemctl", "start", TRACE_UNIT], timeout=60)
    wait_for(lambda: os.path.isdir(INSTANCE), 30)
    os.rmdir(INSTANCE)
    back = wait_for(lambda: os.path.isdir(INSTANCE), 30)
    w = wait_for(lambda: next((e for e in journal(cur, units=(TRACE_UNIT,))
                               if "removed by someone else" in e.get("MESSAGE", "")), None), 20) if back else None
    c.check("an instance removed under the running recorder is recreated, and the journal says so", back and w,
            w and w.get("MESSAGE"))
    # 3. the ring's disk full: a 64 KiB tmpfs under the pcap ring
    run(["systemctl", "stop", PCAP_UNIT], timeout=60)
    r = run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", PCAP_DIR])
    c.check("a full 64 KiB tmpfs mounted on the ring dir", r.returncode == 0, r.stderr)
    try:
        run(["dd", "if=/dev/zero", f"of={PCAP_DIR}/filler", "bs=4k", "count=64"])
        run(["systemctl", "start", PCAP_UNIT], timeout=60)
        run(["ls", "-la", E.ARGS.mount])  # some SMB traffic for tcpdump to fail writing
        time.sleep(3)
        acts = _collect(c, "ring disk full")
        pc = acts.get("packet_recorder", {})
        c.detail["disk_full"] = {"packet_recorder": pc, "unit": run(["systemctl", "is-active", PCAP_UNIT]).stdout}
        c.check("disk full: the capture completed and packet_recorder says why it has nothing",
                pc.get("status") in ("missing", "ok") and pc.get("error"), pc)
    finally:
        run(["systemctl", "stop", PCAP_UNIT], timeout=60)
        run(["umount", PCAP_DIR])
    run(["systemctl", "disable", "--now", PCAP_UNIT], timeout=60)
    log("recorder faults done")


SCENARIOS: List[Scenario] = [("14_packet_recorder", s14_packet_recorder), ("15_recorder_faults", s15_recorder_faults)]
