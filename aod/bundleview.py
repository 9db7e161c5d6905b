"""Operator views of finished bundles: `aodv2 show BUNDLE` and `aodv2 list` (reads what collect wrote).

ring -> dispatch -> detect -> collect -> retain; this module sits after collect and only reads
the bundles of bundle.py, through bundleread.py: `show` makes one streaming pass over a .tar.zst
(members, summary.json, events.npy, end-of-archive check); `list` inflates only the head of each
bundle, because summary.json is its first file (bundle.FIRST_MEMBERS). `show`'s text and JSON
are bundleshow.py, `--extract` is bundleextract.py. A bundle that cannot be read is one
UNREADABLE row in `list` and one line on stderr (exit 1) in `show`, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from . import bundle, zstdcodec
from . import config as config_mod
from .bundleextract import extract
from .bundleread import EX_FAIL, EX_NOPERM, EX_USAGE, ViewError, human_bytes, os_error, peek_summary, read_view
from .bundleshow import BAR_WIDTH as BAR_WIDTH  # re-exported: tests and callers use bundleview.*
from .bundleshow import MAX_COUNT, ascii_only, clean, format_show, problems, show_json
from .bundleshow import bucket_label as bucket_label
from .bundleshow import render_histogram as render_histogram
from .safetext import dumps, short

# what a bundle's failure to be read may raise beyond ViewError: a row, never an abort
_ROW_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, MemoryError, LookupError, AttributeError)


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
    paths = bundle.list_bundles(output_dir)
    why = zstdcodec.problem() if paths else ""
    if why:  # one message, not one per row
        raise ViewError(f"cannot read the bundles in {output_dir}: {why}")
    for path in paths:
        t, when = _name_fields(path)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        row = ListRow(path, size, detected_at=when, type=t)
        try:
            _fill(row, peek_summary(path))
        except ViewError as e:
            msg = str(e)
            row.error = msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
        except _ROW_ERRORS as e:  # not foreseen: still one row
            row = ListRow(path, size, detected_at=when, type=t,
                          error=f"cannot read ({type(e).__name__}: {short(str(e), 120)})")
        rows.append(row)
    return rows


def _text(v: Any, n: int) -> str:
    return short(v if isinstance(v, str) else str(v), n)


def _fill(row: ListRow, s: dict[str, Any]) -> None:
    """The row's fields from summary.json s (any JSON object: checked, cut short)."""
    a = s.get("anomaly")
    a = a if isinstance(a, dict) else {}
    row.detected_at = _text(s.get("detected_at") or row.detected_at, 40)
    row.type = _text(a.get("type") or row.type, 40)
    row.rule = _text(a.get("rule") or "", 80)
    c = a.get("count")
    row.count = c if type(c) is int and abs(c) <= MAX_COUNT else None
    cmds = a.get("commands")
    row.commands = [_text(c, 40) for c in cmds[:32]] if isinstance(cmds, list) else []


def format_list(output_dir: str, rows: list[ListRow]) -> str:
    if not rows:
        return f"no bundles in {clean(output_dir, 4096)}"
    out = [f"bundles in {clean(output_dir, 4096)} (oldest first, newest last)",
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
    print(f"aodv2 {verb}: {clean(msg, 1000)}", file=sys.stderr)


def _emit(out: IO[str], text: str) -> None:
    """Print text that came from a bundle: what the terminal cannot encode becomes '?'."""
    enc = getattr(out, "encoding", None) or "utf-8"
    try:
        text = text.encode(enc, "replace").decode(enc)
    except LookupError:
        pass
    print(text, file=out)


def _emit_json(out: IO[str], obj: Any) -> None:
    out.write(dumps(obj, indent=2) + "\n")  # strict JSON: NaN/Infinity from a bundle become null


def cmd_show(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    out = out or sys.stdout
    path = _resolve(args.bundle, args)
    try:
        if args.extract:
            res = extract(path, args.extract)
            for name, why in res.refused:
                _err("show", f"refused member {short(name, 120)!r}: {why}")
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
    try:  # summary.json may hold anything: a value nothing foresaw is one line, never a traceback
        text = dumps(show_json(view), indent=2) if args.json else format_show(view, ascii_only(out))
    except _ROW_ERRORS as e:
        _err("show", f"{path}: cannot show this bundle ({type(e).__name__}: {short(str(e), 120)})")
        return EX_FAIL
    if args.json:
        out.write(text + "\n")
    else:
        _emit(out, text)
    notes = problems(view)
    for p in notes:  # shown above too; the exit status says part of the bundle was not
        _err("show", f"{path}: {p}")
    if view.error:
        _err("show", f"{path}: {view.error}")
    return EX_FAIL if view.error or notes else 0


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
