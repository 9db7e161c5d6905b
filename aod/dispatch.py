"""Dispatch (ring -> dispatch -> detect): drain the ring into numpy batches.

The dispatcher thread waits on the ring, drains it, runs the immediate
detectors on each batch and appends the batch to the `WindowBuffer`, which the
watcher thread empties once per window.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol

import numpy as np

from .record import EVENT_DTYPE


class Ring(Protocol):
    bad_records: int

    def wait(self, timeout: float) -> bool: ...

    def drain(self, max_bytes: int | None = None) -> np.ndarray: ...


class WindowBuffer:
    """Bounded buffer of drained events between the dispatcher and the watcher.

    Holds at most `capacity` events; beyond that the newest events are still
    counted (`overflow`) but not kept, so memory stays bounded under a storm.
    """

    def __init__(self, capacity: int = 2_000_000) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.batches: list[np.ndarray] = []
        self.size = 0
        self.overflow = 0
        self.total = 0

    def add(self, batch: np.ndarray) -> None:
        with self.lock:
            self.total += len(batch)
            room = self.capacity - self.size
            if len(batch) > room:
                self.overflow += len(batch) - max(room, 0)
                batch = batch[: max(room, 0)]
            if len(batch):
                self.batches.append(batch)
                self.size += len(batch)

    def take_until(self, end_ns: int) -> np.ndarray:
        """Remove and return every event completed before end_ns (late ones included)."""
        with self.lock:
            batches, self.batches, self.size = self.batches, [], 0
        taken: list[np.ndarray] = []
        keep: list[np.ndarray] = []
        for b in batches:  # split batch by batch: no full extra copy of the window
            early = b["ts_ns"] < end_ns
            if early.all():
                taken.append(b)
            elif early.any():
                taken.append(b[early])
                keep.append(b[~early])
            else:
                keep.append(b)
        del batches
        if keep:
            with self.lock:
                self.batches[:0] = keep
                self.size += sum(len(b) for b in keep)
        if not taken:
            return np.zeros(0, EVENT_DTYPE)
        return taken[0] if len(taken) == 1 else np.concatenate(taken)

    def peek(self) -> np.ndarray:
        with self.lock:
            return np.concatenate(self.batches) if self.batches else np.zeros(0, EVENT_DTYPE)


class Dispatcher:
    """Worker: ring -> immediate detection -> window buffer."""

    name = "dispatcher"

    def __init__(self, ring: Ring, buffer: WindowBuffer,
                 on_batch: Callable[[np.ndarray], None], wait_sec: float = 1.0) -> None:
        self.ring = ring
        self.buffer = buffer
        self.on_batch = on_batch
        self.wait_sec = wait_sec
        self.records = 0

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        while not stop.is_set():
            beat()
            if not self.ring.wait(self.wait_sec):
                continue
            batch = self.ring.drain()
            if len(batch):
                self.records += len(batch)
                self.buffer.add(batch)
                self.on_batch(batch)
