"""The `recorder:` config section: defaults, every bad value at its dotted path, to_dict round trip."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from aod import config as config_mod
from aod.configrecorder import (
    DEFAULT_TRACE_EVENTS,
    PCAP_SNAPLEN,
    PcapRecorderConfig,
    RecorderConfig,
    TraceRecorderConfig,
)

SRC = "/etc/aodv2/test.yaml"


def load(rec: Any) -> config_mod.Config:
    return config_mod.load_text(yaml.safe_dump({"recorder": rec}), SRC)


def errors(rec: Any) -> list[str]:
    with pytest.raises(config_mod.ConfigError) as ei:
        load(rec)
    return ei.value.errors


def one_error(rec: Any, path: str) -> str:
    errs = errors(rec)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{SRC}: {path}: "), errs
    assert "expected " in errs[0] and ", got " in errs[0] or "unknown key, expected one of" in errs[0], errs
    return errs[0]


def test_defaults() -> None:
    for text in ("{}", "recorder: null", "recorder: {}", "recorder: {trace: null, pcap: null}"):
        rec = config_mod.load_text(text, SRC).recorder
        assert rec == RecorderConfig(), text
    t, p = RecorderConfig().trace, RecorderConfig().pcap
    assert (t.enabled, t.events, t.buffer_kb, t.clock, t.window_sec, t.max_mb) == (
        True, DEFAULT_TRACE_EVENTS, 1024, "boot", 30.0, 8.0)
    assert all(e.startswith("cifs/smb3_") for e in t.events) and "cifs/smb3_cmd_done" in t.events
    assert t.max_bytes == 8 * 1024 * 1024
    assert (p.enabled, p.interface, p.ports, p.snaplen, p.file_mb, p.files, p.window_sec, p.dir) == (
        False, "any", (445,), PCAP_SNAPLEN, 8, 4, 30.0, "/var/lib/aodv2/pcap")
    assert PCAP_SNAPLEN == 136 and p.ring_bytes == 32_000_000 and p.bpf_filter() == "tcp port 445"


def test_good_values_parsed_and_normalized() -> None:
    rec = load({
        "trace": {"enabled": False, "events": ["cifs/*", "sunrpc/xprt_retransmit", "cifs/*"], "buffer_kb": 16,
                  "clock": "mono", "window_sec": 0.5, "max_mb": 256},
        "pcap": {"enabled": True, "interface": "eth0.100", "ports": [445, 2049, 445], "snaplen": 68,
                 "file_mb": 1, "files": 100, "window_sec": 3600, "dir": "/srv//pcap/./ring/"},
    }).recorder
    assert rec.trace == TraceRecorderConfig(False, ("cifs/*", "sunrpc/xprt_retransmit"), 16, "mono", 0.5, 256.0)
    assert isinstance(rec.trace.buffer_kb, int) and isinstance(rec.trace.window_sec, float)
    assert rec.pcap == PcapRecorderConfig(True, "eth0.100", (445, 2049), 68, 1, 100, 3600.0, "/srv/pcap/ring")
    assert rec.pcap.bpf_filter() == "tcp port 445 or tcp port 2049"
    assert rec.pcap.ring_bytes == 100_000_000
    assert load({"trace": {"events": []}}).recorder.trace.events == ()  # records nothing, allowed


@pytest.mark.parametrize("item", ["cifs", "cifs/", "/smb3_cmd_done", "cifs/smb3 cmd", "../x/y", "cifs/a/b",
                                  "cifs/smb3_*", "*/*", "cifs:smb3_cmd_done", 5, None, ["cifs/x"]])
def test_bad_event_item_at_its_index(item: Any) -> None:
    msg = one_error({"trace": {"events": ["cifs/smb3_cmd_done", item]}}, "recorder.trace.events[1]")
    assert "system/event or system/*" in msg


def test_events_not_a_list() -> None:
    assert "expected a list of tracefs events" in one_error({"trace": {"events": "cifs/*"}}, "recorder.trace.events")


@pytest.mark.parametrize("clock", ["local", "global", "BOOT", "", 1, None])
def test_bad_clock(clock: Any) -> None:
    msg = one_error({"trace": {"clock": clock}}, "recorder.trace.clock")
    assert "expected one of: boot, mono, got" in msg


def test_bad_ports_each_at_its_index() -> None:
    errs = errors({"pcap": {"ports": [445, 0, 65536, "445", True, 2.5, 2049]}})
    assert [e.split(": ")[1] for e in errs] == [f"recorder.pcap.ports[{i}]" for i in (1, 2, 3, 4, 5)], errs
    assert all("expected a TCP port (an integer 1-65535)" in e for e in errs)
    assert "at least one TCP port" in one_error({"pcap": {"ports": []}}, "recorder.pcap.ports")
    assert "expected a list of TCP ports" in one_error({"pcap": {"ports": 445}}, "recorder.pcap.ports")


@pytest.mark.parametrize("iface", ["-w", "-i", "--help", "eth0 any", "eth0;id", "a" * 16, "", "eth/0", 0, None])
def test_bad_interface(iface: Any) -> None:
    one_error({"pcap": {"interface": iface}}, "recorder.pcap.interface")


@pytest.mark.parametrize("iface", ["any", "eth0", "a" * 15, "br-1f2e", "wlp0s20f3", "bond0.10"])
def test_good_interface(iface: str) -> None:
    assert load({"pcap": {"interface": iface}}).recorder.pcap.interface == iface


@pytest.mark.parametrize("d", ["var/lib/aodv2/pcap", "pcap", "./x", "/srv/../etc", "/srv/x\n", 5, None,
                               "/", "/var/lib", "/tmp", "/etc", "/proc/aodv2", "/sys/kernel/x", "/dev/shm/x",
                               "/x" * 300])
def test_bad_dir(d: Any) -> None:
    one_error({"pcap": {"dir": d}}, "recorder.pcap.dir")


def test_system_dir_says_why() -> None:
    msg = one_error({"pcap": {"dir": "/var/lib/"}}, "recorder.pcap.dir")
    assert "directory of its own" in msg and "/var/lib is a system directory" in msg


@pytest.mark.parametrize("key,bad", [
    ("trace.buffer_kb", 15), ("trace.buffer_kb", 262145), ("trace.buffer_kb", 1.5), ("trace.buffer_kb", True),
    ("trace.buffer_kb", "1024"), ("trace.window_sec", 0), ("trace.window_sec", -1), ("trace.window_sec", 3601),
    ("trace.window_sec", float("nan")), ("trace.max_mb", 0), ("trace.max_mb", 1025),
    ("pcap.snaplen", 67), ("pcap.snaplen", 65536), ("pcap.file_mb", 0), ("pcap.file_mb", 1025),
    ("pcap.files", 1), ("pcap.files", 101), ("pcap.window_sec", 0), ("pcap.window_sec", 3600.5),
    ("trace.enabled", "yes"), ("pcap.enabled", 1), ("pcap.enabled", None),
])
def test_out_of_range_at_dotted_path(key: str, bad: Any) -> None:
    sec, name = key.split(".")
    one_error({sec: {name: bad}}, f"recorder.{key}")


def test_range_edges_accepted() -> None:
    rec = load({"trace": {"buffer_kb": 262144, "window_sec": 3600, "max_mb": 0.5},
                "pcap": {"snaplen": 65535, "file_mb": 1024, "files": 2, "window_sec": 0.001}}).recorder
    assert (rec.trace.buffer_kb, rec.trace.window_sec, rec.trace.max_mb) == (262144, 3600.0, 0.5)
    assert (rec.pcap.snaplen, rec.pcap.file_mb, rec.pcap.files, rec.pcap.window_sec) == (65535, 1024, 2, 0.001)


def test_unknown_keys_and_wrong_shapes() -> None:
    assert "unknown key" in one_error({"trace": {"event": ["cifs/*"]}}, "recorder.trace.event")
    assert "unknown key" in one_error({"tcpdump": {}}, "recorder.tcpdump")
    one_error(["trace"], "recorder")
    one_error({"pcap": "on"}, "recorder.pcap")


def test_every_problem_reported_at_once_with_the_file_name() -> None:
    errs = errors({"trace": {"events": ["ok/x", "bad"], "clock": "tai", "buffer_kb": 1},
                   "pcap": {"interface": "-x", "dir": "rel", "ports": [0], "files": 1}})
    paths = sorted(e.split(": ")[1] for e in errs)
    assert paths == sorted(["recorder.trace.events[1]", "recorder.trace.clock", "recorder.trace.buffer_kb",
                            "recorder.pcap.interface", "recorder.pcap.dir", "recorder.pcap.ports[0]",
                            "recorder.pcap.files"])
    assert all(e.startswith(f"{SRC}: recorder.") for e in errs)
    assert "got 'tai' (string)" in next(e for e in errs if ".clock" in e)


def test_to_dict_round_trip() -> None:
    base = config_mod.load_text("{}", SRC)
    custom = dataclasses.replace(base, recorder=RecorderConfig(
        TraceRecorderConfig(False, ("cifs/*", "nfs4/nfs4_sequence_done"), 4096, "mono", 12.5, 0.25),
        PcapRecorderConfig(True, "eth1", (445, 2049), 200, 3, 5, 7.5, "/srv/aodv2-pcap")))
    for cfg in (base, custom):
        d = config_mod.to_dict(cfg)
        assert d["recorder"]["trace"]["events"] == list(cfg.recorder.trace.events)  # plain lists for YAML
        assert d["recorder"]["pcap"]["ports"] == list(cfg.recorder.pcap.ports)
        again = config_mod.load_text(yaml.safe_dump(d), SRC)
        assert again.recorder == cfg.recorder
        assert again == cfg
