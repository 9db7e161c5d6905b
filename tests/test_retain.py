"""Retention: age and size budget, newest kept, in-progress files untouched, stale leftovers cleaned."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aod import retain
from aod.bundle import list_bundles
from aod.config import Config, RetentionConfig
from aod.retain import Retention, prune

NOW = 1_800_000_000.0
DAY = 86400.0


def put(d: Path, name: str, size: int, age: float) -> Path:
    p = d / name
    if name.startswith(".stage-"):
        p.mkdir()
        (p / "kernel.log").write_bytes(b"x" * size)
        os.utime(p / "kernel.log", (NOW - age, NOW - age))
    else:
        p.write_bytes(b"x" * size)
    os.utime(p, (NOW - age, NOW - age))
    return p


def bundles(d: Path, sizes_ages: list[tuple[int, float]]) -> list[Path]:
    return [put(d, f"aod_latency_20260101T0000{i:02d}Z_{i + 1}.tar.zst", s, a)
            for i, (s, a) in enumerate(sizes_ages)]


def test_size_budget_deletes_oldest_first(tmp_path: Path, records: list[logging.LogRecord]) -> None:
    b = bundles(tmp_path, [(100, 50), (100, 40), (100, 30), (100, 20), (100, 10)])
    out = prune(str(tmp_path), 250, 0, now=NOW)
    assert out == [(str(p), "size") for p in b[:3]]
    assert list_bundles(str(tmp_path)) == [str(p) for p in b[3:]]
    assert [r.AOD_REASON for r in records if r.getMessage().startswith("AOD pruned")] == ["size"] * 3  # type: ignore[attr-defined]


def test_history_counts_in_the_budget_but_is_not_pruned(tmp_path: Path) -> None:
    b = bundles(tmp_path, [(100, 50), (100, 40), (100, 30)])
    hist = [put(tmp_path, n, 60, 5) for n in ("anomalies.jsonl", "anomalies.jsonl.1", "anomalies.jsonl.2.gz")]
    put(tmp_path, "anomalies.jsonl.bak", 10_000, 5)  # not a logrotate name: not ours, not counted
    out = prune(str(tmp_path), 400, 0, now=NOW)  # 300 of bundles + 180 of history > 400
    assert out == [(str(b[0]), "size")]
    assert all(p.exists() for p in hist)
    assert retain.usage(str(tmp_path)) == (200 + 180, 2)


def test_age_limit(tmp_path: Path) -> None:
    b = bundles(tmp_path, [(10, 3 * DAY), (10, 2 * DAY), (10, 0.5 * DAY), (10, 60)])
    out = prune(str(tmp_path), 10**9, 1 * DAY, now=NOW)
    assert out == [(str(b[0]), "age"), (str(b[1]), "age")]
    assert list_bundles(str(tmp_path)) == [str(p) for p in b[2:]]


def test_age_then_size(tmp_path: Path) -> None:
    b = bundles(tmp_path, [(10, 3 * DAY), (100, 100), (100, 50), (100, 10)])
    out = prune(str(tmp_path), 250, DAY, now=NOW)
    assert out == [(str(b[0]), "age"), (str(b[1]), "size")]


def test_newest_is_always_kept(tmp_path: Path) -> None:
    (only,) = bundles(tmp_path, [(1000, 10 * DAY)])
    assert prune(str(tmp_path), 10, DAY, now=NOW) == []
    assert only.exists()
    older = put(tmp_path, "aod_error_20251201T000000Z_1.tar.zst", 1000, 20 * DAY)
    assert prune(str(tmp_path), 10, DAY, now=NOW) == [(str(older), "age")] and only.exists()


def test_only_finished_bundles_count_and_in_progress_untouched(tmp_path: Path) -> None:
    keep = [
        put(tmp_path, ".aod_latency_20260101T000000Z_9.tar.zst.partial", 10_000, 5),  # being written
        put(tmp_path, ".stage-latency_20260101T000000Z_1_3", 10_000, 5),  # being collected
        put(tmp_path, "notes.txt", 10_000, 100 * DAY),  # not ours
        put(tmp_path, "aod_latency_20260101T000000Z_1.tar.zst.bak", 10_000, 100 * DAY),
    ]
    b = bundles(tmp_path, [(100, 20), (100, 10)])
    assert prune(str(tmp_path), 150, DAY, now=NOW) == [(str(b[0]), "size")]  # 20 kB of others not counted
    assert all(p.exists() for p in keep) and b[1].exists()


def test_stale_leftovers_of_a_crash_are_cleaned(tmp_path: Path) -> None:
    old_partial = put(tmp_path, ".aod_error_20260101T000000Z_2.tar.zst.partial", 10, 2 * 3600)
    old_stage = put(tmp_path, ".stage-error_20260101T000000Z_77_1", 10, 2 * 3600)
    live_stage = put(tmp_path, ".stage-error_20260101T000000Z_78_1", 10, 2 * 3600)
    os.utime(live_stage / "kernel.log", (NOW - 5, NOW - 5))  # a writer is still appending inside
    out = prune(str(tmp_path), 0, 0, now=NOW)
    assert sorted(out) == sorted([(str(old_partial), "stale"), (str(old_stage), "stale")])
    assert not old_partial.exists() and not old_stage.exists() and live_stage.exists()


def test_vanishing_and_undeletable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         records: list[logging.LogRecord]) -> None:
    b = bundles(tmp_path, [(100, 40), (100, 30), (100, 20), (100, 10)])
    real_unlink = os.unlink

    def flaky(path: Any, *a: Any, **k: Any) -> None:
        if str(path) == str(b[0]):
            real_unlink(path)  # removed by someone else first
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        if str(path) == str(b[1]):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_unlink(path, *a, **k)

    monkeypatch.setattr(retain.os, "unlink", flaky)
    out = prune(str(tmp_path), 150, 0, now=NOW)
    assert out == [(str(b[2]), "size")]  # b[0] vanished (not ours to report), b[1] refused
    assert b[1].exists() and not b[0].exists() and b[3].exists()
    warn = [r for r in records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "Permission denied" in warn[0].getMessage()
    assert str(b[1]) in warn[0].getMessage()


def test_missing_dir_is_fine(tmp_path: Path) -> None:
    assert prune(str(tmp_path / "nope"), 1, 1) == []


def test_retention_worker_prunes_at_start_and_survives_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]
) -> None:
    b = bundles(tmp_path, [(100, 20), (100, 10)])
    now = time.time()
    for i, p in enumerate(b):
        os.utime(p, (now - 100 + i, now - 100 + i))
    cfg = Config(output_dir=str(tmp_path), retention=RetentionConfig(max_total_mb=150 / 1024 / 1024,
                                                                     max_age_days=30, interval_sec=1))
    worker = Retention(lambda: cfg)
    stop, beats = threading.Event(), []
    th = threading.Thread(target=worker.run, args=(stop, lambda: beats.append(1)), daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 10
        while b[0].exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not b[0].exists() and b[1].exists()
        calls = worker.runs

        def boom(*a: Any, **k: Any) -> list[tuple[str, str]]:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

        monkeypatch.setattr(retain, "prune", boom)
        while worker.runs < calls + 2 and time.monotonic() < deadline:  # two more passes, both failing
            time.sleep(0.05)
        assert worker.runs >= calls + 2 and th.is_alive()
        assert worker.last_error == "Permission denied"
    finally:
        stop.set()
        th.join(5)
    assert not th.is_alive() and beats
    assert any(r.levelno == logging.WARNING and "retention pass" in r.getMessage() for r in records)
