"""Quick actions: the table of what a capture collects, and its plan for this host (collect layer).

ring -> dispatch -> detect -> **collect** (actions.py, actionrun.py, collect.py, bundle.py) -> retain.

Each action is one row of ACTIONS: files to read (the first that exists wins), argv
templates to run (fallbacks tried in order, or, per cifs mount, all of them), or a section
of the evidence helper's answer (`aodv2 evidence`, asked once per capture for every such
action). A row is expanded by `plan()` into `Step`s; actionrun.run_step() executes one step
into the stage dir. Commands are argv lists (never a shell); `{since}`/`{until}`/`{mount}`
are substituted per element in one pass, so a value is always one literal argv element.

Guard: a per-mount step for a mount whose requests are hung (`guarded`, from mountguard.py)
is planned as skipped: nothing ever stats, lists or queries such a mount point.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .configrecorder import RecorderConfig
from .recordtrace import TRACEFS_ROOTS, instance_path
from .tracerstate import RUN_DIR

# the actions every anomaly type runs by default (and their order in the bundle summary)
BASE_ACTIONS: tuple[str, ...] = (
    "kernel_log",
    "journal",
    "syslog",
    "cifs_debug",
    "cifs_stats",
    "cifs_open_files",
    "mounts",
    "smbinfo",
    "nfs_mountstats",
    "nfs_rpc_stats",
    "nfs_mounts",
    "trace_recorder",
    "packet_recorder",
)
# evidence while it hangs, from the privileged helper (evidence.py): for hung and emergency
EVIDENCE_ACTIONS: tuple[str, ...] = ("task_stacks", "inflight", "connections")
ACTION_NAMES: tuple[str, ...] = BASE_ACTIONS + EVIDENCE_ACTIONS

MiB = 1024 * 1024
# skipped: deliberately not run (a guard, or the evidence helper is not there); the reason says why
STATUSES = ("ok", "failed", "timeout", "missing", "skipped")
EVIDENCE_SOCKET = "/run/aodv2/evidence.sock"
CIFS_FSTYPES = frozenset({b"cifs", b"smb3"})
JOURNAL_TOOLS = frozenset({"journalctl"})  # argv[0] that needs a running journal
SMBINFO_SUBCOMMANDS = ("filefsfullsizeinfo", "fileallinfo")  # both work on a mount root (cifs-utils >= 6.8)
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ActionEnv:
    """Where actions look: roots and PATH are data so tests can use a fake tree."""

    proc_root: str = "/proc"
    var_log: str = "/var/log"
    path: Optional[str] = None  # PATH for the binaries; None = $PATH plus the sbin dirs
    journal_dir: str = "/run/systemd/journal"  # exists when journald runs
    evidence_socket: str = EVIDENCE_SOCKET  # aodv2-evidence.socket
    tracefs: tuple[str, ...] = TRACEFS_ROOTS  # where the trace recorder's instance is looked for
    run_dir: str = RUN_DIR  # the recorders' state files (recorder-NAME.json)

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
    redact: bool = False  # mask passwords and credential files (redact())
    evidence: str = ""  # a section of the evidence helper's answer (stacks | inflight | connections)
    urgent: bool = False  # started first, outside capture.concurrency: evidence that fades with the hang
    recorder: str = ""  # freeze a flight recorder: trace | pcap (recorderstep.py)
    protocol: str = ""  # smb | nfs: run for that protocol's anomalies only ("": every anomaly)


_RECORDER_DEFAULTS = RecorderConfig()
PCAP_BUNDLE_MAX = 256 * MiB  # of a bundle's pcap (the newest packets of the window); the freeze reads <= 4x
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
        # urgent: DebugData shows the outstanding requests only while the hang holds
        ActionSpec("cifs_debug", "cifs/DebugData", files=("{proc}/fs/cifs/DebugData",), redact=True,
                   urgent=True, protocol="smb"),
        ActionSpec("cifs_stats", "cifs/Stats", files=("{proc}/fs/cifs/Stats",), protocol="smb"),
        ActionSpec("cifs_open_files", "cifs/open_files", files=("{proc}/fs/cifs/open_files",), protocol="smb"),
        ActionSpec("mounts", "mounts", files=("{proc}/mounts",), cap_bytes=4 * MiB, redact=True),
        ActionSpec(
            "smbinfo",
            "smbinfo",
            argv=tuple(("smbinfo", sub, "{mount}") for sub in SMBINFO_SUBCOMMANDS),
            per_mount=True,
            cap_bytes=1 * MiB,
            protocol="smb",
        ),
        # per-operation counts, times and errors of every NFS mount (the core's mount namespace is the host's)
        # every mount's device as /proc/mounts shows it (a FUSE URL may hold a password): redacted
        ActionSpec("nfs_mountstats", "nfs/mountstats", files=("{proc}/self/mountstats",), cap_bytes=8 * MiB,
                   redact=True, protocol="nfs"),
        # /proc/net/rpc/nfs exists in the initial network namespace only: the core's is private, pid 1's is not
        ActionSpec("nfs_rpc_stats", "nfs/rpc_nfs", files=("{proc}/1/net/rpc/nfs", "{proc}/net/rpc/nfs"),
                   protocol="nfs"),
        ActionSpec("nfs_mounts", "nfs/nfsstat-m.txt", argv=(("nfsstat", "-m"),), cap_bytes=1 * MiB, redact=True,
                   protocol="nfs"),
        # the flight recorders' last recorder.*.window_sec before the trigger; urgent: their rings overwrite
        ActionSpec("trace_recorder", "recorder/trace.txt", recorder="trace", urgent=True),
        ActionSpec("packet_recorder", "recorder/smb.pcap", recorder="pcap", urgent=True),
        # one request to the helper answers all three; each writes its section (+ .json)
        ActionSpec("task_stacks", "evidence/stacks.txt", evidence="stacks", cap_bytes=8 * MiB, urgent=True),
        ActionSpec("inflight", "evidence/inflight.txt", evidence="inflight", cap_bytes=4 * MiB, urgent=True),
        ActionSpec("connections", "evidence/connections.txt", evidence="connections", cap_bytes=2 * MiB,
                   urgent=True),
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
    evidence: str = ""  # helper section (ActionSpec.evidence)
    urgent: bool = False
    skipped: str = ""  # why it is deliberately not run (status "skipped"), e.g. a hung mount
    recorder: str = ""  # trace | pcap: files holds the instance dirs (trace) or the ring dir (pcap)
    window_start: float = 0.0  # recorder: epoch seconds; older records are left out


def for_protocol(names: tuple[str, ...], protocol: str) -> tuple[str, ...]:
    """The action names that apply to an anomaly of this protocol ("": all of them)."""
    return tuple(n for n in names if not protocol or n not in ACTIONS or ACTIONS[n].protocol in ("", protocol))


# --- pure helpers -------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(since|until|mount|proc|var_log)\}")


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace {name} placeholders in one pass: substituted text is never rescanned."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


_OCTAL = re.compile(rb"\\([0-7]{3})")


def decode_mount_field(field_: bytes) -> bytes:
    """Undo /proc/mounts octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field_)


def parse_cifs_mount_entries(data: bytes, unique: bool = True) -> list[tuple[str, str]]:
    """(source, mount point) of cifs/smb3 mounts in /proc/mounts text, decoded, in order, one
    entry per mount point (unique=False: every entry, for stacked mounts on one mount point).
    The source is the UNC as mounted ("//server/share[/path]")."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in data.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in CIFS_FSTYPES:
            mnt = os.fsdecode(decode_mount_field(parts[1]))
            if mnt.startswith("/") and not (unique and mnt in seen):  # absolute: never parsed as an option
                seen.add(mnt)
                out.append((os.fsdecode(decode_mount_field(parts[0])), mnt))
    return out


def parse_cifs_mounts(data: bytes) -> list[str]:
    """Mount points of cifs/smb3 mounts in /proc/mounts text, decoded, in order, no duplicates."""
    return [mnt for _, mnt in parse_cifs_mount_entries(data)]


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


def cifs_mount_entries(env: ActionEnv, unique: bool = True) -> list[tuple[str, str]]:
    """(source, mount point) of the cifs mounts, from /proc/mounts: never from the mounts."""
    try:
        with open(os.path.join(env.proc_root, "mounts"), "rb") as f:
            return parse_cifs_mount_entries(f.read(4 * MiB), unique)
    except OSError:
        return []


def cifs_mounts(env: ActionEnv) -> list[str]:
    return [mnt for _, mnt in cifs_mount_entries(env)]


def plan(spec: ActionSpec, env: ActionEnv, since: int, until: int,
         guarded: Optional[Mapping[str, str]] = None, recorder: RecorderConfig = _RECORDER_DEFAULTS,
         trigger_wall: float = 0.0) -> list[Step]:
    """Expand one table row into steps for this host (resolves files, binaries and mounts).

    guarded: mount point -> why it must not be touched; its per-mount steps are skipped.
    recorder, trigger_wall: the recorder config and the anomaly's time, for the recorder rows."""
    values = {"since": str(since), "until": str(until), "proc": env.proc_root, "var_log": env.var_log}
    common: dict[str, Any] = {"cap_bytes": spec.cap_bytes, "keep": spec.keep, "redact": spec.redact,
                              "urgent": spec.urgent}
    if spec.recorder == "trace":
        t = recorder.trace
        return [Step(spec.name, spec.dest, files=tuple(instance_path(r) for r in env.tracefs), recorder="trace",
                     window_start=trigger_wall - t.window_sec, urgent=True, cap_bytes=t.max_bytes,
                     skipped="" if t.enabled else "recorder.trace.enabled is false")]
    if spec.recorder == "pcap":
        p = recorder.pcap
        return [Step(spec.name, spec.dest, files=(p.dir,), recorder="pcap", window_start=trigger_wall - p.window_sec,
                     urgent=True, cap_bytes=min(p.ring_bytes + 1024, PCAP_BUNDLE_MAX), redact=p.scrub,
                     skipped="" if p.enabled else "recorder.pcap.enabled is false")]
    if spec.evidence:
        return [Step(spec.name, spec.dest, evidence=spec.evidence, **common)]
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
        dest = f"{spec.dest}/{escape_mount_name(m)}.txt"
        if guarded and m in guarded:  # never resolve, stat or run anything on it
            steps.append(Step(spec.name, dest, label=m, skipped=guarded[m], **common))
            continue
        why.clear()
        argvs = tuple(a for a in (resolve(t, {"mount": m}) for t in spec.argv) if a is not None)
        steps.append(Step(spec.name, dest, argvs=argvs, sequence=True, label=m,
                          missing="" if argvs else "; ".join(dict.fromkeys(why)), **common))
    return steps
