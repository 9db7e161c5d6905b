"""`aodv2 show BUNDLE`: one bundle as text or JSON (formatting for bundleview.py).

ring -> dispatch -> detect -> collect -> retain; this sits after collect and formats what
bundleread.py read: summary, latency histograms (log2 buckets, from summary.json's all-traffic
counts or else from the completions in events.npy) and members. Every value comes from a file
anyone could have written: text is escaped for the terminal and cut short, numbers are checked
before they are formatted, JSON carries no NaN or Infinity (safetext.py).
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
from datetime import datetime, timezone
from typing import IO, Any

import numpy as np

from .bundleread import BundleView, Member, human_bytes, name_parts
from .record import HIST_BUCKETS, KIND_COMPLETION, hist_bucket
from .safetext import clean as _clean
from .safetext import is_number, short
from .smb2 import command_name
from .summary import bucket_bounds_us

BAR_WIDTH = 40
_EIGHTHS = " ▏▎▍▌▋▊▉"
MAX_COUNT = 2**63 - 1  # a histogram count past this is not one (numpy's int64 overflows)
MAX_HISTOGRAMS = 64  # per bundle; the core has 32 command slots
TEXT_MAX = 200  # characters of one value from the bundle


# ------------------------------------------------------------------ small formatting helpers


def clean(v: Any, limit: int = TEXT_MAX) -> str:
    """A value from a bundle as terminal-safe text: cut to `limit` characters, then control,
    bidirectional and invisible characters escaped (safetext.clean)."""
    return _clean(short(v if isinstance(v, str) else str(v), limit))


def _num(v: float) -> str:
    s = f"{v:.1f}" if v < 10 else f"{v:.0f}"
    return s[:-2] if s.endswith(".0") else s


def _human_us(us: float) -> tuple[str, str]:
    if us < 1000:
        return _num(us), "us"
    if us < 1_000_000:
        return _num(us / 1000.0), "ms"
    return _num(us / 1_000_000.0), "s"


def bucket_label(b: int) -> str:
    """Human label of log2 bucket b ([2^(b-1), 2^b) us): '1-2 ms', '512 us-1 ms', '>=1074 s'."""
    lo, hi = bucket_bounds_us(b)
    lv, lu = _human_us(lo)
    if b >= HIST_BUCKETS - 1:  # the last bucket is open-ended
        return f">={lv} {lu}"
    hv, hu = _human_us(hi)
    return f"{lv}-{hv} {hu}" if lu == hu else f"{lv} {lu}-{hv} {hu}"


def _bar(count: int, top: int, width: int, ascii_only: bool) -> str:
    if count <= 0 or top <= 0:
        return ""
    eighths = max(1, round(count / top * width * 8))  # a non-empty bucket is always visible
    if ascii_only:
        return "#" * max(1, eighths // 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def render_histogram(counts: Any, width: int = BAR_WIDTH, ascii_only: bool = False) -> list[str]:
    """One row per log2 bucket from the lowest to the highest non-empty one (empty buckets in
    between are kept: gaps show a bimodal shape): label, bar scaled to the largest bucket, count."""
    c = [int(x) for x in np.asarray(counts, dtype=np.int64).ravel()[:HIST_BUCKETS]]
    nz = [b for b, n in enumerate(c) if n > 0]
    if not nz:
        return []
    top = max(c)
    rows = range(nz[0], nz[-1] + 1)
    lw = max(len(bucket_label(b)) for b in rows)
    cw = len(str(top))
    return [f"  {bucket_label(b):>{lw}}  {_bar(c[b], top, width, ascii_only):<{width}}  {c[b]:>{cw}}"
            for b in rows]


def ascii_only(stream: IO[str]) -> bool:
    try:
        "█▏".encode(getattr(stream, "encoding", None) or "ascii")
        return False
    except (UnicodeEncodeError, LookupError):
        return True


def _rel(name: str, top: str) -> str:
    parts = name_parts(name)
    if top and len(parts) > 1 and parts[0] == top:
        parts = parts[1:]
    return "/".join(parts)


def _top(members: list[Member]) -> str:
    """The one top directory all members sit under ('' if there is none)."""
    firsts = {name_parts(m.name)[0] for m in members if name_parts(m.name)}
    return firsts.pop() if len(firsts) == 1 else ""


# ------------------------------------------------------------------ histograms


def histograms(view: BundleView) -> dict[str, tuple[list[int], str]]:
    """Command name -> (log2 bucket counts, source). From summary.json's per_command[...]['hist']
    (all traffic) when the summary has it, else from the completions in events.npy."""
    out: dict[str, tuple[list[int], str]] = {}
    per = (view.summary or {}).get("per_command")
    if isinstance(per, dict):
        for name, row in per.items():
            h = row.get("hist") if isinstance(row, dict) else None
            if isinstance(h, list) and _valid_hist(h):
                out[str(name)] = ([int(x) for x in h[:HIST_BUCKETS]], "all traffic")
                if len(out) >= MAX_HISTOGRAMS:
                    break
    if out or view.events is None or len(view.events) == 0:
        return out
    ev = view.events
    comp = ev[ev["kind"] == KIND_COMPLETION]
    for cmd in sorted({int(c) for c in np.unique(comp["command"])}):
        b = hist_bucket(comp["latency_ns"][comp["command"] == cmd])
        counts = np.bincount(b, minlength=HIST_BUCKETS)[:HIST_BUCKETS]
        out[command_name(cmd)] = ([int(x) for x in counts], "events")
    return out


def _valid_hist(h: Any) -> bool:
    return isinstance(h, list) and bool(h) and all(type(x) is int and 0 <= x <= MAX_COUNT for x in h[:HIST_BUCKETS])


def problems(view: BundleView) -> list[str]:
    """What of the bundle cannot be shown: bundleread's problems (events.npy unreadable) and
    summary.json histograms that are no counts. `show` notes each and exits 1."""
    out = list(view.problems)
    per = (view.summary or {}).get("per_command")
    if isinstance(per, dict):
        for name, row in list(per.items())[:MAX_HISTOGRAMS]:
            h = row.get("hist") if isinstance(row, dict) else None
            if h is not None and not _valid_hist(h):
                out.append(f"summary.json: per_command[{short(str(name), 40)!r}].hist is not a list of counts "
                           f"0..2^63-1; not drawn")
    return out


# ------------------------------------------------------------------ show: text and JSON


def _d(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _g(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _ms(v: Any) -> str:
    return f"{v:.1f}" if is_number(v) else "-"


def _short(v: Any, n: int = 160) -> str:
    return clean(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str), n)


def _first(items: list[Any], n: int = MAX_HISTOGRAMS) -> tuple[list[Any], str]:
    """The first n items, and a note on how many more there are."""
    return items[:n], (f" ... and {len(items) - n} more" if len(items) > n else "")


def _counts_line(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return ""
    items, more = _first(list(d.items()), 16)
    return ", ".join(f"{clean(k, 60)} x{clean(v, 20)}" for k, v in items) + more


def format_show(view: BundleView, ascii_only: bool = False) -> str:
    s = view.summary or {}
    a = _d(s.get("anomaly"))
    files = [m for m in view.members if m.kind == "file"]
    top = _top(view.members)
    out = [clean(os.path.basename(view.path), 4096),
           f"  path       {clean(view.path, 4096)}",
           f"  size       {human_bytes(view.size)} compressed, {human_bytes(sum(m.size for m in files))} "
           f"unpacked, {len(files)} files" + ("  (INCOMPLETE, see below)" if view.error else ""),
           ""]
    cmds = a.get("commands")
    cmd_txt = "-"
    if isinstance(cmds, list) and cmds:
        items, more = _first(cmds, 32)
        cmd_txt = ", ".join(clean(c, 40) for c in items) + more
    proto = a.get("protocol")
    out.append(f"anomaly    {clean(a.get('type', '?'))}"
               + (f" ({clean(proto, 8)})" if isinstance(proto, str) and proto not in ("", "smb", "any") else "")
               + f": rule {clean(a.get('rule', '?'))}, {clean(a.get('count', '?'))} events, commands {cmd_txt}")
    w = _d(s.get("window"))
    out.append(f"detected   {clean(s.get('detected_at', '?'))}   window {clean(w.get('start', '?'))} .. "
               f"{clean(w.get('end', '?'))} ({clean(w.get('seconds', '?'))} s)")
    out.append(f"host       {clean(s.get('host', '?'))}   kernel {clean(s.get('kernel', '?'))}   "
               f"aodv2 {clean(s.get('aodv2_version', '?'))}   events in bundle {clean(s.get('events_in_bundle', '?'))}")
    for key, word in (("servers", "servers"), ("shares", "exports" if proto == "nfs" else "shares")):
        names = a.get(key)
        if isinstance(names, list) and names:  # who was involved: names.involved, nfsnames
            items, more = _first(names, 8)
            out.append(f"{word:<10} " + ", ".join(clean(x, 200) for x in items) + more)
    if a.get("details"):
        out.append(f"details    {_short(a.get('details'))}")
    for label, key in (("statuses", "per_status"), ("errnos", "per_errno")):
        line = _counts_line(s.get(key))
        if line:
            out.append(f"{label:<10} {line}")
    procs = s.get("top_processes")
    if isinstance(procs, list) and procs:
        out.append("processes  " + ", ".join(
            f"{clean(_g(p, 'comm'))}[{clean(_g(p, 'pid'))}] x{clean(_g(p, 'events'))}" for p in procs[:5]))
    per = s.get("per_command")
    if isinstance(per, dict) and per:
        out += ["", "per-command latency (source histogram: all traffic, approximate to the log2 bucket;"
                    " events: slow/erroring only)",
                f"  {'command':<16}{'count':>8}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
                f"{'max ms':>9}{'slow':>6}  source"]
        rows, more = _first(list(per.items()))
        for name, r in rows:
            r = _d(r)
            out.append(f"  {clean(name):<16}{clean(r.get('count', '-')):>8}{clean(r.get('errors', '-')):>8}"
                       + "".join(f"{_ms(r.get(k)):>9}" for k in ("p50_ms", "p99_ms", "mean_ms", "max_ms"))
                       + f"{clean(r.get('slow_events', '-')):>6}  {clean(r.get('source', '-'))}")
        if more:
            out.append(" " + more)
    acts = s.get("actions")
    if isinstance(acts, list) and acts:
        out += ["", "actions", f"  {'name':<17}{'status':<9}{'time':>7}{'bytes':>11}  note"]
        items, more = _first(acts)
        for x in items:
            x = _d(x)
            dur = x.get("duration_s")
            t = f"{dur:.2f}s" if is_number(dur) else "-"
            note = _short(x.get("error") or "", 100) + (" (truncated to its cap)" if x.get("truncated") else "")
            out.append(f"  {clean(x.get('name', '?')):<17}{clean(x.get('status', '?')):<9}{t:>7}"
                       f"{human_bytes(x.get('bytes')):>11}  {note}".rstrip())
        if more:
            out.append(" " + more)
    out += ["", f"members{f' (under {clean(top)}/)' if top else ''}"]
    for m in view.members:
        rel = _rel(m.name, top)
        if m.kind == "dir" and (not rel or name_parts(m.name) == [top]):
            continue
        size = human_bytes(m.size) if m.kind == "file" else m.kind
        link = f" -> {clean(m.linkname)}" if m.linkname else ""
        out.append(f"  {size:>10}  {clean(rel)}{'/' if m.kind == 'dir' else ''}{link}")
    out += trace_excerpt(view)
    hists = histograms(view)
    if hists:
        src = next(iter(hists.values()))[1]
        out += ["", "latency histograms, " + (
            "all traffic in the window (log2 buckets)" if src == "all traffic" else
            "slow completions in events.npy (log2 buckets; the ring carries only completions over "
            "the tracer's threshold, the table above covers all traffic)")]
        for name, (counts, _) in hists.items():
            rows = render_histogram(counts, ascii_only=ascii_only)
            if rows:
                out += ["", f"{clean(name)}: {sum(counts)} completions"] + rows
    elif view.events is not None:
        out += ["", "latency histograms: no completions in events.npy"]
    for p in problems(view):
        out += ["", f"note: {clean(p, 1000)}"]
    return "\n".join(out)


_TRACE_TS = re.compile(rb"\[\d{3,}\]\s+(?:\S+\s+)?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d:\d\d): ")
TRACE_BEFORE, TRACE_AFTER = 12, 4  # lines shown before and after the trigger time


def trace_excerpt(view: BundleView) -> list[str]:
    """The trace recorder's lines around the anomaly's detection time (recorder/trace.txt).
    One pass over the bytes, keeping only the lines shown (a crafted bundle of millions of
    short lines costs time, not memory)."""
    if view.trace is None:
        return []
    try:
        trigger = datetime.fromisoformat(str((view.summary or {}).get("detected_at", "")).replace("Z", "+00:00"))
        if trigger.tzinfo is None:
            trigger = trigger.replace(tzinfo=timezone.utc)
    except (ValueError, TypeError, OverflowError):
        trigger = None
    before: collections.deque[bytes] = collections.deque(maxlen=TRACE_BEFORE)
    after: list[bytes] = []
    n, at = 0, -1
    for raw in io.BytesIO(view.trace):
        if raw.startswith(b"#"):
            continue
        n += 1
        if at >= 0:
            if len(after) < TRACE_AFTER:
                after.append(raw)
            continue
        m = _TRACE_TS.search(raw[:400]) if trigger is not None else None
        if m and trigger is not None:
            try:
                late = datetime.fromisoformat(m.group(1).decode()) > trigger
            except (ValueError, TypeError, OverflowError):
                late = False
            if late:
                at, after = n - 1, [raw]
                continue
        before.append(raw)
    out = ["", f"trace recorder: {n} lines in recorder/trace.txt"]
    shown = list(before) + after
    if not shown:
        return out
    out[-1] += f", around the trigger ({clean((view.summary or {}).get('detected_at', '?'))}):"
    for i, raw in enumerate(shown):
        ln = raw.decode("utf-8", "replace").strip()
        out.append(("> " if at >= 0 and i == len(before) else "  ") + clean(ln, 300))
    return out


def show_json(view: BundleView) -> dict[str, Any]:
    return {
        "path": view.path,
        "size": view.size,
        "complete": not view.error,
        "error": view.error or None,
        "problems": problems(view),
        "members": [{"name": m.name, "size": m.size, "type": m.kind, **({"link": m.linkname} if m.linkname else {})}
                    for m in view.members],
        "summary": view.summary,
        "histograms": {
            name: {"source": src, "buckets": [
                {"bucket": b, "low_us": bucket_bounds_us(b)[0], "high_us": bucket_bounds_us(b)[1],
                 "label": bucket_label(b), "count": n} for b, n in enumerate(counts) if n]}
            for name, (counts, src) in histograms(view).items()},
    }
