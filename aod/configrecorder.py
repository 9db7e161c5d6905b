"""Config of the flight recorders (`recorder:`): the trace recorder and the packet recorder.

Read by the recorder units (recorder.py, recordtrace.py) when they set up, and by the core's
freeze steps (tracefreeze.py, pcapfreeze.py) at a capture. config.Config holds one RecorderConfig;
configparse._build hands the `recorder` section to parse_recorder() here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Optional

from .configcheck import _Errors, _got, _list, _mapping, _Num, _number, _own_dir

MiB = 1024 * 1024
TRACE_CLOCKS = ("boot", "mono")  # clocks the core converts to wall-clock time exactly
# "system/event" or "system/*": tracefs names are [A-Za-z0-9_]
EVENT_RE = re.compile(r"^[A-Za-z0-9_]{1,64}/(\*|[A-Za-z0-9_]{1,128})$")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")  # IFNAMSIZ-1; never starts with '-' (checked)

# the cifs command, error, reconnect, credit, connection and session events (fs/smb/client/trace.h)
DEFAULT_TRACE_EVENTS: tuple[str, ...] = (
    "cifs/smb3_cmd_enter", "cifs/smb3_cmd_done", "cifs/smb3_cmd_err", "cifs/smb3_slow_rsp",
    "cifs/smb3_reconnect", "cifs/smb3_reconnect_with_invalid_credits", "cifs/smb3_credit_timeout",
    "cifs/smb3_insufficient_credits", "cifs/smb3_connect_done", "cifs/smb3_connect_err",
    "cifs/smb3_tcon", "cifs/smb3_ses_not_found", "cifs/smb3_key_expired", "cifs/smb3_kerberos_auth",
)
# 136 bytes: the SMB2 header whole over IPv4 with TCP timestamps, and never file data: a READ
# response's data starts >= 138 bytes into a frame, a WRITE request's later (see aodv2.yaml(5))
PCAP_SNAPLEN = 136
PCAP_PREFIX = "smb.pcap"  # tcpdump -W appends the file number: smb.pcap0 .. (AppArmor allows *.pcap[0-9]*)


def is_ring_file(name: str, prefix: str = PCAP_PREFIX) -> bool:
    """A file of the packet ring: prefix + the file number (ASCII digits only), as tcpdump -W names it."""
    num = name[len(prefix):]
    return name.startswith(prefix) and num.isascii() and num.isdigit()


@dataclass(frozen=True)
class TraceRecorderConfig:
    enabled: bool = True
    events: tuple[str, ...] = DEFAULT_TRACE_EVENTS
    buffer_kb: int = 1024  # per CPU, the instance's buffer_size_kb (an overwrite ring)
    clock: str = "boot"
    window_sec: float = 30.0  # frozen into a bundle: this many seconds before the capture
    max_mb: float = 8.0  # cap of the bundle member (the newest lines survive)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * MiB)


@dataclass(frozen=True)
class PcapRecorderConfig:
    enabled: bool = False  # packets can carry file data: off unless asked for
    interface: str = "any"
    ports: tuple[int, ...] = (445,)  # add 2049 for NFS
    snaplen: int = PCAP_SNAPLEN
    file_mb: int = 8  # tcpdump -C (millions of bytes)
    files: int = 4  # tcpdump -W: the ring holds at most file_mb * files
    window_sec: float = 30.0
    dir: str = "/var/lib/aodv2/pcap"
    scrub: bool = True  # the bundle's pcap: segments that continue a READ/WRITE cut to their headers

    @property
    def ring_bytes(self) -> int:
        return self.file_mb * 1_000_000 * self.files

    def bpf_filter(self) -> str:
        """The capture filter, built from validated port numbers only."""
        return " or ".join(f"tcp port {p}" for p in self.ports)


@dataclass(frozen=True)
class RecorderConfig:
    trace: TraceRecorderConfig = TraceRecorderConfig()
    pcap: PcapRecorderConfig = PcapRecorderConfig()


_NUMS: dict[str, _Num] = {
    "trace.buffer_kb": _Num(True, 16, False, 262144, "KiB per CPU"),
    "trace.window_sec": _Num(False, 0, True, 3600, "seconds"),
    "trace.max_mb": _Num(False, 0, True, 256, "MiB"),
    "pcap.snaplen": _Num(True, 68, False, 65535, "bytes per packet"),
    "pcap.file_mb": _Num(True, 1, False, 1024, "millions of bytes per file"),
    "pcap.files": _Num(True, 2, False, 100, "files in the ring"),
    "pcap.window_sec": _Num(False, 0, True, 3600, "seconds"),
}


def _bool(errs: _Errors, path: str, v: Any) -> Optional[bool]:
    if isinstance(v, bool):
        return v
    errs.add(path, f"expected true or false, {_got(v)}")
    return None


def _section(errs: _Errors, raw: Any, name: str, default: Any, special: dict[str, Any]) -> Any:
    p = f"recorder.{name}"
    keys = [f.name for f in dataclasses.fields(default)]
    sec = _mapping(errs, raw, p, keys)
    kw: dict[str, Any] = {}
    for k, v in (sec or {}).items():
        if k in ("enabled", "scrub"):
            got: Any = _bool(errs, f"{p}.{k}", v)
        elif k in special:
            got = special[k](errs, f"{p}.{k}", v)
        else:
            got = _number(errs, f"{p}.{k}", v, _NUMS[f"{name}.{k}"])
        if got is not None:
            kw[k] = got
    return dataclasses.replace(default, **kw)


def _events(errs: _Errors, path: str, raw: Any) -> Optional[tuple[str, ...]]:
    items = _list(errs, raw, path, "tracefs events (system/event or system/*)")
    if items is None:
        return None
    out: list[str] = []
    for i, v in enumerate(items):
        if isinstance(v, str) and EVENT_RE.match(v):
            if v not in out:
                out.append(v)
        else:
            errs.add(f"{path}[{i}]", f"expected a tracefs event as system/event or system/* "
                                     f"(letters, digits, '_'), {_got(v)}")
    return tuple(out)


def _clock(errs: _Errors, path: str, v: Any) -> Optional[str]:
    if v in TRACE_CLOCKS:
        return str(v)
    errs.add(path, f"expected one of: {', '.join(TRACE_CLOCKS)}, {_got(v)}")
    return None


def _ports(errs: _Errors, path: str, raw: Any) -> Optional[tuple[int, ...]]:
    items = _list(errs, raw, path, "TCP ports")
    if items is None:
        return None
    if not items:
        errs.add(path, "expected at least one TCP port (445 for SMB, 2049 for NFS), got an empty list")
        return None
    bad = False
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            errs.add(f"{path}[{i}]", f"expected a TCP port (an integer 1-65535), {_got(v)}")
            bad = True
    return None if bad else tuple(dict.fromkeys(items))


def _iface(errs: _Errors, path: str, v: Any) -> Optional[str]:
    if isinstance(v, str) and _IFACE_RE.match(v) and not v.startswith("-"):
        return v
    errs.add(path, f"expected a network interface name (up to 15 of A-Z a-z 0-9 _ . : @ -) or any, {_got(v)}")
    return None


def _dir(errs: _Errors, path: str, v: Any) -> Optional[str]:
    """A directory for the ring alone: the recorder makes it 0700 and deletes smb.pcapN files in
    it, so never / or a system directory such as /var/lib."""
    if isinstance(v, str) and len(v) >= 512:
        errs.add(path, f"expected an absolute directory path shorter than 512 characters, {_got(v)}")
        return None
    return _own_dir(errs, path, v, "the packet ring", "/var/lib or /tmp")


def parse_recorder(errs: _Errors, raw: Any) -> RecorderConfig:
    sec = _mapping(errs, raw, "recorder", ("trace", "pcap"))
    d = RecorderConfig()
    if not sec:
        return d
    kw: dict[str, Any] = {}
    if "trace" in sec:
        kw["trace"] = _section(errs, sec["trace"], "trace", d.trace, {"events": _events, "clock": _clock})
    if "pcap" in sec:
        kw["pcap"] = _section(errs, sec["pcap"], "pcap", d.pcap,
                              {"ports": _ports, "interface": _iface, "dir": _dir})
    return dataclasses.replace(d, **kw)
