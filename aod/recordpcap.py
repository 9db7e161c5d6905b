"""`aodv2 recorder pcap`: the packet recorder unit (aodv2-recorder@pcap.service), tcpdump's parent.

Beside the flow: it records before any anomaly; the core freezes the last window of the ring
into a bundle (collect layer: pcapfreeze.py, pcapscrub.py). systemd starts and restarts it.

It checks the config and the ring directory, removes the previous ring, and runs tcpdump as its
child with a fixed argv (no shell). A reload (SIGHUP, also from `systemctl reload aodv2`) that
changes recorder.pcap restarts tcpdump with the new settings; one that disables it stops tcpdump
and waits for one that enables it. tcpdump's death ends the unit with 70 (systemd restarts it);
its own messages go to the journal (its stderr is ours).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import threading
from typing import Any, Callable, Optional

from . import safefs
from .configrecorder import PCAP_PREFIX, PcapRecorderConfig, is_ring_file
from .recorder import EX_CONFIG, EX_OK, EX_OSERR, EX_SOFTWARE, EX_UNAVAILABLE, _failed, _load, _publish, _say

DISABLED = "recorder.pcap.enabled is false"
_SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STOP_WAIT_SEC = 5.0
Spawn = Callable[[list[str]], Any]  # argv -> a Popen-like (pid, poll, terminate, kill, wait)


def pcap_argv(tcpdump: str, p: PcapRecorderConfig) -> list[str]:
    """tcpdump's argv: packet-buffered (-U: the ring is current when the core freezes it), no
    promiscuous mode, no name lookups, a ring of `files` files of `file_mb` MB, stays root (-Z root:
    Debian and Fedora build tcpdump to drop to user tcpdump, which could not write the ring)."""
    return [tcpdump, "-n", "-p", "-U", "-i", p.interface, "-s", str(p.snaplen), "-Z", "root",
            "-C", str(p.file_mb), "-W", str(p.files), "-w", os.path.join(p.dir, PCAP_PREFIX),
            p.bpf_filter()]


def prepare_ring_dir(path: str, files: Optional[int] = None) -> None:
    """Create the ring directory 0700 (a trusted parent required) and clear it of ring files
    (smb.pcapN entries: a symlink is removed, never followed). With `files`, the files this ring
    will write (smb.pcap0 .. files-1) are kept: after tcpdump died and systemd restarted the unit,
    the packets from before stay until tcpdump overwrites them. Never a system directory: it is
    made 0700 (config.py refuses those too; this guards a Config built in code)."""
    why = safefs.system_dir_problem(path)
    if why:
        raise safefs.UnsafePath(path, f"recorder.pcap.dir {path}: {why}; expected a directory of its own")
    safefs.check_dir(path, "recorder.pcap.dir")
    os.makedirs(path, mode=0o700, exist_ok=True)
    safefs.check_dir(path, "recorder.pcap.dir")
    keep = {f"{PCAP_PREFIX}{n:0{len(str(files - 1))}d}" for n in range(files)} if files else set()
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        safefs.verify_dir_fd(dfd, path, "recorder.pcap.dir")  # what was checked is what is open
        os.fchmod(dfd, 0o700)
        for n in os.listdir(dfd):
            if is_ring_file(n) and not (n in keep and stat.S_ISREG(
                    os.stat(n, dir_fd=dfd, follow_symlinks=False).st_mode)):
                os.unlink(n, dir_fd=dfd)
    finally:
        os.close(dfd)


def clear_ring(path: str) -> Optional[str]:
    """Remove the ring's files (recorder.pcap disabled: no packets kept); None or why not."""
    if not os.path.isdir(path):
        return None
    try:
        prepare_ring_dir(path)
    except (safefs.UnsafePath, OSError) as e:
        return f"cannot clear the ring in {path}: {e}"
    return None


def _spawn(argv: list[str]) -> Any:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True)  # noqa: S603  (fixed argv)


def _stop_child(proc: Any) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_WAIT_SEC)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_WAIT_SEC)


def _state(p: PcapRecorderConfig, child: int) -> dict[str, Any]:
    return {"dir": p.dir, "prefix": PCAP_PREFIX, "ring_bytes": p.ring_bytes, "snaplen": p.snaplen,
            "window_sec": p.window_sec, "interface": p.interface, "filter": p.bpf_filter(), "tcpdump_pid": child}


def _start(p: PcapRecorderConfig, tcpdump: str, state_dir: Optional[str], spawn: Spawn) -> Any:
    """Prepare the ring directory and start tcpdump; None after saying why it cannot."""
    try:
        prepare_ring_dir(p.dir, p.files)
    except (safefs.UnsafePath, OSError) as e:
        why = f"ring directory refused: {e}"
        _failed(state_dir, "pcap", why)
        return None
    proc = spawn(pcap_argv(tcpdump, p))
    _publish(state_dir, "pcap", "recording", _state(p, proc.pid))
    _say("pcap", logging.INFO, f"capturing {p.bpf_filter()} on {p.interface}, {p.snaplen} bytes per packet, "
         f"ring of {p.files} x {p.file_mb} MB in {p.dir}")
    return proc


def _disabled(cfg_path: str, state_dir: Optional[str], notifier: Any, first: bool, ring: str) -> None:
    err = clear_ring(ring)
    _say("pcap", logging.WARNING, f"{DISABLED} in {cfg_path}: not capturing, no packets kept (set it to true, "
         "then systemctl reload aodv2)" + (f"; {err}" if err else ""))
    _publish(state_dir, "pcap", "disabled", {"error": DISABLED})
    (notifier.ready if first else notifier.status)("disabled in the config")


def run_pcap(cfg_path: str, state_dir: Optional[str], notifier: Any, stop: Optional[threading.Event] = None,
             hup: Optional[threading.Event] = None, spawn: Spawn = _spawn, path: str = _SBIN_PATH) -> int:
    stop = stop or threading.Event()
    hup = hup or threading.Event()
    cfg = _load(cfg_path, "pcap")
    if cfg is None:
        return EX_CONFIG
    tcpdump = shutil.which("tcpdump", path=path)
    if tcpdump is None:
        why = "tcpdump is not installed (apt install tcpdump, or dnf install tcpdump)"
        _failed(state_dir, "pcap", why)
        return EX_UNAVAILABLE
    p = cfg.recorder.pcap
    proc: Any = None
    if p.enabled:
        proc = _start(p, tcpdump, state_dir, spawn)
        if proc is None:
            return EX_OSERR
        notifier.ready(f"recording {p.bpf_filter()} on {p.interface}")
    else:
        _disabled(cfg_path, state_dir, notifier, True, p.dir)
    try:
        while not stop.is_set():
            stop.wait(0.2)
            rc = proc.poll() if proc is not None else None
            if rc is not None:
                why = f"tcpdump exited with status {rc} (its messages: journalctl -u aodv2-recorder@pcap)"
                _failed(state_dir, "pcap", why, _state(p, proc.pid))
                proc = None
                return EX_SOFTWARE
            if not hup.is_set():
                continue
            hup.clear()
            new = _load(cfg_path, "pcap")
            if new is None or new.recorder.pcap == p:
                continue  # an invalid config keeps the running one; an unchanged one changes nothing
            old_dir, p = p.dir, new.recorder.pcap
            if proc is not None:
                _stop_child(proc)
                proc = None
            if not p.enabled:
                _disabled(cfg_path, state_dir, notifier, False, old_dir)
                continue
            proc = _start(p, tcpdump, state_dir, spawn)
            if proc is None:
                return EX_OSERR
            notifier.status(f"recording {p.bpf_filter()} on {p.interface}")
    finally:
        if proc is not None:
            _stop_child(proc)
    _publish(state_dir, "pcap", "stopped", {})
    return EX_OK
