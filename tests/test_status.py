"""status.json (what `aodv2 status` reads) and the control socket (`aodv2 collect`) of a real Core."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from faultkit import CoreRun, config_text, fake_host, freeze, slow, wait_for

from aod import control, status
from aod.bundle import list_bundles, read_bundle


def _snap(state_dir: Path) -> dict:
    return json.loads((state_dir / "status.json").read_text())


def test_status_file_reflects_the_running_core(tmp_path: Path) -> None:
    env, _ = fake_host(tmp_path)
    sd = tmp_path / "run"
    r = CoreRun(tmp_path, config_text(tmp_path / "out", acceptable=3), env=env, state_dir=sd)
    try:
        wait_for(lambda: (sd / "status.json").exists(), 10, "status.json")
        assert stat.S_IMODE(os.stat(sd / "status.json").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sd).st_mode) == 0o700
        first = _snap(sd)
        assert first["pid"] == os.getpid() and first["state"] == "running"
        assert status.assess(first)[0] == "running"
        assert first["anomalies"] == {} and first["last_bundle"] is None
        assert first["thresholds"]["default_ms"] == 100 and first["thresholds"]["mode"] == "all"
        assert [e["name"] for e in first["thresholds"]["error_rules"]] == ["timeouts", "access_denied",
                                                                           "handle_errors"]
        r.writer.write(slow(5, 300))
        r.wait_results(1)
        wait_for(lambda: _snap(sd)["last_bundle"] is not None, 10, "last bundle in status")
        snap = _snap(sd)
        bundles = list_bundles(str(tmp_path / "out"))
        assert snap["anomalies"] == {"latency": 1} and snap["captures"] == {"latency": 1}
        assert snap["last_bundle"]["path"] == bundles[-1] and snap["last_bundle"]["type"] == "latency"
        assert snap["disk"]["bundles"] == 1
        history = tmp_path / "out" / "anomalies.jsonl"  # counted in the retention budget too
        assert snap["disk"]["used_bytes"] == os.path.getsize(bundles[-1]) + os.path.getsize(history)
        assert snap["ring_records"] >= 5
        text = status.format_text(snap, *status.assess(snap))
        assert "aodv2 core: running" in text and "latency 1" in text and bundles[-1] in text
        assert "event buffer overflow 0" in text and "bad records 0," in text
        assert ">= 3 in 10.0s, or share >= 0.5 (>= 5) in 60.0s" in text  # the latency rule in force
        assert ("error rule access_denied: STATUS_ACCESS_DENIED >= 20 in 10.0s, or share >= 0.2 (>= 5) in 60.0s"
                in text)
        assert "ignored statuses (not errors): STATUS_NO_MORE_FILES" in text
        assert snap["bad_records_by_reason"] == {"corrupt": 0, "foreign": 0, "future": 0}
        r.writer.write(slow(5, 300))  # in the cooldown? config_text has none: captured again
        future = slow(3, 300)
        future["ts_ns"] += 3600 * 10**9
        r.writer.write(future)
        wait_for(lambda: _snap(sd)["bad_records_by_reason"]["future"] == 3, 10, "future records in status")
        text = status.format_text(_snap(sd), "running", "")
        assert "bad records 3 (future 3)" in text
    finally:
        r.stop()
    final = _snap(sd)
    assert final["state"] == "stopped" and status.assess(final)[0] == "stopped"
    assert not (sd / "control.sock").exists()


def test_assess_gone_and_stale() -> None:
    now = time.time()
    base = {"schema": 1, "state": "running", "started": now - 100, "watch_interval_sec": 1.0}
    assert status.assess({**base, "pid": os.getpid(), "updated": now})[0] == "running"
    assert status.assess({**base, "pid": os.getpid(), "updated": now - 3600})[0] == "stale"
    dead = 2**22 + 12345  # above pid_max on most systems
    while os.path.exists(f"/proc/{dead}"):
        dead += 1
    assert status.assess({**base, "pid": dead, "updated": now})[0] == "gone"


@pytest.mark.parametrize("content,code", [(None, 3), (b"{not json", 1), (b'{"schema": 99}', 1), (b"[]", 1)])
def test_read_errors(tmp_path: Path, content: bytes, code: int) -> None:
    if content is not None:
        (tmp_path / "status.json").write_bytes(content)
    with pytest.raises(status.StatusError) as e:
        status.read(str(tmp_path))
    assert e.value.code == code and str(tmp_path / "status.json") in str(e.value)


def test_collect_through_the_socket_returns_the_written_bundle(tmp_path: Path) -> None:
    env, _ = fake_host(tmp_path)
    sd = tmp_path / "run"
    r = CoreRun(tmp_path, config_text(tmp_path / "out"), env=env, state_dir=sd)
    try:
        wait_for(lambda: (sd / "control.sock").exists(), 10, "control socket")
        assert stat.S_IMODE(os.stat(sd / "control.sock").st_mode) == 0o600
        assert control.ping(str(sd)) == os.getpid()
        path = control.collect("disk check\x1b[31m; $(rm -rf /)", str(sd), timeout=30)
        assert path in list_bundles(str(tmp_path / "out"))
        summary = json.loads(read_bundle(path)["summary.json"])
        assert summary["anomaly"]["type"] == "manual"
        assert summary["anomaly"]["rule"] == "disk check [31m; $(rm -rf /)"  # literal, control chars gone
        assert os.path.exists(tmp_path)  # nothing ran
    finally:
        r.stop()


def test_control_rejects_bad_requests(tmp_path: Path) -> None:
    sd = tmp_path / "run"
    r = CoreRun(tmp_path, config_text(tmp_path / "out"), state_dir=sd)
    try:
        wait_for(lambda: (sd / "control.sock").exists(), 10, "control socket")
        for raw, want in [(b"garbage\n", "bad request"), (b'{"cmd": "rm"}\n', "unknown cmd"),
                          (b"\n", "bad request"), (b"x" * 10000, "bad request")]:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(sd / "control.sock"))
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = json.loads(s.makefile().readline())
            s.close()
            assert reply["ok"] is False and want in reply["error"]
        assert r.ok_results() == []
    finally:
        r.stop()


def test_client_errors_when_no_core(tmp_path: Path) -> None:
    with pytest.raises(control.ControlError) as e:
        control.collect("x", str(tmp_path))
    assert e.value.code == 3 and "not running" in str(e.value)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a socket file nobody listens on
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()
    with pytest.raises(control.ControlError) as e:
        control.collect("x", str(tmp_path))
    assert e.value.code == 3


def test_control_socket_unavailable_is_logged_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CoreRun(tmp_path, config_text(tmp_path / "out"), state_dir=blocker / "run")  # cannot mkdir
    try:
        ctl = r.core.supervisor.slots["control"].worker
        wait_for(lambda: ctl.listen_error != "", 10, "listen error")
        time.sleep(0.5)
        assert all(r.alive().values()) and r.core.supervisor.failed is None
    finally:
        assert r.stop() == 0


def test_reason_is_cleaned() -> None:
    assert control.clean_reason("a\nb\tc") == "a b c"
    assert control.clean_reason("") == "aodv2 collect"
    assert len(control.clean_reason("x" * 1000)) == control.MAX_REASON


# ---------------------------------------------------------------- the CLI verbs against a real core process

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "aod.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd="/")


def _cli_as(uid: int, *args: str) -> tuple[int, str]:
    """cli.main in a forked child that dropped to `uid` (the venv's python may not be reachable
    by that user, so no exec). Returns (exit code, stderr)."""
    from aod import cli

    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            sys.stderr = sys.stdout = os.fdopen(wr, "w")
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = cli.main(list(args))
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(wr)
    with os.fdopen(rd) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


@pytest.fixture
def core_proc(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    env_, _ = fake_host(tmp_path)
    sd, out = tmp_path / "run", tmp_path / "out"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(out, actions="[cifs_stats]"))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.Popen([sys.executable, "-m", "aod.cli", "run", "--config", str(cfg), "--ring-file",
                          str(tmp_path / "ring"), "--state-dir", str(sd)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (sd / "control.sock").exists() and (sd / "status.json").exists(), 20, "core up")
        yield p, sd, out
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
        p.wait()


def test_cli_status_and_collect_against_a_live_core(core_proc: Any) -> None:
    p, sd, out = core_proc
    r = _cli("status", "--state-dir", str(sd))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("aodv2 core: running") and "file ring" in r.stdout and "latency: mode all" in r.stdout
    j = json.loads(_cli("status", "--json", "--state-dir", str(sd)).stdout)
    assert j["running"] is True and j["assessment"] == "running" and j["pid"] == p.pid
    c = _cli("collect", "--reason", "cli test", "--state-dir", str(sd))
    assert c.returncode == 0, c.stderr
    path = c.stdout.strip()
    assert path in list_bundles(str(out))
    wait_for(lambda: json.loads(_cli("status", "--json", "--state-dir", str(sd)).stdout)["last_bundle"], 10,
             "last bundle")
    assert path in _cli("status", "--state-dir", str(sd)).stdout


def test_cli_against_a_hung_then_dead_core(core_proc: Any) -> None:
    p, sd, _ = core_proc
    freeze(p.pid)
    c = _cli("collect", "--timeout", "2", "--state-dir", str(sd))
    assert c.returncode == 1 and "no answer from the core within 2s" in c.stderr
    with open(sd / "status.json") as f:
        snap = json.load(f)
    snap["updated"] -= 3600  # as if it had hung an hour ago
    status.write(str(sd), snap)
    r = _cli("status", "--state-dir", str(sd))
    assert r.returncode == 1 and "aodv2 core: stale" in r.stdout and "not responding" in r.stdout
    p.kill()
    p.wait()
    r = _cli("status", "--state-dir", str(sd))
    assert r.returncode == 3 and "aodv2 core: gone" in r.stdout and f"pid {p.pid} is gone" in r.stdout
    c = _cli("collect", "--state-dir", str(sd))  # the socket file is left, nobody listens
    assert c.returncode == 3 and "not running" in c.stderr and "Traceback" not in c.stderr


def test_cli_after_a_clean_stop(core_proc: Any) -> None:
    p, sd, _ = core_proc
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
    r = _cli("status", "--state-dir", str(sd))
    assert r.returncode == 3 and "aodv2 core: stopped" in r.stdout
    assert json.loads(_cli("status", "--json", "--state-dir", str(sd)).stdout)["running"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the verbs as another user")
def test_cli_verbs_refuse_an_unprivileged_user(core_proc: Any) -> None:
    p, sd, out = core_proc
    os.chmod(sd.parent, 0o755)  # the tmp dir: let the user reach sd, which the core made 0700
    before = list_bundles(str(out))
    for verb in (["status"], ["status", "--json"], ["collect"]):
        code, err = _cli_as(65534, *verb, "--state-dir", str(sd))
        assert code == 77 and "needs root" in err and "Traceback" not in err, (verb, code, err)
    assert list_bundles(str(out)) == before
    assert _cli("status", "--state-dir", str(sd)).returncode == 0  # root still can


def test_cli_usage_errors_exit_2() -> None:
    for argv in (["status", "--bogus"], ["collect", "--timeout", "-1"], ["collect", "extra"]):
        r = _cli(*argv)
        assert r.returncode == 2 and "usage: aodv2" in r.stderr, argv


def test_leftovers_line_only_when_something_was_left() -> None:
    """Killed/stranded action processes, stranded reads and removed stale stages reach the text."""
    base: dict = {"action_processes": {"killed": 0, "stranded": 0, "stranded_total": 0},
                  "stranded_reads": {"now": 0, "total": 0}, "stale_removed": {"stages": 0, "partials": 0}}
    assert not any("leftovers" in ln for ln in status._leftover_lines(base))
    base["action_processes"] = {"killed": 3, "stranded": 1, "stranded_total": 2}
    base["stale_removed"] = {"stages": 4, "partials": 0}
    (line,) = status._leftover_lines(base)
    assert "killed 3, stranded 1 now (2 in all)" in line and "stale stages removed 4" in line
    assert status._leftover_lines({"action_processes": "junk"}) == []
