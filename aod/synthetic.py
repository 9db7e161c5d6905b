"""Synthetic tracer (ring producer side, for the demo, tests and benchmarks).

Writes realistic SMB traffic into a file-backed ring exactly as the BPF tracer
does: every completion goes into the per-command counters, but only slow
completions, errors and reconnects go into the ring as records.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from . import smb2
from .record import KIND_COMPLETION, KIND_ERROR, KIND_RECONNECT, TRACER_FILE, empty
from .ringfile import FileRingWriter

C = smb2.COMMANDS
# share of traffic and median latency (ms) per command, roughly a file server client
MIX: dict[int, tuple[float, float]] = {
    C["CREATE"]: (0.16, 2.0),
    C["CLOSE"]: (0.16, 1.0),
    C["READ"]: (0.24, 3.0),
    C["WRITE"]: (0.20, 4.0),
    C["QUERY_INFO"]: (0.12, 1.0),
    C["QUERY_DIRECTORY"]: (0.06, 5.0),
    C["SET_INFO"]: (0.03, 1.5),
    C["FLUSH"]: (0.02, 6.0),
    C["ECHO"]: (0.01, 0.5),
}
_CMDS = np.array(list(MIX), dtype=np.uint16)
_P = np.array([v[0] for v in MIX.values()])
_P = _P / _P.sum()
_MED = np.array([v[1] for v in MIX.values()])
COMMS = [b"rsync", b"python3", b"cp", b"bash", b"backup-agent"]


class SyntheticTracer:
    """Generates traffic; `emit_min_ns` plays the BPF tracer's emit filter and `ignored` its
    ignored_status map."""

    def __init__(self, writer: FileRingWriter, emit_min_ns: int, seed: int = 7,
                 session_id: int = 0x1C0FFEE00001, tree_id: int = 5,
                 ignored: frozenset[int] = frozenset()) -> None:
        self.writer = writer
        self.emit_min_ns = emit_min_ns
        self.ignored = np.array(sorted(ignored), dtype=np.uint32)
        self.rng = np.random.default_rng(seed)
        self.session_id = session_id
        self.tree_id = tree_id
        self.mid = 0
        self.written = 0
        self.dropped = 0

    def _events(self, n: int, end_ns: Optional[int] = None, span_ns: int = 0) -> np.ndarray:
        end_ns = time.monotonic_ns() if end_ns is None else end_ns
        ev = empty(n)
        ev["tracer_id"] = TRACER_FILE
        ev["kind"] = KIND_COMPLETION
        ev["ts_ns"] = np.sort(end_ns - self.rng.integers(0, max(span_ns, 1), n, dtype=np.int64))
        ev["session_id"] = self.session_id
        ev["tree_id"] = self.tree_id
        ev["mid"] = np.arange(self.mid, self.mid + n, dtype=np.uint64)
        self.mid += n
        pick = self.rng.integers(0, len(COMMS), n)
        ev["comm"] = np.array(COMMS, dtype="S16")[pick]
        ev["pid"] = 4000 + pick
        return ev

    def traffic(self, n: int, span_ns: int) -> np.ndarray:
        """n normal completions spread over the last span_ns."""
        ev = self._events(n, span_ns=span_ns)
        idx = self.rng.choice(len(_CMDS), n, p=_P)
        ev["command"] = _CMDS[idx]
        ev["latency_ns"] = (self.rng.lognormal(0.0, 0.5, n) * _MED[idx] * 1e6).astype(np.uint64)
        return ev

    def slow(self, command: int, n: int, low_ms: float, high_ms: float, span_ns: int = 0) -> np.ndarray:
        ev = self._events(n, span_ns=span_ns)
        ev["command"] = command
        ev["latency_ns"] = (self.rng.uniform(low_ms, high_ms, n) * 1e6).astype(np.uint64)
        return ev

    def errors(self, command: int, n: int, status: int, err: int = 0) -> np.ndarray:
        ev = self.slow(command, n, 1.0, 30.0)
        ev["kind"] = KIND_ERROR
        ev["nt_status"] = status
        ev["err"] = err
        return ev

    def reconnect(self) -> np.ndarray:
        ev = self._events(1)
        ev["kind"] = KIND_RECONNECT
        return ev

    def emit(self, ev: np.ndarray) -> int:
        """Count everything, ring only what the BPF filter would emit. Returns records written.
        An error with an ignored status is a completion (that keeps its status), as in the kernel."""
        ign = (ev["kind"] == KIND_ERROR) & np.isin(ev["nt_status"], self.ignored)
        if ign.any():
            ev = ev.copy()
            ev["kind"][ign] = KIND_COMPLETION
            ev["err"][ign] = 0
        self.writer.record_stats(ev)
        keep = (ev["kind"] != KIND_COMPLETION) | (ev["latency_ns"] >= self.emit_min_ns)
        out = ev[keep]
        n = self.writer.write(out) if len(out) else 0
        self.written += n
        self.dropped += len(out) - n
        return n
