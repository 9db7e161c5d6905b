"""aod/zstdcodec.py and aod/zstdprog.py: bundles through the zstandard module and through the zstd
program, one format both ways; the program's errors in the module's words; a killed or stalled
program is reaped; the reaper's sweeps leave it alone; with neither backend one clear line and a
core that keeps running. (Captures and the viewers on both backends: the zstd_backend tests of
test_collect.py, test_bundleview.py and test_harden_view.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator

import numpy as np
import pytest
import zstandard
from faultkit import config_text, fake_host, freeze, slow, wait_for

from aod import bundle, bundleread, cli, reaper, ringfile, zstdcodec, zstdprog
from aod.anomaly import Anomaly
from aod.collect import capture
from aod.config import CaptureConfig, Config, RingConfig
from aod.record import KIND_COMPLETION, empty
from aod.ringfile import FileRingWriter

ROOT = Path(__file__).resolve().parent.parent
DATA = np.random.default_rng(7).bytes(300_000) + b"compressible line\n" * 200_000  # 3.9 MB
MISSING = ("/nonexistent/zstd",)
NO_ZSTD = "install python3-zstandard or zstd"

pytestmark = pytest.mark.skipif(not zstdcodec.cli_path(), reason="no zstd program (tests/run installs it)")


def use(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setenv(zstdcodec.ENV_VAR, backend)


def compress(monkeypatch: pytest.MonkeyPatch, backend: str, data: bytes, prefix: bytes = b"") -> bytes:
    use(monkeypatch, backend)
    with tempfile.TemporaryFile() as f:
        f.write(prefix)  # still in Python's buffer: the program must write after it
        with zstdcodec.writer(f, 3) as w:
            assert (w.pid is not None) == (backend == "cli")  # the program really ran (or not)
            for i in range(0, len(data), 10240):  # as tarfile writes
                w.write(data[i:i + 10240])
        f.flush()
        f.seek(0)
        return f.read()


def decompress(monkeypatch: pytest.MonkeyPatch, backend: str, blob: bytes, n: int = 65536) -> bytes:
    use(monkeypatch, backend)
    with zstdcodec.reader(io.BytesIO(blob)) as r:
        return b"".join(iter(lambda: r.read(n), b""))


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def gone(pid: int) -> bool:
    """Reaped (by us: it was our child), not just dead."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture
def no_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zstdcodec, "_mod", None)  # as on Debian 11: no python3-zstandard


# ------------------------------------------------------------------ one format


@pytest.mark.parametrize("way", ["module->cli", "cli->module", "cli->cli", "module->module"])
def test_same_format_both_ways(way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    w, r = way.split("->")
    blob = compress(monkeypatch, w, DATA, prefix=b"HEAD")
    assert blob[:4] == b"HEAD" and blob[4:8] == bundleread.ZSTD_MAGIC and len(blob) < len(DATA) // 5
    assert decompress(monkeypatch, r, blob[4:]) == DATA
    assert decompress(monkeypatch, r, blob[4:] * 2, n=7777) == DATA * 2  # across frames
    use(monkeypatch, r)
    with zstdcodec.reader(io.BytesIO(blob[4:])) as rd:
        assert rd.read(-1) == DATA


def test_default_is_the_module_else_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zstdcodec.ENV_VAR, raising=False)
    assert zstdcodec.backend() == "module" and zstdcodec.describe() == "module"
    monkeypatch.setattr(zstdcodec, "_mod", None)
    assert zstdcodec.backend() == "cli" and zstdcodec.describe() == f"cli {zstdcodec.cli_path()}"
    assert zstdcodec.problem() == ""


def test_capture_and_read_back_through_the_program_alone(tmp_path: Path, no_module: None) -> None:
    """No module at all (Debian 11): a capture is written and read back by the zstd program."""
    env, _ = fake_host(tmp_path / "host")
    ev = empty(3)
    ev["kind"], ev["command"], ev["latency_ns"] = KIND_COMPLETION, 9, 600_000_000
    now = time.monotonic_ns()
    a = Anomaly("latency", "latency>500ms", 3, time.time(), now, now - 10**9, now, events=ev, commands=(9,))
    out = tmp_path / "out"
    c = Config(output_dir=str(out), capture=CaptureConfig(action_timeout_sec=10.0),
               actions=MappingProxyType({"latency": ("mounts", "cifs_stats")}),
               ring=RingConfig(path=str(tmp_path / "pins" / "events")))
    r = capture(a, c, env)
    assert r.ok and r.path and os.listdir(out) == [os.path.basename(r.path)], r.error
    assert (os.stat(r.path).st_mode & 0o777) == 0o600 and r.bytes == os.path.getsize(r.path)
    files = bundle.read_bundle(r.path)
    assert set(files) == {"summary.json", "events.npy", "mounts", "cifs/Stats"}
    assert json.loads(files["summary.json"])["anomaly"]["type"] == "latency"
    view = bundleread.read_view(r.path)
    assert view.error == "" and view.events is not None and len(view.events) == 3
    with open(r.path, "rb") as f:  # and the module reads what the program wrote
        assert b"summary.json" in zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()


# ------------------------------------------------------------------ errors in the same words


def _bad_bundles(tmp: Path) -> dict[str, Path]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("t/summary.json", b'{"anomaly": {"type": "manual"}}'),
                           ("t/a.bin", DATA[:400_000]), ("t/b.log", DATA[-600_000:])):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    c = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(buf.getvalue())
    cases = {"truncated": c[: len(c) // 2], "header only": c[:8], "magic then zeros": c[:4] + bytes(100),
             "garbled": c[:200] + bytes(b ^ 0x5A for b in c[200:]), "trailing garbage": c + b"xyz",
             "last block zeroed": c[:-40] + bytes(40), "bad checksum": c[:-1] + bytes([c[-1] ^ 1]),
             "checksum cut": c[:-2], "not a tar after it": c + zstandard.ZstdCompressor().compress(b"\1" * 1024)}
    out = {}
    for name, data in cases.items():
        out[name] = tmp / (name.replace(" ", "_") + ".tar.zst")
        out[name].write_bytes(data)
    return out


def test_corrupt_and_truncated_bundles_read_the_same_through_both(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    for name, p in _bad_bundles(tmp_path).items():
        got = {}
        for b in ("module", "cli"):
            use(monkeypatch, b)
            try:
                got[b] = "read, " + (bundleread.read_view(str(p)).error or "whole")
            except bundleread.ViewError as e:
                got[b] = "refused, " + str(e)
        assert got["cli"] == got["module"], (name, got)
        seen[name] = got["cli"]
    assert "corrupt: unexpected end of data" in seen["truncated"]
    assert "the zstd stream yields no data" in seen["header only"]
    assert seen["trailing garbage"].endswith("zstd decompress error: Unknown frame descriptor")
    assert seen["bad checksum"].endswith("zstd decompress error: Restored data doesn't match checksum")
    assert "corrupt" in seen["last block zeroed"] and "corrupt" in seen["not a tar after it"]


def test_disk_full_is_named_by_both(monkeypatch: pytest.MonkeyPatch) -> None:
    for b in ("module", "cli"):
        use(monkeypatch, b)
        with pytest.raises((zstdcodec.CodecError, OSError), match="No space left on device"), \
                open("/dev/full", "wb") as f, zstdcodec.writer(f, 3) as w:
            w.write(DATA)


# ------------------------------------------------------------------ a killed or stalled program


def test_killed_program_is_reaped_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = compress(monkeypatch, "cli", DATA * 4)
    before = fds()
    use(monkeypatch, "cli")
    with zstdcodec.reader(io.BytesIO(blob)) as r:
        assert r.read(65536)
        os.kill(r.pid, signal.SIGKILL)
        with pytest.raises(zstdcodec.CodecError, match="killed by SIGKILL") as ei:
            while r.read(65536):
                pass
    assert not ei.value.corrupt and gone(r.pid) and fds() == before
    with tempfile.TemporaryFile() as f:
        before = fds()
        with pytest.raises(zstdcodec.CodecError, match="killed by SIGKILL"), zstdcodec.writer(f, 3) as w:
            w.write(DATA[:10240])
            os.kill(w.pid, signal.SIGKILL)
            while True:
                w.write(DATA)
        assert gone(w.pid) and fds() == before
    assert all(p != w.pid and p != r.pid for p, _ in reaper.REAPER.live.values())


def test_a_stalled_program_is_killed_and_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zstdcodec, "STALL_SEC", 0.5)
    blob = compress(monkeypatch, "cli", DATA)
    use(monkeypatch, "cli")
    before = fds()
    t0 = time.monotonic()
    with zstdcodec.reader(io.BytesIO(blob)) as r:
        freeze(r.pid)
        with pytest.raises(zstdcodec.CodecError, match="made no progress for 0.5s: killed") as ei:
            r.read(65536)
    assert not ei.value.corrupt and gone(r.pid) and fds() == before
    with tempfile.TemporaryFile() as f:
        before = fds()
        with pytest.raises(zstdcodec.CodecError, match="made no progress"), zstdcodec.writer(f, 3) as w:
            freeze(w.pid)
            w.write(DATA)  # far more than a pipe holds
        assert gone(w.pid) and fds() == before
    assert time.monotonic() - t0 < 15


def test_show_of_a_stalled_program_is_one_line_not_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    p = _bad_bundles(tmp_path)["checksum cut"]  # reads whole
    monkeypatch.setattr(zstdcodec, "STALL_SEC", 0.5)
    use(monkeypatch, "cli")
    real_init = zstdprog.CliReader.__init__

    def stalled(self: Any, *args: Any) -> None:
        real_init(self, *args)
        freeze(self.pid)

    monkeypatch.setattr(zstdprog.CliReader, "__init__", stalled)
    assert cli.main(["show", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "made no progress" in err and "corrupt" not in err, err


# ------------------------------------------------------------------ the reaper


@pytest.mark.parametrize("side", ["writer", "reader"])
def test_a_sweep_leaves_the_zstd_program_alone(side: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon kills adopted children that belong to no live command (kill_untagged): the
    zstd program of a capture in progress is registered, so another command's sweep spares it."""
    monkeypatch.setattr(reaper.REAPER, "kill_untagged", True)
    blob = compress(monkeypatch, "cli", DATA)
    tag = reaper.new_tag()
    reaper.REAPER.reserve(tag)
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True,
                              env={"PATH": "/usr/bin:/bin", reaper.TAG_VAR: tag})
    reaper.REAPER.started(tag, victim.pid)
    use(monkeypatch, "cli")
    with tempfile.TemporaryFile() as f:
        s = zstdcodec.writer(f, 3) if side == "writer" else zstdcodec.reader(io.BytesIO(blob))
        with s:
            got = s.write(DATA[:100_000]) if side == "writer" else s.read(100_000)
            assert got
            reaper.REAPER.kill_tree(tag)  # an action ended: its sweep runs
            assert victim.wait(5) == -signal.SIGKILL
            st = reaper.read_stat(s.pid)
            assert st is not None and st.state not in ("Z", "X"), "the sweep killed the zstd program"
            if side == "writer":
                s.write(DATA[100_000:])
            else:
                rest = b"".join(iter(lambda: s.read(65536), b""))
        if side == "writer":
            f.seek(0)
            assert decompress(monkeypatch, "module", f.read()) == DATA
        else:
            assert got + rest == DATA
    assert gone(s.pid)


# ------------------------------------------------------------------ neither backend


def test_neither_backend_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_module: None,
                                           capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "out" / "aod_manual_20260101T000000Z_1.tar.zst"
    good.parent.mkdir()
    good.write_bytes(_bad_bundles(tmp_path)["checksum cut"].read_bytes())
    monkeypatch.setattr(zstdcodec, "CLI_PATHS", MISSING)
    monkeypatch.delenv(zstdcodec.ENV_VAR, raising=False)
    with pytest.raises(zstdcodec.CodecError) as ei:
        zstdcodec.backend()
    msg = str(ei.value)
    assert NO_ZSTD in msg and "\n" not in msg and zstdcodec.problem() == msg and zstdcodec.describe() == "none"
    for argv in (["show", str(good)], ["list", "--dir", str(good.parent)], ["show", str(good), "--extract",
                                                                            str(tmp_path / "x")]):
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and NO_ZSTD in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(bundle.BundleError, match=NO_ZSTD):
        bundle.read_bundle(str(good))
    # a capture fails with that line and leaves nothing behind
    env, _ = fake_host(tmp_path / "host")
    ev = empty(1)
    now = time.monotonic_ns()
    a = Anomaly("manual", "manual", 1, time.time(), now, now, now, events=ev)
    c = Config(output_dir=str(tmp_path / "out2"), actions=MappingProxyType({"manual": ("mounts",)}),
               ring=RingConfig(path=str(tmp_path / "pins" / "events")))
    r = capture(a, c, env)
    assert not r.ok and NO_ZSTD in r.error and os.listdir(tmp_path / "out2") == []
    for want, text in (("cli", "AOD_ZSTD_BACKEND=cli but there is no zstd program"),
                       ("module", "AOD_ZSTD_BACKEND=module but the Python module zstandard is not installed "
                                  "(package python3-zstandard)"),
                       ("gzip", "AOD_ZSTD_BACKEND='gzip': expected module or cli")):
        use(monkeypatch, want)
        assert zstdcodec.problem().startswith(text)


# the daemon as on Debian 11 without the zstd package: the module blocked, no program
_NO_ZSTD_MAIN = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "zstandard":
                raise ImportError("zstandard is blocked by test_zstdcodec")
            return None

    sys.meta_path.insert(0, Block())
    from aod import cli, zstdcodec
    zstdcodec.CLI_PATHS = {missing!r}
    sys.exit(cli.main(sys.argv[1:]))
""").format(missing=MISSING)


@pytest.fixture
def bare_core(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    out, ring, sd = tmp_path / "out", tmp_path / "ring", tmp_path / "run"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(out, acceptable=1, actions="[cifs_stats]"))
    ringfile.create(str(ring), 64 * 1024)
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC", zstdcodec.ENV_VAR)}
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-c", _NO_ZSTD_MAIN, "run", "--config", str(cfg), "--ring-file",
                              str(ring), "--state-dir", str(sd)], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield p, log, ring
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_core_without_zstd_runs_detects_and_fails_captures_clearly(bare_core: Any, tmp_path: Path) -> None:
    p, log, ring = bare_core
    text = log.read_text
    wait_for(lambda: "core ready" in text(), 20, "core ready")
    assert "AOD captures will fail: no zstd to compress or read bundles" in text()
    w = FileRingWriter(str(ring))
    w.write(slow(5, 300))
    wait_for(lambda: "capture for latency anomaly failed" in text(), 20, "the capture failed")
    failed = [ln for ln in text().splitlines() if "capture for latency anomaly failed" in ln]
    assert len(failed) == 1 and NO_ZSTD in failed[0] and "AOD detected anomaly: latency" in text()
    time.sleep(0.5)
    w.write(slow(5, 300))  # the next window: still detecting, no restart, no traceback
    wait_for(lambda: text().count("capture for latency anomaly failed") >= 2, 20, "the second capture failed")
    assert p.poll() is None and "Traceback" not in text() and "restart" not in text()
    wait_for(lambda: (tmp_path / "run" / "status.json").exists(), 10, "status.json")
    st = subprocess.run([sys.executable, "-m", "aod.cli", "status", "--state-dir", str(tmp_path / "run")],
                        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert st.returncode == 0 and "; zstd none" in st.stdout, st.stdout + st.stderr
    assert [n for n in os.listdir(tmp_path / "out") if n.startswith(".")] == []  # no stage, no partial
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
