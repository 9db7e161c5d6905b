"""Control socket: `aodv2 collect` asks the running core for a capture (enters at detect -> collect).

/run/aodv2/control.sock is a unix stream socket, mode 0600 in a 0700 dir, and the
server also checks the peer's uid (SO_PEERCRED) is 0. One JSON line per connection:
    {"cmd": "collect", "reason": "TEXT"}  ->  {"ok": true, "path": BUNDLE} when written
                                          or  {"ok": false, "error": TEXT}
    {"cmd": "ping"}                       ->  {"ok": true, "pid": PID}
The `Control` worker accepts; each request runs in its own short thread (at most
MAX_CLIENTS), so a capture that takes a while never stalls accept or the heartbeat.
A request is at most MAX_REQUEST bytes and MAX_REQUEST_DEPTH levels of JSON; anything
else gets {"ok": false, "error": ...}, and a request thread never dies with a traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from typing import Any, Callable, Optional

from . import log, safefs
from .safetext import loads
from .tracerstate import RUN_DIR

SOCKET_NAME = "control.sock"
MAX_REQUEST = 4096
MAX_REQUEST_DEPTH = 4  # {"cmd": ..., "reason": ...} is one level
MAX_CLIENTS = 4
MAX_REASON = 200
REQUEST_READ_SEC = 5.0
LISTEN_RETRY_SEC = 30


def socket_path(state_dir: str = RUN_DIR) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


def clean_reason(text: Any) -> str:
    """A printable, bounded reason: it lands in the journal, summary.json and the bundle name's rule."""
    s = "".join(c if c.isprintable() else " " for c in (text if isinstance(text, str) else "")[:4 * MAX_REASON])
    return " ".join(s.split())[:MAX_REASON] or "aodv2 collect"


# collect(reason, timeout) -> (ok, path or error)
CollectFn = Callable[[str, float], "tuple[bool, str]"]


class Control:
    """Worker: the control socket server."""

    name = "control"

    def __init__(self, state_dir: str, collect: CollectFn, wait_sec: float = 600.0) -> None:
        self.path = socket_path(state_dir)
        self.collect = collect
        self.wait_sec = wait_sec
        self.clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self.requests = 0
        self.listen_error = ""

    def _listen(self) -> socket.socket:
        state_dir = os.path.dirname(self.path)
        safefs.check_dir(state_dir, "--state-dir")  # nobody else can swap it, or the socket in it
        safefs.makedirs(state_dir, 0o700, "--state-dir")  # missing levels 0700 whatever the umask, by fd:
        # a level someone else made or replaced after check_dir is refused before anything is made in it
        try:
            os.unlink(self.path)  # left by a previous core (or a crashed run of this worker)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        st = os.lstat(self.path)  # the umask made it 0600; checked, not chmod'ed through a path
        if not stat.S_ISSOCK(st.st_mode) or st.st_mode & 0o077:
            s.close()
            raise OSError(errno.EPERM, f"not a private socket after bind (mode {st.st_mode & 0o7777:04o})", self.path)
        s.listen(8)
        s.settimeout(0.5)
        return s

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        srv = None
        while srv is None:
            try:
                srv = self._listen()
            except OSError as e:  # e.g. not root with the default /run/aodv2: no `aodv2 collect`
                if not self.listen_error:
                    log.emit("control", logging.WARNING, f"AOD control socket {self.path} unavailable: "
                             f"{e.strerror or e}; `aodv2 collect` will not work (retrying)", AOD_PATH=self.path)
                self.listen_error = str(e)
                for _ in range(LISTEN_RETRY_SEC):
                    if stop.is_set():
                        return
                    beat()
                    stop.wait(1.0)
        self.listen_error = ""
        try:
            while not stop.is_set():
                beat()
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                if not self.clients.acquire(blocking=False):
                    _reply(conn, {"ok": False, "error": "busy: too many requests in progress"})
                    conn.close()
                    continue
                threading.Thread(target=self._serve, args=(conn,), name="aodv2-control-req", daemon=True).start()
        finally:
            srv.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.requests += 1
            try:
                msg = self._handle(conn)
            except OSError:
                raise
            except Exception as e:  # never a thread traceback in the journal: one line, and an answer
                log.emit("control", logging.WARNING, f"AOD control request failed: {type(e).__name__}: "
                         f"{str(e)[:200]}")
                msg = {"ok": False, "error": f"internal error: {type(e).__name__}"}
            _reply(conn, msg)
            _discard_unread(conn)
        except OSError:
            pass  # the client went away
        finally:
            conn.close()
            self.clients.release()

    def _handle(self, conn: socket.socket) -> dict[str, Any]:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != 0 and uid != os.geteuid():
            return {"ok": False, "error": "permission denied: root only"}
        deadline = time.monotonic() + REQUEST_READ_SEC  # for the whole request: a trickle is cut off
        data = b""
        while b"\n" not in data and len(data) <= MAX_REQUEST:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"ok": False, "error": f"bad request: no complete line within {REQUEST_READ_SEC:g}s"}
            conn.settimeout(left)
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        line = data.split(b"\n", 1)[0]
        if len(line) > MAX_REQUEST:
            return {"ok": False, "error": f"bad request: longer than {MAX_REQUEST} bytes"}
        try:
            req = loads(line or b"null", MAX_REQUEST_DEPTH)  # never a RecursionError
        except ValueError as e:
            if "nested deeper" in str(e):
                return {"ok": False, "error": f"bad request: {e}"}
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": "bad request: expected one JSON object line with a \"cmd\""}
        if req["cmd"] == "ping":
            return {"ok": True, "pid": os.getpid()}
        if req["cmd"] == "collect":
            ok, what = self.collect(clean_reason(req.get("reason")), self.wait_sec)
            return {"ok": True, "path": what} if ok else {"ok": False, "error": what}
        return {"ok": False, "error": f"unknown cmd {req['cmd'][:40]!r}: expected collect or ping"}


def _discard_unread(conn: socket.socket) -> None:
    """Read what the client sent beyond the request (an oversized or trickled one): closing a
    socket with unread data resets it, and the client would lose the answer."""
    conn.shutdown(socket.SHUT_WR)
    for _ in range(64):
        try:
            if not conn.recv(65536, socket.MSG_DONTWAIT):
                return
        except (BlockingIOError, InterruptedError):
            return


def _reply(conn: socket.socket, msg: dict[str, Any]) -> None:
    conn.settimeout(5.0)
    conn.sendall(json.dumps(msg).encode() + b"\n")


class ControlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def request(msg: dict[str, Any], state_dir: str = RUN_DIR, timeout: float = 600.0) -> dict[str, Any]:
    """Client side. Raises ControlError with an exit code: 77 no permission, 3 core not running,
    1 anything else."""
    path = socket_path(state_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(5.0)
        try:
            s.connect(path)
        except PermissionError:
            raise ControlError(f"aodv2 collect needs root: {path} is accessible to root only", 77) from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"aodv2 core is not running (no listener on {path})", 3) from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}", 1) from None
        deadline = time.monotonic() + timeout
        try:
            s.sendall(json.dumps(msg).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise ControlError(f"no answer from the core within {timeout:g}s", 1) from None
        except OSError as e:
            raise ControlError(f"control socket {path}: {e.strerror or e}", 1) from None
    finally:
        s.close()
    try:
        reply = json.loads(data.split(b"\n", 1)[0])
        if not isinstance(reply, dict):
            raise ValueError
    except ValueError:
        raise ControlError(f"the core closed {path} without an answer", 1) from None
    return reply


def collect(reason: str, state_dir: str = RUN_DIR, timeout: float = 600.0) -> str:
    """Ask for a capture; returns the bundle path. Raises ControlError."""
    reply = request({"cmd": "collect", "reason": reason}, state_dir, timeout)
    if not reply.get("ok"):
        raise ControlError(f"capture failed: {reply.get('error', 'unknown error')}", 1)
    return str(reply.get("path"))


def ping(state_dir: str = RUN_DIR, timeout: float = 5.0) -> Optional[int]:
    reply = request({"cmd": "ping"}, state_dir, timeout)
    return reply.get("pid") if reply.get("ok") else None
