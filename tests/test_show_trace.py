"""`aodv2 show`: the trace recorder's lines around the trigger (bundleshow.trace_excerpt)."""

from __future__ import annotations

from aod.bundleread import BundleView, Member
from aod.bundleshow import TRACE_AFTER, TRACE_BEFORE, format_show, trace_excerpt


def _line(i: int, sec: int) -> str:
    # as tracefreeze writes them: the kernel's padding kept, the time right-aligned after the flags
    return f"            dd-42      [001] .....   2026-12-06T06:00:{sec:02d}.000000+00:00: smb3_cmd_done: mid={i}"


def view(trace: bytes, detected: str = "2026-12-06T06:00:30.000Z") -> BundleView:
    return BundleView("/x/aod_latency_20261206T060030Z_1.tar.zst", 100,
                      members=[Member("b/summary.json", 10, "file", ""), Member("b/recorder/trace.txt",
                                                                               len(trace), "file", "")],
                      summary={"detected_at": detected, "anomaly": {"type": "latency"}}, trace=trace)


def test_excerpt_is_centred_on_the_trigger_and_marks_it() -> None:
    lines = [_line(i, i) for i in range(60)]  # one line a second, 06:00:00 .. 06:00:59
    text = ("# aodv2 trace recorder: header\n" + "\n".join(lines) + "\n").encode()
    out = trace_excerpt(view(text))
    assert out[1].startswith("trace recorder: 60 lines") and "around the trigger" in out[1]
    body = out[2:]
    assert len(body) == TRACE_BEFORE + TRACE_AFTER
    marked = [ln for ln in body if ln.startswith("> ")]
    assert len(marked) == 1 and "mid=31" in marked[0]  # the first line after 06:00:30
    assert "mid=19" in body[0] and "mid=34" in body[-1]


def test_no_trace_member_prints_nothing_and_a_hostile_line_is_escaped() -> None:
    assert trace_excerpt(view(b"", "x")) == ["", "trace recorder: 0 lines in recorder/trace.txt"]
    v = view(b"x\x1b[2J evil\n")
    v.trace = b"x\x1b[2J evil\n"
    text = "\n".join(trace_excerpt(v))
    assert "\x1b" not in text and "evil" in text
    v.trace = None
    assert trace_excerpt(v) == [] and "trace recorder" not in format_show(v)


def test_a_naive_or_odd_detected_at_never_refuses_the_bundle() -> None:
    lines = "\n".join(_line(i, i) for i in range(40)).encode()
    for detected in ("2026-12-06T06:00:30", "2026-12-06", "9999-12-31T23:59:59+23:59", "", "x"):
        out = trace_excerpt(view(lines, detected))
        assert out[1].startswith("trace recorder: 40 lines"), (detected, out[:2])
    marked = [ln for ln in trace_excerpt(view(lines, "2026-12-06T06:00:30"))[2:] if ln.startswith("> ")]
    assert len(marked) == 1 and "mid=31" in marked[0]  # naive: taken as UTC


def test_millions_of_short_lines_are_scanned_not_kept() -> None:
    import tracemalloc

    data = b"ab\n" * 2_000_000
    tracemalloc.start()
    out = trace_excerpt(view(data))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out[1].startswith("trace recorder: 2000000 lines") and len(out) == 2 + TRACE_BEFORE
    assert peak < 8 << 20, peak  # the 6 MB input is not copied into a list of lines
