"""Bounded, safe YAML reading for the config (below config.py in the config layer).

SafeLoader only, with limits on file size, node count, alias expansion
("billion laughs"), recursion, nesting and integer length (Python refuses to convert
more than 4300 digits, without saying where), so a hostile or broken file costs
milliseconds and gives one clear message instead of memory or a traceback.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Callable, Optional, TypeVar

import yaml

T = TypeVar("T")

MAX_FILE_BYTES = 1 << 20
MAX_YAML_NODES = 20_000  # as written (a full config is ~300)
MAX_YAML_EXPANDED = 100_000  # after alias expansion
MAX_YAML_ALIASES = 1_000
MAX_YAML_DEPTH = 64
MAX_INT_CHARS = 32  # an integer written longer than this (u64 is 20 digits) is refused with its key
_INT_TAG = "tag:yaml.org,2002:int"
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class YamlError(Exception):
    """One message: the file, where, what was expected."""


def read_text(path: str) -> str:
    """The file as text: regular file, at most MAX_FILE_BYTES, UTF-8 (a BOM is allowed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise YamlError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise YamlError(f"{path}: expected a YAML file, got a directory")
        if not stat.S_ISREG(st.st_mode):
            raise YamlError(f"{path}: expected a regular YAML file, got a special file")
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise YamlError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if total > MAX_FILE_BYTES:
        raise YamlError(f"{path}: expected at most {MAX_FILE_BYTES} bytes, got a larger file")
    raw = b"".join(chunks)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"{path}: expected UTF-8 text, got an invalid byte at offset {exc.start}"
        raise YamlError(msg) from None


class _LimitError(Exception):
    pass


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs, cycles and deep nesting, and notes duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aod_nodes = 0
        self.aod_aliases = 0
        self.aod_depth = 0

    def _limit(self, what: str) -> _LimitError:
        mark = self.peek_event().start_mark
        return _LimitError(f"line {mark.line + 1}: expected a small config file, got {what}")

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> Optional[yaml.Node]:
        if self.check_event(yaml.AliasEvent):
            self.aod_aliases += 1
            if self.aod_aliases > MAX_YAML_ALIASES:
                raise self._limit(f"more than {MAX_YAML_ALIASES} aliases (*name)")
        self.aod_nodes += 1
        if self.aod_nodes > MAX_YAML_NODES:
            raise self._limit(f"more than {MAX_YAML_NODES} YAML nodes")
        self.aod_depth += 1
        try:
            if self.aod_depth > MAX_YAML_DEPTH:
                raise self._limit(f"nesting deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.aod_depth -= 1

    def get_single_node(self) -> Optional[yaml.Node]:
        node = super().get_single_node()
        if node is not None:
            _check_graph(node)
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_graph(root: yaml.Node) -> None:
    """Expanded size (aliases counted every time they are used) <= MAX_YAML_EXPANDED, no cycles.
    Iterative with memo, so a billion-laughs graph is measured in linear time."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_YAML_EXPANDED:
                raise _LimitError(
                    f"line {node.start_mark.line + 1}: expected a small config file, got aliases "
                    f"that expand to more than {MAX_YAML_EXPANDED} YAML nodes"
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in active:
            raise _LimitError(f"line {node.start_mark.line + 1}: expected a tree, got a recursive alias")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))


def _key_path(path: str, key: yaml.Node) -> str:
    """path.key, or path[...] for a key that is no plain name (configcheck._join's spelling)."""
    k = key.value if isinstance(key, yaml.ScalarNode) and isinstance(key.value, str) else "?"
    if _KEY_RE.match(k):
        return f"{path}.{k}" if path else k
    return f"{path}[{k[:20]!r}{'...(truncated)' if len(k) > 20 else ''}]"


def _check_ints(root: yaml.Node) -> None:
    """Refuse an integer scalar longer than MAX_INT_CHARS, naming its line and key path."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _INT_TAG and len(node.value) > MAX_INT_CHARS:
                where = f"{path}: " if path else ""
                raise _LimitError(f"line {node.start_mark.line + 1}: {where}expected an integer of at most "
                                  f"{MAX_INT_CHARS} characters, got one of {len(node.value)}")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((c, f"{path}[{i}]") for i, c in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.append((k, f"{path}[key]" if path else "[key]"))
                stack.append((v, _key_path(path, k)))


def parse(text: str, source: str, inspect: Callable[[yaml.Node], T]) -> tuple[Any, Optional[T]]:
    """(data, inspect(root node)) from one YAML document, or YamlError naming the source and line.

    `inspect` sees the node graph before construction flattens merge keys (<<) into it.
    """
    loader: Optional[BoundedLoader] = None
    try:
        loader = BoundedLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_ints(node)
        seen = inspect(node)
        return loader.construct_document(node), seen
    except _LimitError as exc:
        raise YamlError(f"{source}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise YamlError(f"{source}: {where}expected valid YAML, got: {oneline(what)}") from None
    except RecursionError:
        raise YamlError(f"{source}: expected a small config file, got nesting too deep to parse") from None
    except Exception as exc:  # YAML reader errors, bad timestamps, huge ints, ...
        raise YamlError(f"{source}: expected valid YAML, got {type(exc).__name__}: {oneline(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def oneline(s: str, limit: int = 200) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
