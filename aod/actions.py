"""Quick actions: the table of what a capture collects, and how one step runs (collect layer).

ring -> dispatch -> detect -> **collect** (actions.py, collect.py, bundle.py) -> retain.

Each action is one row of ACTIONS: files to read (the first that exists wins) or argv
templates to run (fallbacks tried in order, or, per cifs mount, all of them). A row is
expanded by `plan()` into `Step`s; `run_step()` executes one step into the stage dir.
Commands are argv lists (never a shell); `{since}`/`{until}`/`{mount}` are substituted
per element in one pass, so a value is always one literal argv element.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shlex
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional, TypeVar

ACTION_NAMES: tuple[str, ...] = (
    "kernel_log",
    "journal",
    "syslog",
    "cifs_debug",
    "cifs_stats",
    "cifs_open_files",
    "mounts",
    "smbinfo",
)

MiB = 1024 * 1024
STATUSES = ("ok", "failed", "timeout", "missing")
CIFS_FSTYPES = frozenset({b"cifs", b"smb3"})
JOURNAL_TOOLS = frozenset({"journalctl"})  # argv[0] that needs a running journal
SMBINFO_SUBCOMMANDS = ("filefsfullsizeinfo", "fileallinfo")  # both work on a mount root (cifs-utils >= 6.8)
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_KILL_WAIT_SEC = 1.0  # after SIGKILL; a task stuck in D state is abandoned, not waited for
_CHUNK = 256 * 1024
_STDERR_KEEP = 4096


@dataclass(frozen=True)
class ActionEnv:
    """Where actions look: roots and PATH are data so tests can use a fake tree."""

    proc_root: str = "/proc"
    var_log: str = "/var/log"
    path: Optional[str] = None  # PATH for the binaries; None = $PATH plus the sbin dirs
    journal_dir: str = "/run/systemd/journal"  # exists when journald runs

    def search_path(self) -> str:
        if self.path is not None:
            return self.path
        return os.pathsep.join(p for p in (os.environ.get("PATH", ""), _DEFAULT_PATH) if p)

    def which(self, name: str) -> Optional[str]:
        return shutil.which(name, path=self.search_path())

    def has_journal(self) -> bool:
        return os.path.isdir(self.journal_dir)


@dataclass(frozen=True)
class ActionSpec:
    """One row of the action table."""

    name: str
    dest: str  # member path in the bundle; a directory for per-mount actions
    files: tuple[str, ...] = ()  # "{proc}/..." / "{var_log}/..." candidates; the first existing is read
    argv: tuple[tuple[str, ...], ...] = ()  # command templates: fallbacks in order, or all of them per mount
    per_mount: bool = False  # run every argv once per cifs/smb3 mount, into dest/<escaped mount>.txt
    cap_bytes: int = 16 * MiB
    keep: str = "head"  # head | tail: which end survives the cap
    redact: bool = False  # mask password=/pass=/credentials= values


_SINCE_UNTIL = ("--since", "@{since}", "--until", "@{until}")

ACTIONS: Mapping[str, ActionSpec] = {
    a.name: a
    for a in (
        ActionSpec(
            "kernel_log",
            "kernel.log",
            argv=(
                ("journalctl", "-k", "--no-pager", "-o", "short-iso-precise", *_SINCE_UNTIL),
                ("dmesg", "--time-format", "iso"),
                ("dmesg",),  # busybox / old util-linux
            ),
            keep="tail",
            redact=True,
        ),
        ActionSpec(
            "journal",
            "journal.log",
            argv=(("journalctl", "--no-pager", "-o", "short-iso-precise", *_SINCE_UNTIL),),
            cap_bytes=32 * MiB,
            keep="tail",
            redact=True,  # sudo logs "COMMAND=/bin/mount ... -o password=..."
        ),
        ActionSpec("syslog", "syslog.log", files=("{var_log}/syslog", "{var_log}/messages"), keep="tail",
                   redact=True),
        ActionSpec("cifs_debug", "cifs/DebugData", files=("{proc}/fs/cifs/DebugData",), redact=True),
        ActionSpec("cifs_stats", "cifs/Stats", files=("{proc}/fs/cifs/Stats",)),
        ActionSpec("cifs_open_files", "cifs/open_files", files=("{proc}/fs/cifs/open_files",)),
        ActionSpec("mounts", "mounts", files=("{proc}/mounts",), cap_bytes=4 * MiB, redact=True),
        ActionSpec(
            "smbinfo",
            "smbinfo",
            argv=tuple(("smbinfo", sub, "{mount}") for sub in SMBINFO_SUBCOMMANDS),
            per_mount=True,
            cap_bytes=1 * MiB,
        ),
    )
}
assert tuple(ACTIONS) == ACTION_NAMES


@dataclass(frozen=True)
class Step:
    """One unit of work: read a file, or run commands, into one stage file."""

    action: str
    dest: str
    files: tuple[str, ...] = ()
    argvs: tuple[tuple[str, ...], ...] = ()  # argv[0] already resolved to an absolute path
    sequence: bool = False  # run every argv in turn (sections with headers) instead of first-that-works
    cap_bytes: int = 16 * MiB
    keep: str = "head"
    redact: bool = False
    missing: str = ""  # why nothing can run (status "missing")
    label: str = ""  # e.g. the mount point


@dataclass
class StepResult:
    action: str
    dest: str
    status: str = "ok"
    duration_s: float = 0.0
    bytes: int = 0
    error: str = ""
    exit_code: Optional[int] = None
    truncated: bool = False
    label: str = ""
    source: str = ""  # file read or command run


# --- pure helpers -------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(since|until|mount|proc|var_log)\}")


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace {name} placeholders in one pass: substituted text is never rescanned."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


_SECRET = re.compile(rb"(?i)(?<![^\s,])((?:password2?|pass|credentials)=)(?:,,|[^,\s])*")


def redact(data: bytes) -> bytes:
    """Mask password=, password2=, pass= and credentials= option values (",," is an escaped comma)."""
    low = data.lower()
    if b"pass" not in low and b"credentials=" not in low:  # the common case: a quick scan, no regex
        return data
    return _SECRET.sub(rb"\1***", data)


_OCTAL = re.compile(rb"\\([0-7]{3})")


def decode_mount_field(field_: bytes) -> bytes:
    """Undo /proc/mounts octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field_)


def parse_cifs_mounts(data: bytes) -> list[str]:
    """Mount points of cifs/smb3 mounts in /proc/mounts text, decoded, in order, no duplicates."""
    out: list[str] = []
    for line in data.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in CIFS_FSTYPES:
            mnt = os.fsdecode(decode_mount_field(parts[1]))
            if mnt.startswith("/") and mnt not in out:  # absolute: never parsed as an option
                out.append(mnt)
    return out


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")


def escape_mount_name(mount: str) -> str:
    """A mount path as one safe, unambiguous file name: '/' -> '_', other unsafe bytes -> %XX."""
    raw = os.fsencode(mount).strip(b"/")
    if not raw:
        return "_root"
    name = "".join("_" if b == 0x2F else chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)
    if len(name) > 200:  # stay under NAME_MAX with the suffix; keep it unique
        name = name[:180] + "~" + hashlib.sha1(raw).hexdigest()[:16]
    return name


def redact_file(path: str) -> int:
    """Redact a (capped, so bounded) stage file in place; returns its size."""
    with open(path, "rb") as f:
        data = f.read()
    clean = redact(data)
    if clean != data:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as f:
            f.write(clean)
    return len(clean)


def cifs_mounts(env: ActionEnv) -> list[str]:
    try:
        with open(os.path.join(env.proc_root, "mounts"), "rb") as f:
            return parse_cifs_mounts(f.read(4 * MiB))
    except OSError:
        return []


def plan(spec: ActionSpec, env: ActionEnv, since: int, until: int) -> list[Step]:
    """Expand one table row into steps for this host (resolves files, binaries and mounts)."""
    values = {"since": str(since), "until": str(until), "proc": env.proc_root, "var_log": env.var_log}
    common: dict[str, Any] = {"cap_bytes": spec.cap_bytes, "keep": spec.keep, "redact": spec.redact}
    if spec.files:
        files = tuple(substitute(f, values) for f in spec.files)
        return [Step(spec.name, spec.dest, files=files, **common)]

    why: list[str] = []

    def resolve(tmpl: tuple[str, ...], extra: Mapping[str, str]) -> Optional[tuple[str, ...]]:
        exe = env.which(tmpl[0])
        if exe is None:
            why.append(f"{tmpl[0]} not found in PATH")
            return None
        if tmpl[0] in JOURNAL_TOOLS and not env.has_journal():
            why.append(f"no journal ({env.journal_dir} missing)")
            return None
        vals = {**values, **extra}
        return (exe, *(substitute(a, vals) for a in tmpl[1:]))

    if not spec.per_mount:
        argvs = tuple(a for a in (resolve(t, {}) for t in spec.argv) if a is not None)
        why_not = "" if argvs else "; ".join(dict.fromkeys(why))
        return [Step(spec.name, spec.dest, argvs=argvs, missing=why_not, **common)]

    mounts = cifs_mounts(env)
    if not mounts:
        return [Step(spec.name, spec.dest, missing="no cifs/smb3 mounts", **common)]
    steps = []
    for m in mounts:
        why.clear()
        argvs = tuple(a for a in (resolve(t, {"mount": m}) for t in spec.argv) if a is not None)
        dest = f"{spec.dest}/{escape_mount_name(m)}.txt"
        steps.append(Step(spec.name, dest, argvs=argvs, sequence=True, label=m,
                          missing="" if argvs else "; ".join(dict.fromkeys(why)), **common))
    return steps


# --- running a step -----------------------------------------------------------


class CappedSink:
    """A stage file that keeps at most cap bytes: the head, or the tail (trimmed in place)."""

    def __init__(self, path: str, cap: int, keep: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.cap, self.keep = cap, keep
        self.size = 0  # bytes in the file
        self.seen = 0  # bytes offered

    def write(self, data: bytes) -> None:
        self.seen += len(data)
        if self.keep == "head":
            data = data[: max(0, self.cap - self.size)]
            if data:
                os.pwrite(self.fd, data, self.size)
                self.size += len(data)
            return
        os.pwrite(self.fd, data, self.size)
        self.size += len(data)
        if self.size >= 2 * self.cap:
            self._trim()

    def _trim(self) -> None:
        """Move the last cap bytes to the front (chunked, memory bounded)."""
        src, dst = self.size - self.cap, 0
        while src < self.size:
            chunk = os.pread(self.fd, min(MiB, self.size - src), src)
            if not chunk:
                break
            os.pwrite(self.fd, chunk, dst)
            src, dst = src + len(chunk), dst + len(chunk)
        os.ftruncate(self.fd, dst)
        self.size = dst

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self.size = self.seen = 0

    @property
    def truncated(self) -> bool:
        return self.seen > self.size

    def close(self) -> int:
        if self.keep == "tail" and self.size > self.cap:
            self._trim()
        os.close(self.fd)
        return self.size


T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any) -> Awaitable[T]:
    """Run blocking fn in a daemon thread (a read stuck on a lock never blocks process exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def done(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def work() -> None:
        try:
            r: Any = fn(*args)
            ok = True
        except BaseException as e:  # noqa: B036 - handed to the awaiting coroutine
            r, ok = e, False
        try:
            loop.call_soon_threadsafe(done, ok, r)
        except RuntimeError:  # loop already closed: nobody is waiting
            pass

    threading.Thread(target=work, name="aod-io", daemon=True).start()
    return fut


def _read_file_into(step: Step, path: str, stage: str) -> tuple[int, bool]:
    """Read path (capped) into the stage file; returns (bytes, truncated). Blocking."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        skipped = 0
        if step.keep == "tail" and st.st_size > step.cap_bytes:
            f.seek(st.st_size - step.cap_bytes)
            skipped = st.st_size - step.cap_bytes
        parts, n = [], 0
        while n <= step.cap_bytes:  # read one byte past the cap to know it was hit
            chunk = f.read(min(_CHUNK, step.cap_bytes + 1 - n))
            if not chunk:
                break
            parts.append(chunk)
            n += len(chunk)
    data = b"".join(parts)
    truncated = skipped > 0 or len(data) > step.cap_bytes
    data = data[: step.cap_bytes]
    if skipped:  # start at a line boundary
        nl = data.find(b"\n")
        if 0 <= nl < len(data) - 1:
            data = data[nl + 1 :]
    if step.redact:
        data = redact(data)
    dest = os.path.join(stage, step.dest)
    try:
        sink = CappedSink(dest, step.cap_bytes, "head")
        try:
            sink.write(data)
        finally:
            size = sink.close()
    except OSError as e:  # name the stage file, not the source, on ENOSPC/EROFS
        raise OSError(e.errno, e.strerror, dest) from e
    return size, truncated


async def _run_file(step: Step, stage: str, timeout: float, res: StepResult) -> None:
    path = next((p for p in step.files if os.path.exists(p)), None)
    if path is None:
        res.status, res.error = "missing", "not found: " + ", ".join(step.files)
        return
    res.source = path
    try:
        read = in_thread(_read_file_into, step, path, stage)
        res.bytes, res.truncated = await asyncio.wait_for(read, timeout)
    except FileNotFoundError:
        res.status, res.error = "missing", f"not found: {path}"
    except asyncio.TimeoutError:
        res.status, res.error = "timeout", f"reading {path} took over {timeout:g}s"
    except OSError as e:
        res.status, res.error = "failed", f"{e.filename or path}: {e.strerror or e}"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def _pump(stream: Optional[asyncio.StreamReader], out: Callable[[bytes], None]) -> None:
    if stream is None:
        return
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return
        out(chunk)


async def run_command(
    argv: tuple[str, ...], sink: CappedSink, timeout: float, env: ActionEnv
) -> tuple[Optional[int], str]:
    """Run argv (no shell), stream stdout into sink. Returns (exit code, stderr tail).

    Raises asyncio.TimeoutError after killing the process group; CancelledError likewise.
    """
    err = bytearray()

    def keep_err(b: bytes) -> None:
        err.extend(b)
        del err[:-_STDERR_KEEP]

    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        env={"PATH": env.search_path(), "LC_ALL": "C", "SYSTEMD_COLORS": "0", "PAGER": "cat"},
    )

    async def communicate() -> int:
        await asyncio.gather(_pump(proc.stdout, sink.write), _pump(proc.stderr, keep_err))
        return await proc.wait()

    try:
        rc = await asyncio.wait_for(communicate(), timeout)
    except BaseException:
        _kill_group(proc)
        try:  # reap if it dies; a process stuck in D state is left to the child watcher
            await asyncio.wait_for(asyncio.shield(proc.wait()), _KILL_WAIT_SEC)
        except BaseException:  # noqa: S110 - best effort
            pass
        raise
    return rc, err.decode("utf-8", "replace").strip()


async def _run_commands(step: Step, stage: str, timeout: float, env: ActionEnv, res: StepResult) -> None:
    sink = CappedSink(os.path.join(stage, step.dest), step.cap_bytes, step.keep)
    notes: list[str] = []
    try:
        for i, argv in enumerate(step.argvs):
            shown = shlex.join([os.path.basename(argv[0]), *argv[1:]])
            if step.sequence:
                sink.write(f"## {shown}\n".encode(errors="surrogateescape"))
            elif i:
                sink.reset()  # fallback: drop the failed attempt's output
            res.source = shown
            try:
                rc, err = await run_command(argv, sink, timeout, env)
            except asyncio.TimeoutError:
                res.status, res.exit_code = "timeout", None
                notes.append(f"{os.path.basename(argv[0])} timed out after {timeout:g}s (killed)")
                if step.sequence:
                    sink.write(b"## timed out, killed\n")
                break  # a dead server: the next command would block the same way
            except OSError as e:
                res.status, res.exit_code = "failed", None
                notes.append(f"cannot run {argv[0]}: {e.strerror or e}")
                continue
            res.exit_code = rc
            if step.sequence:
                if err:
                    sink.write(err.encode(errors="replace") + b"\n")
                sink.write(f"## exit {rc}\n\n".encode())
            if rc != 0:
                res.status = "failed"
                notes.append(f"{os.path.basename(argv[0])} exited {rc}" + (f": {err[-300:]}" if err else ""))
            elif not step.sequence:
                res.status = "ok"
                break
    finally:
        res.truncated = sink.truncated
        res.bytes = sink.close()
        if step.redact and res.bytes:  # also when cancelled: nothing unredacted reaches a bundle
            res.bytes = redact_file(os.path.join(stage, step.dest))
    res.error = "" if res.status == "ok" else "; ".join(notes)


async def run_step(step: Step, stage: str, timeout: float, env: ActionEnv) -> StepResult:
    """Execute one step into stage/<dest>. Never raises except CancelledError."""
    res = StepResult(step.action, step.dest, label=step.label)
    t0 = time.monotonic()
    try:
        if step.missing:
            res.status, res.error = "missing", step.missing
        elif step.files:
            await _run_file(step, stage, timeout, res)
        else:
            await _run_commands(step, stage, timeout, env, res)
    except asyncio.CancelledError:
        res.status, res.error = "timeout", "stopped before it finished (daemon shutting down)"
        raise
    except OSError as e:  # writing the stage file (ENOSPC, EACCES, ...)
        res.status, res.error = "failed", f"{e.strerror or e}: {e.filename or step.dest}"
    finally:
        res.duration_s = round(time.monotonic() - t0, 3)
    return res


_SEVERITY = {"ok": 0, "missing": 1, "failed": 2, "timeout": 3}


@dataclass
class ActionResult:
    """One action's outcome (several steps for per-mount actions)."""

    name: str
    status: str
    duration_s: float = 0.0
    bytes: int = 0
    error: str = ""
    exit_code: Optional[int] = None
    truncated: bool = False
    files: list[str] = field(default_factory=list)
    source: str = ""  # the file read or the command run (the fallback actually used)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "duration_s": self.duration_s,
            "bytes": self.bytes,
            "error": self.error,
            "exit_code": self.exit_code,
            "truncated": self.truncated,
            "files": list(self.files),
            "source": self.source,
        }


def combine(name: str, steps: list[StepResult]) -> ActionResult:
    """Fold step results of one action: the worst status wins, bytes add up."""
    if not steps:
        return ActionResult(name, "missing", error="nothing to do")
    worst = max(steps, key=lambda s: _SEVERITY.get(s.status, 2))
    errors = [f"{s.label}: {s.error}" if s.label else s.error for s in steps if s.error]
    return ActionResult(
        name=name,
        status=worst.status,
        duration_s=max(s.duration_s for s in steps),
        bytes=sum(s.bytes for s in steps),
        error="; ".join(errors)[:2000],
        exit_code=worst.exit_code,
        truncated=any(s.truncated for s in steps),
        files=[s.dest for s in steps if s.bytes or s.status not in ("missing",)],
        source=steps[0].source if len(steps) == 1 else "",
    )
