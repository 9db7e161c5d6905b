"""The trace recorder's tracefs instance: set up, kept in step with the config, removed at stop.

Beside the flow: aodv2-recorder@trace.service (recorder.py) owns `instances/aodv2` and is the
only unit that writes tracefs. The core only reads the instance at a capture (tracefreeze.py).

The instance is an overwrite ring of recorder.trace.buffer_kb per CPU, clocked by
recorder.trace.clock (boot or mono: the core converts both to wall-clock time exactly), with the
configured events that this kernel has enabled. `pause-on-trace` is cleared so that reading
`trace` never stops the recording (kernels >= 5.7); where the option does not exist (older
kernels) the core reads `trace_pipe` instead, bounded (tracefreeze.py).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .atomicfile import write_atomic
from .configrecorder import TraceRecorderConfig

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
INSTANCE = "aodv2"


class TraceSetupError(Exception):
    """The instance cannot be made or configured; the message names the file and the errno."""


@dataclass
class Applied:
    """What the instance records, for `aodv2 status` and the core (recorder-trace.json)."""

    instance: str
    clock: str
    buffer_kb: int
    read: str  # trace (non-consuming) | trace_pipe (kernels without pause-on-trace)
    events: list[str] = field(default_factory=list)  # system/event, enabled
    missing: list[str] = field(default_factory=list)  # configured, not on this kernel (yet)
    failed: dict[str, str] = field(default_factory=dict)  # system/event -> why enabling failed

    def as_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "clock": self.clock, "buffer_kb": self.buffer_kb,
                "read": self.read, "events": list(self.events), "missing": list(self.missing),
                "failed": dict(self.failed)}


def find_tracefs(roots: tuple[str, ...] = TRACEFS_ROOTS) -> Optional[str]:
    """The first mounted tracefs (it has `instances`), or None."""
    return next((r for r in roots if os.path.isdir(os.path.join(r, "instances"))), None)


def instance_path(root: str) -> str:
    return os.path.join(root, "instances", INSTANCE)


def _read(path: str) -> str:
    """One read of a tracefs control file; TraceSetupError names it (a setup problem, never a crash)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(65536)
    except OSError as e:
        raise TraceSetupError(f"cannot read {path}: {e.strerror or e}") from e


def _write(path: str, value: str) -> None:
    """One write to a tracefs control file; TraceSetupError names it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise TraceSetupError(f"cannot write {value!r} to {path}: {e.strerror or e}") from e


_SELECTED = re.compile(r"\[([A-Za-z0-9_-]{1,32})\]")


def selected(trace_clock: str) -> str:
    """The selected clock in trace_clock's text: the bracketed name ("" if none)."""
    m = _SELECTED.search(trace_clock)
    return m.group(1) if m else ""


def current_clock(inst: str) -> str:
    """The instance's selected trace clock; TraceSetupError when unreadable."""
    return selected(_read(os.path.join(inst, "trace_clock")))


def expand(events_dir: str, wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(system/event present under events_dir, configured entries with no match on this kernel)."""
    found: list[str] = []
    missing: list[str] = []
    for item in wanted:
        system, name = item.split("/", 1)
        sdir = os.path.join(events_dir, system)
        try:
            names = sorted(n for n in os.listdir(sdir) if os.path.isdir(os.path.join(sdir, n)))
        except OSError:
            names = []
        hits = [f"{system}/{n}" for n in names if fnmatch.fnmatchcase(n, name)] if name == "*" else (
            [item] if name in names else [])
        if not hits:
            missing.append(item)
        found.extend(h for h in hits if h not in found)
    return found, missing


def _enabled(inst: str) -> set[str]:
    """system/event enabled in the instance (set_event lists them as system:event)."""
    return {ln.strip().replace(":", "/", 1) for ln in _read(os.path.join(inst, "set_event")).splitlines()
            if ln.strip()}


class ForeignInstance(TraceSetupError):
    """instances/aodv2 exists and this recorder did not make it: it is left alone."""


def _owned(owner: Optional[str], inst: str) -> bool:
    try:
        with open(owner or "", encoding="utf-8") as f:
            return f.read(4096).strip() == inst
    except OSError:
        return False


def _size_matches(text: str, kb: int) -> bool:
    """The kernel rounds buffer_size_kb up to whole sub-buffer pages (1024 reads back as 1027):
    a resize briefly stops the recording, so the same request is never written twice."""
    try:
        got = int(text.split()[0])
    except (ValueError, IndexError):
        return False
    return kb <= got <= kb + max(16, kb // 64)


def _forget(owner: Optional[str]) -> None:
    if owner:
        try:
            os.unlink(owner)
        except OSError:
            pass


def apply(root: str, cfg: TraceRecorderConfig, owner: Optional[str] = None) -> Applied:
    """Create or update the instance to match cfg; only what differs is written (a clock or
    size change clears the buffer, so a reload that keeps them keeps the record).

    owner: a file (in /run/aodv2: it goes with the instance at reboot) naming the instance once we
    made it. An instance we did not make (another tool's, of the same name) is never adopted:
    ForeignInstance. None: adopt any (tests)."""
    inst = instance_path(root)
    try:
        os.mkdir(inst)
    except FileExistsError:
        if owner is not None and not _owned(owner, inst):
            raise ForeignInstance(f"{inst} exists and was not made by aodv2-recorder@trace (another tool's "
                                  f"instance?): left alone; if it is a leftover, rmdir {inst} and restart "
                                  "aodv2-recorder@trace") from None
    except OSError as e:
        raise TraceSetupError(f"cannot create the tracefs instance {inst}: {e.strerror or e}") from e
    else:
        if owner is not None:
            try:
                write_atomic(owner, (inst + "\n").encode())
            except OSError as e:
                raise TraceSetupError(f"cannot record the instance as ours in {owner}: {e.strerror or e}") from e
    if current_clock(inst) != cfg.clock:
        _write(os.path.join(inst, "trace_clock"), cfg.clock)
    if not _size_matches(_read(os.path.join(inst, "buffer_size_kb")), cfg.buffer_kb):
        _write(os.path.join(inst, "buffer_size_kb"), str(cfg.buffer_kb))
    opts = os.path.join(inst, "options")
    _write(os.path.join(opts, "overwrite"), "1")
    pause = os.path.join(opts, "pause-on-trace")
    read = "trace_pipe"
    if os.path.exists(pause):
        _write(pause, "0")
        read = "trace"
    found, missing = expand(os.path.join(inst, "events"), cfg.events)
    failed: dict[str, str] = {}
    on = _enabled(inst)
    for ev in sorted(on - set(found)):  # dropped from the config since the last apply
        try:
            _write(os.path.join(inst, "events", ev, "enable"), "0")
        except TraceSetupError as e:
            failed[ev] = str(e)
    for ev in found:
        if ev not in on:
            try:
                _write(os.path.join(inst, "events", ev, "enable"), "1")
            except TraceSetupError as e:
                failed[ev] = str(e)
    _write(os.path.join(inst, "tracing_on"), "1")
    return Applied(inst, current_clock(inst), cfg.buffer_kb, read,
                   [e for e in found if e not in failed], missing, failed)


def remove(root: str, tries: int = 10, owner: Optional[str] = None) -> Optional[str]:
    """Stop and remove the instance (EBUSY while a reader has it open: retried). None or why not.
    With owner, only an instance we made (apply's owner file), and the file with it."""
    inst = instance_path(root)
    if owner is not None:
        if not _owned(owner, inst):
            return None
        if not os.path.isdir(inst):
            _forget(owner)
            return None
    if not os.path.isdir(inst):
        return None
    for path, value in (("tracing_on", "0"), ("events/enable", "0")):
        try:
            _write(os.path.join(inst, path), value)
        except TraceSetupError:
            pass
    err: Optional[OSError] = None
    for i in range(max(1, tries)):
        if i:
            time.sleep(0.2)
        try:
            os.rmdir(inst)
            _forget(owner)
            return None
        except OSError as e:
            err = e
            if e.errno != errno.EBUSY:
                break
    return f"cannot remove the tracefs instance {inst}: {err.strerror if err else 'unknown'}"
