"""Untrusted JSON in, terminal- and JSON-safe text out (a helper below the CLI's readers).

Used by the viewers (bundleread.py, bundleshow.py, bundleview.py), `aodv2 status` (status.py)
and the control socket (control.py): a bundle, a status file or a request may come from anyone,
so JSON is parsed with a nesting bound (never a RecursionError), JSON is written without NaN or
Infinity (which are not JSON), and text for a terminal has control, bidirectional and other
invisible characters escaped.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Union

MAX_JSON_DEPTH = 64  # summary.json and status.json nest 4-5 levels

# C0/C1 controls, soft hyphen, Arabic letter mark, zero-width and bidirectional controls
# (U+200B-U+200F, U+202A-U+202E, U+2066-U+2069), line/paragraph separators, invisible
# operators, BOM, interlinear annotations, lone surrogates, tag characters
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
                     "\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def clean(v: Any) -> str:
    """str(v) safe for a terminal: escape sequences, bidi overrides and the like shown as \\xNN/\\uNNNN."""
    s = v if isinstance(v, str) else str(v)
    return _UNSAFE.sub(_escape, s)


def clean_lines(text: str) -> str:
    """clean() of each line of text, keeping the line breaks."""
    return "\n".join(clean(line) for line in text.split("\n"))


def short(s: str, limit: int = 200) -> str:
    """s cut to at most limit characters, marked with '...' when cut."""
    return s if len(s) <= limit else s[: max(limit - 3, 0)] + "..."


def too_deep(obj: Any, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True when lists/dicts in obj nest deeper than max_depth (iterative: no recursion)."""
    stack = [(obj, 1)] if isinstance(obj, (list, dict)) else []
    while stack:
        o, d = stack.pop()
        if d > max_depth:
            return True
        for c in (o.values() if isinstance(o, dict) else o):
            if isinstance(c, (list, dict)):
                stack.append((c, d + 1))
    return False


def loads(data: Union[str, bytes], max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads that refuses nesting deeper than max_depth with a ValueError (json.loads
    itself raises RecursionError somewhere near 1000 levels)."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if too_deep(obj, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    return obj


def is_number(v: Any) -> bool:
    """An int or float that formats as one: not bool, not NaN/Infinity, not an int past float."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def finite(obj: Any) -> Any:
    """A copy of obj with NaN and +-Infinity floats as None (bounded depth expected)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON: non-finite floats become null, non-ASCII is \\u-escaped (terminal-safe too)."""
    return json.dumps(finite(obj), allow_nan=False, ensure_ascii=True, **kw)
