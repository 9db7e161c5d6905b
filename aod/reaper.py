"""Killing and reaping a quick action's whole process tree (collect layer, under actionrun.py).

ring -> dispatch -> detect -> **collect**: actionrun.run_command() starts every command in its
own session with AODV2_ACTION=<tag> in its environment and registers it here (`started`);
uploads do too, and the zstd program of zstdcodec.py, which its owner reaps and then `forget`s.
When the command ends (exit, timeout, cancel) `kill_tree` (blocking: run it in a thread)
SIGKILLs every process of the command, scan after scan until none is left:

- the command itself and its ppid chains (/proc/*/stat), also a `setsid` grandchild;
- its process group and session (a number stays unused while a group or session holds it,
  so these never match a stranger);
- orphans the core adopted as child subreaper (`set_subreaper`, at core start; `systemd-run
  --scope` would move actions out of the service, cgroup.kill needs 5.14 and
  ProtectControlGroups= blocks it) whose tag belongs to no live action; with
  `kill_untagged` (the daemon: its only children are its commands) also those with no tag
  at all, since a process can clear its own environ (exec with `env -i`, or overwrite it).

The core reaps those orphans, and zombies of the tree (children their parent never waited
for) once it adopts them, by pid only (waitpid(pid, WNOHANG)): never waitpid(-1), which
would steal the children asyncio and subprocess wait for. A process that survives SIGKILL
(D state on a dead mount) is not waited for: it is counted as stranded, retried by `poll()`
(the main loop, each second) and, past MAX_STRANDED, no new command starts. Limit: an
orphan that left the session (setsid) and exited on its own before the sweep has no tag
left to read, so its zombie stays until the core exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from . import log

TAG_VAR = "AODV2_ACTION"
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
MAX_ROUNDS = 50  # scan/kill rounds: a fork bomb is cut down round by round
MAX_STRANDED = 16  # processes alive after SIGKILL: past this, no new command starts
MAX_PENDING = 1024  # killed processes tracked until reaped
KILL_WAIT_SEC = 1.0  # after SIGKILL; D state is abandoned, not waited for
_ENVIRON_MAX = 256 * 1024


@dataclass(frozen=True)
class Proc:
    """One /proc/PID/stat line, the fields we use."""

    state: str
    ppid: int
    pgrp: int
    session: int
    start: int  # starttime, clock ticks since boot: tells a reused pid apart


def read_stat(pid: int, proc_root: str = "/proc") -> Optional[Proc]:
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            raw = f.read()
        f_ = raw[raw.rindex(b")") + 2 :].split(b" ", 20)
        return Proc(f_[0].decode(), int(f_[1]), int(f_[2]), int(f_[3]), int(f_[19]))
    except (OSError, ValueError, IndexError):
        return None


def scan(proc_root: str = "/proc") -> dict[int, Proc]:
    """Every process in /proc (threads are not listed there)."""
    out: dict[int, Proc] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        return out
    for n in names:
        if n.isdigit():
            p = read_stat(int(n), proc_root)
            if p is not None:
                out[int(n)] = p
    return out


def read_tag(pid: int, proc_root: str = "/proc") -> str:
    """The AODV2_ACTION tag in a process's initial environment ('' if none or unreadable)."""
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            env = f.read(_ENVIRON_MAX)
    except OSError:
        return ""
    key = TAG_VAR.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode("ascii", "replace")
    return ""


def _prctl(option: int, arg: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


def set_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (orphans of its descendants are reparented to it).
    False where prctl is not available."""
    try:
        return _prctl(PR_SET_CHILD_SUBREAPER, int(on)) == 0
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    """This process is a child subreaper now."""
    try:
        v = ctypes.c_int(0)
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(v), 0, 0, 0)) == 0 and v.value != 0
    except (OSError, AttributeError):
        return False


@dataclass
class _Pending:
    start: int
    reap: bool  # ours to waitpid (not a command leader: asyncio waits for those)


@dataclass
class Reaper:
    """Live commands, and killed processes not reaped yet. Thread-safe."""

    proc_root: str = "/proc"
    live: dict[str, tuple[int, int]] = field(default_factory=dict)  # tag -> (pid, starttime)
    pending: dict[int, _Pending] = field(default_factory=dict)
    killed: int = 0  # processes SIGKILLed after their command ended
    stranded: int = 0  # of those, alive after SIGKILL (D state), now
    stranded_total: int = 0
    kill_untagged: bool = False  # adopted processes without a tag are escaped orphans (cli run)
    spawning: int = 0  # commands between reserve() and started(): forked children not yet known
    lock: threading.Lock = field(default_factory=threading.Lock)
    poll_lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, tag: str) -> None:
        """Before spawning a command: its tag is live from now on, and until started() no sweep
        takes an unknown child of the core for an orphan (a child between fork and exec still
        has the core's environment, without the tag)."""
        with self.lock:
            self.live[tag] = (0, -1)
            self.spawning += 1

    def started(self, tag: str, pid: int) -> None:
        p = read_stat(pid, self.proc_root)
        with self.lock:
            self.live[tag] = (pid, p.start if p else -1)
            self.spawning = max(0, self.spawning - 1)

    def abandon(self, tag: str) -> None:
        """The spawn after reserve() failed."""
        with self.lock:
            self.live.pop(tag, None)
            self.spawning = max(0, self.spawning - 1)

    def forget(self, tag: str) -> None:
        """A single-process command its owner has reaped, or killed and given up on (zstdcodec.py)."""
        with self.lock:
            self.live.pop(tag, None)

    def over_limit(self) -> bool:
        return self.stranded >= MAX_STRANDED

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"killed": self.killed, "stranded": self.stranded, "stranded_total": self.stranded_total}

    # --- the sweep --------------------------------------------------------------------------

    def _sweep(self, tag: str, pid: int, start: int, me: int) -> tuple[set[int], set[int]]:
        """SIGKILL every process of the command `tag` (see the module doc), round by round until
        a scan finds none: a child forked meanwhile is adopted by the core and found next round
        (same session or tag). Adopted orphans' environ is read last in a round: that read can
        block on a stuck process, and everything found by stat alone is killed by then.
        Returns (the killed, the zombies of the tree: the core reaps those it adopts)."""
        with self.lock:
            others = {t for t in self.live if t != tag}
            leaders = {p for t, (p, _) in self.live.items() if t != tag}
            leaders |= {p for p, e in self.pending.items() if not e.reap}  # stranded leaders: asyncio's
        members: set[int] = set()
        zombies: set[int] = set()
        checked: set[int] = set()  # adopted processes whose tag is not ours to kill
        for _ in range(MAX_ROUNDS):
            procs = scan(self.proc_root)
            root = procs.get(pid)
            # pid reused: then its old session and group are empty (the kernel reuses no number
            # a session or group still holds), and the new holder is a stranger
            reused = root is not None and root.start != start
            kids: dict[int, list[int]] = {}
            for p, info in procs.items():
                kids.setdefault(info.ppid, []).append(p)
            todo = [] if reused else [p for p, info in procs.items()  # the roots, then their descendants
                                      if p == pid or info.session == pid or info.pgrp == pid]
            todo += [c for m in members for c in kids.get(m, ())]
            found: set[int] = set()
            while todo:
                p = todo.pop()
                if p not in found and p != me:
                    found.add(p)
                    todo.extend(kids.get(p, ()))
            new = []
            for p in found - members - zombies:
                if procs[p].state not in ("Z", "X"):
                    new.append(p)
                elif p != pid:  # a zombie: the core reaps it once adopted; the leader's is asyncio's
                    zombies.add(p)
            with self.lock:  # read after the scan: a spawn begun since forked after it
                spawning = self.spawning > 0
                leaders |= {p for t, (p, _) in self.live.items() if t != tag}
                others |= {t for t in self.live if t != tag}
            adopted = [] if spawning else [
                p for p, info in procs.items() if info.ppid == me and p not in found and p not in members
                and p not in leaders and p not in checked and info.state not in ("Z", "X")]
            _kill(new)
            for p in adopted:
                t = read_tag(p, self.proc_root)
                if (t or self.kill_untagged) and t not in others:
                    new.append(p)
                    _kill([p])
                else:
                    checked.add(p)
            if not new:
                break
            members.update(new)
        return members, zombies

    def kill_tree(self, tag: str, wait: float = KILL_WAIT_SEC) -> list[int]:
        """SIGKILL every process of the command `tag`, reap the orphans, forget the command.
        Returns the pids still alive after `wait` (stranded). Blocking."""
        me = os.getpid()
        with self.lock:
            pid, start = self.live.get(tag, (0, -1))
        try:
            members, zombies = self._sweep(tag, pid, start, me) if pid else (set(), set())
            starts = {p: read_stat(p, self.proc_root) for p in members | zombies}
            deadline = time.monotonic() + wait
            alive = self._alive(starts)
            while alive and time.monotonic() < deadline:
                time.sleep(0.01)
                alive = self._alive(starts)
        finally:
            with self.lock:
                self.live.pop(tag, None)
        with self.lock:
            self.killed += len(members)
            self.stranded_total += len(alive)
            for p, st in starts.items():
                if st is not None and len(self.pending) < MAX_PENDING:
                    self.pending[p] = _Pending(st.start, reap=p != pid)
        self.poll()
        for p in alive:
            log.emit("action_failed", log.logging.WARNING,
                     f"AOD action process {p} ({_comm(p, self.proc_root)}) survived SIGKILL "
                     f"(D state?): abandoned, not waited for; {self.stranded} stranded",
                     AOD_PID=p, AOD_STRANDED=self.stranded)
        return sorted(alive)

    def _alive(self, starts: dict[int, Optional[Proc]]) -> list[int]:
        out = []
        for p, st in starts.items():
            now = read_stat(p, self.proc_root)
            if st is not None and now is not None and now.start == st.start and now.state not in ("Z", "X"):
                out.append(p)
        return out

    def poll(self) -> int:
        """Reap killed processes that have died since (by pid, and only our own children);
        returns how many are still alive (stranded). Cheap when nothing is pending."""
        with self.poll_lock:  # one at a time: a pid checked here is reaped by no one else
            return self._poll(os.getpid())

    def _poll(self, me: int) -> int:
        with self.lock:
            todo = list(self.pending.items())
        done, stranded = [], 0
        for p, e in todo:
            st = read_stat(p, self.proc_root)
            if st is None or st.start != e.start:
                done.append(p)  # gone: reaped by us, its parent or init (checked before waitpid:
                continue  # a reused pid may be asyncio's child now)
            if st.state not in ("Z", "X"):
                stranded += 1
            elif not e.reap:
                done.append(p)  # a command leader's zombie: asyncio reaps it
            elif st.ppid == me:  # only we wait for an adopted zombie: nobody can reap it meanwhile
                try:
                    os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    pass
                done.append(p)
            # else: a zombie whose parent is alive (stranded itself): ours once that parent dies
        with self.lock:
            for p in done:
                self.pending.pop(p, None)
            self.stranded = stranded
        return stranded


def _kill(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _comm(pid: int, proc_root: str = "/proc") -> str:
    try:
        with open(f"{proc_root}/{pid}/comm", "rb") as f:
            return f.read(64).decode("utf-8", "replace").strip()
    except OSError:
        return "?"


REAPER = Reaper()


def new_tag() -> str:
    """A tag no other command of any core will carry."""
    return f"{os.getpid()}.{time.monotonic_ns()}.{os.urandom(4).hex()}"


def popen_tagged(argv: list[str], env: dict[str, str], **kw: Any) -> tuple[subprocess.Popen, str]:
    """subprocess.Popen of argv in its own session (cwd /, other fds closed) with `env` plus a new
    tag, live for the reaper: reserved before the fork (no sweep takes it for an orphan), started
    after, abandoned when the spawn fails (what Popen raised is raised). Returns (proc, tag)."""
    tag = new_tag()
    REAPER.reserve(tag)
    try:
        proc = subprocess.Popen(argv, env={**env, TAG_VAR: tag}, start_new_session=True,  # noqa: S603
                                close_fds=True, cwd="/", **kw)
    except BaseException:
        REAPER.abandon(tag)
        raise
    REAPER.started(tag, proc.pid)
    return proc, tag
