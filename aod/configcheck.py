"""Config validation helpers (the toolbox of configparse.py and configrules.py): typed checks
that record errors with their path.

Every check takes the dotted key path and the raw YAML value, records "FILE: path: expected ...,
got ..." in `_Errors` and returns None (or a default) on a problem, so config.load reports every
problem at once. Names of commands, statuses and errnos become ints here.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno as _errno_mod
import math
import os
import re
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import yaml

from . import safefs
from .smb2 import COMMANDS, ERRNOS, NT_STATUS, errno_name
from .yamlsafe import oneline

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# every errno name the errno module knows (aliases like EWOULDBLOCK too); canonical names win
_ERRNO_ALL: dict[str, int] = {
    n: getattr(_errno_mod, n)
    for n in dir(_errno_mod)
    if n.startswith("E") and isinstance(getattr(_errno_mod, n), int)
}
_ERRNO_ALL.update(ERRNOS)



class _Num(NamedTuple):
    integer: bool
    lo: float
    lo_open: bool  # lo itself not allowed
    hi: float
    unit: str


def _duplicate_keys(root: yaml.Node) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((c, f"{path}[{i}]") for i, c in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                    continue
                sub = _join(path, k.value)
                if (k.tag, k.value) in keys:
                    out.append((sub, k.start_mark.line + 1))
                keys.add((k.tag, k.value))
                stack.append((v, sub))
    return sorted(out, key=lambda t: t[1])


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{self.source}: {path}: {msg}")


def _g(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _join(path: str, key: Any) -> str:
    k = key if isinstance(key, str) and _NAME_RE.match(key) else f"[{_short(key)}]"
    if k.startswith("["):
        return f"{path}{k}"
    return f"{path}.{k}" if path else k


QUOTE_MAX = 20  # characters of a key or value quoted back: `check-config /etc/shadow` echoes no line


def _short(v: Any) -> str:
    """A key or value for a message: repr-escaped, at most QUOTE_MAX characters, marked when cut."""
    r = repr(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else str(v)
    r = "".join(c if c.isprintable() else repr(c)[1:-1] for c in r[: QUOTE_MAX + 1])
    return oneline(r, 10**6) if len(r) <= QUOTE_MAX else f"{r[:QUOTE_MAX]}...(truncated)"


def _got(v: Any) -> str:
    if v is None:
        return "got null"
    if isinstance(v, bool):
        return f"got {'true' if v else 'false'} (boolean)"
    if isinstance(v, int):
        return f"got {_short(v)} (integer)"
    if isinstance(v, float):
        return f"got {_short(v)} (float)"
    if isinstance(v, str):
        return f"got {_short(v)} (string)"
    if isinstance(v, list):
        return "got a list"
    if isinstance(v, dict):
        return "got a mapping"
    return f"got a {type(v).__name__}"


def _suggest(word: Any, choices: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    norm = {c.upper(): c for c in choices}
    hit = difflib.get_close_matches(word.upper(), list(norm), n=1, cutoff=0.6)
    return f"; did you mean {norm[hit[0]]!r}?" if hit else ""


def _mapping(
    errs: _Errors, raw: Any, path: str, allowed: Optional[Sequence[str]], what: str = "a mapping"
) -> Optional[dict[str, Any]]:
    """Check a mapping: null -> {}, unknown keys reported. None when not a mapping."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errs.add(path, f"expected {what}, {_got(raw)}")
        return None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        sub = _join(path, k)
        if not isinstance(k, str):
            errs.add(sub, f"expected a string key, {_got(k)}")
        elif allowed is not None and k not in allowed:
            errs.add(sub, f"unknown key, expected one of: {', '.join(allowed)}{_suggest(k, allowed)}")
        else:
            out[k] = v
    return out


def _list(errs: _Errors, raw: Any, path: str, what: str) -> Optional[list[Any]]:
    if isinstance(raw, list):
        return raw
    hint = " (write [] for none)" if raw is None else ""
    errs.add(path, f"expected a list of {what}{hint}, {_got(raw)}")
    return None


def _number(errs: _Errors, path: str, v: Any, spec: _Num) -> Optional[float]:
    """Validated number (int for integer specs) or None after recording an error."""
    unit = f" ({spec.unit})" if spec.unit else ""
    lo = f"{'>' if spec.lo_open else '>='} {_g(spec.lo)}"
    want = f"{'an integer' if spec.integer else 'a number'} {lo} and <= {_g(spec.hi)}{unit}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (spec.integer and not isinstance(v, int)):
        errs.add(path, f"expected {want}, {_got(v)}")
        return None
    if isinstance(v, float) and not math.isfinite(v):
        errs.add(path, f"expected a finite number: {want}, {_got(v)}")
        return None
    if (v <= spec.lo if spec.lo_open else v < spec.lo) or v > spec.hi:
        errs.add(path, f"expected {want}, {_got(v)}")
        return None
    return v if spec.integer else float(v)


def _command(errs: _Errors, path: str, v: Any) -> Optional[int]:
    if isinstance(v, str):
        name = v[5:] if v.startswith("SMB2_") else v
        if name in COMMANDS:
            return COMMANDS[name]
        errs.add(path, f"expected an SMB2 command name such as WRITE, {_got(v)}{_suggest(name, COMMANDS)}")
        return None
    errs.add(path, f"expected an SMB2 command name such as WRITE, {_got(v)}")
    return None


def _commands(errs: _Errors, raw: Any, path: str) -> Optional[dict[int, int]]:
    """List of command names -> {cmd id: first index}, in file order; None on any error."""
    items = _list(errs, raw, path, "SMB2 command names")
    if items is None:
        return None
    out: dict[int, int] = {}
    ok = True
    for i, v in enumerate(items):
        cmd = _command(errs, f"{path}[{i}]", v)
        if cmd is None:
            ok = False
        else:
            out.setdefault(cmd, i)
    return out if ok else None


def _status(errs: _Errors, path: str, v: Any) -> Optional[int]:
    """NT status name (not STATUS_SUCCESS) or a warning/error code 0x80000000-0xFFFFFFFF.
    Small bare numbers are refused: they are more likely errnos."""
    want = "an NT status name (not STATUS_SUCCESS) or a hex code 0x80000000-0xFFFFFFFF like 0xC00000B5"
    code: Optional[int] = None
    if isinstance(v, str) and v in NT_STATUS:
        code = NT_STATUS[v] or None
    elif isinstance(v, str) and re.fullmatch(r"0[xX][0-9A-Fa-f]{1,8}", v):
        code = int(v, 16)
    elif isinstance(v, int) and not isinstance(v, bool):
        code = v
    elif isinstance(v, str):
        errs.add(path, f"expected {want}, {_got(v)}{_suggest(v, NT_STATUS)}")
        return None
    if code is None or not (0x80000000 <= code <= 0xFFFFFFFF or v in NT_STATUS):
        errs.add(path, f"expected {want}, {_got(v)}")
        return None
    return code


def _errno(errs: _Errors, path: str, v: Any) -> Optional[int]:
    want = "an errno name such as ETIMEDOUT or a positive errno number"
    if isinstance(v, str):
        if v in _ERRNO_ALL:
            return _ERRNO_ALL[v]
        errs.add(path, f"expected {want}, {_got(v)}{_suggest(v, ERRNOS)}")
        return None
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 4096:
        return v
    errs.add(path, f"expected {want}, {_got(v)}")
    return None


def _abs_path(errs: _Errors, path: str, v: Any, default: str) -> str:
    want = "an absolute path (starting with /, not / itself, no '..')"
    if not isinstance(v, str):
        errs.add(path, f"expected {want}, {_got(v)}")
        return default
    bad = (
        not v.startswith("/")
        or v.strip("/") == ""
        or ".." in v.split("/")
        or any(ord(c) < 32 or ord(c) == 127 for c in v)
        or len(v) > 4096
    )
    if bad:
        errs.add(path, f"expected {want}, {_got(v)}")
        return default
    return v


def _dir_check(p: str) -> Optional[str]:
    """Why p cannot be a dedicated directory of aodv2's (a system one, a non-directory), else None."""
    why = safefs.system_dir_problem(p)
    if why:
        return why
    if os.path.lexists(p) and not os.path.isdir(p):
        return "it exists and is not a directory"
    return None


def _own_dir(errs: _Errors, path: str, v: Any, what: str, examples: str) -> Optional[str]:
    """An absolute path (normalized: /./x/. is /x) of a directory for `what` alone, or None after
    recording why not (examples: the system directories the message names)."""
    n = len(errs.items)
    got = _abs_path(errs, path, v, "")
    if len(errs.items) > n:
        return None
    p = safefs.normalize(got)
    why = _dir_check(p)
    if why:
        errs.add(path, f"expected a directory of its own for {what} (not / or a system directory such as "
                       f"{examples}, nothing under /proc, /sys or /dev), {_got(v)}: {why}")
        return None
    return p


def _output_dir(errs: _Errors, path: str, v: Any, default: str) -> str:
    return _own_dir(errs, path, v, "the bundles", "/etc, /var/log or /tmp") or default


def _metrics_path(errs: _Errors, path: str, v: Any, default: str) -> str:
    """An absolute *.prom path whose directory is not a system one."""
    n = len(errs.items)
    got = _abs_path(errs, path, v, default)
    if len(errs.items) > n:
        return default
    p = safefs.normalize(got)
    name = os.path.basename(p)
    if not name.endswith(".prom") or name == ".prom" or got.endswith("/"):
        errs.add(path, f"expected an absolute path of a file ending in .prom (node_exporter's textfile "
                       f"collector reads *.prom), {_got(v)}")
        return default
    why = _dir_check(os.path.dirname(p))
    if why:
        errs.add(path, f"expected a .prom file in a directory of its own (such as "
                       f"/var/lib/prometheus/node-exporter), not in a system directory, {_got(v)}: {why}")
        return default
    return p


def _plain(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _errno_out(num: int) -> Any:
    name = errno_name(num)
    return name if name in _ERRNO_ALL else int(num)


def _ms_to_ns(ms: float) -> int:
    return int(round(float(ms) * 1_000_000))
