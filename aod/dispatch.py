"""Dispatch (ring -> dispatch -> detect): drain the ring into numpy batches.

The dispatcher thread waits on the ring, drains it, drops records stamped in the
future, reads the few fields the detectors need out of each batch once (`Columns`,
19 of the 72 bytes a record), keeps batch and columns in `RecentEvents` (the
evidence of the last horizon) and hands both to the detectors, which run every rule
on the batch. `Events` is a view over several batches: the record batches as drained
(never concatenated unless an anomaly needs them) and their columns.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, NamedTuple, Optional, Protocol, Sequence

import numpy as np

from .record import EVENT_DTYPE, EVENT_SIZE, KIND_ERROR

# Records are copied as opaque 72-byte items: numpy copies a structured dtype field by
# field, several times slower (concatenate, fancy indexing, masks).
_RAW = np.dtype((np.void, EVENT_SIZE))
FUTURE_TOLERANCE_NS = 1_000_000_000  # CLOCK_MONOTONIC is one clock for tracer and core; 1 s is slack


def raw(events: np.ndarray) -> np.ndarray:
    """The same records as opaque items (a view); `.view(EVENT_DTYPE)` turns them back."""
    return events.view(_RAW)


def concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    """np.concatenate of EVENT_DTYPE arrays, copied as raw bytes."""
    if not parts:
        return np.zeros(0, EVENT_DTYPE)
    return np.concatenate([raw(p) for p in parts]).view(EVENT_DTYPE)


class Ring(Protocol):
    bad_records: int

    def wait(self, timeout: float) -> bool: ...

    def drain(self, max_bytes: int | None = None) -> np.ndarray: ...


class Columns(NamedTuple):
    """The record fields the detectors read, one compact array each."""

    kind: np.ndarray  # u1
    command: np.ndarray  # u2
    latency_ns: np.ndarray  # u8
    ts_ns: np.ndarray  # u8

    @classmethod
    def of(cls, events: np.ndarray) -> Columns:
        """Extract from EVENT_DTYPE records (one strided copy per field)."""
        return cls(np.array(events["kind"]), np.array(events["command"]),
                   np.array(events["latency_ns"]), np.array(events["ts_ns"]))

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return _NO_COLUMNS
        return cls(*(np.concatenate(c) for c in zip(*parts)))

    def select(self, sel: slice | np.ndarray) -> Columns:
        return Columns(self.kind[sel], self.command[sel], self.latency_ns[sel], self.ts_ns[sel])


_NO_COLUMNS = Columns.of(np.zeros(0, EVENT_DTYPE))
_ZERO_OFFSETS = np.zeros(1, np.int64)
for _a in (*_NO_COLUMNS, _ZERO_OFFSETS):
    _a.flags.writeable = False


class Events:
    """Events of one window (or one batch): record batches in drain order, each with its Columns.

    Nothing is concatenated: detectors find rows batch by batch (`where`), read column
    values at those rows (`at`), and gather whole records only for the rows that need
    them (`take`, `errors`) or when an anomaly carries them (`records`).
    """

    def __init__(self, batches: Sequence[np.ndarray], parts: Sequence[Columns]) -> None:
        pairs = [(b, c) for b, c in zip(batches, parts) if len(b)]
        self.batches = [b for b, _ in pairs]
        self.parts = [c for _, c in pairs]
        self.offsets = np.cumsum([0] + [len(b) for b in self.batches]) if self.batches else _ZERO_OFFSETS
        self._errors: Optional[tuple[np.ndarray, np.ndarray]] = None
        assert all(len(b) == len(c.kind) for b, c in pairs)
        if not self.batches:  # an idle window: nothing to look for
            self._errors = (np.zeros(0, np.intp), np.zeros(0, EVENT_DTYPE))

    @classmethod
    def of(cls, events: np.ndarray, cols: Optional[Columns] = None) -> Events:
        return cls([events], [Columns.of(events) if cols is None else cols])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def cols(self) -> Columns:
        """All columns over all batches (concatenated: a copy unless there is one batch)."""
        return Columns.concat(self.parts)

    def where(self, test: Callable[[Columns], np.ndarray]) -> np.ndarray:
        """Ascending indices of the rows where test(a batch's Columns) is True."""
        if len(self.parts) == 1:
            return np.flatnonzero(test(self.parts[0]))
        if not self.parts:
            return np.zeros(0, np.intp)
        return np.concatenate([np.flatnonzero(test(c)) + off for c, off in zip(self.parts, self.offsets)])

    def at(self, field: str, idx: np.ndarray) -> np.ndarray:
        """Values of one column (a Columns field name) at ascending indices."""
        if len(self.parts) == 1:
            return getattr(self.parts[0], field)[idx]
        out = np.empty(len(idx), getattr(_NO_COLUMNS, field).dtype)
        cut = np.searchsorted(idx, self.offsets)
        for c, off, s, e in zip(self.parts, self.offsets, cut[:-1], cut[1:]):
            if e > s:
                out[s:e] = getattr(c, field)[idx[s:e] - off]
        return out

    def records(self) -> np.ndarray:
        """All records, contiguous (a copy unless there is one batch)."""
        if len(self.batches) == 1:
            return np.ascontiguousarray(self.batches[0])
        return concat(self.batches)

    def take(self, idx: np.ndarray, tail_from: Optional[int] = None) -> np.ndarray:
        """Records at the ascending indices idx, then (if given) every record from tail_from
        on (idx all below it), copied by slices."""
        n = len(self)
        tail_from = n if tail_from is None else tail_from
        out = np.empty(len(idx) + n - tail_from, _RAW)
        cut = np.searchsorted(idx, self.offsets)
        pos = len(idx)
        for b, off, s, e in zip(self.batches, self.offsets, cut[:-1], cut[1:]):
            if e > s:
                np.take(raw(b), idx[s:e] - off, out=out[s:e])
            lo = max(tail_from - int(off), 0)
            if lo < len(b):
                out[pos : pos + len(b) - lo] = raw(b)[lo:]
                pos += len(b) - lo
        return out.view(EVENT_DTYPE)

    def errors(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, records) of the error rows; computed once, shared by detector and watcher."""
        if self._errors is None:
            idx = self.where(lambda c: c.kind == KIND_ERROR)
            self._errors = (idx, self.take(idx))
        return self._errors


class RecentEvents:
    """The newest drained events, as the batches they arrived in: the evidence an anomaly carries
    and what a manual capture takes. Thread-safe.

    Holds the batches of the last `keep_ns()` nanoseconds (the longest rule horizon), and
    at most `capacity` events: past that the oldest are let go, and those still inside the
    horizon are counted in `overflow` (a bundle can then miss part of its horizon; detection
    never does, it runs on each batch as it is drained).
    """

    def __init__(self, keep_ns: Callable[[], int], capacity: int = 65536,
                 mono: Callable[[], int] = time.monotonic_ns) -> None:
        self.keep_ns = keep_ns
        self.capacity = capacity
        self.mono = mono
        self.lock = threading.Lock()
        self.batches: list[np.ndarray] = []
        self.columns: list[Columns] = []
        self.newest: list[int] = []  # newest ts of each batch
        self.size = 0
        self.overflow = 0

    def add(self, batch: np.ndarray, cols: Columns) -> None:
        if not len(batch):
            return
        newest = int(cols.ts_ns.max())
        with self.lock:
            self.batches.append(batch)
            self.columns.append(cols)
            self.newest.append(newest)
            self.size += len(batch)
            oldest = self.mono() - self.keep_ns()
            while self.batches:
                if self.newest[0] < oldest and len(self.batches) > 1:  # all older than the horizon (not the new one)
                    self._pop(len(self.batches[0]))
                elif self.size > self.capacity:
                    cut = min(self.size - self.capacity, len(self.batches[0]))
                    self.overflow += int(np.count_nonzero(self.columns[0].ts_ns[:cut] >= oldest))
                    self._pop(cut)
                else:
                    break

    def _pop(self, n: int) -> None:
        if n >= len(self.batches[0]):
            del self.batches[0], self.columns[0], self.newest[0]
        else:
            self.batches[0] = self.batches[0][n:]
            self.columns[0] = self.columns[0].select(slice(n, None))
        self.size -= n

    def snapshot(self) -> list[tuple[np.ndarray, Columns]]:
        """The batches held now (references: batches are never changed once drained)."""
        with self.lock:
            return list(zip(self.batches, self.columns))

    def events(self, since_ns: int = 0) -> Events:
        """Events completed at or after since_ns."""
        return since(self.snapshot(), since_ns)


def since(pairs: Sequence[tuple[np.ndarray, Columns]], since_ns: int) -> Events:
    """The rows of these batches completed at or after since_ns, as Events."""
    out_b: list[np.ndarray] = []
    out_c: list[Columns] = []
    for b, c in pairs:
        if not len(b) or int(c.ts_ns.max()) < since_ns:
            continue
        if int(c.ts_ns.min()) < since_ns:
            keep = c.ts_ns >= since_ns
            b, c = raw(b)[keep].view(EVENT_DTYPE), c.select(keep)
        out_b.append(b)
        out_c.append(c)
    return Events(out_b, out_c)


def drop_future(batch: np.ndarray, cols: Columns, now_ns: int,
                tolerance_ns: int) -> tuple[np.ndarray, Columns, int]:
    """Drop records stamped after now + tolerance (a clock the kernel does not have): kept, they
    would sit at the head of every horizon. Returns the rest, its columns and how many were dropped."""
    late = cols.ts_ns > np.uint64(now_ns + tolerance_ns)
    n = int(np.count_nonzero(late))
    if not n:
        return batch, cols, 0
    keep = ~late
    return raw(batch)[keep].view(EVENT_DTYPE), cols.select(keep), n


class Dispatcher:
    """Worker: ring -> columns -> recent events, then `on_batch(batch, cols)` (immediate detection).

    Records stamped more than FUTURE_TOLERANCE_NS after now are dropped and counted in
    `future` (a bad-record reason). Records of every kind pass (hung and health records too:
    the detectors tell them apart). Between ring waits it runs `on_tick()`, and a wait ends by
    `deadline()` (monotonic ns, None: none): a hung group fires at its deadline, not at the
    next record or window."""

    name = "dispatcher"

    def __init__(self, ring: Ring, recent: RecentEvents, on_batch: Callable[[np.ndarray, Columns], None],
                 wait_sec: float = 1.0, mono: Callable[[], int] = time.monotonic_ns,
                 deadline: Callable[[], Optional[int]] = lambda: None,
                 on_tick: Callable[[], None] = lambda: None) -> None:
        self.ring = ring
        self.recent = recent
        self.on_batch = on_batch
        self.wait_sec = wait_sec
        self.mono = mono
        self.deadline = deadline
        self.on_tick = on_tick
        self.records = 0
        self.future = 0

    def handle(self, batch: np.ndarray) -> None:
        """One drained batch (the loop body; tests call it directly)."""
        cols = Columns.of(batch)
        batch, cols, n = drop_future(batch, cols, self.mono(), FUTURE_TOLERANCE_NS)
        self.future += n
        if len(batch):
            self.records += len(batch)
            self.recent.add(batch, cols)
            self.on_batch(batch, cols)

    def wait_for(self) -> float:
        """How long the next ring wait may last: wait_sec, or until the deadline."""
        due = self.deadline()
        if due is None:
            return self.wait_sec
        return min(self.wait_sec, max(due - self.mono(), 0) / 1e9)

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        while not stop.is_set():
            beat()
            if self.ring.wait(self.wait_for()):
                batch = self.ring.drain()
                if len(batch):
                    self.handle(batch)
            self.on_tick()
