"""Figure 6's statistics: the guest's ABBA summary (tests/vm/guest/overhead_run.py) and the bench
row built from it (bench/fig_tracer.py), on synthetic rounds with a known loss."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

from bench.fig_tracer import overhead_rows

ROOT = Path(__file__).resolve().parent.parent


def _guest() -> Any:
    """The guest module imports aod.tracer (no bcc needed at import) from the tree."""
    spec = importlib.util.spec_from_file_location("overhead_run", ROOT / "tests/vm/guest/overhead_run.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("overhead_run", mod)
    spec.loader.exec_module(mod)
    return mod


def _rounds(loss: float, noise: float, pairs: int = 120, seed: int = 1) -> list[dict[str, Any]]:
    rng, g = random.Random(seed), _guest()
    out = []
    for pair, state in g.abba(pairs):
        base = 1.0 * (1 + rng.gauss(0, noise))
        on = state == "on"
        out.append({"pair": pair, "state": state, "seconds": base / (1 - loss) if on else base,
                    "bpf_runs": 1000 if on else 0, "bpf_run_time_ns": 10_000_000 if on else 0})
    return out


def _row6(tmp_path: Path, loss: float, noise: float) -> Any:
    d = _guest().summarize(_rounds(loss, noise))
    p = tmp_path / "overhead.json"
    p.write_text(json.dumps({**d, "kernel": "test", "files_per_round": 11}))
    rows = overhead_rows(str(p))
    assert [r.fig for r in rows] == ["6", "6b"]
    return d, rows[0]


def test_abba_order_alternates_and_balances() -> None:
    order = _guest().abba(4)
    assert [s for _, s in order] == ["off", "on", "on", "off", "off", "on", "on", "off"]
    assert sorted({p for p, _ in order}) == [0, 1, 2, 3]


def test_small_real_loss_with_low_noise_passes(tmp_path: Path) -> None:
    d, row = _row6(tmp_path, loss=0.01, noise=0.01)
    assert abs(d["median_pair_loss"] - 0.01) < 0.005
    lo, hi = d["median_loss_ci95"]
    assert lo <= 0.01 <= hi and hi - lo < 0.02
    assert row.ok is True and "not resolved" not in row.value


def test_large_loss_is_a_miss(tmp_path: Path) -> None:
    d, row = _row6(tmp_path, loss=0.10, noise=0.01)
    assert d["median_pair_loss"] > 0.08 and row.ok is False


def test_noise_wider_than_the_target_gives_no_verdict(tmp_path: Path) -> None:
    _, row = _row6(tmp_path, loss=0.01, noise=0.5)
    assert row.ok is None and "not resolved" in row.value


def test_nfs_row_6n(tmp_path: Path, monkeypatch: Any) -> None:
    """overhead_nfs.sh's JSON ("tracer": "nfs") is row 6n, and never taken for figure 6's SMB run."""
    from bench import fig_tracer

    d = _guest().summarize(_rounds(0.05, 0.01))
    p = tmp_path / "overhead-nfs.json"
    p.write_text(json.dumps({**d, "kernel": "test", "files_per_round": 11, "compare": "tracer", "tracer": "nfs"}))
    monkeypatch.setattr(fig_tracer, "NFS_JSON", str(p))
    (row,) = fig_tracer.nfs_rows()
    assert row.fig == "6n" and row.ok is False and "with the nfs tracer" in row.value
    assert "overhead_nfs.sh" in row.note
    monkeypatch.setattr(fig_tracer, "OVERHEAD_CANDIDATES", (str(p),))
    monkeypatch.delenv("AOD_VM_OVERHEAD", raising=False)
    assert fig_tracer.find_overhead() is None
    monkeypatch.setattr(fig_tracer, "NFS_JSON", str(tmp_path / "missing.json"))
    (row,) = fig_tracer.nfs_rows()
    assert row.ok is None and "make vm-overhead-nfs" in row.value
