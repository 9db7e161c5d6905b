"""Test kit for the evidence helper: a fake /proc with tasks, and the helper served on a
socket from a thread (what aodv2-evidence.socket + aodv2-evidence@.service do for real)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional

from aod import evidence

CIFS_STACK = (
    "[<0>] wait_for_response+0xd4/0x130 [cifs]\n"
    "[<0>] compound_send_recv+0x5a9/0xf40 [cifs]\n"
    "[<0>] SMB2_write+0x1a3/0x3c0 [cifs]\n"
    "[<0>] cifs_write+0x1b8/0x3d0 [cifs]\n"
    "[<0>] vfs_write+0xb4/0x3a0\n"
)
IDLE_STACK = "[<0>] do_select+0x6a1/0x7d0\n[<0>] core_sys_select+0x1f5/0x3a0\n"


def add_task(proc: Path, pid: int, tid: int, comm: str, state: str, stack: str, wchan: str = "0") -> None:
    d = proc / str(pid) / "task" / str(tid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{tid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0 0 0\n")
    (d / "stack").write_text(stack)
    (d / "wchan").write_text(wchan)


def standard_tasks(proc: Path) -> None:
    """A hung writer (D, cifs frames), cifsd, a sleeping process with a cifs frame, an idle
    one, and an idle thread of pid 300 (asked for by pid)."""
    add_task(proc, 100, 100, "dd", "D", CIFS_STACK, "wait_for_response")
    add_task(proc, 100, 101, "dd worker", "S", IDLE_STACK, "do_select")
    add_task(proc, 200, 200, "cifsd", "S", "[<0>] cifs_readv_from_socket+0x1/0x2 [cifs]\n", "sk_wait_data")
    add_task(proc, 250, 250, "ls", "S", "[<0>] smb2_query_dir_first+0x1/0x2 [cifs]\n", "x")
    add_task(proc, 300, 300, "bash", "S", IDLE_STACK, "do_select")
    add_task(proc, 400, 400, "sshd", "S", IDLE_STACK, "do_select")
    add_task(proc, 500, 500, "jbd2/sda1-8", "D", "[<0>] jbd2_journal_commit_transaction+0x1/0x2\n", "jbd2")


class FakeHelper:
    """Serve `aodv2 evidence` on an AF_UNIX socket, one connection at a time (Accept=yes)."""

    def __init__(self, path: Path, proc: Path, pin_dir: Path, mode: str = "serve", delay: float = 0.0) -> None:
        self.path, self.proc, self.pin_dir, self.mode, self.delay = path, proc, pin_dir, mode, delay
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rf, conn.makefile("wb") as wf:
            if self.mode == "hang":  # reads the request, never answers
                self.requests.append(rf.readline())
                self._stop.wait(60)
                return
            time.sleep(self.delay)
            if self.mode == "garbage":
                self.requests.append(rf.readline())
                wf.write(b"this is not json\n")
                return
            line = rf.readline()
            self.requests.append(line)
            import io

            try:
                evidence.serve(io.BytesIO(line), wf, proc=str(self.proc), pin_dir=str(self.pin_dir))
            except (BrokenPipeError, ConnectionResetError):
                pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def fake_helper(tmp: Path, proc: Optional[Path] = None, **kw: Any) -> FakeHelper:
    proc = proc or tmp / "eproc"
    if not proc.exists():
        proc.mkdir(parents=True)
        standard_tasks(proc)
    return FakeHelper(tmp / "evidence.sock", proc, tmp / "nopins", **kw)
