"""Operator views of finished bundles: `aodv2 show BUNDLE` and `aodv2 list` (reads what collect wrote).

ring -> dispatch -> detect -> collect -> retain; this module sits after collect and only reads
the bundles of bundle.py, through bundleread.py: `show` makes one streaming pass over a .tar.zst
(members, summary.json, events.npy, end-of-archive check); `list` inflates only the head of each
bundle, because summary.json is its first file (bundle.FIRST_MEMBERS). `--extract` is
bundleextract.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Optional

import numpy as np

from . import bundle
from . import config as config_mod
from .bundleextract import extract
from .bundleread import (
    EX_FAIL,
    EX_NOPERM,
    EX_USAGE,
    BundleView,
    Member,
    ViewError,
    human_bytes,
    name_parts,
    os_error,
    peek_summary,
    read_view,
)
from .record import HIST_BUCKETS, KIND_COMPLETION, hist_bucket
from .smb2 import COMMAND_NAMES
from .summary import bucket_bounds_us

BAR_WIDTH = 40
_EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass
class ListRow:
    path: str
    size: int
    detected_at: str = ""
    type: str = ""
    rule: str = ""
    count: Optional[int] = None
    commands: list[str] = field(default_factory=list)
    error: str = ""  # set: the row is flagged, the other fields come from the file name


# ------------------------------------------------------------------ small formatting helpers

_CTRL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def clean(v: Any) -> str:
    """Text from a bundle, safe for a terminal: control characters (escape sequences) shown as \\xNN."""
    return str(v).translate(_CTRL)


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


def _ascii_only(stream: IO[str]) -> bool:
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
            if isinstance(h, list) and h and all(isinstance(x, int) and x >= 0 for x in h):
                out[str(name)] = ([int(x) for x in h[:HIST_BUCKETS]], "all traffic")
    if out or view.events is None or len(view.events) == 0:
        return out
    ev = view.events
    comp = ev[ev["kind"] == KIND_COMPLETION]
    for cmd in sorted({int(c) for c in np.unique(comp["command"])}):
        b = hist_bucket(comp["latency_ns"][comp["command"] == cmd])
        counts = np.bincount(b, minlength=HIST_BUCKETS)[:HIST_BUCKETS]
        out[COMMAND_NAMES.get(cmd, f"CMD_{cmd}")] = ([int(x) for x in counts], "events")
    return out


# ------------------------------------------------------------------ show: text and JSON


def _d(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _g(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _ms(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _short(v: Any, n: int = 160) -> str:
    s = clean(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
    return s if len(s) <= n else s[: n - 3] + "..."


def _counts_line(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return ""
    return ", ".join(f"{clean(k)} x{clean(v)}" for k, v in d.items())


def format_show(view: BundleView, ascii_only: bool = False) -> str:
    s = view.summary or {}
    a = _d(s.get("anomaly"))
    files = [m for m in view.members if m.kind == "file"]
    top = _top(view.members)
    out = [clean(os.path.basename(view.path)),
           f"  path       {clean(view.path)}",
           f"  size       {human_bytes(view.size)} compressed, {human_bytes(sum(m.size for m in files))} "
           f"unpacked, {len(files)} files" + ("  (INCOMPLETE, see below)" if view.error else ""),
           ""]
    cmds = a.get("commands")
    cmd_txt = ", ".join(clean(c) for c in cmds) if isinstance(cmds, list) and cmds else "-"
    out.append(f"anomaly    {clean(a.get('type', '?'))}: rule {clean(a.get('rule', '?'))}, "
               f"{clean(a.get('count', '?'))} events, commands {cmd_txt}")
    w = _d(s.get("window"))
    out.append(f"detected   {clean(s.get('detected_at', '?'))}   window {clean(w.get('start', '?'))} .. "
               f"{clean(w.get('end', '?'))} ({clean(w.get('seconds', '?'))} s)")
    out.append(f"host       {clean(s.get('host', '?'))}   kernel {clean(s.get('kernel', '?'))}   "
               f"aodv2 {clean(s.get('aodv2_version', '?'))}   events in bundle {clean(s.get('events_in_bundle', '?'))}")
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
        for name, r in per.items():
            r = _d(r)
            out.append(f"  {clean(name):<16}{clean(r.get('count', '-')):>8}{clean(r.get('errors', '-')):>8}"
                       + "".join(f"{_ms(r.get(k)):>9}" for k in ("p50_ms", "p99_ms", "mean_ms", "max_ms"))
                       + f"{clean(r.get('slow_events', '-')):>6}  {clean(r.get('source', '-'))}")
    acts = s.get("actions")
    if isinstance(acts, list) and acts:
        out += ["", "actions", f"  {'name':<17}{'status':<9}{'time':>7}{'bytes':>11}  note"]
        for x in acts:
            x = _d(x)
            dur = x.get("duration_s")
            t = f"{dur:.2f}s" if isinstance(dur, (int, float)) and not isinstance(dur, bool) else "-"
            note = _short(x.get("error") or "", 100) + (" (truncated to its cap)" if x.get("truncated") else "")
            out.append(f"  {clean(x.get('name', '?')):<17}{clean(x.get('status', '?')):<9}{t:>7}"
                       f"{human_bytes(x.get('bytes')):>11}  {note}".rstrip())
    out += ["", f"members{f' (under {clean(top)}/)' if top else ''}"]
    for m in view.members:
        rel = _rel(m.name, top)
        if m.kind == "dir" and (not rel or name_parts(m.name) == [top]):
            continue
        size = human_bytes(m.size) if m.kind == "file" else m.kind
        link = f" -> {clean(m.linkname)}" if m.linkname else ""
        out.append(f"  {size:>10}  {clean(rel)}{'/' if m.kind == 'dir' else ''}{link}")
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
    for p in view.problems:
        out += ["", f"note: {clean(p)}"]
    return "\n".join(out)


def show_json(view: BundleView) -> dict[str, Any]:
    return {
        "path": view.path,
        "size": view.size,
        "complete": not view.error,
        "error": view.error or None,
        "problems": view.problems,
        "members": [{"name": m.name, "size": m.size, "type": m.kind, **({"link": m.linkname} if m.linkname else {})}
                    for m in view.members],
        "summary": view.summary,
        "histograms": {
            name: {"source": src, "buckets": [
                {"bucket": b, "low_us": bucket_bounds_us(b)[0], "high_us": bucket_bounds_us(b)[1],
                 "label": bucket_label(b), "count": n} for b, n in enumerate(counts) if n]}
            for name, (counts, src) in histograms(view).items()},
    }


# ------------------------------------------------------------------ list


def _name_fields(path: str) -> tuple[str, str]:
    """(type, ISO time) from a bundle's file name."""
    m = bundle.BUNDLE_RE.match(os.path.basename(path))
    if not m:
        return "", ""
    st = m.group(2)
    return m.group(1), f"{st[0:4]}-{st[4:6]}-{st[6:8]}T{st[9:11]}:{st[11:13]}:{st[13:15]}Z"


def list_rows(output_dir: str) -> list[ListRow]:
    """One row per finished bundle in output_dir, oldest first (newest last). A bundle that cannot
    be read gets a row with `error` set. Raises ViewError when the directory cannot be listed."""
    try:
        with os.scandir(output_dir):
            pass
    except OSError as e:
        raise os_error(output_dir, e, "cannot list output directory") from None
    rows: list[ListRow] = []
    for path in bundle.list_bundles(output_dir):
        t, when = _name_fields(path)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        row = ListRow(path, size, detected_at=when, type=t)
        try:
            s = peek_summary(path)
            a = _d(s.get("anomaly"))
            row.detected_at = str(s.get("detected_at") or when)
            row.type = str(a.get("type") or t)
            row.rule = str(a.get("rule") or "")
            row.count = a.get("count") if isinstance(a.get("count"), int) else None
            cmds = a.get("commands")
            row.commands = [str(c) for c in cmds] if isinstance(cmds, list) else []
        except ViewError as e:
            msg = str(e)
            row.error = msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
        rows.append(row)
    return rows


def format_list(output_dir: str, rows: list[ListRow]) -> str:
    if not rows:
        return f"no bundles in {clean(output_dir)}"
    out = [f"bundles in {clean(output_dir)} (oldest first, newest last)",
           f"{'detected (UTC)':<20}  {'type':<10}{'size':>10}  {'trigger':<40}  bundle"]
    for r in rows:
        when = r.detected_at.replace("T", " ")[:19] if r.detected_at else "?"
        if r.error:
            trig = f"UNREADABLE: {r.error}"
        else:
            n = f" x{r.count}" if r.count is not None else ""
            trig = f"{r.rule}{n} {','.join(r.commands)}".strip()
        out.append(f"{clean(when):<20}  {clean(r.type or '?'):<10}{human_bytes(r.size):>10}  "
                   f"{clean(trig):<40}  {clean(os.path.basename(r.path))}")
    return "\n".join(out)


def list_json(output_dir: str, rows: list[ListRow]) -> dict[str, Any]:
    return {"dir": output_dir, "order": "oldest first",
            "bundles": [{"path": r.path, "name": os.path.basename(r.path), "size": r.size,
                         "detected_at": r.detected_at or None, "type": r.type or None, "rule": r.rule or None,
                         "count": r.count, "commands": r.commands, "error": r.error or None} for r in rows]}


# ------------------------------------------------------------------ CLI glue (cli.py dispatches here)


def output_dir(config_path: Optional[str]) -> str:
    """output_dir from the config. The default config path may be absent (defaults then);
    a named config that is missing or invalid is an error (exit 2), an unreadable one 77."""
    path = config_path or config_mod.DEFAULT_CONFIG_PATH
    if config_path is None and not os.path.lexists(path):
        return config_mod.defaults().output_dir
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise ViewError(f"cannot read config {path}: permission denied; run as root or pass --dir DIR", EX_NOPERM)
    try:
        return config_mod.load(path).output_dir
    except config_mod.ConfigError as e:
        first = e.errors[0] if e.errors else str(e)
        more = f" (and {len(e.errors) - 1} more)" if len(e.errors) > 1 else ""
        raise ViewError(f"cannot use config {path}: {first}{more}; fix it or pass --dir DIR", EX_USAGE) from None


def _resolve(arg: str, args: argparse.Namespace) -> str:
    """A bare bundle name that is not in the current directory is looked up in the output dir."""
    if os.path.lexists(arg) or "/" in arg:
        return arg
    try:
        d = args.dir or output_dir(args.config)
    except ViewError:
        return arg
    cand = os.path.join(d, arg)
    try:
        return cand if os.path.lexists(cand) else arg
    except OSError:
        return arg


def _err(verb: str, msg: str) -> None:
    print(f"aodv2 {verb}: {clean(msg)}", file=sys.stderr)


def _emit(out: IO[str], text: str) -> None:
    """Print text that came from a bundle: what the terminal cannot encode becomes '?'."""
    enc = getattr(out, "encoding", None) or "utf-8"
    try:
        text = text.encode(enc, "replace").decode(enc)
    except LookupError:
        pass
    print(text, file=out)


def _emit_json(out: IO[str], obj: Any) -> None:
    json.dump(obj, out, indent=2)
    out.write("\n")


def cmd_show(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    out = out or sys.stdout
    path = _resolve(args.bundle, args)
    try:
        if args.extract:
            res = extract(path, args.extract)
            for name, why in res.refused:
                _err("show", f"refused member {name!r}: {why}")
            if res.error:
                _err("show", f"{path}: {res.error}")
            if args.json:
                _emit_json(out, {"dest": res.dest, "files": res.files, "dirs": res.dirs, "error": res.error or None,
                                 "refused": [{"name": n, "reason": r} for n, r in res.refused]})
            else:
                _emit(out, f"extracted {len(res.files)} files into {clean(res.dest)}"
                      + (f"; refused {len(res.refused)} members" if res.refused else ""))
            return EX_FAIL if res.refused or res.error else 0
        view = read_view(path)
    except ViewError as e:
        _err("show", str(e))
        return e.code
    if args.json:
        _emit_json(out, show_json(view))
    else:
        _emit(out, format_show(view, ascii_only=_ascii_only(out)))
    if view.error:
        _err("show", f"{path}: {view.error}")
        return EX_FAIL
    return 0


def cmd_list(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    out = out or sys.stdout
    try:
        d = args.dir or output_dir(args.config)
        rows = list_rows(d)
    except ViewError as e:
        _err("list", str(e))
        return e.code
    if args.json:
        _emit_json(out, list_json(d, rows))
    else:
        _emit(out, format_list(d, rows))
    return 0
