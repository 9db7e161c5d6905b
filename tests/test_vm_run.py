"""tests/vm/run.py's failure output: the guest kernel's hang reports are pulled out of the console."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "vm"))

import run  # noqa: E402  (tests/vm/run.py)

HUNG = """[  10.0] systemd[1]: Started x.
[2178.7] INFO: task python3:812 blocked for more than 120 seconds.
[2178.7]       Not tainted 6.1.0-57-amd64 #1 Debian 6.1.176-1
[2178.7] Call Trace:
[2178.7]  <TASK>
[2178.7]  __mutex_lock.constprop.0+0x1a0/0x4a0
[2178.7]  perf_event_attach_bpf_prog+0x30/0x120
[2178.7] RIP: 0033:0x7fa804302d6b
"""


def test_kernel_reports_start_at_the_report_head(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text(HUNG + "[2200.0] later line\n" * 100)
    out = run.kernel_reports(console, lines_each=7)
    assert out.splitlines()[0].endswith("blocked for more than 120 seconds.")
    assert "perf_event_attach_bpf_prog" in out
    assert "later line" not in out


def test_kernel_reports_empty_without_a_report(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("[1.0] booting\n[2.0] systemd: ok\n")
    assert run.kernel_reports(console) == ""
    assert run.kernel_reports(tmp_path / "missing.log") == ""


def test_kernel_reports_capped(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("BUG: soft lockup\nx\n" * 10)
    out = run.kernel_reports(console, max_reports=2, lines_each=2)
    assert out.count("BUG: soft lockup") == 2


# the faults suite's console in CI (2026-12-06): the trace recorder enabling events, CPU 0 looping in int3
LIVELOCK = b"""[  203.7] aodv2-vmtest[341]: PASS systemctl restart aodv2
[  252.8] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [aodv2:966]
[  252.8] RIP: 0010:smp_call_function_many_cond+0xf1/0x330
[  252.8]  on_each_cpu_cond_mask+0x20/0x40
[  252.8]  text_poke_bp_batch+0xb7/0x300
[  252.8]  text_poke_bp+0x4b/0x70
[  252.8]  system_enable_write+0xba/0xf0
"""


def test_pump_marks_a_code_patching_livelock() -> None:
    import io

    seen: dict[str, float] = {}
    run._pump(io.BytesIO(LIVELOCK), io.BytesIO(), False, seen)
    assert set(seen) == {"soft_lockup", "text_poke"}
    other: dict[str, float] = {}  # a lockup elsewhere is not this artefact: no retry
    run._pump(io.BytesIO(LIVELOCK.replace(b"text_poke_bp", b"mutex_lock")), io.BytesIO(), False, other)
    assert set(other) == {"soft_lockup"}


def test_main_boots_once_more_after_a_livelock_and_only_once(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    console = tmp_path / "console.log"
    console.write_bytes(LIVELOCK)
    mp = pytest.MonkeyPatch()
    runs: list[str] = []

    def fake(statuses: list[str]) -> object:
        def run_vm(*_a: object, **_k: object) -> run.Result:
            status = statuses[len(runs)]
            runs.append(status)
            return run.Result(status, run.STATUS_EXIT[status], None, status, console, tmp_path / "out.log",
                              {"vm": 1.0})
        return run_vm

    try:
        mp.setattr(run, "run_vm", fake(["kernel-livelock", "passed"]))
        assert run.main(["--share", str(tmp_path), "--script", "x"]) == 0 and len(runs) == 2
        assert (tmp_path / "console-livelock.log").read_bytes() == LIVELOCK
        runs.clear()
        mp.setattr(run, "run_vm", fake(["kernel-livelock", "kernel-livelock", "passed"]))
        assert run.main(["--share", str(tmp_path), "--script", "x"]) == run.EXIT_VM_DIED and len(runs) == 2
    finally:
        mp.undo()
