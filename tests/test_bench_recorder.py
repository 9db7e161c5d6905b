"""Figure 6r, the trace recorder's added cost: the guest's round checks and trace-header parsing
(tests/vm/guest/overhead_run.py --compare recorder) and the bench row built from its JSON
(bench/fig_tracer.py), on synthetic data with a known loss."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, List

import pytest
from test_overhead import _guest

from bench import fig_tracer

ROOT = Path(__file__).resolve().parent.parent

HEAD = """# tracer: nop
#
# entries-in-buffer/entries-written: 1020/1530   #P:2
#
#                                _-----=> irqs-off/BH-disabled
#                  TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#                     | |         |   |||||     |         |
         python3-612     [000] .....   301.524001: smb3_cmd_enter: \tsid=0x1 tid=0x2 cmd=5 mid=10
         python3-612     [000] .....   301.534321: smb3_cmd_done: \tsid=0x1 tid=0x2 cmd=5 mid=10
           cifsd-598     [000] .....   301.540000: smb3_cmd_err: \tsid=0x1 tid=0x2 cmd=5 mid=11 status=0x
"""



def test_trace_head_gives_the_counts_and_only_complete_event_lines() -> None:
    in_buf, written, names = _guest().parse_trace_head(HEAD.rstrip("\n"))  # last line cut by the read
    assert (in_buf, written) == (1020, 1530)
    assert names == ["smb3_cmd_enter", "smb3_cmd_done"]
    assert _guest().parse_trace_head(HEAD)[2][-1] == "smb3_cmd_err"
    assert _guest().parse_trace_head("") == (None, None, [])


def _snap(instance: bool = True, written: Any = 100, enabled: Any = None, head: Any = None,
          top: Any = "0") -> Dict[str, Any]:
    if not instance:
        return {"instance": False, "top_cifs": top, "enabled": [], "in_buffer": None, "written": None,
                "head_events": []}
    return {"instance": True, "top_cifs": top, "written": written, "in_buffer": written,
            "enabled": ["cifs:smb3_cmd_done", "cifs:smb3_cmd_enter"] if enabled is None else enabled,
            "head_events": ["smb3_cmd_enter", "smb3_cmd_done"] if head is None else head}


def _problems(state: str, before: Dict[str, Any], after: Dict[str, Any], mode: str = "remove",
              att: int = 15, runs: int = 1000) -> List[str]:
    out: List[str] = _guest().recorder_round_problems(7, state, mode, before, after, att, runs)
    return out


def test_consistent_rounds_have_no_problem() -> None:
    assert _problems("on", _snap(written=0, head=[]), _snap(written=510)) == []
    assert _problems("off", _snap(False), _snap(False)) == []
    off = _snap(written=510, enabled=[], head=["smb3_cmd_enter"])
    assert _problems("off", off, off, mode="disable") == []


@pytest.mark.parametrize("state,before,after,mode,att,runs,needle", [
    ("on", _snap(written=510), _snap(written=510), "remove", 15, 1000, "entries-written went 510 -> 510"),
    ("on", _snap(False), _snap(written=510), "remove", 15, 1000, "no instance"),
    ("on", _snap(written=0), _snap(written=9, enabled=["cifs:smb3_cmd_done", "sched:sched_switch"]),
     "remove", 15, 1000, "enabled events"),
    ("on", _snap(written=0), _snap(written=9, head=["sched_switch"]), "remove", 15, 1000, "head of trace"),
    ("on", _snap(written=0), _snap(written=9), "remove", 0, 0, "must stay attached"),
    ("off", _snap(False), _snap(written=3), "remove", 15, 1000, "the instance exists"),
    ("off", _snap(False, top="1"), _snap(False), "remove", 15, 1000, "top-level"),
    ("off", _snap(False), _snap(False), "remove", 15, 0, "must stay attached"),
    ("off", _snap(written=5, enabled=[]), _snap(written=6, enabled=[]), "disable", 15, 1000, "entries-written"),
    ("off", _snap(written=5), _snap(written=5), "disable", 15, 1000, "events enabled"),
])
def test_a_round_not_in_its_state_is_a_problem(state: str, before: Dict[str, Any], after: Dict[str, Any],
                                               mode: str, att: int, runs: int, needle: str) -> None:
    got = _problems(state, before, after, mode, att, runs)
    assert got and any(needle in p for p in got), got
    assert all(p.startswith("round 7:") for p in got)


def test_snapshot_reads_a_fake_instance(tmp_path: Path) -> None:
    inst = tmp_path / "instances" / "aodv2"
    (inst / "events").mkdir(parents=True)
    (tmp_path / "events" / "cifs").mkdir(parents=True)
    (tmp_path / "events" / "cifs" / "enable").write_text("0\n")
    (inst / "set_event").write_text("cifs:smb3_cmd_enter\ncifs:smb3_cmd_done\n")
    (inst / "trace").write_text(HEAD)
    rec = _guest().Recorder(str(tmp_path))
    snap = rec.snapshot()
    assert snap["instance"] and snap["top_cifs"] == "0" and (snap["in_buffer"], snap["written"]) == (1020, 1530)
    assert snap["enabled"] == ["cifs:smb3_cmd_done", "cifs:smb3_cmd_enter"]
    (inst / "trace").unlink()
    (inst / "set_event").unlink()
    (inst / "events").rmdir()
    inst.rmdir()
    gone = rec.snapshot()
    assert not gone["instance"] and gone["written"] is None and gone["head_events"] == []


def _recorder_json(tmp_path: Path, loss: float, noise: float, name: str = "overhead-recorder.json",
                   off: str = "remove") -> Path:
    g, rng = _guest(), random.Random(3)
    rounds = []
    for pair, state in g.abba(240):
        base = 1 + rng.gauss(0, noise)
        rounds.append({"pair": pair, "state": state, "seconds": base / (1 - loss) if state == "on" else base,
                       "bpf_runs": 1000, "bpf_run_time_ns": 10_000_000})
    d = {**g.summarize(rounds), "compare": "recorder", "kernel": "test", "files_per_round": 14,
         "trace_entries_per_on_round": 510.0, "recorder_off": off}
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_recorder_row_is_6r_against_2_percent(tmp_path: Path) -> None:
    rows = fig_tracer.overhead_rows(str(_recorder_json(tmp_path, 0.01, 0.01)), "6r", "recorder")
    assert [r.fig for r in rows] == ["6r"]  # no 6b: bpf_stats does not see ftrace
    r = rows[0]
    assert r.ok is True and r.target == "<= 2% loss" and "added by the trace recorder" in r.value
    assert r.baseline.startswith("recorder off, tracer attached") and "510 cifs trace entries" in r.note
    miss = fig_tracer.overhead_rows(str(_recorder_json(tmp_path, 0.03, 0.01)), "6r", "recorder")[0]
    assert miss.ok is False  # resolved, 3% > 2%: a MISS (it would pass figure 6's 3%)
    wide = fig_tracer.overhead_rows(str(_recorder_json(tmp_path, 0.01, 0.4)), "6r", "recorder")[0]
    assert wide.ok is None and "> 2%" in wide.value
    assert "removed/applied" in r.note
    kept = fig_tracer.overhead_rows(str(_recorder_json(tmp_path, 0.01, 0.01, off="disable")), "6r", "recorder")[0]
    assert "events disabled/enabled" in kept.note and "removed/applied" not in kept.note


def test_recorder_json_is_not_figure_6_and_rows_find_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _recorder_json(tmp_path, 0.01, 0.01)
    monkeypatch.setenv("AOD_VM_OVERHEAD", str(p))
    assert fig_tracer.find_overhead() is None
    monkeypatch.setenv("AOD_VM_OVERHEAD_RECORDER", str(p))
    rows = [r for r in fig_tracer.recorder_rows() if r.fig == "6r"]
    assert len(rows) == 1 and rows[0].ok is True
    monkeypatch.setenv("AOD_VM_OVERHEAD_RECORDER", str(tmp_path / "absent.json"))
    rows = [r for r in fig_tracer.recorder_rows() if r.fig == "6r"]
    assert len(rows) == 1 and rows[0].ok is None and "not measured" in rows[0].value
