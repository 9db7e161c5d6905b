"""`aodv2 show` and `aodv2 list` (aod/bundleview.py) on real bundles from aod.collect, on
corrupt ones, and on hostile tars for --extract."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Optional

import numpy as np
import pytest
import zstandard
from faultkit import fake_host

from aod import bundle, bundleview, cli, smb2
from aod.anomaly import Anomaly
from aod.bundle import read_bundle
from aod.collect import capture
from aod.config import CaptureConfig, Config
from aod.record import CMD_STATS_DTYPE, KIND_COMPLETION, KIND_ERROR, STATS_ROWS, empty, hist_bucket

ROOT = Path(__file__).resolve().parent.parent
W, R = smb2.COMMANDS["WRITE"], smb2.COMMANDS["READ"]
MS = 1_000_000


def _anomaly(type_: str = "latency", wall: Optional[float] = None) -> Anomaly:
    """40 WRITEs at 600-900 ms, 4 at 3 ms (a gap between), 2 READ errors; all-traffic stats."""
    ev = empty(46)
    ev["kind"] = KIND_COMPLETION
    ev["command"] = W
    ev["latency_ns"][:40] = np.linspace(600, 900, 40).astype(np.int64) * MS
    ev["latency_ns"][40:44] = 3 * MS
    ev["kind"][44:] = KIND_ERROR
    ev["command"][44:] = R
    ev["nt_status"][44:] = smb2.NT_STATUS["STATUS_IO_TIMEOUT"]
    ev["comm"], ev["pid"] = b"dd", 4242
    stats = np.zeros(STATS_ROWS, CMD_STATS_DTYPE)
    stats[W]["hist"][12] = 500  # 2-4 ms: the bulk of all traffic
    np.add.at(stats[W]["hist"], hist_bucket(ev["latency_ns"][:40]), 1)
    stats[W]["latency_sum_ns"] = 500 * 3 * MS + int(ev["latency_ns"][:40].sum())
    stats[R]["errors"] = 2
    now = time.monotonic_ns()
    return Anomaly(type_, "over_threshold>=10", 40, wall or time.time(), now, now - 1_000_000_000, now,
                   events=ev, commands=(W,), window_stats=stats)


def _cfg(out: Path) -> Config:
    acts = ("mounts", "cifs_stats", "syslog")
    return Config(output_dir=str(out), capture=CaptureConfig(action_timeout_sec=10.0, concurrency=4),
                  actions=MappingProxyType({t: acts for t in ("latency", "error", "emergency")}))


def _capture(tmp: Path, type_: str = "latency", wall: Optional[float] = None, syslog: bytes = b"") -> str:
    env, paths = fake_host(tmp / "host")
    if syslog:
        (paths["log"] / "syslog").write_bytes(syslog)
    r = capture(_anomaly(type_, wall), _cfg(tmp / "out"), env)
    assert r.ok and r.path, r.error
    return r.path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _capture(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bundle of several zstd blocks (1.5 MiB of incompressible syslog at the end)."""
    noise = base64.b64encode(np.random.default_rng(1).bytes(1_200_000)) + b"\n"
    return _capture(tmp_path_factory.mktemp("big"), syslog=noise)


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = cli.main(argv)
    o = capsys.readouterr()
    assert "Traceback" not in o.err
    return rc, o.out, o.err


def write_tar_zst(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], frames: int = 1) -> list[bytes]:
    """A tar.zst of the given members (as they are: no checks). frames=2 puts the last member and
    the end-of-archive blocks in a second zstd frame; returns the frames."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        cut = 0
        for ti, data in members:
            cut = buf.tell()
            tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    raw = buf.getvalue()
    parts = [raw] if frames == 1 else [raw[:cut], raw[cut:]]
    out = [zstandard.ZstdCompressor().compress(p) for p in parts]
    path.write_bytes(b"".join(out))
    return out


def ti(name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.size, t.linkname, t.mode = type_, size, link, 0o644
    return t


# ------------------------------------------------------------------ show


def test_show_real_bundle(real: str, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = run(["show", real], capsys)
    assert rc == 0 and err == ""
    s = json.loads(read_bundle(real)["summary.json"])
    for text in ("anomaly    latency: rule over_threshold>=10, 40 events, commands WRITE",
                 s["detected_at"], "STATUS_IO_TIMEOUT x2", "dd[4242] x46", "p50 ms", "p99 ms"):
        assert text in out
    lines = out.splitlines()
    write = next(ln for ln in lines if ln.startswith("  WRITE "))
    assert f"{s['per_command']['WRITE']['p99_ms']:.1f}" in write and "histogram" in write
    for name in ("mounts", "cifs_stats", "syslog"):  # actions with their outcome
        assert any(ln.split()[:2] == [name, "ok"] for ln in lines), name
    members = read_bundle(real)
    for name, data in members.items():  # every member listed with its size
        assert any(ln.strip().endswith(name) and bundleview.human_bytes(len(data)) in ln for ln in lines), name


def test_show_draws_latency_histogram(real: str, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run(["show", real], capsys)
    assert rc == 0
    lines = out.splitlines()
    start = lines.index("WRITE: 540 completions")  # all traffic: summary.json's per-command histogram
    rows = lines[start + 1:]
    rows = rows[: next((i for i, r in enumerate(rows) if not r.startswith("  ")), len(rows))]
    # 500 completions at 2-4 ms, empty buckets kept between, 40 at 600-900 ms in 524 ms-1 s
    assert rows[0].split()[0] == "2-4.1" and rows[0].split()[-1] == "500"
    assert rows[-1].split()[:3] == ["524", "ms-1", "s"] and rows[-1].endswith(" 40")
    assert len(rows) == 20 - 12 + 1  # buckets 12..20
    bar = "█" if "█" in rows[0] else "#"
    assert bar * bundleview.BAR_WIDTH in rows[0]
    assert bar * 3 in rows[-1] and bar * 4 not in rows[-1]  # 40/500 of 40 columns
    assert all(bar not in r and "▏" not in r for r in rows[1:-1])


def test_show_json(real: str, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run(["show", "--json", real], capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["complete"] is True and d["error"] is None and d["size"] == os.path.getsize(real)
    assert d["summary"] == json.loads(read_bundle(real)["summary.json"])
    names = {m["name"].split("/", 1)[-1]: m for m in d["members"] if m["type"] == "file"}
    assert set(names) == set(read_bundle(real))
    h = d["histograms"]["WRITE"]
    assert h["source"] == "all traffic" and sum(b["count"] for b in h["buckets"]) == 540
    assert {(b["label"], b["count"]) for b in h["buckets"] if b["count"]} == {("2-4.1 ms", 500), ("524 ms-1 s", 40)}


def test_show_prefers_all_traffic_hist_from_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A summary with per_command[...]['hist'] (all traffic) is drawn from that, not from events.npy.
    Text from the bundle is shown with control characters escaped."""
    stage = bundle.new_stage(str(tmp_path), "manual", time.time())
    hist = [0] * 32
    hist[11], hist[12], hist[20] = 300, 900, 7
    summary = {"anomaly": {"type": "manual", "rule": "SIGUSR1", "count": 0, "commands": []},
               "host": "evil\x1b]0;pwned\x07host",
               "per_command": {"READ": {"count": 1207, "p50_ms": 2.5, "hist": hist, "source": "histogram"}}}
    bundle.write_member(stage, "summary.json", json.dumps(summary).encode())
    path, _ = bundle.finalize(stage, str(tmp_path), "manual", time.time())
    rc, out, _ = run(["show", path], capsys)
    assert rc == 0
    assert "\x1b" not in out and "\x07" not in out and "evil\\x1b]0;pwned\\x07host" in out
    assert "all traffic in the window" in out and "READ: 1207 completions" in out
    rows = out.split("READ: 1207 completions\n", 1)[1].splitlines()
    assert [r.split()[0] for r in rows[:2]] == ["1-2", "2-4.1"] and rows[1].endswith(" 900")


def test_histogram_rendering() -> None:
    assert [bundleview.bucket_label(b) for b in (0, 1, 10, 11, 12, 20, 21, 31)] == [
        "0-1 us", "1-2 us", "512 us-1 ms", "1-2 ms", "2-4.1 ms", "524 ms-1 s", "1-2.1 s", ">=1074 s"]
    counts = [0] * 32
    counts[11], counts[13], counts[14] = 80, 1, 40
    rows = bundleview.render_histogram(counts, width=20)
    assert len(rows) == 4  # 11..14; the empty bucket 12 is kept
    assert [r.split()[-1] for r in rows] == ["80", "0", "1", "40"]
    assert "█" * 20 in rows[0] and "█" * 10 in rows[3] and "█" * 11 not in rows[3]
    assert rows[2].split()[-2] in "▏▎▍▌▋▊▉"  # 1 of 80 is still visible
    assert len({len(r) for r in rows}) == 1  # aligned
    ascii_rows = bundleview.render_histogram(counts, width=20, ascii_only=True)
    assert "#" * 20 in ascii_rows[0] and "#" in ascii_rows[2] and "█" not in "".join(ascii_rows)
    assert bundleview.render_histogram([0] * 32) == []


def test_show_bare_name_is_looked_up_in_dir(real: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(["show", os.path.basename(real), "--dir", os.path.dirname(real)], capsys)
    assert rc == 0 and "anomaly    latency" in out


def _bad_inputs(tmp: Path, real: str) -> dict[str, tuple[str, str]]:
    """name -> (path, expected text in the message)."""
    data = Path(real).read_bytes()
    files = {
        "missing": (tmp / "nope.tar.zst", None, "no such file"),
        "directory": (tmp, None, "is a directory"),
        "empty": (tmp / "empty.tar.zst", b"", "empty file"),
        "random": (tmp / "rand.tar.zst", np.random.default_rng(2).bytes(5000), "not zstd-compressed"),
        "text": (tmp / "notes.txt", b"hello\n", "not zstd-compressed"),
        "zstd, not tar": (tmp / "x.zst", zstandard.ZstdCompressor().compress(b"hello world\n"), "not a tar"),
        "truncated": (tmp / "cut.tar.zst", data[: len(data) // 2], "truncated"),
        "garbled": (tmp / "garbled.tar.zst", data[:200] + bytes(b ^ 0x5A for b in data[200:]), "corrupt"),
    }
    out = {}
    for name, (p, content, msg) in files.items():
        if content is not None:
            p.write_bytes(content)
        out[name] = (str(p), msg)
    return out


@pytest.mark.usefixtures("zstd_backend")
def test_show_bad_input_one_line_and_exit_1(real: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name, (path, msg) in _bad_inputs(tmp_path, real).items():
        rc, out, err = run(["show", path], capsys)
        assert rc == 1, name
        assert err.count("\n") == 1 and err.startswith("aodv2 show: ") and path in err, (name, err)
        assert msg in err, (name, err)


@pytest.mark.usefixtures("zstd_backend")
def test_show_truncated_bundle_keeps_what_it_read(big: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cut = tmp_path / os.path.basename(big)
    cut.write_bytes(Path(big).read_bytes()[: os.path.getsize(big) // 2])
    rc, out, err = run(["show", str(cut)], capsys)
    assert rc == 1
    assert "anomaly    latency" in out and "INCOMPLETE" in out  # the summary is still shown
    assert err.count("\n") == 1 and "corrupt: unexpected end of data" in err
    rc, out, _ = run(["show", "--json", str(cut)], capsys)
    assert rc == 1 and json.loads(out)["complete"] is False


@pytest.mark.usefixtures("zstd_backend")
def test_truncation_at_a_member_boundary_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """tarfile itself stops silently when the stream ends between two members."""
    summ = json.dumps({"anomaly": {"type": "manual"}}).encode()
    members = [(ti("t", tarfile.DIRTYPE), b""), (ti("t/summary.json", size=len(summ)), summ),
               (ti("t/kernel.log", size=3), b"abc")]
    whole = tmp_path / "whole.tar.zst"
    frames = write_tar_zst(whole, members, frames=2)
    assert run(["show", str(whole)], capsys)[0] == 0  # two frames read as one stream
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(frames[0])
    rc, _, err = run(["show", str(cut)], capsys)
    assert rc == 1 and "truncated" in err and "end-of-archive" in err
    garbage = tmp_path / "garbage.tar.zst"  # a non-header block where the next member should be
    garbage.write_bytes(frames[0] + zstandard.ZstdCompressor().compress(b"\x01" * 1024))
    rc, _, err = run(["show", str(garbage)], capsys)
    assert rc == 1 and "corrupt" in err


def test_show_usage_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    for argv in (["show"], ["show", "a", "b"], ["show", "--extract"], ["list", "extra"], ["list", "--dir"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert "usage: aodv2" in capsys.readouterr().err


# ------------------------------------------------------------------ list


@pytest.mark.usefixtures("zstd_backend")
def test_list_rows_and_corrupt_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    t0 = time.time() - 3600
    paths = [_capture(tmp_path, t, wall=t0 + i * 60) for i, t in enumerate(("latency", "error", "emergency"))]
    out_dir = tmp_path / "out"
    for i, p in enumerate(paths):  # mtime order = capture order
        os.utime(p, (t0 + i * 60, t0 + i * 60))
    bad = out_dir / "aod_latency_20200101T000000Z_99.tar.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    os.utime(bad, (t0 + 200, t0 + 200))
    (out_dir / "notes.txt").write_text("not a bundle\n")
    rc, out, err = run(["list", "--dir", str(out_dir)], capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"bundles in {out_dir} (oldest first, newest last)")
    rows = lines[2:]
    assert len(rows) == 4 and [r.split()[2] for r in rows] == ["latency", "error", "emergency", "latency"]
    assert [r.split()[-1] for r in rows] == [os.path.basename(p) for p in paths] + [bad.name]
    assert "over_threshold>=10 x40 WRITE" in rows[0]
    assert "UNREADABLE" in rows[3] and "UNREADABLE" not in "".join(rows[:3])
    assert bundleview.human_bytes(os.path.getsize(paths[0])) in rows[0]
    rc, out, _ = run(["list", "--json", "--dir", str(out_dir)], capsys)
    d = json.loads(out)
    assert rc == 0 and d["order"] == "oldest first"
    assert [b["error"] is None for b in d["bundles"]] == [True, True, True, False]
    assert d["bundles"][0]["commands"] == ["WRITE"] and d["bundles"][0]["count"] == 40
    assert d["bundles"][3]["type"] == "latency" and d["bundles"][3]["detected_at"] == "2020-01-01T00:00:00Z"


@pytest.mark.usefixtures("zstd_backend")
def test_list_reads_only_the_head(big: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """summary.json is the first file: a bundle whose tail is gone still lists (show flags it)."""
    d = tmp_path / "out"
    d.mkdir()
    p = d / os.path.basename(big)
    p.write_bytes(Path(big).read_bytes()[:300_000])  # zstd blocks hold 128 KiB of input each
    assert os.path.getsize(big) > 3 * 300_000
    rc, out, _ = run(["list", "--dir", str(d)], capsys)
    assert rc == 0 and "over_threshold>=10 x40 WRITE" in out and "UNREADABLE" not in out


def test_list_dir_from_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "bundles"
    out_dir.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"output_dir: {out_dir}\n")
    rc, out, _ = run(["list", "--config", str(cfg)], capsys)
    assert rc == 0 and out.strip() == f"no bundles in {out_dir}"
    cfg.write_text("output_dir: [1]\n")
    rc, _, err = run(["list", "--config", str(cfg)], capsys)
    assert rc == 2 and "output_dir" in err and "--dir" in err and err.count("\n") == 1
    rc, _, err = run(["list", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert rc == 2 and "missing.yaml" in err
    rc, _, err = run(["list", "--dir", str(tmp_path / "nodir")], capsys)
    assert rc == 1 and "nodir: no such file or directory" in err


def _as_other_user(argv: list[str]) -> tuple[int, str]:
    """cli.main(argv) in a forked child that is not root (as root: setuid nobody); (rc, stderr)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no exec, so the interpreter need not be reachable by nobody
        rc, err = 99, ""
        try:
            os.close(rfd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
            rc = cli.main(argv)
            err = sys.stderr.getvalue()
        except BaseException as e:  # report, never return into pytest
            err = f"child raised {e!r}"
        finally:
            os.write(wfd, json.dumps([rc, err]).encode())
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    rc, err = json.loads(data)
    return rc, err


def test_not_root_gets_needs_root_and_77(real: str) -> None:
    """A 0700 output dir of another user (root's, as installed): clear message, exit 77, for real
    EACCES (as root the command runs as nobody; as a user the dir is made 0000)."""
    base = tempfile.mkdtemp(prefix="aod-bv-")
    try:
        os.chmod(base, 0o755)
        d = os.path.join(base, "out")
        os.mkdir(d, 0o700)
        b = os.path.join(d, os.path.basename(real))
        shutil.copyfile(real, b)
        os.chmod(b, 0o600)
        if os.geteuid() != 0:
            os.chmod(d, 0)
        for argv in (["list", "--dir", d], ["show", b]):
            rc, err = _as_other_user(argv)
            assert rc == 77, (argv, err)
            assert "needs root" in err and "Traceback" not in err and err.count("\n") == 1, err
    finally:
        os.chmod(os.path.join(base, "out"), 0o700)
        shutil.rmtree(base)


# ------------------------------------------------------------------ extract


@pytest.mark.usefixtures("zstd_backend")
def test_extract_real_bundle(real: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dest = tmp_path / "x"
    rc, out, err = run(["show", real, "--extract", str(dest)], capsys)
    assert rc == 0 and err == "" and f"into {dest}" in out
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    top = dest / os.path.basename(real)[: -len(".tar.zst")]
    for name, data in read_bundle(real).items():
        f = top / name
        assert f.read_bytes() == data and stat.S_IMODE(f.lstat().st_mode) == 0o600
    for sub in (top, top / "cifs"):
        assert stat.S_IMODE(sub.stat().st_mode) == 0o700
    rc, _, err = run(["show", real, "--extract", str(dest)], capsys)  # again: nothing overwritten
    assert rc == 1 and "already exists" in err
    rc, _, err = run(["show", real, "--extract", str(tmp_path / "no" / "such")], capsys)
    assert rc == 1 and "no such file" in err


def test_extract_refuses_escaping_members(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("keep")
    dev = ti("t/null", tarfile.CHRTYPE)
    dev.devmajor, dev.devminor = 1, 3
    members = [
        (ti("t", tarfile.DIRTYPE), b""),
        (ti("t/ok.txt", size=2), b"ok"),
        (ti("../escape.txt", size=4), b"evil"),
        (ti("t/../../escape2.txt", size=4), b"evil"),
        (ti("/abs.txt", size=4), b"evil"),
        (ti("t/etc", tarfile.SYMTYPE, link="/etc"), b""),
        (ti("t/etc/passwd", size=4), b"evil"),
        (ti("t/out", tarfile.SYMTYPE, link=str(outside)), b""),
        (ti("t/out/victim", size=4), b"evil"),
        (ti("t/hl", tarfile.LNKTYPE, link=str(victim)), b""),
        (ti("t/hl2", tarfile.LNKTYPE, link="../../outside/victim"), b""),
        (dev, b""),
        (ti("t/fifo", tarfile.FIFOTYPE), b""),
        (ti("t/ok.txt", size=4), b"twice"[:4]),
    ]
    bad = tmp_path / "evil.tar.zst"
    write_tar_zst(bad, members)
    dest = tmp_path / "dest"
    rc, out, err = run(["show", str(bad), "--extract", str(dest)], capsys)
    assert rc == 1 and "extracted 1 files" in out and "refused 12 members" in out
    assert (dest / "t" / "ok.txt").read_bytes() == b"ok"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["t", "t/ok.txt"]
    assert victim.read_text() == "keep" and sorted(os.listdir(outside)) == ["victim"]
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "escape2.txt").exists()
    assert not os.path.exists("/abs.txt") or Path("/abs.txt").read_bytes() != b"evil"
    reasons = {ln.split("'")[1]: ln for ln in err.splitlines()}
    assert len(reasons) == 12 and all(ln.startswith("aodv2 show: refused member") for ln in err.splitlines())
    assert "'..'" in reasons["../escape.txt"] and "'..'" in reasons["t/../../escape2.txt"]
    assert "absolute" in reasons["/abs.txt"]
    assert "symlink to '/etc'" in reasons["t/etc"] and "refused" in reasons["t/etc/passwd"]
    assert "refused" in reasons["t/out/victim"]
    assert "hardlink" in reasons["t/hl"] and "hardlink" in reasons["t/hl2"]
    assert "chardev" in reasons["t/null"] and "fifo" in reasons["t/fifo"]
    assert "already exists" in reasons["t/ok.txt"]


def test_extract_never_follows_an_existing_symlink(real: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    top = os.path.basename(real)[: -len(".tar.zst")]
    (dest / top).symlink_to(outside)  # planted before extraction
    rc, _, err = run(["show", real, "--extract", str(dest)], capsys)
    assert rc == 1 and "symlink" in err
    assert os.listdir(outside) == []


def test_show_falls_back_to_events_without_a_histogram(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A manual capture has no window counters: the histogram is drawn from events.npy (slow ones only)."""
    env, _ = fake_host(tmp_path / "host")
    a = dataclasses.replace(_anomaly("latency"), window_stats=None)
    r = capture(a, _cfg(tmp_path / "out"), env)
    assert r.ok and r.path
    rc, out, _ = run(["show", "--json", r.path], capsys)
    h = json.loads(out)["histograms"]["WRITE"]
    assert rc == 0 and h["source"] == "events"
    assert {(b["label"], b["count"]) for b in h["buckets"] if b["count"]} == {("2-4.1 ms", 4), ("524 ms-1 s", 40)}
