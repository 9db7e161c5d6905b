#!/usr/bin/env python3
"""Boot the aodv2 test VM (qemu TCG) and run one guest script in it.

Sits outside the daemon's data flow: it is the real-kernel test bed on which
tracers -> ring -> dispatch -> detect -> collect -> retain are exercised.

    python3 tests/vm/run.py --share DIR --script GUEST_SCRIPT [--timeout SEC]

The script is copied into DIR as `guest-run` (and tests/vm/guest/ as DIR/vmlib/),
DIR is shared with the guest as /share (9p), the guest's oneshot unit runs
/share/guest-run, writes /share/guest-exit and /share/guest-output.log, then
powers off.  The serial console goes to DIR/console.log.

Exit status: the guest script's own status when it ran to the end; otherwise
  124  guest script hit its (guest-side) timeout
   97  boot failure (the runner never started: kernel/initrd/rootfs/9p problem)
   98  VM never finished (host-side timeout, qemu killed)
   99  VM stopped without a status (crash/panic while the script ran) or harness error
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import image  # noqa: E402  (tests/vm/image.py, next to this file)

BEGIN_MARK = "AODV2-VMTEST: begin"
END_MARK = "AODV2-VMTEST: end"

EXIT_SCRIPT_TIMEOUT = 124
EXIT_BOOT_FAILURE = 97
EXIT_VM_TIMEOUT = 98
EXIT_VM_DIED = 99

STATUS_EXIT = {
    "passed": 0,
    "script-timeout": EXIT_SCRIPT_TIMEOUT,
    "boot-failure": EXIT_BOOT_FAILURE,
    "vm-timeout": EXIT_VM_TIMEOUT,
    "vm-died": EXIT_VM_DIED,
    "kernel-livelock": EXIT_VM_DIED,
    "harness-error": EXIT_VM_DIED,
}

# Files the harness owns inside the share (cleared before each run).
RUN_FILES = ["guest-run", "guest-exit", "guest-exit.tmp", "guest-output.log",
             "guest-started", "guest-timeout", "console.log"]


@dataclass
class Result:
    """What one VM run produced."""

    # passed | script-failed | script-timeout | boot-failure | vm-timeout | vm-died | kernel-livelock |
    # harness-error
    status: str
    exit_code: int            # what run.py exits with
    guest_rc: Optional[int]   # the guest script's status, if it finished
    message: str
    console_log: Path
    output_log: Path
    # seconds: image, boot_to_script, script, poweroff, vm, total
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "passed"


def log(msg: str) -> None:
    print(f"[vm-run] {msg}", file=sys.stderr, flush=True)


def qemu_argv(img: image.Image, share: Path, memory_mb: int = 4096, smp: int = 2,
              extra_append: str = "") -> List[str]:
    append = "root=/dev/vda rw console=ttyS0,115200 panic=1 mitigations=off " \
             "systemd.show_status=1 " + extra_append
    return [
        "qemu-system-x86_64",
        "-accel", "tcg,thread=multi", "-cpu", "max",
        "-smp", str(smp), "-m", str(memory_mb),
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(img.kernel), "-initrd", str(img.initrd),
        "-append", append.strip(),
        "-drive", f"file={img.rootfs},if=virtio,format=raw,snapshot=on",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none",
    ]


def stale_packages(share: Path, src: Path) -> List[Path]:
    """Other versions of the package file `src` (NAME_VERSION_ARCH.deb) left in a persistent share:
    a guest script globbing NAME_*.deb must find only the copy of this run."""
    if not src.name.endswith(".deb") or "_" not in src.name or src.is_dir():
        return []
    pkg = src.name.split("_", 1)[0]
    return [p for p in share.glob(f"{pkg}_*.deb") if p.is_file() and p.name != src.name]


def prepare_share(share: Path, script: Path, timeout: int,
                  copies: Sequence[Path] = ()) -> None:
    share.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        p = share / name
        if p.is_file() or p.is_symlink():
            p.unlink()
    shutil.copyfile(script, share / "guest-run")
    os.chmod(share / "guest-run", 0o755)
    (share / "guest-timeout").write_text(f"{int(timeout)}\n")
    lib = share / "vmlib"
    if lib.exists():
        shutil.rmtree(lib)
    shutil.copytree(HERE / "guest", lib)
    for src in copies:
        dst = share / src.name
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        for old in stale_packages(share, src):
            old.unlink()
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
                "__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"))
        else:
            shutil.copy2(src, dst)


def _pump(stream: IO[bytes], out: IO[bytes], echo: bool, seen: Dict[str, float]) -> None:
    for line in iter(stream.readline, b""):
        out.write(line)
        out.flush()
        if echo:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        if "begin" not in seen and BEGIN_MARK.encode() in line:
            seen["begin"] = time.monotonic()
        if END_MARK.encode() in line:
            seen["end"] = time.monotonic()
        for mark, pattern in LIVELOCK:
            if mark not in seen and pattern in line:
                seen[mark] = time.monotonic()


# A guest CPU stuck in the kernel's cross-CPU code patching (text_poke_bp: a tracepoint or static
# key switched on or off) while the other spins on the int3 it left: a livelock of qemu's TCG with
# one host thread per vCPU, seen twice in CI (a tracer attaching, the trace recorder enabling
# events), never on hardware. Both marks in the console: the VM is stopped and run.py boots once more.
LIVELOCK = (("soft_lockup", b"watchdog: BUG: soft lockup - CPU#"), ("text_poke", b"text_poke_bp"))


KERNEL_REPORT = re.compile(r"blocked for more than|BUG: |rcu: INFO|watchdog: |Oops|general protection|WARNING: CPU")


def kernel_reports(path: Path, max_reports: int = 2, lines_each: int = 45) -> str:
    """The head of the guest kernel's hang/oops reports in the console: a timeout's tail shows
    only the user registers of the stuck task, not which lock it waits for."""
    try:
        lines = path.read_bytes().decode(errors="replace").splitlines()
    except OSError:
        return ""
    out: List[str] = []
    i = reports = 0
    while i < len(lines) and reports < max_reports:
        if KERNEL_REPORT.search(lines[i]):
            out += lines[i:i + lines_each] + ["..."]
            reports += 1
            i += lines_each
        else:
            i += 1
    return "\n".join(out)


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_bytes().decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate qemu (its own process group), escalate to SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_vm(share: Path, script: Path, timeout: int = 600, boot_timeout: int = 600,
           copies: Sequence[Path] = (), echo: bool = False, memory_mb: int = 4096,
           smp: int = 2, grace: int = 60) -> Result:
    """Boot the VM, run `script` as /share/guest-run, return what happened.

    timeout: guest-side limit for the script (seconds); boot_timeout: time the
    guest may take to reach the runner.  The host kills qemu boot_timeout s
    after start if the runner has not begun, or timeout + grace s after it
    began.  Never raises for VM problems; see Result.status.
    """
    share = Path(share).resolve()
    console = share / "console.log"
    output = share / "guest-output.log"
    t0 = time.monotonic()

    def fail(msg: str) -> Result:
        return Result("harness-error", EXIT_VM_DIED, None, msg, console, output)

    if not Path(script).is_file():
        return fail(f"no such guest script: {script}")
    for c in copies:
        if not Path(c).exists():
            return fail(f"no such file to copy into the share: {c}")
    try:
        img = image.ensure_image()
        image.ensure_host_deps()  # qemu too, when the image came from the cache
    except image.BuildError as e:
        return fail(f"VM image: {e}")
    try:
        prepare_share(share, Path(script), timeout, copies)
    except OSError as e:
        return fail(f"cannot prepare share {share}: {e}")
    argv = qemu_argv(img, share, memory_mb=memory_mb, smp=smp)
    t_boot = time.monotonic()
    seen: Dict[str, float] = {}
    killed = ""
    with open(console, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # noqa: S603 - fixed argv
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            assert proc.stdout is not None
            pump = threading.Thread(target=_pump, args=(proc.stdout, out, echo, seen),
                                    daemon=True)
            pump.start()
            while proc.poll() is None:
                now = time.monotonic()
                if "begin" not in seen:
                    if now > t_boot + boot_timeout:
                        killed = "boot"
                elif now > seen["begin"] + timeout + grace:
                    killed = "run"
                if all(mark in seen for mark, _ in LIVELOCK) and now > max(seen[m] for m, _ in LIVELOCK) + 2:
                    killed = "livelock"  # 2 s more of console: the whole report is kept
                if killed:
                    break
                time.sleep(0.2)
        finally:
            _stop(proc)  # also on KeyboardInterrupt: never leave a qemu behind
        pump.join(10)
    t_end = time.monotonic()
    timings = {"image": round(t_boot - t0, 1), "total": round(t_end - t0, 1),
               "vm": round(t_end - t_boot, 1)}
    if "begin" in seen:
        timings["boot_to_script"] = round(seen["begin"] - t_boot, 1)
        timings["script"] = round(seen.get("end", t_end) - seen["begin"], 1)
        timings["poweroff"] = round(t_end - seen.get("end", t_end), 1)
    rc_text = ""
    try:
        rc_text = (share / "guest-exit").read_text().strip()
    except OSError:
        pass

    def res(status: str, msg: str, guest_rc: Optional[int] = None,
            code: Optional[int] = None) -> Result:
        c = STATUS_EXIT.get(status, 0) if code is None else code
        return Result(status, c, guest_rc, msg, console, output, timings)

    if killed == "livelock":
        return res("kernel-livelock", "guest kernel soft lockup in text_poke_bp (a TCG livelock of code "
                   "patching; qemu stopped)")
    if rc_text.isdigit():
        rc = int(rc_text)
        if rc == 0:
            return res("passed", "guest script passed", 0)
        if rc in (124, 137):
            return res("script-timeout", f"guest script timed out after {timeout}s", rc)
        return res("script-failed", f"guest script failed with exit status {rc}", rc, rc)
    if rc_text == "no-script":
        return res("harness-error", "guest runner found no executable /share/guest-run")
    if killed == "boot":
        return res("boot-failure", f"VM did not reach the test runner within {boot_timeout}s "
                   "(qemu killed)")
    if killed == "run":
        return res("vm-timeout", f"VM never finished: no status {timeout}s + {grace}s after "
                   "the guest script started (qemu killed)")
    if "begin" not in seen:
        return res("boot-failure", f"VM stopped (qemu exit {proc.returncode}) before the "
                   "test runner started")
    return res("vm-died", f"VM stopped (qemu exit {proc.returncode}) while the guest script "
               "ran, without writing a status")


def repo_files(root: Path) -> List[Path]:
    """Tracked and untracked-but-not-ignored files of the repo at `root` (git ls-files)."""
    out = subprocess.run(  # noqa: S603 - fixed argv
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True).stdout
    return [Path(p.decode()) for p in out.split(b"\0") if p]


def copy_repo(root: Path, dest: Path) -> None:
    """Copy the repo's source files (not .git, not ignored files) to dest."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in repo_files(root):
        src = root / rel
        if not src.is_file():
            continue  # deleted in the work tree
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Run a script inside the aodv2 test VM.")
    ap.add_argument("--share", required=True, type=Path,
                    help="host directory shared as /share (created; harness files replaced)")
    ap.add_argument("--script", required=True, type=Path, help="guest script (any #! file)")
    ap.add_argument("--timeout", type=int, default=600,
                    help="guest-side time limit for the script in seconds (default 600)")
    ap.add_argument("--boot-timeout", type=int, default=600,
                    help="time allowed to reach the runner in seconds (default 600)")
    ap.add_argument("--copy", type=Path, action="append", default=[],
                    help="file or directory to copy into the share (repeatable)")
    ap.add_argument("--repo", action="store_true",
                    help="copy this repo's source files (git ls-files) into the share as src/")
    ap.add_argument("--echo", action="store_true", help="also stream the console to stderr")
    args = ap.parse_args(argv)
    if args.repo:
        try:
            copy_repo(HERE.parent.parent, args.share.resolve() / "src")
        except (OSError, subprocess.CalledProcessError) as e:
            log(f"error: cannot copy the repo into the share: {e}")
            return EXIT_VM_DIED
    try:
        r = run_vm(args.share, args.script, timeout=args.timeout,
                   boot_timeout=args.boot_timeout, copies=args.copy, echo=args.echo)
        if r.status == "kernel-livelock":  # an emulator artefact (LIVELOCK): one more boot, said loudly
            kept = r.console_log.with_name("console-livelock.log")
            shutil.copyfile(r.console_log, kept)
            log(f"RETRY: {r.message} after {r.timings.get('vm')} s; its console is kept in {kept}; "
                f"kernel report:\n{kernel_reports(kept, max_reports=1, lines_each=30)}\n"
                "booting once more to run the whole script again")
            r = run_vm(args.share, args.script, timeout=args.timeout,
                       boot_timeout=args.boot_timeout, copies=args.copy, echo=args.echo)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    t = r.timings
    log(f"{r.status}: {r.message} (timings s: {t})")
    if not r.ok and "vm" in r.timings:  # the VM ran: show what it said
        if r.output_log.is_file():
            log(f"--- tail of {r.output_log} ---\n" + tail(r.output_log))
        results = r.console_log.parent / "results.txt"
        if results.is_file():
            log(f"--- last checks in {results} ---\n" + tail(results, 8))
        reports = kernel_reports(r.console_log)
        if reports:
            log(f"--- kernel reports in {r.console_log} ---\n" + reports)
        log(f"--- tail of {r.console_log} ---\n" + tail(r.console_log))
    return r.exit_code


if __name__ == "__main__":
    sys.exit(main())
