"""Hostile input to the viewers and the CLI's readers: `aodv2 show`, `list`, `show --extract`
(aod/bundleread.py, bundlecheck.py, bundleshow.py, bundleview.py, bundleextract.py), `status`
(status.py), `check-config` (configcheck.py, yamlsafe.py), the control socket (control.py) and
every verb's --help. Each test fails with its fix removed; where one measures (peak RSS of the
CLI in a child process, seconds) it records the figure with record_property."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import zstandard

from aod import bundlecheck, cli, control, status
from aod.bundleextract import MAX_EXTRACT_MEMBERS
from aod.record import EVENT_DTYPE, KIND_COMPLETION, empty

ROOT = Path(__file__).resolve().parent.parent
RSS_BOUND_MB = 200
TIME_BOUND_S = 20.0
NAME = "aod_latency_20240101T000000Z_1.tar.zst"
TOP = "aod_latency_20240101T000000Z_1"
GIB = 1 << 30


# ------------------------------------------------------------------ helpers


# The child reports its own VmHWM at exit: ru_maxrss (wait4, getrusage) carries the parent's
# high-water mark over fork/vfork and exec, so after a long pytest run it says ~300 MB for anything.
_CHILD = ("import atexit, os, sys\n"
          "def _hwm():\n"
          "    for ln in open('/proc/self/status'):\n"
          "        if ln.startswith('VmHWM:'):\n"
          "            open(os.environ['AOD_TEST_HWM'], 'w').write(ln.split()[1])\n"
          "atexit.register(_hwm)\n"
          "sys.argv = ['aodv2'] + sys.argv[1:]\n"
          "from aod.cli import main\n"
          "sys.exit(main())\n")


def run_cli(argv: list[str], timeout: float = 60.0) -> tuple[int, str, str, float, float]:
    """`aodv2 ARGV` in a child: (exit code, stdout, stderr, peak RSS in MiB, seconds). The peak
    RSS is the child's own VmHWM after exec, read by the child as it exits."""
    with tempfile.TemporaryDirectory() as td, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        hwm = os.path.join(td, "hwm")
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-c", _CHILD, *argv], stdout=out, stderr=err, cwd=ROOT,
                             env={**os.environ, "AOD_TEST_HWM": hwm})
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        secs = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        try:
            with open(hwm) as f:
                peak = int(f.read()) / 1024.0
        except (OSError, ValueError):
            peak = float("inf")  # killed, or died before atexit: no bound can hold
        return p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), peak, secs


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    rc = cli.main(argv)
    o = capsys.readouterr()
    return rc, o.out, o.err


def member(name: str, data: bytes = b"", type_: bytes = tarfile.REGTYPE) -> tuple[tarfile.TarInfo, bytes]:
    t = tarfile.TarInfo(name)
    t.type, t.size, t.mode = type_, len(data) if type_ == tarfile.REGTYPE else 0, 0o600
    return t, data


def write_bundle(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A .tar.zst of exactly these members (no checks), as bundle.py lays it out."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


def events_npy(n: int = 3) -> bytes:
    ev = empty(n)
    ev["kind"], ev["command"], ev["latency_ns"] = KIND_COMPLETION, 8, 5_000_000
    b = io.BytesIO()
    np.save(b, ev, allow_pickle=False)
    return b.getvalue()


def summary_bundle(path: Path, summary: Any, raw: Optional[bytes] = None, npy: Optional[bytes] = None) -> Path:
    """A bundle with summary.json (json.dumps(summary) or raw bytes) and events.npy."""
    data = raw if raw is not None else json.dumps(summary).encode()
    return write_bundle(path, [member(TOP, type_=tarfile.DIRTYPE), member(f"{TOP}/summary.json", data),
                               member(f"{TOP}/events.npy", events_npy() if npy is None else npy)])


def good_summary() -> dict[str, Any]:
    return {"anomaly": {"type": "latency", "rule": "over_threshold>=10", "count": 3, "commands": ["READ"]},
            "detected_at": "2024-01-01T00:00:00Z", "host": "h"}


def raw_header(name: bytes, size: int, type_: bytes) -> bytes:
    """One 512-byte ustar header as anyone could write it: size in octal, or base-256 when it
    does not fit 11 octal digits."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108], h[108:116], h[116:124] = b"0000600\0", b"0000000\0", b"0000000\0"
    if size < 8**11:
        h[124:136] = b"%011o\0" % size
    else:
        h[124] = 0x80
        h[125:136] = size.to_bytes(11, "big")
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = type_
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def sparse_header(name: bytes) -> bytes:
    """A GNU sparse ('S') header whose map goes on in extended blocks."""
    h = bytearray(raw_header(name, 0, tarfile.GNUTYPE_SPARSE))
    h[482], h[483:495] = 1, b"%011o\0" % 1
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


# one extended sparse block: 21 (offset 1, 1 byte) entries, and "another block follows"
SPARSE_EXT = (b"00000000001\0" * 2) * 21 + b"\1" + bytes(7)


def zst_stream(path: Path, parts: list[bytes], zeros: int = 0) -> Path:
    """parts, then `zeros` zero bytes (streamed: 1.5 GiB of zeros is a 49 KB file)."""
    co = zstandard.ZstdCompressor(level=1).compressobj()
    with open(path, "wb") as f:
        for p in parts:
            f.write(co.compress(p))
        mb = bytes(1 << 20)
        for _ in range(zeros >> 20):
            f.write(co.compress(mb))
        f.write(co.compress(bytes(zeros & ((1 << 20) - 1))))
        f.write(co.flush())
    return path


def one_error_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("aodv2 ") and "Traceback" not in err


# ------------------------------------------------------------------ 1, 2: summary.json values


def test_deeply_nested_summary_is_one_error_in_show_and_one_row_in_list(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: summary.json is 100000 nested lists ('[[[[...]]]]'), in a bundle beside a good one.
    expected: `show` and `show --json` print one line naming the nesting and exit 1 (no
    RecursionError); `list` shows the good bundle and one UNREADABLE row for the bad one, exit 0."""
    d = tmp_path / "out"
    d.mkdir()
    deep = b"[" * 100_000 + b"]" * 100_000
    bad = summary_bundle(d / NAME, None, raw=deep)
    summary_bundle(d / NAME.replace("_1.", "_2."), good_summary())
    for argv in (["show", str(bad)], ["show", "--json", str(bad)]):
        rc, out, err = run(argv, capsys)
        assert rc == 1 and one_error_line(err) and "nested deeper than" in err, (argv, err)
    rc, out, err = run(["list", "--dir", str(d)], capsys)
    rows = out.splitlines()[2:]
    assert rc == 0 and err == "" and len(rows) == 2
    assert "UNREADABLE" in rows[0] and "nested deeper" in rows[0] and "over_threshold>=10 x3 READ" in rows[1]
    rc, out, _ = run(["list", "--json", "--dir", str(d)], capsys)
    assert rc == 0 and [b["error"] is None for b in json.loads(out)["bundles"]] == [False, True]


def test_huge_histogram_count_is_noted_not_an_overflow(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: summary.json's per_command READ hist is [10**30] (past int64), and other numbers
    are past float: max_ms 10**400, an action of 10**400 bytes taking 10**400 s.
    expected: `show` prints the rest, names the histogram on stderr in one line and exits 1
    (no OverflowError); `show --json` is valid JSON with the same exit."""
    s = good_summary()
    s["per_command"] = {"READ": {"count": 1, "hist": [10**30], "max_ms": 10**400}}
    s["actions"] = [{"name": "syslog", "status": "ok", "bytes": 10**400, "duration_s": 10**400}]
    b = summary_bundle(tmp_path / NAME, s)
    rc, out, err = run(["show", str(b)], capsys)
    assert rc == 1 and one_error_line(err) and "per_command['READ'].hist" in err, err
    assert "anomaly    latency: rule over_threshold>=10" in out and "syslog" in out
    rc, out, err = run(["show", "--json", str(b)], capsys)
    assert rc == 1 and "Traceback" not in err and json.loads(out)["summary"]["per_command"]["READ"]["hist"] == [10**30]


# ------------------------------------------------------------------ 3: events.npy


def _npy(dtype: Any, n: int, shape: Optional[tuple[int, ...]] = None) -> bytes:
    """An .npy of n zero rows of dtype whose header claims `shape` (default (n,))."""
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape or (n,)})
    return b.getvalue() + np.zeros(n, dtype).tobytes()


def _dtype_with(name: str, new: Any) -> np.dtype:
    return np.dtype([(f, new if f == name else EVENT_DTYPE[f]) for f in EVENT_DTYPE.names or ()])


@pytest.mark.parametrize("case", ["string command", "latency of shape (3,)", "1e11 rows claimed", "pickle"])
def test_hostile_events_npy_is_one_problem_within_bounds(case: str, tmp_path: Path, record_property: Any) -> None:
    """fault: events.npy has a string `command` field, or a `latency_ns` field of shape (3,), or a
    header claiming 1e11 rows (7 TB) over 3 rows of data, or an object (pickle) dtype.
    expected: `show` prints the summary, one line 'events.npy unreadable' on stderr, exit 1, no
    traceback, peak RSS < 200 MB and < 20 s (nothing allocated from the header's claims)."""
    npy = {
        "string command": _npy(_dtype_with("command", "U8"), 3),
        "latency of shape (3,)": _npy(_dtype_with("latency_ns", ("<u8", (3,))), 3),
        "1e11 rows claimed": _npy(EVENT_DTYPE, 3, shape=(10**11,)),
        "pickle": _npy(_dtype_with("comm", "O"), 0),
    }[case]
    b = summary_bundle(tmp_path / NAME, good_summary(), npy=npy)
    rc, out, err, rss, secs = run_cli(["show", str(b)])
    record_property("peak_rss_mb", round(rss, 1))
    record_property("seconds", round(secs, 2))
    assert rc == 1 and one_error_line(err) and "events.npy unreadable" in err, err
    assert "anomaly    latency" in out
    assert rss < RSS_BOUND_MB and secs < TIME_BOUND_S


def test_events_npy_reader_accepts_exactly_the_record_dtype() -> None:
    """fault: none (the strict reader against what collect writes, and one byte off).
    expected: np.save of EVENT_DTYPE rows loads back equal; a file one byte short is refused."""
    data = events_npy(5)
    got = bundlecheck.load_events(data)
    assert got.dtype == EVENT_DTYPE and len(got) == 5 and int(got["command"][0]) == 8
    with pytest.raises(ValueError, match="claims 5 records"):
        bundlecheck.load_events(data[:-1])


# ------------------------------------------------------------------ 4: tar headers


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundles whose tar headers make tarfile read or loop without bound."""
    d = tmp_path_factory.mktemp("bombs")
    big = GIB + GIB // 2
    pax_records = b"".join(b"%d x=y\n" % (len(b"x=y\n") + 3) for _ in range(1))  # "7 x=y\n"
    digits = b"1" * 60_000  # tarfile's pax regexes take seconds on this (quadratic)
    many_pax = b"".join(raw_header(b"././@PaxHeader", len(digits), tarfile.XHDTYPE) + digits
                        + bytes(-len(digits) % 512) for _ in range(40))
    return {
        "GNU long name of 1.5 GiB": zst_stream(d / "longname.tar.zst", [raw_header(
            b"././@LongLink", big, tarfile.GNUTYPE_LONGNAME)], zeros=big),
        "pax header of 1.5 GiB": zst_stream(d / "pax.tar.zst", [raw_header(
            b"././@PaxHeader", big, tarfile.XHDTYPE), pax_records], zeros=big),
        "40 pax headers of 60 KB digits": zst_stream(d / "paxredos.tar.zst", [many_pax], zeros=1024),
        "member claiming 2^80 bytes": zst_stream(d / "huge.tar.zst", [raw_header(
            b"t/data.bin", 2**80, tarfile.REGTYPE)], zeros=1024),
        "GNU sparse map of 128 MiB": zst_stream(d / "sparse.tar.zst", [sparse_header(b"t/x")]
                                                + [SPARSE_EXT] * (128 << 11), zeros=1024),
    }


@pytest.mark.usefixtures("zstd_backend")
@pytest.mark.parametrize("verb", ["show", "list", "extract"])
@pytest.mark.parametrize("case", ["GNU long name of 1.5 GiB", "pax header of 1.5 GiB", "40 pax headers of 60 KB digits",
                                  "member claiming 2^80 bytes", "GNU sparse map of 128 MiB"])
def test_tar_header_bombs_are_refused_early(case: str, verb: str, bombs: dict[str, Path], tmp_path: Path,
                                           record_property: Any) -> None:
    """fault: a bundle whose first header is a GNU long name or a pax header claiming 1.5 GiB
    (1.5 GiB of zeros follow, in a 49 KB file), 40 pax headers of 60 KB of digits (tarfile's pax
    regexes are quadratic), a member whose base-256 size is 2^80 (tarfile skips it block by block,
    forever), or a GNU sparse member whose map goes on for 128 MiB (5.5 million entries).
    expected: show / list / show --extract answer within 20 s and 200 MB peak RSS: show and
    --extract one line and exit 1 (--extract creates no directory), list one UNREADABLE row, exit 0."""
    src = bombs[case]
    d = tmp_path / "out"
    d.mkdir()
    b = d / NAME
    os.link(src, b) if os.stat(src).st_dev == os.stat(d).st_dev else b.write_bytes(src.read_bytes())
    dest = tmp_path / "x"
    argv = {"show": ["show", str(b)], "list": ["list", "--dir", str(d)],
            "extract": ["show", str(b), "--extract", str(dest)]}[verb]
    rc, out, err, rss, secs = run_cli(argv, timeout=60)
    record_property("peak_rss_mb", round(rss, 1))
    record_property("seconds", round(secs, 2))
    assert secs < TIME_BOUND_S and rss < RSS_BOUND_MB, (secs, rss, err[-300:])
    if verb == "list":
        assert rc == 0 and err == "" and "UNREADABLE" in out, (out, err)
    else:
        assert rc == 1 and one_error_line(err), err
    if verb == "extract":
        assert not dest.exists()


# ------------------------------------------------------------------ 5: --extract


def test_extract_refuses_a_symlink_planted_at_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: DIR of --extract is a symlink (as another user would plant in /tmp) to a directory
    elsewhere; also DIR/ with a trailing slash.
    expected: one line 'symbolic link', exit 1, nothing written where the link points."""
    b = summary_bundle(tmp_path / NAME, good_summary())
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "dest"
    link.symlink_to(target)
    for arg in (str(link), str(link) + "/"):
        rc, out, err = run(["show", str(b), "--extract", arg], capsys)
        assert rc == 1 and one_error_line(err) and "symbolic link" in err, err
        assert os.listdir(target) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_extract_refuses_another_users_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: DIR exists and belongs to another user (uid 65534); in a second run DIR is ours
    but the bundle's top directory was pre-created in it by uid 65534.
    expected: the first run refuses DIR (one line, exit 1, nothing written); the second refuses
    every member under the foreign directory and writes nothing into it."""
    b = summary_bundle(tmp_path / NAME, good_summary())
    dest = tmp_path / "dest"
    dest.mkdir()
    os.chown(dest, 65534, 65534)
    rc, _, err = run(["show", str(b), "--extract", str(dest)], capsys)
    assert rc == 1 and one_error_line(err) and "owned by uid 65534" in err, err
    assert os.listdir(dest) == []
    os.chown(dest, 0, 0)
    (dest / TOP).mkdir()
    os.chown(dest / TOP, 65534, 65534)
    rc, _, err = run(["show", str(b), "--extract", str(dest)], capsys)
    assert rc == 1 and "belongs to another user" in err
    assert os.listdir(dest / TOP) == []


def test_extract_caps_members_and_creates_nothing(tmp_path: Path, record_property: Any) -> None:
    """fault: a bundle of MAX_EXTRACT_MEMBERS + 1 (10001) empty files.
    expected: --extract refuses it before DIR is created: one line naming the cap, exit 1; the
    cap is the one `show --help` and the man page give."""
    b = write_bundle(tmp_path / NAME, [member(f"t/{i}") for i in range(MAX_EXTRACT_MEMBERS + 1)])
    dest = tmp_path / "x"
    rc, _, err, rss, secs = run_cli(["show", str(b), "--extract", str(dest)])
    record_property("seconds", round(secs, 2))
    assert rc == 1 and one_error_line(err) and f"more than {MAX_EXTRACT_MEMBERS} members" in err, err
    assert not dest.exists() and secs < TIME_BOUND_S
    sub = next(a for a in cli._parser()._actions if a.dest == "verb").choices or {}
    extract_help = next(a.help for a in sub["show"]._actions if a.dest == "extract")  # type: ignore[index]
    for doc in (extract_help or "", (ROOT / "man" / "aodv2.8").read_text()):  # the cap is documented
        assert f"{MAX_EXTRACT_MEMBERS} members" in doc


@pytest.mark.usefixtures("zstd_backend")
def test_extract_creates_no_dir_for_a_bundle_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: --extract DIR of a missing file, a non-zstd file, and zstd data that is no tar.
    expected: one line and exit 1 each, and DIR is not created."""
    (tmp_path / "text.tar.zst").write_bytes(b"hello\n")
    (tmp_path / "notar.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(b"hello world\n" * 100))
    for name in ("missing.tar.zst", "text.tar.zst", "notar.tar.zst"):
        dest = tmp_path / f"x-{name}"
        rc, _, err = run(["show", str(tmp_path / name), "--extract", str(dest)], capsys)
        assert rc == 1 and one_error_line(err), (name, err)
        assert not dest.exists(), name


# ------------------------------------------------------------------ 6: JSON and terminal text


def test_json_has_no_nan_and_text_escapes_bidi_controls(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: summary.json holds NaN, Infinity and -Infinity, and text with U+202E (right-to-left
    override), U+2066, U+200B, U+2028, U+0085 (C1) and a lone surrogate.
    expected: `show --json` is strict JSON (the non-finite numbers are null); `show` and `list`
    print none of those characters raw, each escaped as \\uNNNN / \\xNN."""
    s = good_summary()
    s["window"] = {"seconds": float("nan"), "start": float("inf")}
    s["per_command"] = {"READ": {"count": 1, "p50_ms": float("-inf")}}
    evil = "ok\u202etxt.exe\u2066x\u200by\u2028z\x85w\ud800"
    s["host"] = evil
    s["anomaly"]["rule"] = evil
    d = tmp_path / "out"
    d.mkdir()
    b = summary_bundle(d / NAME, s)

    def strict(text: str) -> Any:
        def no(c: str) -> Any:
            raise ValueError(f"not JSON: {c}")
        return json.loads(text, parse_constant=no)

    rc, out, _ = run(["show", "--json", str(b)], capsys)
    doc = strict(out)
    assert rc == 0 and doc["summary"]["window"] == {"seconds": None, "start": None}
    assert doc["summary"]["per_command"]["READ"]["p50_ms"] is None
    rc, out, _ = run(["list", "--json", "--dir", str(d)], capsys)
    assert rc == 0 and strict(out)["bundles"][0]["rule"] == evil
    for argv in (["show", str(b)], ["list", "--dir", str(d)]):
        rc, out, _ = run(argv, capsys)
        assert rc == 0
        for c in "\u202e\u2066\u200b\u2028\x85\ud800":
            assert c not in out, (argv, hex(ord(c)))
        assert "ok\\u202etxt.exe\\u2066x\\u200by\\u2028z\\x85w\\ud800" in out, argv


# ------------------------------------------------------------------ 7: status


STATUS_CASES = {
    "not JSON": b"{not json",
    "deeply nested": b'{"schema": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "updated is a string": b'{"schema": 1, "updated": "yesterday", "pid": 1}',
    "updated is 1e999 (inf)": b'{"schema": 1, "updated": 1e999, "pid": 1}',
    "updated is a 4000-digit int": b'{"schema": 1, "updated": ' + b"9" * 4000 + b', "pid": 1}',
    "tracers is a list": b'{"schema": 1, "updated": 1, "pid": 1, "tracers": [1, 2]}',
    "nested field of the wrong type": b'{"schema": 1, "updated": 1, "pid": 1, "state": "stopped", '
                                      b'"thresholds": {"per_command_ms": {"READ": "slow"}}}',
    "5 MiB": b'{"schema": 1, "pad": "' + b"x" * (5 << 20) + b'"}',
}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("case", list(STATUS_CASES))
def test_malformed_status_file_is_one_line(case: str, as_json: bool, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """fault: status.json in --state-dir is not JSON, nested 100000 deep, has fields of the wrong
    type (a string time, 1e999, a 4000-digit int, a list for an object, a string threshold), or
    is 5 MiB.
    expected: `aodv2 status [--json]` prints one line naming the file and exits 1: no traceback
    (--json passes a nested field of the wrong type on as it is, exit 3: stopped)."""
    (tmp_path / "status.json").write_bytes(STATUS_CASES[case])
    rc, out, err = run(["status", "--state-dir", str(tmp_path)] + (["--json"] if as_json else []), capsys)
    if as_json and case == "nested field of the wrong type":  # --json formats nothing: passed on
        assert rc == 3 and err == "" and json.loads(out)["thresholds"]["per_command_ms"]["READ"] == "slow"
        return
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "not a valid status file" in err and str(tmp_path / "status.json") in err
    if case == "5 MiB":  # its size, not a JSON parse error of its first 4 MiB
        assert f"more than {status.MAX_STATUS_BYTES} bytes" in err
    if as_json:
        assert json.loads(out)["running"] is False


def test_status_file_that_is_a_fifo_does_not_block(tmp_path: Path, record_property: Any) -> None:
    """fault: status.json in --state-dir is a fifo nobody writes to.
    expected: `aodv2 status` answers at once: one line, exit 1."""
    os.mkfifo(tmp_path / "status.json")
    rc, _, err, _, secs = run_cli(["status", "--state-dir", str(tmp_path)], timeout=20)
    record_property("seconds", round(secs, 2))
    assert rc == 1 and err.count("\n") == 1 and "not a regular file" in err and secs < 10


def test_status_text_escapes_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: a status.json whose config path holds an escape sequence and U+202E.
    expected: `aodv2 status` prints them escaped."""
    snap = {"schema": 1, "state": "stopped", "updated": 1, "config": "/x\x1b]0;owned\x07\u202e"}
    (tmp_path / "status.json").write_text(json.dumps(snap))
    rc, out, _ = run(["status", "--state-dir", str(tmp_path)], capsys)
    assert rc == 3 and "\x1b" not in out and "\u202e" not in out and "\\x1b]0;owned\\x07\\u202e" in out


# ------------------------------------------------------------------ 8, 9: check-config


def test_check_config_of_a_non_yaml_file_quotes_no_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: check-config on a copy of /etc/shadow (lines YAML reads as mapping keys).
    expected: at most 20 characters of each line are quoted, escaped and marked truncated: the
    password hashes never appear."""
    secret = "SECRETHASHSECRETHASHSECRETHASH"
    f = tmp_path / "shadow"
    f.write_text(f"root:$6$salt1234${secret}:19000:0:99999:7:::\n"
                 f"nobody:$y$j9T$abc${secret}:19000:0:99999:7:::\n")
    rc, _, err = run(["check-config", str(f)], capsys)
    assert rc == 2 and "(truncated)" in err and "Traceback" not in err
    assert secret[:6] not in err and "19000" not in err, err


def test_check_config_names_the_key_of_a_huge_integer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fault: a 5000-digit integer as latency.thresholds_ms.WRITE (Python refuses to convert it).
    expected: exit 2 with one error naming line 3 and the key path, not a bare ValueError."""
    f = tmp_path / "c.yaml"
    f.write_text("watch_interval_sec: 1\nlatency:\n  thresholds_ms: {WRITE: " + "9" * 5000 + "}\n")
    rc, _, err = run(["check-config", str(f)], capsys)
    assert rc == 2 and "1 error(s)" in err and "Traceback" not in err
    assert "line 3" in err and "latency.thresholds_ms.WRITE" in err and "ValueError" not in err, err


# ------------------------------------------------------------------ 10: control socket


def test_control_deeply_nested_request_gets_an_error_reply(tmp_path: Path, records: list[Any]) -> None:
    """fault: a root peer sends a 4 KiB request of nested lists ('[[[[...'), and a JSON object
    nested 6 deep, to the control socket's request handler.
    expected: each gets {"ok": false, "error": "bad request: nested deeper ..."}; the handler
    thread raises nothing (no traceback in the journal) and logs nothing."""
    ctl = control.Control(str(tmp_path), collect=lambda reason, wait: (True, "x"))
    for req in (b"[" * 2000 + b"]" * 2000 + b"\n", b'{"cmd": "ping", "x": [[[[[1]]]]]}\n'):
        a, b = socket.socketpair()
        try:
            a.sendall(req)
            assert ctl.clients.acquire(blocking=False)
            ctl._serve(b)  # in this thread: an exception would fail the test
            a.settimeout(5)
            reply = json.loads(a.recv(65536))
            assert reply["ok"] is False and "nested deeper" in reply["error"], reply
        finally:
            a.close()
    assert not [r for r in records if r.exc_info]


def test_control_request_that_trickles_is_cut_off_by_one_deadline(tmp_path: Path, monkeypatch: Any,
                                                                    record_property: Any) -> None:
    """fault: a peer sends its request one byte at a time, each within the per-read timeout (a
    slowloris: four of them held every control slot for hours; found by the attacker review).
    expected: the whole request has one deadline (REQUEST_READ_SEC): the handler answers "no
    complete line" and frees its slot soon after the deadline, however the bytes trickle."""
    monkeypatch.setattr(control, "REQUEST_READ_SEC", 1.0)
    ctl = control.Control(str(tmp_path), collect=lambda reason, wait: (True, "x"))
    a, b = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:  # for 60 s at most: the old handler returned only when it stopped
        end = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < end:
            try:
                a.send(b" ")
            except OSError:
                return
            time.sleep(0.2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        assert ctl.clients.acquire(blocking=False)
        t0 = time.monotonic()
        ctl._serve(b)  # in this thread: returns once the deadline passed
        took = time.monotonic() - t0
        stop.set()
        record_property("handler_seconds", round(took, 2))
        # generous (a loaded CI host once took 13.8 s for the 1 s deadline); before the fix it
        # returned only when the bytes stopped (60 s)
        assert took < 30, took
        a.settimeout(5)
        try:  # the answer, unless a byte sent after the handler's last read reset the socket
            reply = json.loads(a.recv(65536).split(b"\n")[0] or b"null")
        except ConnectionResetError:
            reply = None
        assert reply is None or (reply["ok"] is False and "no complete line" in reply["error"]), reply
        assert ctl.clients.acquire(blocking=False)  # the slot is free again
    finally:
        stop.set()
        a.close()
        t.join(5)


def test_control_unforeseen_error_is_one_log_line_and_a_reply(tmp_path: Path, records: list[Any]) -> None:
    """fault: the capture callback raises an unexpected exception for a collect request.
    expected: the client gets {"ok": false, "error": "internal error: ..."}; one warning without a
    traceback is logged; the thread does not die with one."""
    def boom(reason: str, wait: float) -> tuple[bool, str]:
        raise KeyError("nope")

    ctl = control.Control(str(tmp_path), collect=boom)
    a, b = socket.socketpair()
    try:
        a.sendall(b'{"cmd": "collect", "reason": "x"}\n')
        assert ctl.clients.acquire(blocking=False)
        t = threading.Thread(target=ctl._serve, args=(b,))
        died: list[Any] = []
        old = threading.excepthook
        threading.excepthook = lambda args: died.append(args)
        try:
            t.start()
            t.join(10)
        finally:
            threading.excepthook = old
        a.settimeout(5)
        reply = json.loads(a.recv(65536))
    finally:
        a.close()
    assert not died and reply == {"ok": False, "error": "internal error: KeyError"}
    warn = [r for r in records if "control request failed" in r.getMessage()]
    assert len(warn) == 1 and not warn[0].exc_info


# ------------------------------------------------------------------ 11: --help of every verb

VERBS = sorted(next(a for a in cli._parser()._actions if a.dest == "verb").choices or ())


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str) -> None:
    """fault: `aodv2 VERB --help` for every verb the parser defines (tracer's arguments go to its
    own parser, where argparse's REMAINDER refused a leading --help).
    expected: exit 0 and a usage line for that verb on stdout."""
    rc, out, err, _, _ = run_cli([verb, "--help"], timeout=60)
    assert rc == 0 and f"usage: aodv2 {verb}" in out and "Traceback" not in err, (rc, out[:200], err)
