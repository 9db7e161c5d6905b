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
