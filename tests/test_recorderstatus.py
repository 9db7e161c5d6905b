"""aodv2 status: the recorders' state files, typed and formatted (aod/recorderstatus.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aod import recorderstatus, status
from aod.configrecorder import PcapRecorderConfig, RecorderConfig
from aod.safetext import clean_lines


def write(run: Path, name: str, d: dict) -> None:
    (run / f"recorder-{name}.json").write_text(json.dumps(d))


def test_recording_trace_and_pcap_with_ring_usage(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "smb.pcap0").write_bytes(b"x" * 1000)
    (ring / "smb.pcap1").write_bytes(b"x" * 500)
    (ring / "smb.pcap\u00b2").write_bytes(b"x" * 9999)  # not a ring file (not an ASCII digit)
    (ring / "smb.pcap2").symlink_to("/etc/passwd")  # not counted, not followed
    write(tmp_path, "trace", {"state": "recording", "pid": os.getpid(), "instance": "/t/instances/aodv2",
                              "buffer_kb": 1024, "clock": "boot", "read": "trace", "events": ["cifs/a", "cifs/b"],
                              "missing": ["cifs/c"], "failed": {"cifs/d": "EPERM"}})
    write(tmp_path, "pcap", {"state": "recording", "pid": os.getpid(), "dir": str(ring), "ring_bytes": 32_000_000,
                             "snaplen": 136, "interface": "any", "filter": "tcp port 445"})
    rcfg = RecorderConfig(pcap=PcapRecorderConfig(enabled=True, dir=str(ring)))
    d = recorderstatus.details(str(tmp_path), rcfg)
    assert d["pcap"]["ring_files"] == 2 and d["pcap"]["ring_used_bytes"] == 1500
    assert d["trace"]["refused"] == ["cifs/d"]
    text = "\n".join(recorderstatus.lines({"recorders": d}))
    assert ("trace recorder: recording 2 events in /t/instances/aodv2 (1024 KiB per CPU, clock boot, read from "
            "trace); not on this kernel: cifs/c; refused: cifs/d") in text
    assert "recorded: cifs/a, cifs/b" in text
    assert "packet recorder: recording tcp port 445 on any, 136 bytes per packet, ring 0.0 MB of 32.0 MB" in text


def test_dead_absent_disabled_and_hostile_states(tmp_path: Path) -> None:
    write(tmp_path, "trace", {"state": "recording", "pid": 2 ** 22 + 12345, "error": "x\x1b[2J"})  # no such pid
    d = recorderstatus.details(str(tmp_path), RecorderConfig())
    assert d["trace"]["state"] == "down" and d["pcap"]["state"] == "not running" and not d["pcap"]["enabled"]
    text = "\n".join(recorderstatus.lines({"recorders": d}))
    assert "trace recorder: down" in text and "packet recorder: off (recorder.pcap.enabled is false)" in text
    (tmp_path / "recorder-trace.json").write_text("{not json")
    assert recorderstatus.details(str(tmp_path), RecorderConfig())["trace"]["state"] == "not running"
    write(tmp_path, "trace", {"state": "failed", "pid": 1, "error": "tracefs is not mounted", "events": [1, "ok"],
                              "buffer_kb": True})
    t = recorderstatus.details(str(tmp_path), RecorderConfig())["trace"]
    assert t["events"] == ["ok"] and "buffer_kb" not in t  # wrong types are left out
    # the terminal never sees a control byte: status.report escapes what format_text prints
    snap = {"recorders": {"trace": {"state": "failed", "error": "a\x1b[2Jb", "enabled": True}}}
    out = clean_lines(status.format_text(snap, "running", "ok"))
    assert "trace recorder: failed (a" in out and "\x1b" not in out
