"""Hostile input against issue 13's parts: the evidence helper's request reader, share names in
the Prometheus textfile, the mount guard's view of /proc/mounts, the hung threshold's floor.
Each test fails with its fix removed (see the comment on each)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aod import config, evidence, metrics, mountguard, names
from aod.actions import ActionEnv, cifs_mount_entries
from aod.sharelabels import ShareTotals

ROOT = Path(__file__).resolve().parent.parent


# --- the evidence helper ----------------------------------------------------------------------


def _helper(stdin: Any, stdout: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aod.cli", "evidence", "--pin-dir", "/nonexistent"],
                            stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT)


def test_deeply_nested_request_is_refused_without_a_traceback() -> None:
    # 4 KiB of "[[[[...]]]]" overflowed the JSON decoder: RecursionError, a traceback, exit 1
    rc, err = None, ""
    p = _helper(subprocess.PIPE, subprocess.PIPE)
    out, err_b = p.communicate(b"[" * 2040 + b"]" * 2040 + b"\n", timeout=30)
    rc, err = p.returncode, err_b.decode()
    assert rc == 2, err
    assert "Traceback" not in err and "nested too deeply" in json.loads(out)["error"]


def test_a_peer_that_never_sends_its_line_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # without the read deadline the helper waited for the line until systemd's RuntimeMaxSec
    monkeypatch.setattr(evidence, "READ_TIMEOUT_SEC", 0.3)
    a, b = socket.socketpair()
    try:
        a.sendall(b'{"want": ["stacks"')  # and nothing more, connection left open
        rin, rout = b.makefile("rb", buffering=0), b.makefile("wb")
        t0 = time.monotonic()
        rc = evidence.serve(rin, rout, proc="/nonexistent", pin_dir="/nonexistent",
                            read_timeout=evidence.READ_TIMEOUT_SEC)
        rout.flush()
        assert rc == 2 and time.monotonic() - t0 < 2.0
        a.settimeout(2.0)
        assert "no request line" in json.loads(a.recv(65536))["error"]
    finally:
        a.close()
        b.close()


def test_answer_stays_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # the stacks scan used the whole budget, then ss got its own 5 s: the core, which waits
    # budget / 0.8, gave up and lost every section
    seen: list[float] = []

    def slow_stacks(proc: str, pids: list[int], deadline: float) -> tuple[list[Any], bool, str]:
        time.sleep(max(deadline - time.monotonic(), 0))
        return [], True, "stopped at the budget"

    def fake_conn(which: Any, timeout: float = evidence.SS_TIMEOUT) -> tuple[str, bool, str, str]:
        seen.append(timeout)
        return "ss text", False, "", ""

    monkeypatch.setattr(evidence, "collect_stacks", slow_stacks)
    monkeypatch.setattr(evidence, "collect_connections", fake_conn)
    t0 = time.monotonic()
    resp = evidence.answer({"want": ["stacks", "connections"], "pids": [], "budget_ms": 300}, "/nonexistent")
    assert time.monotonic() - t0 < 0.6
    assert seen and seen[0] <= 0.3 and resp["connections"] == "ss text"


def test_one_section_failing_keeps_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any, **_k: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr(evidence, "collect_inflight", boom)
    monkeypatch.setattr(evidence, "collect_connections", lambda *_a, **_k: ("ss text", False, "", ""))
    resp = evidence.answer({"want": ["inflight", "connections"], "pids": [], "budget_ms": 1000}, "/nonexistent")
    assert resp["connections"] == "ss text" and "internal error" in resp["errors"]["inflight"]


# --- share names in the Prometheus textfile -----------------------------------------------------


def test_share_name_with_a_pipe_does_not_break_the_textfile() -> None:
    # the snapshot keys are "share|command|status": split("|") raised ValueError on "\\srv\a|b",
    # so the textfile stopped being written while that share kept its label
    st = ShareTotals()
    st.add_errors({("\\\\srv\\a|b", 5, 0xC0000022): 3})
    st.add_slow('\\\\srv\\q"x\ny} 1\nfake 9', np.array([10]), 5)
    text = metrics.render({"share_labels": st.snapshot()}, None)
    assert 'share="\\\\\\\\srv\\\\a|b"} 3' in text
    for line in text.splitlines():  # every sample line is one well-formed sample
        assert line.startswith("#") or line.startswith("aodv2_"), line


# --- config ---------------------------------------------------------------------------------


def test_hung_threshold_default_never_below_the_floor() -> None:
    # an emergency threshold of 20 ms made every 20 ms request "hung" (and a capture of all stacks)
    cfg = config.load_text("latency: {emergency_threshold_ms: 20, default_threshold_ms: 10}\n")
    assert config.hung_threshold_ns(cfg.latency) == int(config.HUNG_MIN_MS * 1e6)
    cfg = config.load_text("latency: {emergency_threshold_ms: 2000}\n")
    assert config.hung_threshold_ns(cfg.latency) == 2_000_000_000
    assert config.hung_threshold_ns(config.load_text("latency: {hung_threshold_ms: 0}\n").latency) == 0


# --- the mount guard ----------------------------------------------------------------------------


def test_guard_covers_mounts_below_a_hung_mount() -> None:
    # smbinfo /mnt/a/sub walks through the hung /mnt/a: it was not guarded
    entries = [("//srv/hung", "/mnt/a"), ("//other/ok", "/mnt/a/sub"), ("//other/ok2", "/mnt/ab")]
    out = mountguard.guarded_mounts(entries, {("srv", "hung")}, False)
    assert set(out) == {"/mnt/a", "/mnt/a/sub"}


def test_guard_covers_a_hung_share_no_mount_names() -> None:
    # a DFS mount //dfs/ns whose hung tree is \\fs1\data: no source names it; nothing was guarded
    entries = [("//dfs/ns", "/mnt/dfs"), ("//srv/x", "/mnt/x")]
    assert set(mountguard.guarded_mounts(entries, {("fs1", "data")}, False)) == {"/mnt/dfs", "/mnt/x"}
    # a share of a mounted server (IPC$ of the session): that server's mounts
    entries = [("//srv/a", "/mnt/a"), ("//srv2/b", "/mnt/b")]
    assert set(mountguard.guarded_mounts(entries, {("srv", "ipc$")}, False)) == {"/mnt/a"}


def test_guard_sees_stacked_mounts_and_escaped_paths(tmp_path: Path) -> None:
    # two mounts on one mount point, the hung one on top: /proc/mounts was deduplicated first
    (tmp_path / "mounts").write_bytes(
        b"//srv/ok /mnt/my\\040share cifs rw 0 0\n//srv/hung /mnt/my\\040share cifs rw 0 0\n"
        b"//srv/my\\040dead /mnt/b cifs rw 0 0\n")
    entries = cifs_mount_entries(ActionEnv(proc_root=str(tmp_path)), unique=False)
    assert mountguard.guarded_mounts(entries, {("srv", "hung")}, False).keys() == {"/mnt/my share"}
    assert mountguard.guarded_mounts(entries, {("srv", "my dead")}, False).keys() == {"/mnt/b"}
    assert [m for _, m in cifs_mount_entries(ActionEnv(proc_root=str(tmp_path)))] == ["/mnt/my share", "/mnt/b"]


# --- DebugData ---------------------------------------------------------------------------------


def test_debugdata_names_a_share_with_spaces_and_stays_linear() -> None:
    # "\\srv\my share Mounts: 1": the share pattern took \S+ only, so such a share had no name
    # (its hung requests then guarded every mount, and no label named it)
    text = ("1) ConnectionId: 0x1 Hostname: srv \n\tSessionId: 0x10 \n"
            "\t1) \\\\srv\\my share Mounts: 1 DevInfo: 0x20 Attributes: 0x1006f\n\ttid: 0x5\tMaximal Access: 0x1\n")
    assert names.parse_debugdata(text).shares == {(0x10, 5): "\\\\srv\\my share"}
    t0 = time.monotonic()
    names.parse_debugdata("\t1) \\\\" + "a Mounts:" * 400_000 + "\n" + "SessionId: 0x" * 300_000)
    assert time.monotonic() - t0 < 5.0


# --- hung and health records with garbage fields -------------------------------------------------


def test_garbage_health_codes_keep_the_metric_labels_bounded() -> None:
    # each unknown code was its own "health_N" label: up to 65536 series of
    # aodv2_kernel_health_events_total from bad records
    from aod import health

    codes = np.arange(1000, dtype=np.uint16)
    got = health.counts(codes)
    assert sum(got.values()) == 1000 and len(got) <= len(health.HEALTH_NAMES) + 1
    assert got["unknown"] == 1000 - sum(1 for c in range(1000) if c in health.HEALTH_NAMES)


def test_hostile_task_and_share_names_stay_on_their_line() -> None:
    # comm is any 15 bytes a user picks: "x\n1 1 fake D" forged a task line in stacks.txt
    from aod import evidence_client

    resp = {"stacks": [{"pid": 7, "tid": 7, "comm": "x\n1 1 fake D", "state": "D", "wchan": "w\r",
                        "why": ["D"], "stack": ["[<0>] a\x1b[31m"]}],
            "inflight": [{"age_ms": 1.0, "map": "hung", "command": "WRITE", "mid": 1, "pid": 7,
                          "comm": "a\nb", "session": 1, "tree": 2, "conn": "c1", "share": "\\\\s\\x\ny"}]}
    stacks = evidence_client.render("stacks", resp).decode()
    assert "x\\x0a1 1 fake D" in stacks and len(stacks.splitlines()) == 5 and "\x1b" not in stacks
    rows = evidence_client.render("inflight", resp).decode().splitlines()
    assert len(rows) == 3 and "a\\x0ab" in rows[2] and "\\\\s\\x\\x0ay" in rows[2]


def test_capture_plan_guards_the_hung_mount_stacked_on_top(tmp_path: Path) -> None:
    # the plan read /proc/mounts one entry per mount point: the hung mount on top was missed
    from types import MappingProxyType

    from aod import collect
    from aod.anomaly import Anomaly

    (tmp_path / "mounts").write_bytes(b"//srv/ok /mnt/s cifs rw 0 0\n//srv/hung /mnt/s cifs rw 0 0\n")
    a = Anomaly("hung", "hung", 1, time.time(), 0, 0, 1, commands=(9,),
                details=MappingProxyType({"hung_shares": ["\\\\srv\\hung"]}))
    env = ActionEnv(proc_root=str(tmp_path), path=str(tmp_path))
    planned, guarded = collect._plan_all(("smbinfo",), env, 0, 1, a, str(tmp_path / "nopins"), config.Config())
    assert set(guarded) == {"/mnt/s"} and all(s.skipped for _, ss in planned for s in ss)
    assert guarded["/mnt/s"].startswith("mount /mnt/s has hung requests")  # seen, not inferred
