"""`aodv2 recorder trace|pcap`: run_trace on a fake tracefs (ready, reload, rescan, stop, exit
codes, state file) and run_pcap up to the exec of tcpdump (argv, ring directory, exit codes)."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import yaml
from test_recordtrace import FakeTracefs, RmdirBusy

from aod import recorder, recordpcap, recordtrace, tracerstate
from aod.safefs import UnsafePath

EVENTS = ("cifs/smb3_cmd_done", "cifs/smb3_cmd_err", "sunrpc/xprt_retransmit")


def write_cfg(path: Path, trace: Optional[dict[str, Any]] = None, pcap: Optional[dict[str, Any]] = None) -> str:
    rec: dict[str, Any] = {}
    if trace is not None:
        rec["trace"] = trace
    if pcap is not None:
        rec["pcap"] = pcap
    path.write_text(yaml.safe_dump({"recorder": rec}))
    return str(path)


def state(state_dir: Path, name: str) -> dict[str, Any]:
    with open(tracerstate.state_path(str(state_dir), name, "recorder")) as f:
        d: dict[str, Any] = json.load(f)
    return d


class Notes:
    """A notifier that records READY / STATUS and runs a hook after each."""

    def __init__(self, on_ready: Callable[[], None] = lambda: None,
                 on_status: Callable[[], None] = lambda: None) -> None:
        self.readies: list[str] = []
        self.statuses: list[str] = []
        self.on_ready, self.on_status = on_ready, on_status

    def ready(self, status: str = "") -> None:
        self.readies.append(status)
        self.on_ready()

    def status(self, text: str) -> None:
        self.statuses.append(text)
        self.on_status()


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setattr(recorder, "RESCAN_SEC", 0.05)
    stop, hup = threading.Event(), threading.Event()
    guard = threading.Timer(60, stop.set)  # a broken loop ends the test instead of hanging it
    guard.daemon = True
    guard.start()
    fake = FakeTracefs(tmp_path / "tracefs", EVENTS).install(monkeypatch)
    (tmp_path / "run").mkdir()
    # the fake's instance exists from the start: as one this recorder made (before a restart)
    (tmp_path / "run" / "recorder-trace.instance").write_text(f"{fake.inst}\n")
    yield {"fake": fake, "stop": stop, "hup": hup, "run": tmp_path / "run", "cfg": tmp_path / "config.yaml",
           "tmp": tmp_path}
    guard.cancel()


def run(t: dict[str, Any], notes: Notes, roots: Optional[tuple[str, ...]] = None) -> int:
    return recorder.run_trace(str(t["cfg"]), str(t["run"]), notes, roots=roots or (str(t["fake"].root),),
                              stop=t["stop"], hup=t["hup"])


def messages(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records]


def test_run_trace_records_reports_ready_and_removes_the_instance_at_stop(
        tree: dict[str, Any], records: list[logging.LogRecord]) -> None:
    fake: FakeTracefs = tree["fake"]
    write_cfg(tree["cfg"], {"events": ["cifs/smb3_cmd_done", "cifs/smb3_cmd_err", "cifs/nosuch"]})
    seen: dict[str, Any] = {}

    def on_ready() -> None:
        seen["state"], seen["enabled"] = state(tree["run"], "trace"), fake.enabled()
        tree["stop"].set()

    notes = Notes(on_ready)
    assert run(tree, notes) == recorder.EX_OK
    want = (f"recording 2 events, 1 not on this kernel (yet) in {fake.inst} (1024 KiB per CPU, clock boot, "
            "read from trace)")
    assert notes.readies == [want] and notes.statuses == []
    st = seen["state"]
    assert (st["state"], st["pid"], st["events"], st["missing"], st["failed"], st["read"], st["clock"]) == (
        "recording", os.getpid(), ["cifs/smb3_cmd_done", "cifs/smb3_cmd_err"], ["cifs/nosuch"], {}, "trace", "boot")
    assert seen["enabled"] == ["cifs/smb3_cmd_done", "cifs/smb3_cmd_err"]
    assert not fake.inst.exists()  # removed at stop
    assert (fake.gone() / "tracing_on").read_text().strip() == "0"
    final = state(tree["run"], "trace")
    assert final["state"] == "stopped" and "error" not in final
    said = [r for r in records if r.getMessage().startswith("AOD recorder trace: recording 2 events")]
    assert len(said) == 1 and "missing: cifs/nosuch" in said[0].getMessage()
    assert said[0].AOD_RECORDER == "trace"  # type: ignore[attr-defined]


def test_disabled_removes_an_existing_instance_and_waits(tree: dict[str, Any]) -> None:
    write_cfg(tree["cfg"], {"enabled": False})
    notes = Notes(on_ready=tree["stop"].set)
    assert run(tree, notes) == 0
    assert not tree["fake"].inst.exists() and tree["fake"].gone().is_dir()
    st = state(tree["run"], "trace")
    assert (st["state"], st["error"]) == ("disabled", "recorder.trace.enabled is false")
    assert notes.readies == ["disabled in the config"]


def test_an_instance_it_did_not_make_is_left_alone_and_named(tree: dict[str, Any]) -> None:
    """instances/aodv2 of another tool (no owner file): not reconfigured, not removed, exit 71."""
    (tree["run"] / "recorder-trace.instance").unlink()
    fake: FakeTracefs = tree["fake"]
    clock = (fake.inst / "trace_clock").read_text()
    write_cfg(tree["cfg"], {})
    assert run(tree, Notes()) == recorder.EX_OSERR == 71
    st = state(tree["run"], "trace")
    assert st["state"] == "failed" and "was not made by aodv2-recorder@trace" in st["error"]
    assert fake.inst.is_dir() and (fake.inst / "trace_clock").read_text() == clock and fake.writes == []
    write_cfg(tree["cfg"], {"enabled": False})  # disabled: still not removed
    tree["stop"].clear()
    assert run(tree, Notes(on_ready=tree["stop"].set)) == 0 and fake.inst.is_dir()


def test_disabled_without_tracefs_is_not_a_failure(tree: dict[str, Any]) -> None:
    write_cfg(tree["cfg"], {"enabled": False})
    assert run(tree, Notes(on_ready=tree["stop"].set), roots=(str(tree["tmp"] / "nothing"),)) == 0
    assert state(tree["run"], "trace")["state"] == "disabled"


def test_no_tracefs_is_71_and_failed(tree: dict[str, Any]) -> None:
    write_cfg(tree["cfg"], {})
    notes = Notes()
    roots = (str(tree["tmp"] / "a"), str(tree["tmp"] / "b"))
    assert run(tree, notes, roots=roots) == recorder.EX_OSERR == 71
    st = state(tree["run"], "trace")
    assert st["state"] == "failed"
    assert st["error"] == f"tracefs is not mounted (looked for {roots[0]}/instances and {roots[1]}/instances)"
    assert notes.readies == []


def test_invalid_config_is_78(tree: dict[str, Any], records: list[logging.LogRecord]) -> None:
    write_cfg(tree["cfg"], {"clock": "local"})
    assert run(tree, Notes()) == recorder.EX_CONFIG == 78
    assert not os.path.exists(tracerstate.state_path(str(tree["run"]), "trace", "recorder"))
    assert any("invalid config" in m and "recorder.trace.clock" in m for m in messages(records))
    assert (tree["fake"].inst / "tracing_on").read_text().strip() == "1"  # untouched


def test_a_refused_setup_is_70_and_failed(tree: dict[str, Any]) -> None:
    write_cfg(tree["cfg"], {})
    (tree["fake"].inst / "trace_clock").unlink()  # a read problem: an exit code, not a traceback
    assert run(tree, Notes()) == recorder.EX_SOFTWARE == 70
    st = state(tree["run"], "trace")
    assert st["state"] == "failed" and "trace_clock" in st["error"]


def test_sighup_applies_a_changed_event_list(tree: dict[str, Any]) -> None:
    fake: FakeTracefs = tree["fake"]
    write_cfg(tree["cfg"], {"events": ["cifs/smb3_cmd_done"]})
    seen: dict[str, Any] = {}

    def on_ready() -> None:
        write_cfg(tree["cfg"], {"events": ["cifs/smb3_cmd_err", "sunrpc/*"]})
        tree["hup"].set()

    def on_status() -> None:
        seen["state"], seen["enabled"] = state(tree["run"], "trace"), fake.enabled()
        tree["stop"].set()

    notes = Notes(on_ready, on_status)
    assert run(tree, notes) == 0
    assert seen["enabled"] == ["cifs/smb3_cmd_err", "sunrpc/xprt_retransmit"]
    assert seen["state"]["events"] == ["cifs/smb3_cmd_err", "sunrpc/xprt_retransmit"]
    assert notes.statuses == [f"recording 2 events in {fake.inst} (1024 KiB per CPU, clock boot, read from trace)"]
    assert not tree["hup"].is_set()
    assert state(tree["run"], "trace")["state"] == "stopped"


def test_sighup_with_an_invalid_config_keeps_recording(tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                       records: list[logging.LogRecord]) -> None:
    fake: FakeTracefs = tree["fake"]
    write_cfg(tree["cfg"], {"events": ["cifs/smb3_cmd_done"]})
    calls: list[int] = []
    real_apply = recordtrace.apply

    def counting_apply(root: str, c: Any, owner: Optional[str] = None) -> recordtrace.Applied:
        calls.append(1)
        return real_apply(root, c, owner)

    def on_ready() -> None:
        write_cfg(tree["cfg"], {"events": "not a list"})
        tree["hup"].set()
        threading.Thread(target=stop_after_hup, daemon=True).start()

    def stop_after_hup() -> None:  # the reload was read (hup cleared): stop
        until(lambda: not tree["hup"].is_set())
        tree["stop"].set()

    monkeypatch.setattr(recordtrace, "apply", counting_apply)
    notes = Notes(on_ready)
    assert run(tree, notes) == 0
    assert len(calls) == 1 and notes.statuses == []  # nothing re-applied
    assert any("invalid config" in m and "recorder.trace.events" in m for m in messages(records))
    assert (fake.gone() / "events/cifs/smb3_cmd_done/enable").read_text().strip() == "0"  # stopped at the end


def until(cond: Callable[[], bool]) -> None:
    ev = threading.Event()
    while not cond():
        ev.wait(0.01)


def test_a_reload_disables_and_a_later_one_enables_again(tree: dict[str, Any]) -> None:
    """Disabled, the unit waits: `systemctl reload aodv2` alone turns it back on."""
    write_cfg(tree["cfg"], {})
    seen: list[tuple[str, bool]] = []

    def on_ready() -> None:
        write_cfg(tree["cfg"], {"enabled": False})
        tree["hup"].set()

    def on_status() -> None:
        seen.append((state(tree["run"], "trace")["state"], tree["fake"].inst.exists()))
        if len(seen) == 1:
            write_cfg(tree["cfg"], {})
            tree["hup"].set()
        else:
            tree["stop"].set()

    notes = Notes(on_ready, on_status)
    assert run(tree, notes) == 0
    assert seen == [("disabled", False), ("recording", True)]
    assert notes.statuses[0] == "disabled in the config" and notes.statuses[1].startswith("recording ")
    assert not tree["fake"].inst.exists() and state(tree["run"], "trace")["state"] == "stopped"


def test_events_that_appear_later_are_picked_up(tree: dict[str, Any]) -> None:
    fake: FakeTracefs = tree["fake"]
    write_cfg(tree["cfg"], {"events": ["cifs/smb3_cmd_done", "smb3/late_event"]})
    seen: dict[str, Any] = {}

    def on_status() -> None:
        seen["state"] = state(tree["run"], "trace")
        tree["stop"].set()

    notes = Notes(lambda: fake.add_event("smb3/late_event"), on_status)  # the module loads after start
    assert run(tree, notes) == 0
    assert "1 not on this kernel" in notes.readies[0]
    assert notes.statuses == [f"recording 2 events in {fake.inst} (1024 KiB per CPU, clock boot, read from trace)"]
    assert seen["state"]["events"] == ["cifs/smb3_cmd_done", "smb3/late_event"] and seen["state"]["missing"] == []


def test_an_instance_removed_by_someone_else_is_recreated(tree: dict[str, Any],
                                                          records: list[logging.LogRecord]) -> None:
    fake: FakeTracefs = tree["fake"]
    write_cfg(tree["cfg"], {"events": ["cifs/smb3_cmd_done"]})
    seen: dict[str, Any] = {}

    def on_status() -> None:
        seen["enabled"] = fake.enabled()
        tree["stop"].set()

    notes = Notes(lambda: os.rename(fake.inst, tree["tmp"] / "stolen"), on_status)
    assert run(tree, notes) == 0
    assert seen["enabled"] == ["cifs/smb3_cmd_done"] and len(notes.statuses) == 1
    assert any(m.endswith(f"{fake.inst} was removed by someone else: recreated") for m in messages(records))


def test_a_persistent_rescan_problem_is_logged_once(tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                    records: list[logging.LogRecord]) -> None:
    fake: FakeTracefs = tree["fake"]
    write_cfg(tree["cfg"], {"events": ["cifs/smb3_cmd_done", "smb3/later"]})  # missing: rescanned
    calls: list[int] = []
    real_apply = recordtrace.apply

    def counting_apply(root: str, c: Any, owner: Optional[str] = None) -> recordtrace.Applied:
        calls.append(1)
        if len(calls) >= 5:
            tree["stop"].set()
        return real_apply(root, c, owner)

    monkeypatch.setattr(recordtrace, "apply", counting_apply)
    notes = Notes(lambda: (fake.inst / "set_event").unlink())
    assert run(tree, notes) == 0
    assert len(calls) >= 5
    warned = [m for m in messages(records) if "keeping what was recording" in m]
    assert len(warned) == 1 and "set_event" in warned[0], warned


def test_a_busy_instance_at_stop_is_reported_in_the_state(tree: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                          records: list[logging.LogRecord]) -> None:
    write_cfg(tree["cfg"], {})
    monkeypatch.setattr(recordtrace.os, "rmdir", RmdirBusy(tree["fake"].inst, busy=None))
    monkeypatch.setattr(recordtrace.time, "sleep", lambda s: None)
    assert run(tree, Notes(tree["stop"].set)) == 0
    st = state(tree["run"], "trace")
    assert st["state"] == "stopped"
    assert st["error"].startswith(f"cannot remove the tracefs instance {tree['fake'].inst}")
    assert any(m.startswith("AOD recorder trace: cannot remove") for m in messages(records))


# ---------------------------------------------------------------- pcap


class FakeProc:
    """What run_pcap uses of a Popen: pid, poll, terminate, kill, wait."""

    def __init__(self, argv: list[str], pid: int) -> None:
        self.argv, self.pid, self.rc = argv, pid, None
        self.terminated = False

    def poll(self) -> Optional[int]:
        return self.rc

    def terminate(self) -> None:
        self.terminated, self.rc = True, -15

    def kill(self) -> None:
        self.rc = -9

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        return self.rc


class Spawner:
    def __init__(self, after: Callable[[Spawner], None] = lambda s: None) -> None:
        self.procs: list[FakeProc] = []
        self.after = after

    def __call__(self, argv: list[str]) -> FakeProc:
        self.procs.append(FakeProc(list(argv), 40000 + len(self.procs)))
        self.after(self)
        return self.procs[-1]


@pytest.fixture
def pcap(tmp_path: Path) -> Iterator[dict[str, Any]]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tcpdump = bindir / "tcpdump"
    tcpdump.write_text("#!/bin/sh\nexit 0\n")
    tcpdump.chmod(0o755)
    (tmp_path / "run").mkdir()
    stop, hup = threading.Event(), threading.Event()
    guard = threading.Timer(60, stop.set)
    guard.daemon = True
    guard.start()
    yield {"bin": bindir, "tcpdump": str(tcpdump), "ring": tmp_path / "pcap", "run": tmp_path / "run",
           "cfg": tmp_path / "config.yaml", "tmp": tmp_path, "stop": stop, "hup": hup}
    guard.cancel()


def run_pcap(p: dict[str, Any], path: Optional[str] = None, spawn: Optional[Spawner] = None,
             notes: Optional[Notes] = None, **pcfg: Any) -> tuple[int, Spawner]:
    """run_pcap with recorder.pcap {enabled, dir, **pcfg}; stops once tcpdump is started (default)."""
    write_cfg(p["cfg"], pcap={"enabled": True, "dir": str(p["ring"]), **pcfg})
    sp = spawn or Spawner(lambda s: p["stop"].set())
    rc = recordpcap.run_pcap(str(p["cfg"]), str(p["run"]), notes or Notes(), stop=p["stop"], hup=p["hup"],
                             spawn=sp, path=path or str(p["bin"]))
    return rc, sp


def test_run_pcap_starts_tcpdump_with_exactly_this_argv_and_stops_it(pcap: dict[str, Any]) -> None:
    sp = Spawner(lambda s: pcap["stop"].set())
    rc, _ = run_pcap(pcap, spawn=sp)
    assert rc == 0
    ring = str(pcap["ring"])
    assert [p.argv for p in sp.procs] == [[pcap["tcpdump"], "-n", "-p", "-U", "-i", "any", "-s", "136", "-Z", "root",
                                           "-C", "8", "-W", "4", "-w", f"{ring}/smb.pcap", "tcp port 445"]]
    assert sp.procs[0].terminated  # stopped with the unit
    assert stat.S_IMODE(os.stat(ring).st_mode) == 0o700
    st = state(pcap["run"], "pcap")
    assert st["state"] == "stopped"


def test_run_pcap_publishes_recording_with_tcpdumps_pid(pcap: dict[str, Any]) -> None:
    got: dict[str, Any] = {}

    def ready() -> None:
        got.update(state(pcap["run"], "pcap"))
        pcap["stop"].set()

    rc, sp = run_pcap(pcap, spawn=Spawner(), notes=Notes(ready))
    assert rc == 0
    ring = str(pcap["ring"])
    assert {k: got[k] for k in ("state", "pid", "dir", "prefix", "ring_bytes", "snaplen", "interface", "filter",
                                "tcpdump_pid")} == {
        "state": "recording", "pid": os.getpid(), "dir": ring, "prefix": "smb.pcap", "ring_bytes": 32_000_000,
        "snaplen": 136, "interface": "any", "filter": "tcp port 445", "tcpdump_pid": sp.procs[0].pid}


def test_run_pcap_argv_follows_the_config_filter_from_ports_only(pcap: dict[str, Any]) -> None:
    rc, sp = run_pcap(pcap, interface="eth0", ports=[445, 2049, 139], snaplen=200, file_mb=2, files=3)
    assert rc == 0
    argv = sp.procs[0].argv
    assert argv[1:] == ["-n", "-p", "-U", "-i", "eth0", "-s", "200", "-Z", "root", "-C", "2", "-W", "3",
                        "-w", f"{pcap['ring']}/smb.pcap", "tcp port 445 or tcp port 2049 or tcp port 139"]


def test_tcpdump_dying_ends_the_unit_with_70_and_says_so(pcap: dict[str, Any],
                                                         records: list[logging.LogRecord]) -> None:
    def die(s: Spawner) -> None:
        s.procs[-1].rc = 1

    rc, _ = run_pcap(pcap, spawn=Spawner(die))
    assert rc == recorder.EX_SOFTWARE == 70
    st = state(pcap["run"], "pcap")
    assert st["state"] == "failed" and "tcpdump exited with status 1" in st["error"]
    assert any("tcpdump exited with status 1" in m for m in messages(records))


def test_a_reload_restarts_tcpdump_only_when_recorder_pcap_changed(pcap: dict[str, Any]) -> None:
    def reloads() -> None:  # an unchanged reload, then a changed one
        pcap["hup"].set()
        until(lambda: not pcap["hup"].is_set())
        write_cfg(pcap["cfg"], pcap={"enabled": True, "dir": str(pcap["ring"]), "snaplen": 200})
        pcap["hup"].set()

    def on_ready() -> None:  # in run_pcap's thread: the reloads come from another
        threading.Thread(target=reloads, daemon=True).start()

    sp = Spawner(lambda s: pcap["stop"].set() if len(s.procs) == 2 else None)
    rc, _ = run_pcap(pcap, spawn=sp, notes=Notes(on_ready))
    assert rc == 0 and len(sp.procs) == 2
    assert sp.procs[0].terminated and sp.procs[1].argv[sp.procs[1].argv.index("-s") + 1] == "200"


def test_disabled_waits_for_a_reload_that_enables_it(pcap: dict[str, Any]) -> None:
    write_cfg(pcap["cfg"], pcap={"enabled": False, "dir": str(pcap["ring"])})

    def on_ready() -> None:
        st = state(pcap["run"], "pcap")
        assert (st["state"], st["error"]) == ("disabled", "recorder.pcap.enabled is false")
        assert not pcap["ring"].exists()
        write_cfg(pcap["cfg"], pcap={"enabled": True, "dir": str(pcap["ring"])})
        pcap["hup"].set()

    notes = Notes(on_ready)
    sp = Spawner(lambda s: pcap["stop"].set())
    rc = recordpcap.run_pcap(str(pcap["cfg"]), str(pcap["run"]), notes, stop=pcap["stop"], hup=pcap["hup"],
                             spawn=sp, path=str(pcap["bin"]))
    assert rc == 0 and notes.readies == ["disabled in the config"] and len(sp.procs) == 1


def test_run_pcap_invalid_config_is_78(pcap: dict[str, Any]) -> None:
    rc, sp = run_pcap(pcap, interface="-w/tmp/x")
    assert rc == 78 and sp.procs == []


def test_run_pcap_without_tcpdump_is_69(pcap: dict[str, Any]) -> None:
    empty = pcap["tmp"] / "empty"
    empty.mkdir()
    rc, sp = run_pcap(pcap, path=str(empty))
    assert rc == recorder.EX_UNAVAILABLE == 69 and sp.procs == []
    st = state(pcap["run"], "pcap")
    assert st["state"] == "failed" and "tcpdump is not installed" in st["error"]
    assert not pcap["ring"].exists()


def test_run_pcap_refuses_a_ring_dir_under_a_group_writable_parent(pcap: dict[str, Any],
                                                                   records: list[logging.LogRecord]) -> None:
    shared = pcap["tmp"] / "shared"
    shared.mkdir()
    if os.geteuid() == 0:
        os.chown(shared, -1, 4242)  # a group other than root's
        shared.chmod(0o770)
    else:
        shared.chmod(0o777)
    pcap["ring"] = shared / "ring"
    rc, sp = run_pcap(pcap)
    assert rc == recorder.EX_OSERR == 71 and sp.procs == []
    st = state(pcap["run"], "pcap")
    assert st["state"] == "failed" and str(shared) in st["error"] and "writable by" in st["error"]
    assert any(str(shared) in m and "ring directory refused" in m for m in messages(records))
    assert not pcap["ring"].exists()


def test_a_restart_keeps_this_rings_files_and_removes_the_rest(pcap: dict[str, Any]) -> None:
    """tcpdump died, systemd restarts the unit: the packets from before it died stay (smb.pcap0..3
    of this ring) until tcpdump overwrites them; other smb.pcapN and any symlink go; other files stay."""
    ring = pcap["ring"]
    ring.mkdir(mode=0o755)
    for n in ("smb.pcap0", "smb.pcap1", "smb.pcap12", "smb.pcap01"):
        (ring / n).write_bytes(b"old ring")
    keep = ("smb.pcap", "smb.pcap.old", "notes.txt", "smb.pcap1a", "smb.pcap\u00b2", "xsmb.pcap1", "smb.pcap-1")
    for n in keep:
        (ring / n).write_bytes(b"keep")
    target = pcap["tmp"] / "precious"
    target.write_bytes(b"not a ring file")
    (ring / "smb.pcap3").symlink_to(target)
    rc, sp = run_pcap(pcap)
    assert rc == 0 and len(sp.procs) == 1
    assert sorted(os.listdir(ring)) == sorted((*keep, "smb.pcap0", "smb.pcap1"))
    assert (ring / "smb.pcap0").read_bytes() == b"old ring"
    assert target.read_bytes() == b"not a ring file"  # the symlink was unlinked, not followed
    assert stat.S_IMODE(os.stat(ring).st_mode) == 0o700


def test_disabled_keeps_no_packets(pcap: dict[str, Any]) -> None:
    ring = pcap["ring"]
    ring.mkdir(mode=0o700)
    (ring / "smb.pcap0").write_bytes(b"packets")
    (ring / "notes.txt").write_bytes(b"keep")
    write_cfg(pcap["cfg"], pcap={"enabled": False, "dir": str(ring)})
    rc = recordpcap.run_pcap(str(pcap["cfg"]), str(pcap["run"]), Notes(pcap["stop"].set), stop=pcap["stop"],
                             hup=pcap["hup"], spawn=Spawner(), path=str(pcap["bin"]))
    assert rc == 0 and os.listdir(ring) == ["notes.txt"]


def test_prepare_ring_dir_refuses_a_system_directory() -> None:
    with pytest.raises(UnsafePath, match="under /proc"):
        recordpcap.prepare_ring_dir("/proc/aodv2-test-ring")
