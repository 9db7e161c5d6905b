"""The capture steps that freeze a flight recorder into a real stage (actions.plan -> run_step)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import time
import unittest.mock
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from aod import recorderstep, safefs, tracerstate
from aod.actionrun import StepResult, run_step
from aod.actions import ACTIONS, ActionEnv, Step, plan
from aod.configrecorder import PcapRecorderConfig, RecorderConfig, TraceRecorderConfig
from aod.pcapfreeze import MAGIC_US
from aod.stageio import Stage

NS = 1_000_000_000
DEAD_PID = (1 << 22) + 7  # above any pid_max: never a live process


@pytest.fixture
def t(tmp_path: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path / "tracefs"
    (root / "instances").mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    sdir = tmp_path / "stage"
    sdir.mkdir(mode=0o700)
    stage = Stage(str(sdir), safefs.open_dir(str(sdir), follow=True))
    env = ActionEnv(tracefs=(str(tmp_path / "other"), str(root)), run_dir=str(run), proc_root=str(tmp_path / "proc"),
                    var_log=str(tmp_path / "log"), path=str(tmp_path / "bin"), journal_dir=str(tmp_path / "j"))
    try:
        yield {"root": root, "inst": root / "instances" / "aodv2", "run": run, "stage": stage, "sdir": sdir,
               "env": env, "tmp": tmp_path, "ring": tmp_path / "pcap"}
    finally:
        stage.close()


def make_instance(inst: Path, lines: list[str], clock: str = "boot") -> None:
    (inst / "options").mkdir(parents=True)
    (inst / "options" / "pause-on-trace").write_text("0\n")
    (inst / "trace_clock").write_text(" ".join(f"[{c}]" if c == clock else c for c in ("local", "boot", "mono")))
    (inst / "trace").write_text("# tracer: nop\n#\n# entries-in-buffer/entries-written: 3/3   #P:2\n"
                                + "".join(ln + "\n" for ln in lines))


def line(ts: float, text: str) -> str:
    return f"{'dd':>16}-42      [001] ..... {ts:12.6f}: {text}"


def recorder_state(run: Path, name: str, state: str, pid: Optional[int] = None, **extra: Any) -> None:
    d = {"name": name, "pid": os.getpid() if pid is None else pid, "state": state, "since": time.time(), **extra}
    (run / f"recorder-{name}.json").write_text(json.dumps(d))


DEFAULTS = RecorderConfig()


def step_of(t: dict[str, Any], action: str, rec: RecorderConfig = DEFAULTS,
            trigger: Optional[float] = None) -> Step:
    now = int(time.time())
    (s,) = plan(ACTIONS[action], t["env"], now - 60, now, recorder=rec,
                trigger_wall=time.time() if trigger is None else trigger)
    return s


def run(t: dict[str, Any], step: Step, timeout: float = 10.0) -> StepResult:
    return asyncio.run(run_step(step, t["stage"], timeout, t["env"]))


# ---------------------------------------------------------------- trace


def test_trace_freezes_the_instance_into_the_stage(t: dict[str, Any]) -> None:
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    make_instance(t["inst"], [line(boot - 600, "smb3_cmd_done: old"), line(boot - 2, "smb3_cmd_err: status=0xc000009a"),
                              line(boot - 1, "smb3_cmd_done: mid=7")])
    recorder_state(t["run"], "trace", "recording")
    step = step_of(t, "trace_recorder")
    assert step.files == (str(t["tmp"] / "other/instances/aodv2"), str(t["inst"])) and step.urgent
    r = run(t, step)
    assert (r.status, r.error, r.source, r.truncated) == ("ok", "", str(t["inst"]), False)
    data = (t["sdir"] / "recorder" / "trace.txt").read_bytes()
    assert r.bytes == len(data) > 0
    body = [ln for ln in data.decode().splitlines() if not ln.startswith("#")]
    assert len(body) == 2 and body[0].endswith("smb3_cmd_err: status=0xc000009a") and ": old" not in data.decode()
    assert f"{boot - 1:.6f}" not in data.decode()  # wall-clock times, not boot seconds
    assert oct(os.stat(t["sdir"] / "recorder" / "trace.txt").st_mode & 0o777) == "0o600"


def test_trace_notes_go_to_the_step_error(t: dict[str, Any]) -> None:
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    make_instance(t["inst"], [line(boot - 1, "smb3_cmd_done: raw")], clock="local")
    r = run(t, step_of(t, "trace_recorder"))  # and no state file: the recorder never ran
    assert r.status == "ok"
    assert "trace_clock is local, not boot or mono" in r.error
    assert f"aodv2-recorder@trace.service has not run (no {t['run']}/recorder-trace.json)" in r.error


def test_trace_with_no_events_in_the_window_is_ok_with_a_note(t: dict[str, Any]) -> None:
    make_instance(t["inst"], [])
    recorder_state(t["run"], "trace", "recording")
    r = run(t, step_of(t, "trace_recorder"))
    assert r.status == "ok" and r.error.startswith("no events in the last ")
    assert (t["sdir"] / "recorder" / "trace.txt").read_bytes().startswith(b"# aodv2 trace recorder: ")


def test_trace_from_a_stopped_recorder_says_so(t: dict[str, Any]) -> None:
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    make_instance(t["inst"], [line(boot - 1, "smb3_cmd_done: x")])
    recorder_state(t["run"], "trace", "stopped", error="cannot remove the tracefs instance: busy")
    r = run(t, step_of(t, "trace_recorder"))
    assert r.status == "ok"
    assert r.error == "aodv2-recorder@trace.service: stopped (cannot remove the tracefs instance: busy)"


def test_trace_instance_missing_quotes_the_recorder_state(t: dict[str, Any]) -> None:
    recorder_state(t["run"], "trace", "failed", pid=DEAD_PID, error="tracefs is not mounted (looked for /x)")
    r = run(t, step_of(t, "trace_recorder"))
    assert r.status == "missing" and r.bytes == 0
    assert r.error.startswith("no trace recorder instance (")
    assert r.error.endswith("; aodv2-recorder@trace.service: failed (tracefs is not mounted (looked for /x))")
    assert str(t["inst"]) in r.error
    assert not (t["sdir"] / "recorder").exists()


def test_trace_instance_missing_and_recorder_dead_is_down(t: dict[str, Any]) -> None:
    recorder_state(t["run"], "trace", "recording", pid=DEAD_PID)
    r = run(t, step_of(t, "trace_recorder"))
    assert r.status == "missing" and r.error.endswith("aodv2-recorder@trace.service: down")


def test_trace_unreadable_is_failed_with_the_file(t: dict[str, Any]) -> None:
    make_instance(t["inst"], [])
    (t["inst"] / "trace").unlink()
    (t["inst"] / "trace").symlink_to(t["tmp"] / "elsewhere")
    recorder_state(t["run"], "trace", "recording")
    r = run(t, step_of(t, "trace_recorder"))
    assert r.status == "failed" and r.error.startswith(f"{t['inst'] / 'trace'}: ")
    assert r.error.endswith("aodv2-recorder@trace.service: recording")


def test_trace_disabled_is_planned_skipped(t: dict[str, Any]) -> None:
    make_instance(t["inst"], [])
    step = step_of(t, "trace_recorder", RecorderConfig(trace=TraceRecorderConfig(enabled=False)))
    r = run(t, step)
    assert (r.status, r.error) == ("skipped", "skipped: recorder.trace.enabled is false")


# ---------------------------------------------------------------- pcap


def pcap_file(recs: list[tuple[int, bytes]]) -> bytes:
    out = [struct.pack("<IHHiIII", MAGIC_US, 2, 4, 0, 0, 136, 1)]
    for ts, data in recs:
        sec, rem = divmod(ts, NS)
        out.append(struct.pack("<IIII", sec, rem // 1000, len(data), len(data) + 100))
        out.append(data)
    return b"".join(out)


def read_pcap(data: bytes) -> list[tuple[int, bytes]]:
    magic, major, minor, _z, _s, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, linktype) == (MAGIC_US, 2, 4, 1)
    out, off = [], 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        assert incl <= snaplen and incl < orig and usec < 1_000_000
        out.append((sec * NS + usec * 1000, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    assert off == len(data)
    return out


def pcap_cfg(t: dict[str, Any]) -> RecorderConfig:
    # frames of fake bytes here: the scrub is tested below
    return RecorderConfig(pcap=PcapRecorderConfig(enabled=True, dir=str(t["ring"]), window_sec=30.0, scrub=False))


def make_ring(t: dict[str, Any], ages: list[float]) -> list[tuple[int, bytes]]:
    t["ring"].mkdir(mode=0o700)
    now_ns = time.time_ns()
    recs = [((now_ns - int(a * NS)) // 1000 * 1000, f"packet {i}".encode() * 3) for i, a in enumerate(ages)]
    (t["ring"] / "smb.pcap0").write_bytes(pcap_file(recs))
    return recs


def test_pcap_disabled_is_planned_skipped(t: dict[str, Any]) -> None:
    step = step_of(t, "packet_recorder")  # the default: off
    assert step.skipped == "recorder.pcap.enabled is false"
    r = run(t, step)
    assert (r.status, r.error, r.bytes) == ("skipped", "skipped: recorder.pcap.enabled is false", 0)
    assert not (t["sdir"] / "recorder").exists()


def test_pcap_ring_is_frozen_into_the_stage(t: dict[str, Any]) -> None:
    recs = make_ring(t, [600.0, 20.0, 5.0, 1.0])
    tracerstate.write_state(str(t["run"]), "pcap", "recording", {"dir": str(t["ring"])}, prefix="recorder")
    step = step_of(t, "packet_recorder", pcap_cfg(t))
    assert step.files == (str(t["ring"]),) and step.cap_bytes == 32_000_000 + 1024
    r = run(t, step)
    assert (r.status, r.error, r.source, r.truncated) == ("ok", "", str(t["ring"]), False)
    data = (t["sdir"] / "recorder" / "smb.pcap").read_bytes()
    assert r.bytes == len(data)
    assert read_pcap(data) == recs[1:]  # the one from 10 minutes ago is outside the 30 s window


def test_pcap_from_a_recorder_not_recording_says_so(t: dict[str, Any]) -> None:
    make_ring(t, [2.0])
    recorder_state(t["run"], "pcap", "failed", error="tcpdump is not installed")
    r = run(t, step_of(t, "packet_recorder", pcap_cfg(t)))
    assert r.status == "ok" and r.error == "aodv2-recorder@pcap.service: failed (tcpdump is not installed)"
    assert len(read_pcap((t["sdir"] / "recorder" / "smb.pcap").read_bytes())) == 1


def test_pcap_without_packets_in_the_window_is_missing(t: dict[str, Any]) -> None:
    make_ring(t, [600.0])
    recorder_state(t["run"], "pcap", "recording")
    r = run(t, step_of(t, "packet_recorder", pcap_cfg(t)))
    assert r.status == "missing" and re.search(r"no packets in the last 30(\.\d+)? s", r.error), r.error
    assert not (t["sdir"] / "recorder").exists()


def test_pcap_without_a_ring_is_missing_with_the_recorder_state(t: dict[str, Any]) -> None:
    r = run(t, step_of(t, "packet_recorder", pcap_cfg(t)))
    assert r.status == "missing"
    assert f"no packet ring at {t['ring']}" in r.error
    assert r.error.endswith(f"aodv2-recorder@pcap.service has not run (no {t['run']}/recorder-pcap.json)")


def test_the_bundle_pcap_has_no_file_data_of_a_write_larger_than_a_segment(tmp_path: Path) -> None:
    """recorder.pcap.scrub (default): a segment continuing a WRITE is cut to its headers; false keeps it."""
    from test_pcapscrub import SECRET, smb2_write, tcp_frame
    from test_pcapscrub import pcap as make_pcap

    ring = tmp_path / "ring"
    ring.mkdir(mode=0o700)
    frames = [tcp_frame(smb2_write(SECRET)[:100]), tcp_frame(SECRET), tcp_frame(b"")]
    data = make_pcap(276, frames)
    now = 1_800_000_010.0
    (ring / "smb.pcap0").write_bytes(data)
    for scrub, leaks in ((True, False), (False, True)):
        cfg = RecorderConfig(pcap=PcapRecorderConfig(enabled=True, dir=str(ring), scrub=scrub, window_sec=60))
        (step,) = plan(ACTIONS["packet_recorder"], ActionEnv(run_dir=str(tmp_path)), 0, 1,
                       recorder=cfg, trigger_wall=now)
        stage = tmp_path / f"stage-{scrub}"
        stage.mkdir()
        (stage / "recorder").mkdir()
        with unittest.mock.patch.object(recorderstep.time, "time", lambda: now):
            res = asyncio.run(run_step(step, str(stage), 10, ActionEnv(run_dir=str(tmp_path))))
        out = (stage / "recorder" / "smb.pcap").read_bytes()
        assert res.status == "ok" and (SECRET[:16] in out) is leaks, (scrub, res.error)
        assert ("1 of 3 frames cut to their headers" in res.error) is scrub


def test_a_ring_directory_others_could_write_is_refused_not_frozen(tmp_path: Path) -> None:
    """The recorder refuses such a directory; the capture must not bundle what another user put there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    ring = shared / "ring"
    ring.mkdir(mode=0o700)
    (ring / "smb.pcap0").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 20)
    cfg = RecorderConfig(pcap=PcapRecorderConfig(enabled=True, dir=str(ring)))
    (step,) = plan(ACTIONS["packet_recorder"], ActionEnv(run_dir=str(tmp_path)), 0, 1, recorder=cfg,
                   trigger_wall=time.time())
    res = asyncio.run(run_step(step, str(tmp_path), 10, ActionEnv(run_dir=str(tmp_path))))
    assert res.status == "failed" and "ring directory refused" in res.error and str(shared) in res.error
