"""Config tracer.mode (auto | tracepoint | kprobe) and --force-kprobes: the attach plan, the tracer
run, its state file, a reload that changes the mode, and `aodv2 status`. Host only: no bcc."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import btfkit
import pytest
from test_tracer import KALLSYMS_5, KALLSYMS_60, Harness, _wait_ready, make_cifs_events

from aod import status, tracer, tracerargs, tracerstate

BOTH = {"smb3_cmd_enter": "", "smb3_cmd_done": "", "smb3_cmd_err": ""}


# ---------------------------------------------------------------- the plan


def test_auto_is_todays_behaviour() -> None:
    assert tracer.plan_smb(BOTH, KALLSYMS_60, "6.1.0", mode="auto").mode == "tracepoint"
    assert tracer.plan_smb({"smb3_cmd_done": ""}, KALLSYMS_60, "6.1.0", mode="auto").mode == "kprobe"
    assert tracer.plan_smb(BOTH, KALLSYMS_60, "6.1.0") == tracer.plan_smb(BOTH, KALLSYMS_60, "6.1.0", mode="auto")


def test_kprobe_mode_forces_the_fallback() -> None:
    p = tracer.plan_smb(BOTH, KALLSYMS_60, "6.1.0", mode="kprobe")
    assert p.mode == "kprobe" and ("kprobe", "__release_mid", "aod_release") in p.kprobes
    assert p.tracepoints == ("cifs:smb3_cmd_err",) and "AOD_KPROBE_MODE=1" in p.defines
    assert any(n.startswith("kprobe fallback (tracer.mode kprobe): ") for n in p.notes)
    with pytest.raises(tracer.SetupError) as ei:  # forced, and no symbols: says the tracepoints were not used
        tracer.plan_smb(BOTH, "", "6.1.0", mode="kprobe")
    assert ei.value.code == tracer.EX_CONFIG and "not used (tracer.mode kprobe)" in str(ei.value)


def test_tracepoint_mode_requires_them_and_names_what_is_missing() -> None:
    assert tracer.plan_smb(BOTH, KALLSYMS_60, "6.1.0", mode="tracepoint").mode == "tracepoint"
    for tps, want in (({}, "cifs:smb3_cmd_enter (not offered by this kernel) and cifs:smb3_cmd_done (not "
                           "offered by this kernel)"),
                      ({"smb3_cmd_enter": "format lacks mid", "smb3_cmd_done": ""},
                       "cifs:smb3_cmd_enter (format lacks mid)")):
        with pytest.raises(tracer.SetupError) as ei:
            tracer.plan_smb(tps, KALLSYMS_60, "6.1.0", mode="tracepoint")  # the kprobes exist: not used
        assert ei.value.code == tracer.EX_CONFIG
        assert str(ei.value) == (f"tracer.mode is tracepoint, but this kernel lacks {want}; set tracer.mode to "
                                 "auto (or kprobe) to use the kprobe fallback")


def test_force_kprobes_overrides_tracer_mode() -> None:
    assert tracer.plan_smb(BOTH, KALLSYMS_60, "6.1.0", force_kprobes=True, mode="tracepoint").mode == "kprobe"
    assert tracerargs.parse_args(["smb", "--force-kprobes"]).force_kprobes
    assert "tracer.mode: kprobe" in tracerargs.parser().format_help().replace("\n", " ").replace("  ", " ")


# ---------------------------------------------------------------- the tracer run


def _run_once(h: Harness, config: str, opts: tracer.Options | None = None) -> int:
    (h.tmp / "config.yaml").write_text((h.tmp / "config.yaml").read_text() + config)
    env = h.env()
    env.sleep = lambda t: bool(h.loads)  # poll while waiting for cifs, stop right after attaching
    return tracer.run(opts or h.opts(), env)


def test_run_in_kprobe_mode_although_the_tracepoints_exist(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    make_cifs_events(h.tracefs)
    (tmp_path / "kallsyms").write_text(KALLSYMS_60)
    assert _run_once(h, "tracer: {mode: kprobe}\n") == tracer.EX_OK
    flags, plan = h.loads[0][1], h.loads[0][2]
    assert plan.mode == "kprobe" and "-DAOD_KPROBE_MODE=1" in flags
    d = json.loads((h.state_dir / "tracer-smb.json").read_text())
    assert (d["mode"], d["mode_config"]) == ("kprobe", "kprobe")


def test_run_with_force_kprobes_says_so_in_the_state(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    make_cifs_events(h.tracefs)
    (tmp_path / "kallsyms").write_text(KALLSYMS_60)
    opts = tracer.Options("smb", config=str(tmp_path / "config.yaml"), bpf_dir=h.opts().bpf_dir,
                          force_kprobes=True)
    assert _run_once(h, "tracer: {mode: tracepoint}\n", opts) == tracer.EX_OK
    assert h.loads[0][2].mode == "kprobe"
    d = json.loads((h.state_dir / "tracer-smb.json").read_text())
    assert (d["mode"], d["mode_config"]) == ("kprobe", "kprobe (--force-kprobes)")


def test_run_in_tracepoint_mode_on_a_kernel_without_them_exits_78(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (tmp_path / "module-cifs").mkdir()  # cifs loaded, no tracepoints; the kprobe symbols exist
    (tmp_path / "kallsyms").write_text(KALLSYMS_5)
    assert _run_once(h, "tracer: {mode: tracepoint}\n") == tracer.EX_CONFIG and not h.loads
    failed = [s for s in h.notifier.sent if s.startswith("STATUS=failed")]
    assert failed and "tracer.mode is tracepoint" in failed[0] and "smb3_cmd_enter" in failed[0]


def test_run_reads_the_cifs_btf(tmp_path: Path) -> None:
    """The tracer's kprobe choice comes from env.btf_dir: a backported (server, mid) __release_mid on
    a kernel whose version says 6.1 is read from argument 1."""
    h = Harness(tmp_path)
    (tmp_path / "module-cifs").mkdir()
    (tmp_path / "kallsyms").write_text(KALLSYMS_60)
    btfkit.server_mid_kernel().write(tmp_path / "btf")
    assert _run_once(h, "") == tracer.EX_OK
    flags = h.loads[0][1]
    assert "-DAOD_RELEASE_ARG=1" in flags and "-DAOD_RELEASE_OFF=0" in flags


def test_reload_that_changes_the_mode_says_a_restart_applies_it(tmp_path: Path,
                                                               records: list[logging.LogRecord]) -> None:
    h = Harness(tmp_path)
    make_cifs_events(h.tracefs)
    cfg = tmp_path / "config.yaml"
    base = cfg.read_text()
    env = h.env()
    t = threading.Thread(target=lambda: tracer.run(h.opts(), env), daemon=True)
    t.start()
    try:
        assert h.attached.wait(10)
        _wait_ready(h, 0, "READY=1 STATUS=attached")

        def reload(text: str) -> list[str]:
            cfg.write_text(base + text)
            before, n = len(h.notifier.sent), len(records)
            env.reload.set()
            _wait_ready(h, before)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any("reloaded" in r.getMessage() for r in records[n:]):
                time.sleep(0.01)
            return [r.getMessage() for r in records[n:] if "tracer.mode" in r.getMessage()]

        said = reload("tracer: {mode: kprobe}\n")
        assert said == ["AOD tracer smb: tracer.mode is now kprobe (was auto); it applies when the tracer "
                        "attaches: still in tracepoint mode until 'systemctl restart aodv2-tracer@smb'"]
        assert reload("tracer: {mode: kprobe}\n") == []  # said once per change
        assert reload("") == ["AOD tracer smb: tracer.mode is back to auto, as when the tracer attached "
                              "(tracepoint mode)"]
        assert len(h.loads) == 1  # nothing re-attached
        d = tracerstate.read_detail(str(h.state_dir), "smb")
        assert (d["mode"], d["mode_config"]) == ("tracepoint", "auto")
    finally:
        h.stop.set()
        t.join(10)


# ---------------------------------------------------------------- status


def test_status_shows_the_mode_each_tracer_attached_in(tmp_path: Path) -> None:
    assert tracerstate.write_state(str(tmp_path), "smb", "attached",
                                   {"mode": "kprobe", "mode_config": "kprobe (--force-kprobes)"}) is None
    assert tracerstate.write_state(str(tmp_path), "other", "attached", {"mode": "bad\x1b[0m", "mode_config": 5}) is None
    details = status.tracer_details(str(tmp_path), ["smb", "other"])
    assert details == {"smb": {"mode": "kprobe", "mode_config": "kprobe (--force-kprobes)"}, "other": {}}
    text = status.format_text({"tracer_detail": details}, "running", "")
    assert "  tracer smb attached in kprobe mode (tracer.mode kprobe (--force-kprobes))" in text.splitlines()
    assert "other attached in" not in text
