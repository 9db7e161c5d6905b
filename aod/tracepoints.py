"""The tracer's attach plan (tracer layer, before the load): which cifs tracepoints this kernel
offers, whether their formats have the fields bpf/smb.bpf.c reads, and how to trace SMB here.

Data flow: tracefs events/cifs/*/format + available_filter_functions + /sys/kernel/btf/cifs
(aod/btf.py, aod/kallsyms.py) + config tracer.mode -> AttachPlan (tracepoints, kprobes, -D
defines) -> aod/tracer.py compiles bpf/smb.bpf.c with them and attaches.

Three groups of tracepoints:
  SMB_TRACEPOINTS     request pairing, errors, reconnects, tree connects (names);
  HEALTH_TRACEPOINTS  the kernel's own health events -> AOD_KIND_HEALTH records. Each one the
                      kernel lacks (or whose format lacks a field) is logged once and skipped:
                      never fatal. connect_done/connect_err arrived in 5.16, key_expired and
                      kerberos_auth later still; slow_rsp fires only with CONFIG_CIFS_STATS2.
  OPTIONAL_FIELDS     fields read where the format has them (AOD_<TP>_HAS_<FIELD>).
Also the exit statuses and SetupError shared by the tracer modules.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from . import kallsyms
from .btf import KernelBtf, module_btf

EX_OK = 0
EX_USAGE = 2
EX_UNAVAILABLE = 69  # bcc (python3-bpfcc) missing
EX_SOFTWARE = 70  # BPF compile, load or attach failed
EX_OSERR = 71  # bpffs not mounted, pin dir unusable
EX_CONFIG = 78  # invalid config, or nothing to attach to on this kernel


class SetupError(Exception):
    """A clear one-line reason plus the exit status to use."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# cifs tracepoint -> fields bpf/smb.bpf.c reads; each found one sets -DAOD_HAVE_<NAME>
CMD_FIELDS = ("tid", "sesid", "cmd", "mid")
SMB_TRACEPOINTS: Mapping[str, tuple[str, ...]] = {
    "smb3_cmd_enter": CMD_FIELDS,
    "smb3_cmd_done": CMD_FIELDS,
    "smb3_cmd_err": CMD_FIELDS + ("status", "rc"),
    "smb3_reconnect": ("currmid",),
    "smb3_ses_expired": CMD_FIELDS,
    "smb3_tcon": ("tid", "sesid", "name", "rc"),  # fills trees_v1 ({sesid, tid} -> UNC), no record
}
REQUIRED_TRACEPOINTS = ("smb3_cmd_enter", "smb3_cmd_done")
# read where present: smb3_reconnect gained conn_id and hostname after some supported kernels
OPTIONAL_FIELDS: Mapping[str, tuple[str, ...]] = {"smb3_reconnect": ("conn_id", "hostname")}

CREDIT_FIELDS = ("currmid", "conn_id", "hostname")
# health tracepoint -> fields read (fs/smb/client/trace.h; the record's `command` is the
# AOD_HEALTH_* code the C assigns to each)
HEALTH_TRACEPOINTS: Mapping[str, tuple[str, ...]] = {
    "smb3_credit_timeout": CREDIT_FIELDS,
    "smb3_insufficient_credits": CREDIT_FIELDS,
    "smb3_reconnect_with_invalid_credits": CREDIT_FIELDS,
    "smb3_connect_err": ("conn_id", "hostname", "rc"),
    "smb3_connect_done": ("conn_id", "hostname"),
    "smb3_key_expired": ("conn_id", "hostname", "rc"),
    "smb3_kerberos_auth": ("rc",),
    "smb3_slow_rsp": ("cmd", "mid", "pid", "when_sent", "when_received"),
}
# the aging scan's trigger program (bpf/smb.bpf.c, tracepoint mode only)
TRIGGER_TRACEPOINT = "syscalls:sys_enter_getppid"


def parse_format(text: str) -> dict[str, str]:
    """Field name -> C type from a tracefs event `format` file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        decl = line[len("field:"):].split(";", 1)[0].strip()
        decl = re.sub(r"\[[^]]*\]", "", decl).strip()
        m = re.match(r"(.*?)([A-Za-z_][A-Za-z0-9_]*)$", decl)
        if m:
            out[m.group(2)] = m.group(1).strip()
    return out


def find_events_dir(tracefs: Sequence[str], system: str = "cifs") -> Optional[str]:
    for root in tracefs:
        d = os.path.join(root, "events", system)
        if os.path.isdir(d):
            return d
    return None


def usable_tracepoints(events_dir: Optional[str], wanted: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Tracepoints under events_dir whose format has every field we read -> reason-or-'' map.

    Returns {name: ""} for usable ones and {name: "why not"} for present-but-unusable ones.
    """
    out: dict[str, str] = {}
    if not events_dir:
        return out
    for tp, fields in wanted.items():
        fmt = os.path.join(events_dir, tp, "format")
        try:
            with open(fmt, encoding="utf-8", errors="replace") as f:
                have = parse_format(f.read())
        except OSError:
            continue
        missing = [x for x in fields if x not in have]
        out[tp] = f"format lacks {', '.join(missing)}" if missing else ""
    return out


@dataclass(frozen=True)
class AttachPlan:
    mode: str  # "tracepoint" | "kprobe" | "syscall"
    tracepoints: tuple[str, ...]  # "system:event", attached by bcc (TRACEPOINT_PROBE)
    kprobes: tuple[tuple[str, str, str], ...] = ()  # ("kprobe"|"kretprobe", symbol, function)
    defines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # things worth one log line
    optional_kprobes: tuple[tuple[str, str, str], ...] = ()  # attach failure: a warning, not an error


def function_list(tracefs: Sequence[str], kallsyms_path: str) -> tuple[Optional[str], str]:
    """(text, where from) of the kernel's function names: tracefs available_filter_functions
    (the unit's ProtectKernelTunables= hides /proc/kallsyms), else kallsyms_path; (None, tried)."""
    tried = [os.path.join(t, "available_filter_functions") for t in tracefs] + [kallsyms_path]
    for path in tried:
        text = _read(path)
        if text:
            return text, path
    return None, " or ".join(tried)


def plan_smb(tps: Mapping[str, str], kallsyms_text: Optional[str], release: str,
             force_kprobes: bool = False, symbols_from: str = "/proc/kallsyms",
             optional: Sequence[str] = (), kernel_btf: Optional[KernelBtf] = None,
             mode: str = "auto") -> AttachPlan:
    """How to trace SMB here. mode (config tracer.mode; force_kprobes = "kprobe"): auto = tracepoints
    if enter+done are usable, else kprobes; tracepoint = those or a SetupError naming what is missing;
    kprobe = the fallback even where the tracepoints exist. The usable health tracepoints either way;
    the aging trigger in tracepoint mode only (the kprobe fallback keys its in-flight map by mid
    pointer: no aging there). kernel_btf: cifs BTF to check the kprobes' signatures against (None:
    not looked at). `optional`: optional_defines(). Raises SetupError."""
    mode = "kprobe" if force_kprobes else mode
    usable = [t for t in SMB_TRACEPOINTS if tps.get(t) == ""]
    health = [t for t in HEALTH_TRACEPOINTS if tps.get(t) == ""]
    notes = tuple(f"cifs:{t} not used: {why}" for t, why in tps.items() if why)
    missing = [f"cifs:{t} ({tps[t] or 'unusable'})" if t in tps else f"cifs:{t} (not offered by this kernel)"
               for t in REQUIRED_TRACEPOINTS if t not in usable]
    if mode == "tracepoint" and missing:
        raise SetupError(f"tracer.mode is tracepoint, but this kernel lacks {' and '.join(missing)}; set "
                         "tracer.mode to auto (or kprobe) to use the kprobe fallback", EX_CONFIG)
    if not missing and mode != "kprobe":
        both = usable + health
        plan = AttachPlan("tracepoint", tuple(f"cifs:{t}" for t in both) + (TRIGGER_TRACEPOINT,),
                          defines=tuple(f"AOD_HAVE_{t.upper()}=1" for t in both) + tuple(optional), notes=notes)
        conn, refused = kallsyms.conn_choice(kallsyms_text or "", kernel_btf)
        notes += tuple(refused)
        if conn is None:
            where = (f"are not in {symbols_from}" if kallsyms_text
                     else f"cannot be looked up: cannot read {symbols_from}")
            where = "were refused" if refused else where
            return dataclasses.replace(plan, notes=notes + (
                f"no connection probes ({kallsyms.ALLOC_SYMBOL} and one of {'/'.join(kallsyms.RECV_SYMBOLS)} "
                f"{where}): requests are paired without their connection, so two "
                "connections or channels with the same message id in flight may share an entry",))
        return dataclasses.replace(
            plan, optional_kprobes=(("kprobe", conn[0], "aod_conn_alloc"), ("kprobe", conn[1], "aod_conn_recv")),
            defines=plan.defines + ("AOD_CONN_PROBES=1",),
            notes=notes + (f"pairing key names the connection: kprobes on {conn[0]} and {conn[1]}",))
    kp, refused = kallsyms.kprobe_choice(kallsyms_text or "", release, kernel_btf)
    notes += tuple(refused)
    if kp is None:
        why = "; ".join(refused) or (f"no kprobe fallback symbols ({kallsyms.ALLOC_SYMBOL} and a mid release "
                                     f"function) are in {symbols_from}" + ("" if kallsyms_text else " (not readable)"))
        lacks = "missing or unusable" if missing else f"not used (tracer.mode {mode})"
        raise SetupError(f"cannot trace SMB on this kernel: the cifs tracepoints smb3_cmd_enter/smb3_cmd_done "
                         f"are {lacks} and the kprobe fallback is not possible: {why}", EX_CONFIG)
    extra = [t for t in usable if t not in REQUIRED_TRACEPOINTS] + health
    rel = kp.release
    return AttachPlan(
        "kprobe",
        tuple(f"cifs:{t}" for t in extra),
        (("kprobe", kp.alloc, "aod_alloc_enter"), ("kretprobe", kp.alloc, "aod_alloc_return"),
         ("kprobe", rel.symbol, "aod_release")),
        ("AOD_KPROBE_MODE=1", f"AOD_RELEASE_ARG={rel.arg}", f"AOD_RELEASE_OFF={rel.offset}")
        + tuple(f"AOD_HAVE_{t.upper()}=1" for t in extra) + tuple(optional),
        notes + (f"kprobe fallback{' (tracer.mode kprobe)' if mode == 'kprobe' else ''}: {kp.alloc} -> "
                 f"{rel.symbol} (arg {rel.arg}, offset {rel.offset}; {rel.how})",),
    )


def smb_plan(events_dir: Optional[str], tracefs: Sequence[str], kallsyms_path: str, release: str,
             mode: str, btf_dir: str) -> tuple[AttachPlan, dict[str, list[str]], tuple[str, ...]]:
    """The smb tracer's (plan, health lists, notes to log) from the running kernel: the cifs formats,
    the function list and the cifs BTF. Raises SetupError."""
    tps = usable_tracepoints(events_dir, {**SMB_TRACEPOINTS, **HEALTH_TRACEPOINTS})
    funcs, funcs_from = function_list(tracefs, kallsyms_path)
    plan = plan_smb(tps, funcs, release, False, funcs_from,
                    optional_defines(events_dir, [t for t in SMB_TRACEPOINTS if tps.get(t) == ""]),
                    module_btf("cifs", btf_dir), mode)
    return plan, health_lists(tps, plan), plan.notes + health_notes(tps)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def optional_defines(events_dir: Optional[str], usable: Sequence[str]) -> tuple[str, ...]:
    """AOD_<TP>_HAS_<FIELD>=1 for each OPTIONAL_FIELDS field the format of a usable tracepoint has."""
    out: list[str] = []
    for tp in usable:
        fields = OPTIONAL_FIELDS.get(tp, ())
        if not fields or not events_dir:
            continue
        try:
            with open(os.path.join(events_dir, tp, "format"), encoding="utf-8", errors="replace") as f:
                have = parse_format(f.read())
        except OSError:
            continue
        out += [f"AOD_{tp.upper()}_HAS_{x.upper()}=1" for x in fields if x in have]
    return tuple(out)


def health_lists(tps: Mapping[str, str], plan: AttachPlan) -> dict[str, list[str]]:
    """{"offered": health tracepoints this kernel has, "attached": those in the plan} (state file)."""
    planned = set(plan.tracepoints)
    return {"offered": [t for t in HEALTH_TRACEPOINTS if t in tps],
            "attached": [t for t in HEALTH_TRACEPOINTS if f"cifs:{t}" in planned]}


def health_notes(tps: Mapping[str, str]) -> tuple[str, ...]:
    """One line per health tracepoint this kernel does not offer (logged once, at attach)."""
    return tuple(f"health tracepoint cifs:{t} not offered by this kernel: skipped"
                 for t in HEALTH_TRACEPOINTS if t not in tps)
