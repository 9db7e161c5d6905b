"""Config loader: YAML -> frozen dataclasses, every bad value reported with its dotted path."""

from __future__ import annotations

import copy
import dataclasses
import errno
import functools
import math
import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aod import config as C
from aod.actions import ACTION_NAMES
from aod.smb2 import COMMANDS, NT_STATUS

SRC = "<test>"


def load(text: str) -> C.Config:
    return C.load_text(text, SRC)


def errors_of(text: str) -> list[str]:
    with pytest.raises(C.ConfigError) as ei:
        load(text)
    errs = ei.value.errors
    assert errs and str(ei.value) == "\n".join(errs)
    return errs


def one_error(text: str, path: str, *words: str) -> str:
    """Exactly one error, at `path`, mentioning every word."""
    errs = errors_of(text)
    assert len(errs) == 1, errs
    msg = errs[0]
    assert msg.startswith(f"{SRC}: {path}: "), msg
    assert "expected" in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def dump(d: dict[str, Any]) -> str:
    return yaml.dump(d)


def no_source(cfg: C.Config) -> C.Config:
    return dataclasses.replace(cfg, source="<defaults>")


# ---------------------------------------------------------------- defaults, shipped file, round trip


def test_shipped_file_equals_builtin_defaults(repo_root: Path) -> None:
    path = repo_root / "etc" / "aodv2" / "config.yaml"
    cfg = C.load(str(path))
    assert cfg.source == str(path)
    assert no_source(cfg) == C.defaults()
    assert C.check(str(path)) == []


def test_shipped_file_sets_every_key_explicitly(repo_root: Path) -> None:
    # equality alone would pass with an empty file; the file must show every key
    raw = yaml.safe_load((repo_root / "etc" / "aodv2" / "config.yaml").read_text())

    def keys(d: Any, prefix: str = "") -> set[str]:
        if not isinstance(d, dict):
            return set()
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if k != "thresholds_ms":
                out |= keys(v, prefix + k + ".")
        return out

    assert keys(raw) == keys(C.to_dict(C.defaults()))


def test_defaults_actions_and_rules() -> None:
    d = C.defaults()
    assert set(d.actions) == set(C.ANOMALY_TYPES)
    evidence = ("task_stacks", "inflight", "connections")
    for t in ("hung", "emergency"):  # DebugData first, then the evidence of the hang, then the rest
        assert d.actions[t][:4] == ("cifs_debug", *evidence) and set(d.actions[t]) == set(ACTION_NAMES)
    for t in set(C.ANOMALY_TYPES) - {"hung", "emergency"}:
        assert d.actions[t] == tuple(n for n in ACTION_NAMES if n not in evidence)
    names = [r.name for r in d.errors]
    assert names == ["timeouts", "access_denied", "handle_errors"]
    timeouts = d.errors[0]
    assert NT_STATUS["STATUS_IO_TIMEOUT"] in timeouts.statuses and errno.ETIMEDOUT in timeouts.errnos
    assert d.errors[1].acceptable_count > 1


def test_empty_mapping_and_null_sections_give_defaults() -> None:
    assert no_source(load("{}")) == C.defaults()
    assert no_source(load("latency:\ncapture:\nactions:\n")) == C.defaults()


RICH = """
watch_interval_sec: 0.5
output_dir: /tmp/aod-out
latency:
  mode: trackonly
  default_threshold_ms: 200
  thresholds_ms: {WRITE: 1000, SMB2_READ: 800.5}
  track: [WRITE, READ, CREATE]
  exclude: [CHANGE_NOTIFY]
  acceptable_count: 3
  emergency_threshold_ms: 5000
  horizon_sec: 30
  share: 0.25
  share_min_count: 8
errors:
  - name: timeouts
    status: [0xC00000B5, "0xC0000203", STATUS_ACCESS_DENIED]
    errno: [ETIMEDOUT, 5]
    commands: [SMB2_WRITE, READ]
    acceptable_count: 2
    horizon_sec: 2.5
    share: 1
    share_min_count: 3
  - name: eio-only
    errno: [EIO]
ignored_statuses: [STATUS_END_OF_FILE, 0xC00000C9]
reconnect: {enabled: false}
actions: {latency: [journal], manual: []}
capture: {cooldown_sec: 0, max_per_hour: 60, concurrency: 1, action_timeout_sec: 2.5, lookback_sec: 30}
retention: {max_total_mb: 0.5, max_age_days: 1, interval_sec: 5}
ring: {path: /tmp/aod-ring, size_kb: 64}
tracers: [smb, synthetic, nfs_v4-x]
"""


def test_rich_config_values() -> None:
    cfg = load(RICH)
    assert cfg.source == SRC
    lat = cfg.latency
    assert lat.mode == "trackonly"
    assert dict(lat.thresholds_ms) == {9: 1000.0, 8: 800.5}
    assert lat.track == (9, 8, 5) and lat.exclude == (15,)
    assert isinstance(lat.default_threshold_ms, float) and isinstance(lat.acceptable_count, int)
    r0 = cfg.errors[0]
    assert r0.statuses == frozenset({0xC00000B5, 0xC0000203, 0xC0000022})
    assert r0.errnos == frozenset({errno.ETIMEDOUT, 5}) and r0.commands == frozenset({9, 8})
    assert (r0.horizon_sec, r0.share, r0.share_min_count) == (2.5, 1.0, 3)
    assert (lat.horizon_sec, lat.share, lat.share_min_count) == (30.0, 0.25, 8)
    assert cfg.errors[1] == C.ErrorRule("eio-only", errnos=frozenset({errno.EIO}))
    assert cfg.ignored_statuses == frozenset({0xC0000011, 0xC00000C9})  # reconnect is off: a session loss may be
    assert cfg.reconnect.enabled is False
    assert cfg.actions["latency"] == ("journal",) and cfg.actions["manual"] == ()
    assert cfg.actions["error"] == C.default_actions_for("error")  # untouched types keep the default
    assert cfg.capture.cooldown_sec == 0.0 and cfg.capture.max_per_hour == 60
    assert cfg.ring == C.RingConfig("/tmp/aod-ring", 64)
    assert cfg.tracers == ("smb", "synthetic", "nfs_v4-x")


@pytest.mark.parametrize("text", ["{}", RICH])
def test_round_trip(text: str) -> None:
    cfg = load(text)
    again = C.load_text(yaml.dump(C.to_dict(cfg)), SRC)
    assert again == cfg
    assert C.load_text(yaml.safe_dump(C.to_dict(cfg)), SRC) == cfg


def test_to_dict_uses_names() -> None:
    d = C.to_dict(load(RICH))
    assert d["latency"]["thresholds_ms"] == {"READ": 800.5, "WRITE": 1000.0}
    assert d["latency"]["track"] == ["WRITE", "READ", "CREATE"]
    assert "STATUS_IO_TIMEOUT" in d["errors"][0]["status"]
    assert d["errors"][0]["errno"] == ["EIO", "ETIMEDOUT"]


def test_hex_status_forms_are_equal() -> None:
    forms = ["STATUS_IO_TIMEOUT", "0xC00000B5", '"0xC00000B5"', '"0xc00000b5"', "3221225653"]
    got = {load(f"errors: [{{name: t, status: [{f}]}}]").errors[0].statuses for f in forms}
    assert got == {frozenset({0xC00000B5})}
    # an unnamed but valid code is kept and written back as hex
    cfg = load("errors: [{name: t, status: [0xC0001234]}]")
    assert C.to_dict(cfg)["errors"][0]["status"] == ["0xC0001234"]


@pytest.mark.parametrize(
    "bad", ["0", "0x0", "0x100000000", '"0x100000000"', "-1", '"C00000B5"', "true", "1.5", "110", '"0x103"']
)
def test_bad_status_values(bad: str) -> None:
    one_error(f"errors: [{{name: t, status: [{bad}]}}]", "errors[0].status[0]", "NT status")


def test_smb2_prefix_is_accepted_everywhere() -> None:
    a = load(
        "latency: {mode: all, thresholds_ms: {SMB2_WRITE: 700}, track: [SMB2_READ], exclude: [SMB2_ECHO]}\n"
        "errors: [{name: t, status: [STATUS_IO_TIMEOUT], commands: [SMB2_CLOSE]}]"
    )
    b = load(
        "latency: {mode: all, thresholds_ms: {WRITE: 700}, track: [READ], exclude: [ECHO]}\n"
        "errors: [{name: t, status: [STATUS_IO_TIMEOUT], commands: [CLOSE]}]"
    )
    assert a == b
    assert a.latency.thresholds_ms == {COMMANDS["WRITE"]: 700.0}


# ---------------------------------------------------------------- one test per class of bad value


def test_unknown_top_key_suggests() -> None:
    one_error("watch_interval: 2", "watch_interval", "unknown key", "did you mean 'watch_interval_sec'")


def test_unknown_nested_key_suggests() -> None:
    one_error("latency: {treshold_ms: 2}", "latency.treshold_ms", "unknown key", "'thresholds_ms'")
    one_error("errors: [{name: x, errno: [EIO], stauts: []}]", "errors[0].stauts", "'status'")
    one_error("capture: {cooldown: 1}", "capture.cooldown", "'cooldown_sec'")


@pytest.mark.parametrize(
    "text,path",
    [
        ("watch_interval_sec: true", "watch_interval_sec"),
        ("latency: {default_threshold_ms: false}", "latency.default_threshold_ms"),
        ("latency: {acceptable_count: true}", "latency.acceptable_count"),
        ("capture: {concurrency: true}", "capture.concurrency"),
        ("latency: {thresholds_ms: {WRITE: true}}", "latency.thresholds_ms.WRITE"),
        ("ring: {size_kb: true}", "ring.size_kb"),
    ],
)
def test_bool_is_not_a_number(text: str, path: str) -> None:
    one_error(text, path, "(boolean)")


@pytest.mark.parametrize(
    "text,path",
    [
        ('watch_interval_sec: "1"', "watch_interval_sec"),
        ("watch_interval_sec: [1]", "watch_interval_sec"),
        ("capture: {max_per_hour: 2.5}", "capture.max_per_hour"),
        ("capture: {max_per_hour: 2.0}", "capture.max_per_hour"),
        ("output_dir: 5", "output_dir"),
        ("latency: [1]", "latency"),
        ("latency: {mode: 1}", "latency.mode"),
        ("latency: {track: WRITE}", "latency.track"),
        ("latency: {thresholds_ms: [WRITE]}", "latency.thresholds_ms"),
        ("reconnect: {enabled: 1}", "reconnect.enabled"),
        ('reconnect: {enabled: "true"}', "reconnect.enabled"),
        ("errors: {name: x}", "errors"),
        ("errors:", "errors"),
        ("errors: [5]", "errors[0]"),
        ("errors: [null]", "errors[0]"),
        ("errors: [{name: x, status: STATUS_IO_TIMEOUT}]", "errors[0].status"),
        ("actions: [journal]", "actions"),
        ("actions: {latency: journal}", "actions.latency"),
        ("actions: {latency: }", "actions.latency"),
        ("tracers: smb", "tracers"),
        ("latency: {track: [9]}", "latency.track[0]"),
        ("watch_interval_sec: 2020-01-01", "watch_interval_sec"),
    ],
)
def test_wrong_types(text: str, path: str) -> None:
    one_error(text, path)


def test_non_string_key() -> None:
    one_error("1: 2", "[1]", "string key")
    one_error("latency: {thresholds_ms: {9: 100}}", "latency.thresholds_ms[9]", "string key")


@pytest.mark.parametrize(
    "text,path,hint",
    [
        ("latency: {thresholds_ms: {WRTIE: 10}}", "latency.thresholds_ms.WRTIE", "'WRITE'"),
        ("latency: {thresholds_ms: {write: 10}}", "latency.thresholds_ms.write", "'WRITE'"),
        ("latency: {track: [READ, SMB2_RAED]}", "latency.track[1]", "'READ'"),
        ("latency: {exclude: [NOTIFY]}", "latency.exclude[0]", "SMB2 command"),
        ("errors: [{name: x, errno: [EIO], commands: [WRITEX]}]", "errors[0].commands[0]", "'WRITE'"),
    ],
)
def test_unknown_command_names(text: str, path: str, hint: str) -> None:
    one_error(text, path, hint)


def test_unknown_status_errno_action_mode_type_names() -> None:
    one_error(
        "errors: [{name: a, status: [STATUS_IO_TIMEOUT]}, {name: b, status: [STATUS_IO_TIMOUT]}]",
        "errors[1].status[0]",
        "'STATUS_IO_TIMEOUT'",
    )
    one_error("errors: [{name: a, errno: [ETIMEOUT]}]", "errors[0].errno[0]", "'ETIMEDOUT'")
    one_error("errors: [{name: a, errno: [-110]}]", "errors[0].errno[0]", "positive")
    one_error("actions: {error: [journal, journl]}", "actions.error[1]", "'journal'")
    one_error("actions: {latncy: [journal]}", "actions.latncy", "'latency'")
    one_error("latency: {mode: track_only}", "latency.mode", "'trackonly'")


def test_errno_aliases_accepted() -> None:
    cfg = load("errors: [{name: a, errno: [EWOULDBLOCK, EAGAIN]}]")
    assert cfg.errors[0].errnos == frozenset({errno.EAGAIN})


@pytest.mark.parametrize(
    "key,value",
    [
        ("watch_interval_sec", "0"),
        ("watch_interval_sec", "-1"),
        ("watch_interval_sec", "0.01"),
        ("watch_interval_sec", "100000"),
        ("latency.default_threshold_ms", "0"),
        ("latency.default_threshold_ms", "-5"),
        ("latency.thresholds_ms.WRITE", "0"),
        ("latency.thresholds_ms.WRITE", "-1000"),
        ("latency.thresholds_ms.WRITE", "1e12"),
        ("latency.acceptable_count", "0"),
        ("latency.acceptable_count", "-3"),
        ("latency.horizon_sec", "0"),
        ("latency.horizon_sec", "-10"),
        ("latency.horizon_sec", "1e6"),
        ("latency.share", "1.5"),
        ("latency.share", "-0.1"),
        ("latency.share_min_count", "0"),
        ("capture.cooldown_sec", "-1"),
        ("capture.max_per_hour", "0"),
        ("capture.concurrency", "0"),
        ("capture.concurrency", "1000"),
        ("capture.action_timeout_sec", "0"),
        ("capture.lookback_sec", "-0.5"),
        ("retention.max_total_mb", "0"),
        ("retention.max_age_days", "-1"),
        ("retention.interval_sec", "0.5"),
        ("ring.size_kb", "0"),
        ("ring.size_kb", "-4096"),
    ],
)
def test_out_of_range_numbers(key: str, value: str) -> None:
    parts = key.split(".")
    text = value
    for p in reversed(parts):
        text = f"{{{p}: {text}}}"
    one_error(text, key)


def test_error_rule_acceptable_count_zero() -> None:
    one_error("errors: [{name: a, errno: [EIO], acceptable_count: 0}]", "errors[0].acceptable_count", ">= 1")


@pytest.mark.parametrize("key,value,hint", [("horizon_sec", "0", "> 0"), ("share", "2", "<= 1"),
                                            ("share_min_count", "0.5", "integer"), ("share", "yes", "number")])
def test_error_rule_horizon_and_share(key: str, value: str, hint: str) -> None:
    one_error(f"errors: [{{name: a, errno: [EIO], {key}: {value}}}]", f"errors[0].{key}", hint)


def test_a_rule_may_not_name_an_ignored_status() -> None:
    """The tracer drops ignored statuses in the kernel: with ignored_statuses set, a rule on one
    is an error (it could never fire)."""
    one_error("errors: [{name: eof, status: [STATUS_IO_TIMEOUT, STATUS_END_OF_FILE]}]\n"
              "ignored_statuses: [STATUS_END_OF_FILE]\n", "errors[0].status[1]",
              "not in ignored_statuses, got STATUS_END_OF_FILE")
    one_error("errors: [{name: nf, status: ['0xc0000034']}]\nignored_statuses: [STATUS_OBJECT_NAME_NOT_FOUND]\n",
              "errors[0].status[0]", "could never match")
    one_error("ignored_statuses: [STATUS_ACCESS_DENIED]\n", "errors[1].status", "the default rule access_denied")
    # the default rules name none of the default ignored statuses; an empty list ignores nothing
    assert not (C.defaults().ignored_statuses & frozenset().union(*(r.statuses for r in C.defaults().errors)))
    cfg = load("ignored_statuses: []\nerrors: [{name: eof, status: [STATUS_END_OF_FILE]}]\n")
    assert cfg.ignored_statuses == frozenset() and cfg.errors[0].statuses == frozenset({0xC0000011})


def test_a_0_1_rule_on_a_status_now_ignored_by_default_keeps_working() -> None:
    """Left to its default, ignored_statuses gives way to the rules: a 0.1 config whose rule names
    STATUS_OBJECT_NAME_NOT_FOUND still loads (the core must not stop after an upgrade), that status
    is not ignored, and the config says so as a warning."""
    cfg = load("errors: [{name: nf, status: [STATUS_OBJECT_NAME_NOT_FOUND], acceptable_count: 50}]\n")
    assert 0xC0000034 not in cfg.ignored_statuses
    assert cfg.ignored_statuses == C.DEFAULT_IGNORED_STATUSES - {0xC0000034}
    (w,) = cfg.warnings
    assert "STATUS_OBJECT_NAME_NOT_FOUND is not ignored" in w and "rule nf" in w
    assert C.defaults().warnings == ()


def test_ignored_statuses_shape_and_session_losses() -> None:
    one_error("ignored_statuses: [STATUS_NETWORK_NAME_DELETED]", "ignored_statuses",
              "reconnect detector needs it")
    assert load("ignored_statuses: [STATUS_NETWORK_NAME_DELETED]\nreconnect: {enabled: false}\n")
    one_error("ignored_statuses: STATUS_END_OF_FILE", "ignored_statuses", "a list of NT status names")
    one_error("ignored_statuses: [STATUS_END_OF_FLIE]", "ignored_statuses[0]", "did you mean 'STATUS_END_OF_FILE'")
    one_error("ignored_statuses: [0]", "ignored_statuses[0]", "NT status")
    many = ", ".join(f"0x{0xC0010000 + i:08X}" for i in range(257))
    one_error(f"ignored_statuses: [{many}]", "ignored_statuses", "at most 256")
    assert load("ignored_statuses: [STATUS_END_OF_FILE, '0xc0000011']\n").ignored_statuses == frozenset({0xC0000011})


def test_a_0_1_config_is_still_valid(repo_root: Path) -> None:
    """Configs written for aodv2 0.1 (no horizon, share or ignored_statuses keys) load unchanged,
    with the new keys at their defaults."""
    old = """watch_interval_sec: 1.0
latency: {mode: excludeonly, default_threshold_ms: 250, exclude: [CHANGE_NOTIFY], acceptable_count: 10,
          emergency_threshold_ms: 3000}
errors:
  - {name: timeouts, status: [STATUS_IO_TIMEOUT], errno: [ETIMEDOUT], commands: [], acceptable_count: 1}
  - {name: access_denied, status: [STATUS_ACCESS_DENIED], errno: [], commands: [], acceptable_count: 20}
"""
    cfg = load(old)
    assert (cfg.latency.horizon_sec, cfg.latency.share, cfg.latency.share_min_count) == (10.0, 0.5, 5)
    assert cfg.errors[1].share == 0.0 and cfg.ignored_statuses == C.DEFAULT_IGNORED_STATUSES


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_nan_and_inf(value: str) -> None:
    one_error(f"latency: {{default_threshold_ms: {value}}}", "latency.default_threshold_ms", "finite")
    one_error(f"capture: {{cooldown_sec: {value}}}", "capture.cooldown_sec", "finite")


def test_tracked_and_excluded() -> None:
    one_error(
        "latency: {mode: trackonly, track: [WRITE, READ], exclude: [ECHO, SMB2_READ]}",
        "latency.exclude[1]",
        "READ",
        "both",
    )
    # exclude left at its default: the error points at the user's track entry and says so
    one_error("latency: {mode: trackonly, track: [WRITE, CHANGE_NOTIFY]}", "latency.track[1]", "defaults")
    cfg = load("latency: {mode: trackonly, track: [CHANGE_NOTIFY], exclude: []}")
    assert cfg.latency.track == (15,) and cfg.latency.exclude == ()


def test_trackonly_needs_track() -> None:
    one_error("latency: {mode: trackonly}", "latency.track", "trackonly")
    one_error("latency: {mode: trackonly, track: []}", "latency.track", "trackonly")


def test_emergency_below_default_threshold() -> None:
    one_error(
        "latency: {default_threshold_ms: 800, emergency_threshold_ms: 700}",
        "latency.emergency_threshold_ms",
        ">= latency.default_threshold_ms (800)",
    )
    one_error("latency: {default_threshold_ms: 2000}", "latency.default_threshold_ms", "1000")
    load("latency: {default_threshold_ms: 700, emergency_threshold_ms: 700}")  # equal is fine


def test_per_command_threshold_above_emergency() -> None:
    """Same rule as default_threshold_ms: a per-command threshold over the emergency one would
    only ever see completions that already fired an emergency."""
    msg = one_error("latency: {thresholds_ms: {WRITE: 2000}}", "latency.thresholds_ms.WRITE",
                    "<= latency.emergency_threshold_ms (1000, its default; raise it too)", "got 2000")
    assert msg == (f"{SRC}: latency.thresholds_ms.WRITE: expected a number <= latency.emergency_threshold_ms "
                   "(1000, its default; raise it too), got 2000")
    one_error("latency: {emergency_threshold_ms: 1500, thresholds_ms: {READ: 800, SMB2_WRITE: 1500.5}}",
              "latency.thresholds_ms.SMB2_WRITE", "(1500)", "got 1500.5")
    errs = errors_of("latency: {emergency_threshold_ms: 900, default_threshold_ms: 800,"
                     " thresholds_ms: {WRITE: 901, READ: 5000, CREATE: 900}}")
    assert [e.split(": ")[1] for e in errs] == ["latency.thresholds_ms.WRITE", "latency.thresholds_ms.READ"]
    lat = load("latency: {emergency_threshold_ms: 5000, thresholds_ms: {WRITE: 5000}}").latency  # equal is fine
    assert lat.thresholds_ms == {COMMANDS["WRITE"]: 5000.0}


def test_error_rule_shape() -> None:
    one_error("errors: [{name: a}]", "errors[0]", "'status' or 'errno'")
    one_error("errors: [{name: a, status: [], errno: []}]", "errors[0]", "'status' or 'errno'")
    one_error("errors: [{status: [STATUS_IO_TIMEOUT]}]", "errors[0].name", "required")
    one_error("errors: [{name: 'a b', errno: [EIO]}]", "errors[0].name", "rule name")
    one_error("errors: [{name: a, errno: [EIO]}, {name: a, errno: [EIO]}]", "errors[1].name", "errors[0]")
    assert load("errors: []").errors == ()


@pytest.mark.parametrize("value", ["3000", "2", "8192.0", "2097152", "6"])
def test_ring_size(value: str) -> None:
    one_error(f"ring: {{size_kb: {value}}}", "ring.size_kb", "power of two")


def test_ring_path_name_without_a_dot() -> None:
    one_error("ring: {path: /sys/fs/bpf/aodv2/events.v2}", "ring.path", "no '.'")
    assert load("ring: {path: /sys/fs/bpf/aodv2/events_2}").ring.path == "/sys/fs/bpf/aodv2/events_2"


def test_ring_size_bounds_ok() -> None:
    assert load("ring: {size_kb: 4}").ring.size_kb == 4
    assert load("ring: {size_kb: 1048576}").ring.size_kb == 1 << 20


@pytest.mark.parametrize("name", ["Smb", "smb tracer", "", "a/b", "x" * 33, "smb.service"])
def test_bad_tracer_names(name: str) -> None:
    one_error(dump({"tracers": ["smb", name]}), "tracers[1]", "tracer name")


@pytest.mark.parametrize("value", ["var/log", "", "/", "//", "/var/../etc", "/var/log\n/x", "relative"])
def test_bad_paths(value: str) -> None:
    one_error(dump({"output_dir": value}), "output_dir", "absolute path")
    one_error(dump({"ring": {"path": value}}), "ring.path", "absolute path")


def test_duplicate_yaml_keys() -> None:
    one_error("latency:\n  mode: all\n  mode: trackonly\n  track: [WRITE]\n", "latency.mode", "line 3")


def test_weird_key_quoted_in_path() -> None:
    msg = one_error('latency: {"bad key.x": 1}', "latency['bad key.x']", "unknown key")
    assert "\n" not in msg


def test_all_errors_are_collected() -> None:
    text = """
watch_interval: 1
latency:
  thresholds_ms: {WRTIE: -1}
  acceptable_count: 0
errors:
  - name: a
    status: [STATUS_NOPE, 0x0]
    errno: [ENOPE]
  - {}
actions: {latency: [nope]}
capture: {concurrency: true, cooldown_sec: .nan}
ring: {size_kb: 5}
tracers: [BAD]
reconnect: {enabled: maybe}
"""
    errs = errors_of(text)
    paths = [
        "watch_interval",
        "latency.thresholds_ms.WRTIE",  # twice: unknown name and negative value
        "latency.acceptable_count",
        "errors[0].status[0]",
        "errors[0].status[1]",
        "errors[0].errno[0]",
        "errors[1].name",
        "errors[1]",
        "actions.latency[0]",
        "capture.concurrency",
        "capture.cooldown_sec",
        "ring.size_kb",
        "tracers[0]",
        "reconnect.enabled",
    ]
    for p in paths:
        assert any(e.startswith(f"{SRC}: {p}: ") for e in errs), (p, errs)
    assert len(errs) == len(paths) + 1
    assert all(e.count("\n") == 0 and "expected" in e for e in errs)


# ---------------------------------------------------------------- files and YAML-level problems


def test_load_file_and_check(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(RICH)
    assert C.load(str(p)) == dataclasses.replace(load(RICH), source=str(p))
    assert C.load(p) == C.load(str(p))  # type: ignore[arg-type]  # PathLike works too
    p.write_text("latency: {mode: bogus}\nring: {size_kb: 3}\n")
    errs = C.check(str(p))
    assert len(errs) == 2 and all(e.startswith(f"{p}: ") for e in errs)


def file_error(path: Union[str, Path], *words: str) -> str:
    with pytest.raises(C.ConfigError) as ei:
        C.load(str(path))
    assert len(ei.value.errors) == 1
    msg = ei.value.errors[0]
    assert msg.startswith(f"{path}: "), msg
    for w in words:
        assert w in msg, (w, msg)
    assert C.check(str(path)) == ei.value.errors
    return msg


def test_missing_file(tmp_path: Path) -> None:
    file_error(tmp_path / "nope.yaml", "cannot open", "No such file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    file_error(tmp_path, "directory")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    file_error(fifo, "regular")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("{}")
    real_open = os.open

    def fake_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if os.fspath(path) == str(p):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(C.os, "open", fake_open)
    file_error(p, "cannot open", "Permission denied")


def test_empty_and_comment_only_files(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("")
    file_error(p, "empty")
    p.write_text("# nothing here\n\n")
    file_error(p, "empty")


def test_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b"output_dir: /var/log/\xff\xfe\n")
    file_error(p, "UTF-8", "offset 21")


def test_utf8_bom_is_fine(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xef\xbb\xbfwatch_interval_sec: 2\n")
    assert C.load(str(p)).watch_interval_sec == 2.0


def test_too_large(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# " + "x" * C.MAX_FILE_BYTES + "\n{}\n")
    file_error(p, "at most")
    with pytest.raises(C.ConfigError, match="at most"):
        load("# " + "x" * C.MAX_FILE_BYTES)


@pytest.mark.parametrize("text", ["[1, 2]", "just a string", "5", "- a\n- b\n"])
def test_top_level_not_a_mapping(text: str) -> None:
    errs = errors_of(text)
    assert len(errs) == 1 and "top level" in errs[0]


def test_syntax_error_has_line_number() -> None:
    errs = errors_of("watch_interval_sec: 1\nlatency:\n  mode: all\n   bad: [\n")
    assert len(errs) == 1 and errs[0].startswith(f"{SRC}: line ") and "expected valid YAML" in errs[0]
    errs = errors_of("a: 1\nb: c: d\n")
    assert errs[0].startswith(f"{SRC}: line 2, column")


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']",
        "a: !!binary 'not base64!!'",
        "a: 2020-13-45",
        "\x00",
        "a: 1\n---\nb: 2\n",
    ],
)
def test_other_yaml_problems(text: str) -> None:
    errs = errors_of(text)
    assert len(errs) == 1 and "expected" in errs[0]


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{chr(ord(c) - 1)}'] * 9)}]\n" for c in "bcdefghi"
)


def test_billion_laughs_rejected() -> None:
    errs = errors_of(BILLION_LAUGHS)
    assert len(errs) == 1 and "aliases" in errs[0] and "line " in errs[0]


def test_recursive_alias_and_deep_nesting_rejected() -> None:
    assert "recursive" in errors_of("a: &x [*x]")[0]
    assert "nesting" in errors_of("a: " + "[" * 5000 + "]" * 5000)[0]
    assert "aliases" in errors_of("a: &x 1\nb: [" + ", ".join(["*x"] * (C.MAX_YAML_ALIASES + 1)) + "]")[0]


def test_small_anchors_and_merge_keys_work() -> None:
    cfg = load("latency: &lat {default_threshold_ms: 100}\ncapture: {concurrency: 2}\n")
    assert cfg.latency.default_threshold_ms == 100.0 and cfg.capture.concurrency == 2
    cfg = load("errors:\n  - &r {name: a, errno: [EIO]}\n  - {<<: *r, name: b}\n")
    assert [r.name for r in cfg.errors] == ["a", "b"] and cfg.errors[1].errnos == frozenset({errno.EIO})


# ---------------------------------------------------------------- threshold lookup


def lat_of(text: str) -> C.LatencyConfig:
    return load(text).latency


def test_threshold_lookup_all() -> None:
    lat = lat_of(
        "latency: {mode: all, default_threshold_ms: 200, thresholds_ms: {WRITE: 1000.5}, exclude: [ECHO],"
        " emergency_threshold_ms: 2000}"
    )
    t = C.threshold_lookup(lat)
    assert t.dtype == np.float64 and t.shape == (65536,)
    assert t[9] == 1_000_500_000 and t[8] == 200_000_000 and t[13] == 200_000_000  # exclude ignored
    assert t[65535] == 200_000_000 and np.isfinite(t).all()
    assert C.min_threshold_ns(lat) == 200_000_000


def test_threshold_lookup_trackonly() -> None:
    lat = lat_of(
        "latency: {mode: trackonly, track: [WRITE, READ], thresholds_ms: {WRITE: 5000, CREATE: 1},"
        " default_threshold_ms: 300, emergency_threshold_ms: 5000}"
    )
    t = C.threshold_lookup(lat)
    assert t[9] == 5e9 and t[8] == 3e8
    assert np.isinf(t[5]) and np.isinf(t[0]) and np.isinf(t[65535])  # CREATE threshold unused
    assert np.isfinite(t).sum() == 2
    assert C.min_threshold_ns(lat) == 300_000_000
    # all tracked thresholds at the emergency one: the emit filter is the emergency threshold
    lat = lat_of("latency: {mode: trackonly, track: [WRITE], thresholds_ms: {WRITE: 1000}}")
    assert C.min_threshold_ns(lat) == lat.emergency_ns == 1_000_000_000


def test_threshold_lookup_excludeonly() -> None:
    lat = lat_of(
        "latency: {mode: excludeonly, exclude: [CHANGE_NOTIFY, ECHO], thresholds_ms: {ECHO: 1, READ: 50}}"
    )
    t = C.threshold_lookup(lat)
    assert np.isinf(t[15]) and np.isinf(t[13])
    assert t[8] == 50_000_000 and t[9] == 500_000_000
    assert np.isfinite(t).sum() == 65534
    assert C.min_threshold_ns(lat) == 50_000_000  # the excluded ECHO threshold does not count
    assert C.min_threshold_ns(C.defaults().latency) == 500_000_000


def test_threshold_vectorised_use() -> None:
    t = C.threshold_lookup(C.defaults().latency)
    cmds = np.array([9, 15, 8], dtype=np.uint16)
    lat_ns = np.array([600_000_000, 10**12, 100], dtype=np.uint64)
    assert (lat_ns > t[cmds]).tolist() == [True, False, False]


# ---------------------------------------------------------------- property tests


@functools.cache
def bases() -> list[dict[str, Any]]:
    return [C.to_dict(C.defaults()), C.to_dict(load(RICH))]

Path_ = tuple[Union[str, int], ...]


def fmt(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def nodes(obj: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    out: list[tuple[Path_, Any]] = [(path, obj)] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += nodes(v, path + (i,))
    return out


def set_at(d: Any, path: Path_, value: Any) -> None:
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


def mutations(path: Path_, value: Any) -> list[Any]:
    """Values that are invalid at `path`, whatever the rest of the config is."""
    if isinstance(value, bool):
        return [1, 0, "true", None, 1.5, []]
    if isinstance(value, int):
        return [-abs(value) - 1, 0.5 + value, "7", True, None, [value], float("nan")]
    if isinstance(value, float):
        bad: list[Any] = [-abs(value) - 1, "7", True, None, [value], float("nan"), float("inf"), -math.inf]
        return bad
    if isinstance(value, str):
        number = -5 if "errno" in path or "benign_statuses" in path else 5  # a positive number is a valid errno
        return ["no such/name!", number, True, None, 1.5, [value], {"a": 1}]
    if isinstance(value, list):
        return ["text", 5, True, None, {"a": 1}]
    if isinstance(value, dict):
        return [[1], 5, "text", True]  # null means "defaults" for a mapping
    if value is None and path[-1] == "hung_threshold_ms":  # null: the emergency threshold
        return ["7", True, [1], {"a": 1}, -1.0, 50.0]
    raise AssertionError(value)


@st.composite
def one_bad_value(draw: st.DrawFn) -> tuple[str, str]:
    base = copy.deepcopy(draw(st.sampled_from(bases())))
    targets = nodes(base)
    mappings: list[Path_] = [(), *[p for p, v in targets if isinstance(v, dict)]]
    if draw(st.booleans()):
        path, value = draw(st.sampled_from(targets))
        set_at(base, path, draw(st.sampled_from(mutations(path, value))))
    else:
        where = draw(st.sampled_from(mappings))
        key = draw(st.sampled_from(["zz_unknown", "WRTIE", "latncy", "Status"]))
        path = where + (key,)
        if where:
            set_at(base, path, 1)
        else:
            base[key] = 1
    return yaml.dump(base), fmt(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_bad_value())
def test_property_one_bad_value_is_reported_at_its_path(case: tuple[str, str]) -> None:
    text, path = case
    with pytest.raises(C.ConfigError) as ei:
        load(text)
    assert any(e.startswith(f"{SRC}: {path}: ") for e in ei.value.errors), (path, ei.value.errors)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from([*COMMANDS, "SMB2_WRITE", *list(NT_STATUS)[:5], "ETIMEDOUT", *ACTION_NAMES, "/x"])
)
KEYS = st.sampled_from(
    [
        *C.to_dict(C.defaults()),
        *C.to_dict(C.defaults())["latency"],
        *C.to_dict(C.defaults())["capture"],
        "name",
        "status",
        "errno",
        "commands",
        "enabled",
        "path",
        "size_kb",
        *C.ANOMALY_TYPES,
        *COMMANDS,
    ]
) | st.text(max_size=10)
JUNK = st.recursive(
    SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(KEYS, c, max_size=4), max_leaves=25
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, JUNK, max_size=6))
def test_property_junk_never_crashes(data: dict[str, Any]) -> None:
    try:
        cfg = load(yaml.dump(data))
    except C.ConfigError as exc:
        assert exc.errors and all(e.startswith(f"{SRC}: ") and "\n" not in e for e in exc.errors)
    else:
        assert C.load_text(yaml.dump(C.to_dict(cfg)), SRC) == cfg


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_property_raw_text_never_crashes(text: str) -> None:
    try:
        load(text)
    except C.ConfigError as exc:
        assert exc.errors


# ---------------------------------------------------------------- hung and health (issue 13)


def test_hung_threshold_defaults_to_emergency_and_can_be_off() -> None:
    assert C.hung_threshold_ns(C.defaults().latency) == C.defaults().latency.emergency_ns
    lat = C.load_text("latency: {emergency_threshold_ms: 3000}").latency
    assert lat.hung_threshold_ms is None and C.hung_threshold_ns(lat) == 3_000_000_000
    assert C.hung_threshold_ns(C.load_text("latency: {hung_threshold_ms: 250}").latency) == 250_000_000
    off = C.load_text("latency: {hung_threshold_ms: 0}").latency
    assert C.hung_threshold_ns(off) == 0 and C.hung_cmd_mask(off) == 0
    assert C.load_text("latency: {hung_threshold_ms: null}").latency.hung_threshold_ms is None


def test_hung_cmd_mask_follows_mode_exclude_and_hung_exclude() -> None:
    d = C.defaults().latency
    mask = C.hung_cmd_mask(d)
    lock, notify, write = COMMANDS["LOCK"], COMMANDS["CHANGE_NOTIFY"], COMMANDS["WRITE"]
    assert not mask >> lock & 1 and not mask >> notify & 1 and mask >> write & 1
    assert mask >> 31 & 1  # ids >= 31 share the last slot, as in the tracer's emit mask
    track = C.load_text("latency: {mode: trackonly, track: [WRITE, LOCK], hung_exclude: []}").latency
    assert C.hung_cmd_mask(track) == (1 << write) | (1 << lock)
    every = C.load_text("latency: {mode: all, hung_exclude: [READ]}").latency
    assert C.hung_cmd_mask(every) == 0xFFFFFFFF & ~(1 << COMMANDS["READ"])


@pytest.mark.parametrize("text, msg", [
    ("latency: {hung_threshold_ms: 50}",
     "latency.hung_threshold_ms: expected 0 (off) or a number >= 100 (milliseconds), got 50"),
    ("latency: {hung_threshold_ms: -1}", "latency.hung_threshold_ms: expected a number >= 0"),
    ("latency: {hung_threshold_ms: fast}", "latency.hung_threshold_ms: expected a number"),
    ("latency: {hung_group_ms: 501}", "latency.hung_group_ms: expected a number >= 0 and <= 500 (milliseconds)"),
    ("latency: {hung_exclude: [LOKC]}", "latency.hung_exclude[0]: expected an SMB2 command name such as WRITE, "
                                        "got 'LOKC' (string); did you mean 'LOCK'?"),
    ("health: {credits: {enabled: yes please}}", "health.credits.enabled: expected true or false"),
    ("health: {creds: {enabled: true}}", "health.creds: unknown key, expected one of: credits, connect, auth"),
    ("health: {auth: {enabeld: true}}", "health.auth.enabeld: unknown key, expected one of: enabled"),
    ("actions: {hung: [task_stack]}", "actions.hung[0]: expected an action name"),
])
def test_hung_and_health_errors_name_path_and_field(text: str, msg: str) -> None:
    with pytest.raises(C.ConfigError) as e:
        C.load_text(text)
    assert any(msg in line for line in e.value.errors), e.value.errors


def test_health_sections_and_new_action_lists() -> None:
    cfg = C.load_text("health: {credits: {enabled: false}}\nactions: {hung: [cifs_debug, task_stacks], auth: []}")
    assert [cfg.health.enabled(t) for t in C.HEALTH_TYPES] == [False, True, True]
    assert cfg.actions["hung"] == ("cifs_debug", "task_stacks") and cfg.actions["auth"] == ()
    assert C.load_text(yaml.dump(C.to_dict(cfg))).health == cfg.health
