"""Dispatch (ring -> dispatch -> detect): drain the ring into numpy batches.

The dispatcher thread waits on the ring, drains it, reads the few fields the
detectors need out of each batch once (`Columns`, 19 of the 72 bytes a record),
runs the immediate detectors on the batch and appends batch and columns to the
`WindowBuffer`. The watcher takes a window's worth as `Events`: the record batches
as drained (never concatenated unless an anomaly needs them) and their columns.
"""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Optional, Protocol, Sequence

import numpy as np

from .record import EVENT_DTYPE, EVENT_SIZE, KIND_ERROR

# Records are copied as opaque 72-byte items: numpy copies a structured dtype field by
# field, several times slower (concatenate, fancy indexing, masks).
_RAW = np.dtype((np.void, EVENT_SIZE))


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

    def tail(self, n: int) -> list[np.ndarray]:
        """The newest n records as views of the batches (no copy)."""
        out: list[np.ndarray] = []
        for b in reversed(self.batches):
            if n <= 0:
                break
            out.append(b[-n:] if len(b) > n else b)
            n -= len(b)
        return out[::-1]


class WindowBuffer:
    """Bounded buffer of drained events between the dispatcher and the watcher.

    Holds at most `capacity` events; beyond that the newest events are still
    counted (`overflow`) but not kept, so memory stays bounded under a storm.
    Each batch is kept with its `Columns`.
    """

    def __init__(self, capacity: int = 2_000_000) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.batches: list[np.ndarray] = []
        self.columns: list[Columns] = []
        self.size = 0
        self.overflow = 0
        self.total = 0

    def add(self, batch: np.ndarray, cols: Optional[Columns] = None) -> None:
        """Append a drained batch; cols are its Columns (extracted here when not given)."""
        if cols is None:
            cols = Columns.of(batch)
        with self.lock:
            self.total += len(batch)
            room = max(self.capacity - self.size, 0)
            if len(batch) > room:
                self.overflow += len(batch) - room
                batch, cols = batch[:room], cols.select(slice(0, room))
            if len(batch):
                self.batches.append(batch)
                self.columns.append(cols)
                self.size += len(batch)

    def take(self, end_ns: int) -> Events:
        """Remove and return every event completed before end_ns (late ones included)."""
        with self.lock:
            batches, self.batches = self.batches, []
            cols, self.columns = self.columns, []
            self.size = 0
        taken: list[tuple[np.ndarray, Columns]] = []
        keep: list[tuple[np.ndarray, Columns]] = []
        for b, c in zip(batches, cols):  # split batch by batch, on the ts column
            early = c.ts_ns < end_ns
            n = int(np.count_nonzero(early))
            if n == len(b):
                taken.append((b, c))
            elif n == 0:
                keep.append((b, c))
            elif early[:n].all():  # in time order (the usual case): views, no copy
                taken.append((b[:n], c.select(slice(0, n))))
                keep.append((b[n:], c.select(slice(n, None))))
            else:
                late = ~early
                taken.append((raw(b)[early].view(EVENT_DTYPE), c.select(early)))
                keep.append((raw(b)[late].view(EVENT_DTYPE), c.select(late)))
        del batches, cols
        if keep:
            with self.lock:
                self.batches[:0] = [b for b, _ in keep]
                self.columns[:0] = [c for _, c in keep]
                self.size += sum(len(b) for b, _ in keep)
        return Events([b for b, _ in taken], [c for _, c in taken])

    def take_until(self, end_ns: int) -> np.ndarray:
        """`take` as one contiguous record array."""
        return self.take(end_ns).records()

    def peek(self) -> np.ndarray:
        with self.lock:
            batches = list(self.batches)
        return concat(batches)


class Dispatcher:
    """Worker: ring -> columns -> window buffer, immediate detection (`on_batch`).

    on_batch(batch), or on_batch(batch, cols) with with_columns=True, so the
    immediate detectors reuse the columns extracted here.
    """

    name = "dispatcher"

    def __init__(self, ring: Ring, buffer: WindowBuffer, on_batch: Callable[..., None],
                 wait_sec: float = 1.0, with_columns: bool = False) -> None:
        self.ring = ring
        self.buffer = buffer
        self.on_batch = on_batch
        self.wait_sec = wait_sec
        self.with_columns = with_columns
        self.records = 0

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        while not stop.is_set():
            beat()
            if not self.ring.wait(self.wait_sec):
                continue
            batch = self.ring.drain()
            if len(batch):
                self.records += len(batch)
                cols = Columns.of(batch)
                self.buffer.add(batch, cols)
                if self.with_columns:
                    self.on_batch(batch, cols)
                else:
                    self.on_batch(batch)
