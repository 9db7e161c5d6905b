"""The core's freeze of the trace recorder: wall-clock times, the window, the cap, lost entries,
crafted lines, trace_pipe without blocking, the deadline, and no symlink followed."""

from __future__ import annotations

import datetime
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from aod import tracefreeze
from aod.tracefreeze import LINE_MAX, TraceFreeze, freeze, selected_clock

CLOCK_IDS = {"boot": time.CLOCK_BOOTTIME, "mono": time.CLOCK_MONOTONIC}
FAR = 1e12  # a deadline that never passes (time.monotonic() seconds)


def line(ts: float, comm: str = "dd", pid: int = 42, cpu: int = 1, text: str = "smb3_cmd_done: mid=7",
         flags: Optional[str] = ".....") -> str:
    """One event line as the kernel prints it: the comm right-aligned in 16 columns."""
    return f"{comm:>16}-{pid:<7d} [{cpu:03d}] " + (f"{flags} " if flags else "") + f"{ts:12.6f}: {text}"


def instance(tmp_path: Path, lines: list[str], clock: str = "boot", pause: bool = True,
             header: str = "# entries-in-buffer/entries-written: 2/2   #P:2") -> Path:
    inst = tmp_path / "tracefs" / "instances" / "aodv2"
    (inst / "options").mkdir(parents=True)
    if pause:
        (inst / "options" / "pause-on-trace").write_text("0\n")
    names = ["local", "global", "mono", "boot"]
    (inst / "trace_clock").write_text(" ".join(f"[{c}]" if c == clock else c for c in names) + "\n")
    text = f"# tracer: nop\n#\n{header}\n#\n" + "".join(ln + "\n" for ln in lines)
    (inst / ("trace" if pause else "trace_pipe")).write_text(text)
    return inst


def now_on(clock: str) -> float:
    return time.clock_gettime(CLOCK_IDS[clock])


def events(fz: TraceFreeze) -> list[str]:
    return [ln for ln in fz.data.decode().splitlines() if not ln.startswith("#")]


def header(fz: TraceFreeze) -> list[str]:
    return [ln for ln in fz.data.decode().splitlines() if ln.startswith("#")]


ISO = re.compile(r" (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d): ")


def wall_of(out_line: str) -> float:
    """The ISO wall-clock time (microseconds, UTC offset) that replaced the timestamp."""
    m = ISO.search(out_line)
    assert m, out_line
    return datetime.datetime.fromisoformat(m.group(1)).timestamp()


@pytest.mark.parametrize("clock", ["boot", "mono"])
def test_trace_clock_seconds_become_local_wall_clock(tmp_path: Path, clock: str) -> None:
    t = now_on(clock)
    inst = instance(tmp_path, [line(t - 2.0, text="smb3_cmd_done: mid=1"), line(t - 0.5, text="smb3_cmd_err: x")],
                    clock=clock)
    fz = freeze(str(inst), time.time() - 60, 1 << 20, FAR)
    assert fz.clock == clock and fz.source == str(inst / "trace") and fz.lines == 2 and fz.older == 0
    out = events(fz)
    expect = time.time() - 2.0  # the real offset between this clock and the wall clock
    assert abs(wall_of(out[0]) - expect) < 0.5, out[0]
    assert abs(wall_of(out[1]) - (expect + 1.5)) < 0.5, out[1]
    assert fz.first_wall is not None and abs(fz.first_wall - expect) < 0.5
    assert out[0].endswith(": smb3_cmd_done: mid=1") and f"{t - 2.0:.6f}" not in out[0]  # no raw seconds left
    assert out[0].startswith(f"{'dd':>16}-42      [001] ..... ")
    assert any(f"trace_clock {clock} + " in h for h in header(fz))


def test_lines_without_flags_or_with_tgid_are_converted(tmp_path: Path) -> None:
    t = now_on("boot")
    tgid = f"{'dd':>16}-42      (     40) [000] d.h1. {t - 1:12.6f}: smb3_cmd_done: tgid"
    inst = instance(tmp_path, [line(t - 1, flags=None, text="noflags"), tgid])
    fz = freeze(str(inst), time.time() - 60, 1 << 20, FAR)
    assert fz.lines == 2 and fz.older == 0
    assert all(f"{t - 1:.6f}" not in ln for ln in events(fz)), events(fz)


def test_window_drops_older_lines_and_counts_them(tmp_path: Path) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 300, text="a"), line(t - 100, text="b"), line(t - 5, text="c"),
                               line(t - 1, text="d")])
    fz = freeze(str(inst), time.time() - 30, 1 << 20, FAR)
    assert (fz.lines, fz.older) == (2, 2)
    assert [ln.rsplit(": ", 1)[1] for ln in events(fz)] == ["c", "d"]
    assert any("2 lines kept, 2 older dropped" in h for h in header(fz)), header(fz)
    assert not fz.truncated


def test_cap_keeps_the_newest_lines(tmp_path: Path) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 10 + i * 0.001, text=f"n={i:05d} " + "x" * 60) for i in range(2000)])
    cap = 16 * 1024
    fz = freeze(str(inst), time.time() - 60, cap, FAR)
    out = events(fz)
    assert fz.truncated and len(fz.data) <= cap
    assert "n=01999" in out[-1] and not any("n=00000" in ln for ln in out)
    nums = [int(ln.split("n=")[1][:5]) for ln in out]
    assert nums == list(range(2000 - len(nums), 2000))  # contiguous newest, in order
    assert any("oldest cut by the size cap" in h for h in header(fz))


def test_cap_holds_even_with_a_long_header(tmp_path: Path) -> None:
    deep = tmp_path
    for i in range(6):  # a source path of ~1500 bytes: the header is longer than 1 KiB
        deep = deep / (f"d{i}" + "p" * 240)
    t = now_on("boot")
    inst = instance(deep, [line(t - 5 + i * 0.001, text=f"n={i:05d}") for i in range(400)])
    cap = 8 * 1024
    fz = freeze(str(inst), time.time() - 60, cap, FAR)
    assert len(fz.data) <= cap, len(fz.data)
    assert fz.truncated and "n=00399" in events(fz)[-1]
    assert fz.lines == len(events(fz)) and any(f"{fz.lines} lines kept" in h for h in header(fz))


@pytest.mark.parametrize("counts,lost", [("5/12", 7), ("5/5", 0), ("0/0", 0)])
def test_lost_entries_from_the_header(tmp_path: Path, counts: str, lost: int) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 1)], header=f"# entries-in-buffer/entries-written: {counts}   #P:4")
    fz = freeze(str(inst), time.time() - 60, 1 << 20, FAR)
    assert fz.lost == lost
    said = [h for h in header(fz) if "dropped" in h and "ring" in h]
    assert said == ([f"# the overwrite ring dropped {lost} older events before this freeze"] if lost else [])


def test_a_later_lookalike_header_does_not_override_lost(tmp_path: Path) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 1), "# entries-in-buffer/entries-written: 0/99999"],
                    header="# entries-in-buffer/entries-written: 3/3   #P:4")
    assert freeze(str(inst), time.time() - 60, 1 << 20, FAR).lost == 0


def test_unknown_clock_leaves_lines_raw_with_a_note(tmp_path: Path) -> None:
    t = now_on("boot")
    raw = line(t - 1, text="smb3_cmd_done: raw")
    inst = instance(tmp_path, [raw], clock="local")
    fz = freeze(str(inst), time.time() - 60, 1 << 20, FAR)
    assert fz.clock == "local" and fz.lines == 1
    assert events(fz) == [raw]
    assert fz.notes == ["trace_clock is local, not boot or mono: times left as the kernel wrote them"]
    assert any("(not converted)" in h for h in header(fz))
    assert selected_clock(str(tmp_path / "none")) == ""


@pytest.mark.parametrize("comm", ["[000] 1.0: ", "-1 [000] 1.0: ", "x[000] ..1.0: ", "[000] .....1.0:"])
def test_a_crafted_comm_does_not_supply_the_timestamp(tmp_path: Path, comm: str) -> None:
    assert len(comm) <= 15  # TASK_COMM_LEN - 1: what prctl(PR_SET_NAME) allows
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 2.0, comm=comm, text="smb3_cmd_err: crafted")])
    fz = freeze(str(inst), time.time() - 60, 1 << 20, FAR)
    assert (fz.lines, fz.older) == (1, 0)  # 1.0 s after boot would be far outside the window
    out = events(fz)[0]
    assert out.startswith(f"{comm:>16}-42")  # the comm is left as it was
    assert fz.first_wall is not None and abs(fz.first_wall - (time.time() - 2.0)) < 0.5
    assert f"{t - 2.0:.6f}" not in out


def test_a_huge_line_is_cut(tmp_path: Path) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 2, text="smb3_cmd_done: " + "A" * 100_000), line(t - 1, text="after")])
    with open(inst / "trace", "a") as f:  # and an endless last line without a newline
        f.write(line(t - 0.5, text="B" * 3_000_000))
    fz = freeze(str(inst), time.time() - 60, 1 << 22, FAR)
    out = events(fz)
    assert len(out) == 3 and out[1].endswith(": after")
    for ln in (out[0], out[2]):
        assert ln.endswith(" [cut]") and len(ln) < LINE_MAX + 64, len(ln)


def run_bounded(fn: Any, timeout: float = 10.0) -> Any:
    """fn() in a thread; fails (instead of hanging the suite) if it has not returned by timeout."""
    got: dict[str, Any] = {}

    def work() -> None:
        try:
            got["ok"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            got["err"] = e

    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), "freeze blocked"
    if "err" in got:
        raise got["err"]
    return got["ok"]


def fifo_instance(tmp_path: Path) -> Path:
    inst = instance(tmp_path, [], pause=False)
    (inst / "trace_pipe").unlink()
    os.mkfifo(inst / "trace_pipe")
    return inst


def test_trace_pipe_on_an_empty_fifo_returns(tmp_path: Path) -> None:
    inst = fifo_instance(tmp_path)
    fz = run_bounded(lambda: freeze(str(inst), time.time() - 60, 1 << 20, FAR))
    assert fz.source == str(inst / "trace_pipe") and fz.lines == 0 and fz.lost is None
    assert "(consumed: this kernel has no pause-on-trace)" in header(fz)[0]


def test_trace_pipe_with_a_writer_reads_what_is_buffered_and_returns(tmp_path: Path) -> None:
    inst = fifo_instance(tmp_path)
    wfd = os.open(inst / "trace_pipe", os.O_RDWR | os.O_NONBLOCK)  # a writer that never closes: no EOF
    try:
        t = now_on("boot")
        os.write(wfd, "".join(line(t - 1, text=f"p{i}") + "\n" for i in range(3)).encode())
        fz = run_bounded(lambda: freeze(str(inst), time.time() - 60, 1 << 20, FAR))
    finally:
        os.close(wfd)
    assert fz.lines == 3 and [ln.rsplit(": ", 1)[1] for ln in events(fz)] == ["p0", "p1", "p2"]


def test_pipe_argument_overrides_the_probe(tmp_path: Path) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 1)])  # has pause-on-trace, but the caller asks for trace_pipe
    (inst / "trace_pipe").write_text(line(t - 1, text="from the pipe") + "\n")
    fz = freeze(str(inst), time.time() - 60, 1 << 20, FAR, pipe=True)
    assert fz.source.endswith("trace_pipe") and events(fz)[0].endswith("from the pipe")


def test_deadline_passed_stops_with_a_note(tmp_path: Path) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 1)])
    fz = freeze(str(inst), time.time() - 60, 1 << 20, time.monotonic() - 1)
    assert fz.truncated and fz.lines == 0
    assert fz.notes == ["stopped reading at the action deadline after 0 bytes"]
    assert "# note: stopped reading at the action deadline after 0 bytes" in header(fz)
    assert not any("size cap" in h for h in header(fz))  # the deadline, not the cap, cut it


def test_a_symlinked_trace_is_refused(tmp_path: Path) -> None:
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 1)])
    secret = tmp_path / "secret"
    secret.write_text(line(t - 1, text="not for the bundle") + "\n")
    (inst / "trace").unlink()
    (inst / "trace").symlink_to(secret)
    with pytest.raises(OSError):
        freeze(str(inst), time.time() - 60, 1 << 20, FAR)


def test_missing_trace_file_raises_oserror_naming_it(tmp_path: Path) -> None:
    inst = instance(tmp_path, [])
    (inst / "trace").unlink()
    with pytest.raises(FileNotFoundError) as ei:
        freeze(str(inst), time.time() - 60, 1 << 20, FAR)
    assert ei.value.filename == str(inst / "trace")


def test_clock_offset_is_tight() -> None:
    off, err = tracefreeze.clock_offset("boot")
    assert err >= 0 and abs(time.clock_gettime(time.CLOCK_BOOTTIME) + off - time.time()) < 0.5


def test_control_bytes_of_a_comm_or_a_string_field_are_escaped(tmp_path: Path) -> None:
    """A process name or string field is any bytes: trace.txt must stay inert to cat (no escapes)."""
    t = now_on("boot")
    inst = instance(tmp_path, [line(t - 1.0, comm="x\x1b]0;PWN\x07", text="smb3_open_enter: path=a\x1b[2Jb")])
    fz = freeze(str(inst), time.time() - 60, 1 << 20, FAR)
    assert fz.lines == 1 and b"\x1b" not in fz.data and b"\x07" not in fz.data
    out = events(fz)[0]
    assert "x\\x1b]0;PWN\\x07" in out and "path=a\\x1b[2Jb" in out
