"""The trace recorder's tracefs instance on a fake tracefs tree: apply writes only what differs,
events present / missing / dropped / refused, the read mode, and remove() while busy."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pytest

from aod import recordtrace
from aod.configrecorder import TraceRecorderConfig
from aod.recordtrace import Applied, TraceSetupError, apply, expand, find_tracefs, instance_path, remove

CLOCKS = ("local", "global", "counter", "uptime", "perf", "mono", "mono_raw", "boot", "tai")
OLD = 1_000_000_000  # an mtime long ago (seconds)


class FakeTracefs:
    """A plain directory tree shaped like tracefs, with the kernel's side of a control-file write
    emulated after the real write (recordtrace._write is wrapped, not replaced): a clock name
    becomes the bracketed one, a value replaces the file's content, set_event lists the enabled
    events, events/enable sets them all."""

    def __init__(self, root: Path, events: Iterable[str] = (), pause: bool = True) -> None:
        self.root, self.inst, self.pause = root, root / "instances" / "aodv2", pause
        self.names: list[str] = []  # the kernel's events (system/event)
        self.writes: list[tuple[str, str]] = []  # (path relative to the instance, value)
        (root / "instances").mkdir(parents=True)
        (self.inst / "events").mkdir(parents=True)
        for ev in events:
            self.add_event(ev)
        self.populate()

    def populate(self) -> None:
        """What tracefs shows in a new instance (after mkdir of instances/aodv2)."""
        (self.inst / "options").mkdir(exist_ok=True)
        (self.inst / "events").mkdir(exist_ok=True)
        self.put("trace_clock", " ".join(f"[{c}]" if c == "local" else c for c in CLOCKS))
        for name, value in (("buffer_size_kb", "1408"), ("options/overwrite", "0"), ("tracing_on", "1"),
                            ("events/enable", "0"), ("set_event", ""), ("trace_pipe", "")):
            self.put(name, value)
        if self.pause:
            self.put("options/pause-on-trace", "1")
        (self.inst / "trace").write_bytes(b"# tracer: nop\n#\n# entries-in-buffer/entries-written: 0/0   #P:2\n")
        for ev in self.names:
            self.add_event(ev)

    def put(self, rel: str, value: str) -> None:
        (self.inst / rel).write_text(value + "\n" if value else "")

    def get(self, rel: str) -> str:
        return (self.inst / rel).read_text().strip()

    def add_event(self, ev: str) -> None:
        """The event appears (a module loaded): in the instance now, and in any later one."""
        if ev not in self.names:
            self.names.append(ev)
        system, name = ev.split("/")
        d = self.inst / "events" / system
        (d / name).mkdir(parents=True, exist_ok=True)
        (d / name / "enable").write_text("0\n")
        (d / name / "format").write_text(f"name: {name}\n")
        for f in ("enable", "filter"):  # system-level files: never taken for events
            (d / f).write_text("0\n")

    def enabled(self) -> list[str]:
        ev = self.inst / "events"
        return sorted(f"{s.name}/{e.name}" for s in ev.iterdir() if s.is_dir() for e in s.iterdir()
                      if e.is_dir() and (e / "enable").is_file() and (e / "enable").read_text().strip() == "1")

    def sync(self) -> None:
        if (self.inst / "set_event").is_file():
            self.put("set_event", "\n".join(e.replace("/", ":", 1) for e in self.enabled()))

    def wrap(self, real: Callable[[str, str], None]) -> Callable[[str, str], None]:
        def write(path: str, value: str) -> None:
            p = Path(path)
            self.writes.append((os.path.relpath(path, self.inst), value))
            real(path, value)  # the code under test's own write (O_NOFOLLOW, errors named)
            if p.name == "trace_clock":
                p.write_text(" ".join(f"[{c}]" if c == value else c for c in CLOCKS) + "\n")
            elif p == self.inst / "events" / "enable":
                for s in (self.inst / "events").iterdir():
                    for e in (s.iterdir() if s.is_dir() else ()):
                        if (e / "enable").is_file():
                            (e / "enable").write_text(value + "\n")
            else:
                p.write_text(value + "\n")
            self.sync()
        return write

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeTracefs:
        """Emulate the kernel's side of writes and of mkdir / rmdir of the instance."""
        monkeypatch.setattr(recordtrace, "_write", self.wrap(recordtrace._write))
        real_mkdir = os.mkdir

        def mkdir(path: str, *a: Any, **kw: Any) -> None:
            real_mkdir(path, *a, **kw)
            if Path(path) == self.inst:
                self.populate()

        monkeypatch.setattr(recordtrace.os, "mkdir", mkdir)
        monkeypatch.setattr(recordtrace.os, "rmdir", RmdirBusy(self.inst, busy=0))
        return self

    def gone(self) -> Path:
        """The instance as it was when it was removed (removed instances are moved aside)."""
        return Path(str(self.inst) + ".removed")

    def wrote(self, rel: str) -> list[str]:
        return [v for p, v in self.writes if p == rel]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTracefs:
    return FakeTracefs(tmp_path / "tracefs", ("cifs/smb3_cmd_done", "cifs/smb3_cmd_err", "cifs/smb3_reconnect",
                                              "sunrpc/xprt_retransmit")).install(monkeypatch)


def cfg(*events: str, **kw: object) -> TraceRecorderConfig:
    return TraceRecorderConfig(events=events, **kw)  # type: ignore[arg-type]


def test_find_tracefs_and_instance_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (b / "instances").mkdir(parents=True)
    a.mkdir()
    assert find_tracefs((str(a), str(b))) == str(b)  # a has no instances dir: not mounted
    assert find_tracefs((str(a), str(tmp_path / "none"))) is None
    assert instance_path(str(b)) == str(b / "instances" / "aodv2")


def test_first_apply_configures_the_instance(fake: FakeTracefs) -> None:
    a = apply(str(fake.root), cfg("cifs/smb3_cmd_done", "cifs/smb3_cmd_err", "cifs/nosuch", "nfs4/*",
                                  buffer_kb=2048))
    assert a == Applied(str(fake.inst), "boot", 2048, "trace", ["cifs/smb3_cmd_done", "cifs/smb3_cmd_err"],
                        ["cifs/nosuch", "nfs4/*"], {})
    assert fake.get("trace_clock").split().count("[boot]") == 1
    assert (fake.get("buffer_size_kb"), fake.get("options/overwrite"), fake.get("options/pause-on-trace"),
            fake.get("tracing_on")) == ("2048", "1", "0", "1")
    assert fake.enabled() == ["cifs/smb3_cmd_done", "cifs/smb3_cmd_err"]
    assert a.as_dict() == {"instance": str(fake.inst), "clock": "boot", "buffer_kb": 2048, "read": "trace",
                           "events": ["cifs/smb3_cmd_done", "cifs/smb3_cmd_err"],
                           "missing": ["cifs/nosuch", "nfs4/*"], "failed": {}}


def test_second_apply_with_the_same_config_rewrites_nothing_that_clears_the_ring(fake: FakeTracefs) -> None:
    c = cfg("cifs/smb3_cmd_done", clock="mono", buffer_kb=512)
    first = apply(str(fake.root), c)
    assert fake.wrote("trace_clock") == ["mono"] and fake.wrote("buffer_size_kb") == ["512"]
    assert fake.wrote("events/cifs/smb3_cmd_done/enable") == ["1"]
    for rel in ("trace_clock", "buffer_size_kb", "events/cifs/smb3_cmd_done/enable"):
        os.utime(fake.inst / rel, (OLD, OLD))
    fake.writes.clear()
    second = apply(str(fake.root), c)
    assert second == first
    for rel in ("trace_clock", "buffer_size_kb", "events/cifs/smb3_cmd_done/enable"):
        assert fake.wrote(rel) == [], rel
        assert os.stat(fake.inst / rel).st_mtime == OLD, rel
    # a size change writes the size only (the clock stays: its ring is not cleared twice)
    fake.writes.clear()
    apply(str(fake.root), cfg("cifs/smb3_cmd_done", clock="mono", buffer_kb=1024))
    assert fake.wrote("buffer_size_kb") == ["1024"] and fake.wrote("trace_clock") == []


def test_wildcards_expand_to_event_dirs_only(fake: FakeTracefs) -> None:
    a = apply(str(fake.root), cfg("cifs/*", "sunrpc/*", "nosys/*", "cifs/smb3_cmd_done"))
    assert a.events == ["cifs/smb3_cmd_done", "cifs/smb3_cmd_err", "cifs/smb3_reconnect", "sunrpc/xprt_retransmit"]
    assert a.missing == ["nosys/*"]
    assert "cifs/enable" not in a.events and "cifs/filter" not in a.events  # system-level files
    found, missing = expand(str(fake.inst / "events"), ("cifs/smb3_cmd_err", "cifs/enable", "x/y"))
    assert (found, missing) == (["cifs/smb3_cmd_err"], ["cifs/enable", "x/y"])


def test_events_that_appear_later_are_enabled_by_the_next_apply(fake: FakeTracefs) -> None:
    c = cfg("cifs/smb3_cmd_done", "smb3/late")
    assert apply(str(fake.root), c).missing == ["smb3/late"]
    fake.add_event("smb3/late")
    a = apply(str(fake.root), c)
    assert a.events == ["cifs/smb3_cmd_done", "smb3/late"] and a.missing == []
    assert fake.enabled() == ["cifs/smb3_cmd_done", "smb3/late"]


def test_events_dropped_from_the_config_are_disabled(fake: FakeTracefs) -> None:
    apply(str(fake.root), cfg("cifs/*"))
    assert len(fake.enabled()) == 3
    fake.put("events/sunrpc/xprt_retransmit/enable", "1")  # someone else's, in our instance
    fake.sync()
    fake.writes.clear()
    a = apply(str(fake.root), cfg("cifs/smb3_cmd_err"))
    assert a.events == ["cifs/smb3_cmd_err"]
    assert fake.enabled() == ["cifs/smb3_cmd_err"]
    assert fake.get("set_event") == "cifs:smb3_cmd_err"
    assert sorted(p for p, v in fake.writes if v == "0" and p.endswith("/enable")) == [
        "events/cifs/smb3_cmd_done/enable", "events/cifs/smb3_reconnect/enable",
        "events/sunrpc/xprt_retransmit/enable"]


def test_a_refused_enable_is_reported_and_the_others_still_enabled(fake: FakeTracefs) -> None:
    enable = fake.inst / "events" / "cifs" / "smb3_cmd_err" / "enable"
    enable.unlink()
    enable.mkdir()  # writing it fails (EISDIR), as a refused tracefs write would
    a = apply(str(fake.root), cfg("cifs/smb3_cmd_done", "cifs/smb3_cmd_err", "cifs/smb3_reconnect"))
    assert list(a.failed) == ["cifs/smb3_cmd_err"]
    assert str(enable) in a.failed["cifs/smb3_cmd_err"] and "'1'" in a.failed["cifs/smb3_cmd_err"]
    assert a.events == ["cifs/smb3_cmd_done", "cifs/smb3_reconnect"]
    assert fake.enabled() == ["cifs/smb3_cmd_done", "cifs/smb3_reconnect"]
    assert fake.get("tracing_on") == "1"


def test_read_mode_follows_pause_on_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = FakeTracefs(tmp_path / "old", ("cifs/smb3_cmd_done",), pause=False).install(monkeypatch)
    a = apply(str(old.root), cfg("cifs/smb3_cmd_done"))
    assert a.read == "trace_pipe"
    assert not (old.inst / "options" / "pause-on-trace").exists()  # never created
    new = FakeTracefs(tmp_path / "new", ("cifs/smb3_cmd_done",)).install(monkeypatch)
    assert apply(str(new.root), cfg("cifs/smb3_cmd_done")).read == "trace"
    assert new.get("options/pause-on-trace") == "0"


def test_setup_problems_are_trace_setup_errors_naming_the_file(tmp_path: Path, fake: FakeTracefs) -> None:
    (fake.inst / "set_event").unlink()
    with pytest.raises(TraceSetupError, match="set_event"):
        apply(str(fake.root), cfg("cifs/smb3_cmd_done"))
    (fake.inst / "trace_clock").unlink()
    with pytest.raises(TraceSetupError, match="trace_clock"):  # a read problem too, never a bare OSError
        apply(str(fake.root), cfg("cifs/smb3_cmd_done"))
    with pytest.raises(TraceSetupError, match="cannot create the tracefs instance"):
        apply(str(tmp_path / "no-tracefs"), cfg("cifs/smb3_cmd_done"))


def test_control_files_are_never_written_through_a_symlink(fake: FakeTracefs, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    (fake.inst / "tracing_on").unlink()
    (fake.inst / "tracing_on").symlink_to(target)
    with pytest.raises(TraceSetupError, match="tracing_on"):
        apply(str(fake.root), cfg("cifs/smb3_cmd_done"))
    assert target.read_text() == "untouched\n"


class RmdirBusy:
    """os.rmdir of the instance: EBUSY `busy` times (a reader holds it open), then it goes."""

    def __init__(self, inst: Path, busy: Optional[int], err: int = errno.EBUSY) -> None:
        self.inst, self.busy, self.err, self.calls = inst, busy, err, 0
        self.real = os.rmdir

    def __call__(self, path: str, *a: object, **kw: object) -> None:
        if Path(path) != self.inst:
            return self.real(path, *a, **kw)  # type: ignore[arg-type]
        self.calls += 1
        if self.busy is None or self.calls <= self.busy:
            raise OSError(self.err, os.strerror(self.err), path)
        gone = Path(str(self.inst) + ".removed")
        if gone.exists():
            shutil.rmtree(gone)
        os.rename(path, gone)  # what tracefs does: the whole instance goes


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    got: list[float] = []
    monkeypatch.setattr(recordtrace.time, "sleep", got.append)
    return got


def test_remove_retries_while_busy(fake: FakeTracefs, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    apply(str(fake.root), cfg("cifs/smb3_cmd_done"))
    rm = RmdirBusy(fake.inst, busy=3)
    monkeypatch.setattr(recordtrace.os, "rmdir", rm)
    assert remove(str(fake.root)) is None
    assert rm.calls == 4 and len(sleeps) == 3 and not fake.inst.exists()
    off = fake.gone()
    assert (off / "tracing_on").read_text().strip() == "0"  # stopped before removal
    assert (off / "events" / "cifs" / "smb3_cmd_done" / "enable").read_text().strip() == "0"
    assert remove(str(fake.root)) is None  # nothing left: fine


def test_remove_always_busy_says_why(fake: FakeTracefs, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    rm = RmdirBusy(fake.inst, busy=None)
    monkeypatch.setattr(recordtrace.os, "rmdir", rm)
    msg = remove(str(fake.root), tries=5)
    assert msg == f"cannot remove the tracefs instance {fake.inst}: {os.strerror(errno.EBUSY)}"
    assert rm.calls == 5 and len(sleeps) == 4  # no sleep after the last try
    assert fake.inst.is_dir()


def test_remove_other_error_is_not_retried(fake: FakeTracefs, monkeypatch: pytest.MonkeyPatch,
                                           sleeps: list[float]) -> None:
    rm = RmdirBusy(fake.inst, busy=None, err=errno.EPERM)
    monkeypatch.setattr(recordtrace.os, "rmdir", rm)
    msg = remove(str(fake.root))
    assert msg is not None and os.strerror(errno.EPERM) in msg and str(fake.inst) in msg
    assert rm.calls == 1 and sleeps == []
