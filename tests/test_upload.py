"""The bundle upload hook (aod/upload.py): real subprocesses, small scripts in tmp_path."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from faultkit import CoreRun, LogTap, config_text, fake_host, slow, wait_for

from aod import config, log
from aod.config import Config
from aod.upload import TAIL_BYTES, Uploader, backoff_delay, clean_tail, expand, placeholder_values

PY = sys.executable


def script(tmp: Path, name: str, body: str, sh: bool = False) -> str:
    """An executable test program: Python (default) or /bin/sh."""
    p = tmp / name
    head = "#!/bin/sh\n" if sh else f"#!{PY}\nimport json, os, sys\n"
    p.write_text(head + body + "\n")
    p.chmod(0o755)
    return str(p)


def make_cfg(out: Path, command: list[str], retries: int = 0, backoff: float = 0.05,
             timeout: float = 10.0) -> Config:
    """Through the real validator: the templates are those an operator could configure."""
    doc = {"output_dir": str(out),
           "upload": {"command": command, "retries": retries, "backoff_sec": backoff, "timeout_sec": timeout}}
    return config.load_text(json.dumps(doc), "test.yaml")


def bundle(d: Path, name: str = "aod_latency_20240101T000000Z_1.tar.zst") -> str:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_bytes(b"bundle")
    return str(p)


def upload_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    ids = {log.MESSAGE_IDS["upload"], log.MESSAGE_IDS["upload_failed"]}
    return [r for r in list(records) if getattr(r, "MESSAGE_ID", "") in ids]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return True


class Running:
    """Uploader.run() in a thread, as the daemon's supervisor runs it."""

    def __init__(self, up: Uploader) -> None:
        self.up = up
        self.stop_event = threading.Event()
        self.beats = 0
        self.thread = threading.Thread(target=up.run, args=(self.stop_event, self._beat), daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        self.beats += 1

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "uploader did not return after stop"


@pytest.fixture
def holder(tmp_path: Path) -> list[Config]:
    return [make_cfg(tmp_path / "out", [])]


@pytest.fixture
def running(holder: list[Config]) -> Iterator[Running]:
    r = Running(Uploader(lambda: holder[0]))
    yield r
    if r.thread.is_alive():
        r.stop()


# ---------------------------------------------------------------- pure helpers


def test_expand_is_one_pass_and_literal() -> None:
    vals = placeholder_values("/o/{type} $(x).tar.zst", "latency", "/o")
    assert vals["name"] == "{type} $(x).tar.zst"
    got = expand(("/bin/up", "{path}", "s3://b/{type}/{name}", "{dir}{dir}", "{name"), vals)
    assert got == ["/bin/up", "/o/{type} $(x).tar.zst", "s3://b/latency/{type} $(x).tar.zst", "/o/o", "{name"]


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(10, k) for k in range(4)] == [10, 20, 40, 80]
    assert backoff_delay(86400, 99) == 86400.0


def test_clean_tail_is_one_printable_line() -> None:
    s = clean_tail(b"x" * 5000 + b"\n\x1b[31mred\x1b[0m\rprogress 50%\r\nlast\x07 line\n")
    assert s.endswith("red | progress 50% | last line") and len(s) <= TAIL_BYTES
    assert "\x1b" not in s and "\n" not in s
    assert clean_tail(b"<3>ERROR : failed to copy\n<5>note <3> kept\n") == "ERROR : failed to copy | note <3> kept"


# ---------------------------------------------------------------- uploads


def test_success_passes_hostile_values_literally(tmp_path: Path, holder: list[Config], running: Running,
                                                 records: list[logging.LogRecord],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PWN", str(tmp_path))
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # the daemon's, not the hook's
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    (tmp_path / "victim").mkdir()
    out = tmp_path / "argv.json"
    prog = script(tmp_path, "up", f"""
json.dump({{"argv": sys.argv[1:], "stdin": sys.stdin.read(), "own_session": os.getsid(0) == os.getpid(),
           "cwd": os.getcwd(), "notify": "NOTIFY_SOCKET" in os.environ,
           "journal": "JOURNAL_STREAM" in os.environ}}, open({str(out)!r}, "w"))""")
    # a shell would run: rm -rf /victim...; cd $PWN; touch semi; $(...) and `...`
    odir = tmp_path / "a; rm -rf "
    name = ("victim; cd $PWN; touch semi; rm -rf victim; $(cd $PWN; touch dollar) `cd $PWN; touch tick` "
            "{type} 'q\" x.tar.zst")
    path = bundle(odir, name)
    kind = "latency; cd $PWN; touch kind"
    holder[0] = make_cfg(odir, [prog, "--src={path}", "{name}", "{type}", "{dir}", "remote:x/{type}/{name}"])
    assert running.up.submit(path, kind)
    wait_for(lambda: running.up.stats()["ok"] == 1, 10, "upload ok")
    got = json.loads(out.read_text())
    assert got["argv"] == [f"--src={path}", name, kind, str(odir), f"remote:x/{kind}/{name}"]
    assert got["stdin"] == "" and got["own_session"] and got["cwd"] == "/" and not got["notify"] and not got["journal"]
    assert (tmp_path / "victim").is_dir()
    assert not [p for p in ("semi", "dollar", "tick", "kind") if (tmp_path / p).exists()]
    st = running.up.stats()
    assert (st["ok"], st["failed"], st["attempts"], st["pending"], st["last_ok"]) == (1, 0, 1, 0, path)
    (rec,) = upload_records(records)
    assert rec.levelno == logging.INFO and rec.MESSAGE_ID == log.MESSAGE_IDS["upload"]
    assert (rec.AOD_BUNDLE, rec.AOD_UPLOAD_ATTEMPTS, rec.AOD_ANOMALY) == (path, "1", kind)
    assert float(rec.AOD_UPLOAD_SECONDS) >= 0


def test_retry_then_success(tmp_path: Path, holder: list[Config], running: Running,
                            records: list[logging.LogRecord]) -> None:
    count = tmp_path / "count"
    prog = script(tmp_path, "flaky", f"""
n = int(open({str(count)!r}).read()) if os.path.exists({str(count)!r}) else 0
open({str(count)!r}, "w").write(str(n + 1))
if n < 2:
    print("connection reset", n, file=sys.stderr)
    sys.exit(3)""")
    holder[0] = make_cfg(tmp_path, [prog, "{path}"], retries=3, backoff=0.05)
    path = bundle(tmp_path)
    assert running.up.submit(path, "error")
    wait_for(lambda: running.up.stats()["ok"] == 1, 10, "upload ok")
    assert count.read_text() == "3"
    recs = upload_records(records)
    assert [r.levelno for r in recs] == [logging.WARNING, logging.WARNING, logging.INFO]
    w1, w2, ok = recs
    assert "attempt 1/4" in w1.getMessage() and "retrying in 0.05s" in w1.getMessage()
    assert "attempt 2/4" in w2.getMessage() and "retrying in 0.1s" in w2.getMessage()
    assert "exited with status 3: connection reset 1" in w2.getMessage()
    assert (w1.AOD_EXIT, w1.AOD_ERROR, w1.AOD_BUNDLE) == ("3", "connection reset 0", path)
    assert ok.AOD_UPLOAD_ATTEMPTS == "3"
    st = running.up.stats()
    assert (st["ok"], st["failed"], st["attempts"]) == (1, 0, 3)


def test_final_failure_after_retries(tmp_path: Path, holder: list[Config], running: Running,
                                     records: list[logging.LogRecord]) -> None:
    prog = script(tmp_path, "fail", """
sys.stdout.write("progress\\n" * 5000)
sys.stderr.write("noise " * 20000 + "\\nline one\\nERROR: bucket not found\\n")
sys.exit(7)""")
    holder[0] = make_cfg(tmp_path, [prog, "{path}"], retries=2, backoff=0.01)
    path = bundle(tmp_path)
    assert running.up.submit(path, "latency")
    wait_for(lambda: running.up.stats()["failed"] == 1, 10, "final failure")
    recs = upload_records(records)
    assert [r.levelno for r in recs] == [logging.WARNING, logging.WARNING, logging.ERROR]
    final = recs[-1].getMessage()
    assert f"AOD upload of {path} failed (attempt 3/3), giving up: exited with status 7" in final
    assert final.endswith("line one | ERROR: bucket not found")
    assert recs[-1].AOD_EXIT == "7" and recs[-1].AOD_UPLOAD_ATTEMPTS == "3"
    assert recs[-1].AOD_ERROR.endswith("bucket not found") and len(recs[-1].AOD_ERROR) <= TAIL_BYTES
    st = running.up.stats()
    assert (st["ok"], st["failed"], st["attempts"], st["pending"]) == (0, 1, 3, 0)
    assert "bucket not found" in str(st["last_error"]) and st["last_ok"] == ""


def test_signal_exit_is_named(tmp_path: Path, holder: list[Config], running: Running,
                              records: list[logging.LogRecord]) -> None:
    prog = script(tmp_path, "die", "import signal\nos.kill(os.getpid(), signal.SIGTERM)")
    holder[0] = make_cfg(tmp_path, [prog])
    assert running.up.submit(bundle(tmp_path), "latency")
    wait_for(lambda: running.up.stats()["failed"] == 1, 10, "failure")
    (rec,) = upload_records(records)
    assert "killed by SIGTERM" in rec.getMessage() and rec.AOD_EXIT == "SIGTERM"


def test_timeout_kills_the_process_group(tmp_path: Path, holder: list[Config], running: Running,
                                         records: list[logging.LogRecord]) -> None:
    prog = script(tmp_path, "hang", f"sleep 300 &\necho $! > {tmp_path}/child.pid\n"
                                    f"echo $$ > {tmp_path}/leader.pid\nsleep 300", sh=True)
    holder[0] = make_cfg(tmp_path, [prog], retries=0, timeout=0.5)
    assert running.up.submit(bundle(tmp_path), "latency")
    wait_for(lambda: running.up.stats()["failed"] == 1, 15, "timeout failure")
    (rec,) = upload_records(records)
    assert rec.levelno == logging.ERROR and "timed out after 0.5s, process group killed" in rec.getMessage()
    assert rec.AOD_EXIT == "timeout"
    for f in ("leader.pid", "child.pid"):
        pid = int((tmp_path / f).read_text())
        wait_for(lambda p=pid: gone(p), 5, f"{f} {pid} killed")


def test_timeout_kills_a_setsid_grandchild_of_the_upload(tmp_path: Path, holder: list[Config],
                                                         running: Running) -> None:
    """An upload program that starts a grandchild in its own session (out of the process group)
    and hangs: at the timeout the grandchild dies too (reaper.py), not only the group."""
    prog = script(tmp_path, "hang", f"setsid sleep 300 &\necho $! > {tmp_path}/grandchild.pid\nsleep 300", sh=True)
    holder[0] = make_cfg(tmp_path, [prog], retries=0, timeout=0.5)
    assert running.up.submit(bundle(tmp_path), "latency")
    wait_for(lambda: running.up.stats()["failed"] == 1, 15, "timeout failure")
    pid = int((tmp_path / "grandchild.pid").read_text())
    try:
        wait_for(lambda: gone(pid), 5, f"setsid grandchild {pid} killed")
    finally:
        if not gone(pid):
            os.kill(pid, 9)


def test_children_left_by_a_finished_upload_are_killed(tmp_path: Path, holder: list[Config],
                                                       running: Running) -> None:
    prog = script(tmp_path, "bg", f"sleep 300 &\necho $! > {tmp_path}/child.pid\nexit 0", sh=True)
    holder[0] = make_cfg(tmp_path, [prog])
    assert running.up.submit(bundle(tmp_path), "latency")
    wait_for(lambda: running.up.stats()["ok"] == 1, 10, "upload ok")
    pid = int((tmp_path / "child.pid").read_text())
    wait_for(lambda: gone(pid), 5, f"background child {pid} killed")


@pytest.mark.parametrize("kind", ["missing", "not_executable"])
def test_program_that_cannot_run(tmp_path: Path, holder: list[Config], running: Running,
                                 records: list[logging.LogRecord], kind: str) -> None:
    prog = tmp_path / "uploader-tool"
    if kind == "not_executable":
        prog.write_text("#!/bin/sh\nexit 0\n")
        prog.chmod(0o644)
    holder[0] = make_cfg(tmp_path, [str(prog), "{path}"], retries=1, backoff=0.01)
    assert running.up.submit(bundle(tmp_path), "latency")
    wait_for(lambda: running.up.stats()["failed"] == 1, 10, "failure")
    recs = upload_records(records)
    assert [r.levelno for r in recs] == [logging.WARNING, logging.ERROR]
    why = "No such file or directory" if kind == "missing" else "Permission denied"
    assert f"cannot run {prog}: {why} (expected an executable program" in recs[-1].getMessage()
    assert recs[-1].AOD_EXIT == "exec" and running.up.stats()["attempts"] == 2


# ---------------------------------------------------------------- queue, drops, stop, reload


def test_queue_full_and_upload_off(tmp_path: Path) -> None:
    cfg = [make_cfg(tmp_path, [])]
    up = Uploader(lambda: cfg[0], queue_size=2)
    assert not up.submit(bundle(tmp_path), "latency")  # off: nothing queued
    assert up.stats()["pending"] == 0
    cfg[0] = make_cfg(tmp_path, ["/bin/true"])
    assert [up.submit(bundle(tmp_path), "latency") for _ in range(3)] == [True, True, False]
    st = up.stats()
    assert (st["pending"], st["rejected"]) == (2, 1)


def test_bundle_deleted_before_upload(tmp_path: Path, holder: list[Config], running: Running,
                                      records: list[logging.LogRecord]) -> None:
    ran = tmp_path / "ran"
    prog = script(tmp_path, "up", f"open({str(ran)!r}, 'w').close()")
    holder[0] = make_cfg(tmp_path, [prog, "{path}"])
    path = str(tmp_path / "aod_latency_20240101T000000Z_9.tar.zst")
    assert running.up.submit(path, "latency")
    wait_for(lambda: running.up.stats()["dropped"] == 1, 10, "drop")
    (rec,) = upload_records(records)
    assert rec.levelno == logging.WARNING and "no longer exists" in rec.getMessage() and rec.AOD_BUNDLE == path
    assert not ran.exists()
    assert (running.up.stats()["attempts"], running.up.stats()["failed"]) == (0, 0)


def test_bundle_deleted_during_backoff(tmp_path: Path, holder: list[Config], running: Running,
                                       records: list[logging.LogRecord]) -> None:
    prog = script(tmp_path, "up", "os.remove(sys.argv[1])\nsys.exit(1)")  # retention, in effect
    holder[0] = make_cfg(tmp_path, [prog, "{path}"], retries=3, backoff=0.01)
    assert running.up.submit(bundle(tmp_path), "latency")
    wait_for(lambda: running.up.stats()["dropped"] == 1, 10, "drop")
    assert [r.levelno for r in upload_records(records)] == [logging.WARNING, logging.WARNING]
    assert running.up.stats()["attempts"] == 1


def test_stop_during_backoff_returns_and_reports_pending(tmp_path: Path, holder: list[Config],
                                                         running: Running,
                                                         records: list[logging.LogRecord]) -> None:
    prog = script(tmp_path, "fail", "sys.exit(1)")
    holder[0] = make_cfg(tmp_path, [prog], retries=5, backoff=30)
    assert running.up.submit(bundle(tmp_path), "latency")
    assert running.up.submit(bundle(tmp_path / "b"), "error")
    wait_for(lambda: any("retrying in 30s" in r.getMessage() for r in upload_records(records)), 10, "backoff")
    beats = running.beats
    wait_for(lambda: running.beats > beats + 1, 5, "beats during backoff")
    running.stop(timeout=5.0)
    last = upload_records(records)[-1]
    assert last.getMessage() == "AOD uploader stopping: 2 bundle(s) not uploaded" and last.AOD_DROPPED == "2"
    assert running.up.stats()["pending"] == 0 and running.up.stats()["attempts"] == 1


def test_stop_during_hanging_attempt_kills_it(tmp_path: Path, holder: list[Config], running: Running,
                                              records: list[logging.LogRecord]) -> None:
    prog = script(tmp_path, "hang", f"sleep 300 &\necho $! > {tmp_path}/child.pid\n"
                                    f"echo $$ > {tmp_path}/leader.pid\nsleep 300", sh=True)
    holder[0] = make_cfg(tmp_path, [prog], retries=3, timeout=600)
    assert running.up.submit(bundle(tmp_path), "latency")
    wait_for(lambda: (tmp_path / "leader.pid").exists() and (tmp_path / "child.pid").exists(), 10, "started")
    beats = running.beats
    wait_for(lambda: running.beats > beats + 2, 5, "beats during the attempt")
    running.stop(timeout=5.0)
    for f in ("leader.pid", "child.pid"):
        pid = int((tmp_path / f).read_text().strip() or 0)
        wait_for(lambda p=pid: gone(p), 5, f"{f} {pid} killed")
    (rec,) = upload_records(records)
    assert rec.getMessage() == "AOD uploader stopping: 1 bundle(s) not uploaded"
    st = running.up.stats()
    assert (st["failed"], st["ok"], st["dropped"], st["pending"]) == (0, 0, 1, 0)


def test_reload_applies_to_the_next_job(tmp_path: Path, holder: list[Config], running: Running) -> None:
    def writer(tag: str) -> str:
        return script(tmp_path, tag, f"open({str(tmp_path / tag)!r} + '.out', 'w').write(sys.argv[1])")

    holder[0] = make_cfg(tmp_path, [writer("a"), "{name}"])
    assert running.up.submit(bundle(tmp_path, "aod_latency_20240101T000000Z_1.tar.zst"), "latency")
    wait_for(lambda: running.up.stats()["ok"] == 1, 10, "first upload")
    holder[0] = make_cfg(tmp_path, [writer("b"), "{type}"])
    assert running.up.submit(bundle(tmp_path, "aod_error_20240101T000000Z_2.tar.zst"), "error")
    wait_for(lambda: running.up.stats()["ok"] == 2, 10, "second upload")
    assert (tmp_path / "a.out").read_text() == "aod_latency_20240101T000000Z_1.tar.zst"
    assert (tmp_path / "b.out").read_text() == "error"


def test_upload_turned_off_drops_queued_jobs(tmp_path: Path, records: list[logging.LogRecord]) -> None:
    cfg: list[Optional[Config]] = [make_cfg(tmp_path, ["/bin/true"])]

    def get() -> Any:
        return cfg[0]

    up = Uploader(get)
    assert up.submit(bundle(tmp_path), "latency")
    cfg[0] = make_cfg(tmp_path, [])  # reload before the worker got to it
    r = Running(up)
    wait_for(lambda: up.stats()["dropped"] == 1, 10, "drop")
    r.stop()
    (rec,) = upload_records(records)
    assert "upload.command is empty" in rec.getMessage()


def test_a_crash_inside_an_upload_is_counted_and_the_worker_goes_on(
        tmp_path: Path, holder: list[Config], records: list[logging.LogRecord]) -> None:
    """A bug (here: beat() raising) fails that job with a clear line; the group is still killed."""
    prog = script(tmp_path, "hang", f"echo $$ > {tmp_path}/leader.pid\nsleep 300", sh=True)
    holder[0] = make_cfg(tmp_path, [prog], retries=3)
    up = Uploader(lambda: holder[0])
    assert up.submit(bundle(tmp_path), "latency")
    stop = threading.Event()

    def beat() -> None:
        if (tmp_path / "leader.pid").exists() and not (tmp_path / "raised").exists():
            (tmp_path / "raised").touch()
            raise RuntimeError("boom")

    t = threading.Thread(target=up.run, args=(stop, beat), daemon=True)
    t.start()
    wait_for(lambda: up.stats()["failed"] == 1, 10, "internal failure")
    pid = int((tmp_path / "leader.pid").read_text())
    wait_for(lambda: gone(pid), 5, "hanging upload killed")
    assert t.is_alive() and up.stats()["pending"] == 0
    stop.set()
    t.join(5)
    assert not t.is_alive()
    (rec,) = upload_records(records)
    assert rec.levelno == logging.ERROR and "internal error: RuntimeError('boom')" in rec.getMessage()


def test_a_real_core_uploads_its_bundle(tmp_path: Path) -> None:
    """Wiring: ring -> detect -> collect -> uploader in a real Core; the hook gets the bundle."""
    env, _ = fake_host(tmp_path)
    dest = tmp_path / "remote"
    dest.mkdir()
    prog = script(tmp_path, "cp-up", "import shutil\nshutil.copyfile(sys.argv[1], sys.argv[2])")
    extra = f"upload:\n  command: [{prog}, '{{path}}', '{dest}/{{type}}-{{name}}']\n  backoff_sec: 0.1\n"
    tap = LogTap().attach()
    r = CoreRun(tmp_path, config_text(tmp_path / "out", extra=extra), env=env)
    try:
        r.writer.write(slow(5, 300))
        (res,) = r.wait_results(1, tap=tap)
        assert res.ok and res.path
        (rec,) = tap.wait("AOD bundle uploaded")
        assert rec.AOD_BUNDLE == res.path
        copy = dest / f"latency-{os.path.basename(res.path)}"
        assert copy.read_bytes() == Path(res.path).read_bytes()
    finally:
        r.stop()
        tap.detach()
