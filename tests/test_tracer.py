"""aod/tracer.py and aod/kallsyms.py on the host: no root, bcc or kernel needed."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from aod import config as config_mod
from aod import kallsyms, tracer
from aod.record import CMD_STATS_DTYPE, EVENT_SIZE

ROOT = Path(__file__).resolve().parent.parent
BPF = ROOT / "bpf"

CMD_DONE_FORMAT = """name: smb3_cmd_done
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__u32 tid;\toffset:8;\tsize:4;\tsigned:0;
\tfield:__u64 sesid;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__u16 cmd;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u64 mid;\toffset:32;\tsize:8;\tsigned:0;

print fmt: "sid=0x%llx tid=0x%x cmd=%u mid=%llu", REC->sesid, REC->tid, REC->cmd, REC->mid
"""
CMD_ERR_FORMAT = CMD_DONE_FORMAT.replace(
    "\tfield:__u64 mid;\toffset:32;\tsize:8;\tsigned:0;\n",
    "\tfield:__u64 mid;\toffset:32;\tsize:8;\tsigned:0;\n"
    "\tfield:__u32 status;\toffset:40;\tsize:4;\tsigned:0;\n"
    "\tfield:int rc;\toffset:44;\tsize:4;\tsigned:1;\n",
)
RECONNECT_FORMAT = """format:
\tfield:__u64 currmid;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u64 conn_id;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] hostname;\toffset:24;\tsize:4;\tsigned:0;
"""


def make_cifs_events(root: Path, names: tuple[str, ...] = ("smb3_cmd_enter", "smb3_cmd_done",
                                                             "smb3_cmd_err", "smb3_reconnect")) -> Path:
    ev = root / "events" / "cifs"
    for n in names:
        (ev / n).mkdir(parents=True, exist_ok=True)
        text = {"smb3_cmd_err": CMD_ERR_FORMAT, "smb3_reconnect": RECONNECT_FORMAT}.get(n, CMD_DONE_FORMAT)
        (ev / n / "format").write_text(text)
    return ev


# ---------------------------------------------------------------- arguments


def test_parse_args_defaults() -> None:
    o = tracer.parse_args(["smb"])
    assert o.name == "smb" and o.config == config_mod.DEFAULT_CONFIG_PATH
    assert o.bpf_dir is None and o.pin_dir is None and not o.force_kprobes


def test_parse_args_options() -> None:
    o = tracer.parse_args(["synthetic", "--config", "/x.yaml", "--bpf-dir", "/b",
                           "--pin-dir", "/sys/fs/bpf/t", "--pid", "123", "--kind", "error",
                           "--status", "0xC0000022", "--errno", "13", "--latency-ms", "250"])
    assert (o.name, o.config, o.bpf_dir, o.pin_dir) == ("synthetic", "/x.yaml", "/b", "/sys/fs/bpf/t")
    assert (o.synth_pid, o.synth_kind, o.synth_status, o.synth_errno, o.synth_latency_ms) == (
        123, "error", 0xC0000022, 13, 250.0)


@pytest.mark.parametrize("argv", [[], ["afp"], ["smb", "--pid", "5"], ["synthetic", "--force-kprobes"],
                                  ["smb", "--bogus"], ["synthetic", "--pid", "x"],
                                  ["synthetic", "--pid", "-1"]])
def test_parse_args_rejects(argv: list[str]) -> None:
    with pytest.raises(tracer.SetupError) as ei:
        tracer.parse_args(argv)
    assert ei.value.code == tracer.EX_USAGE


def test_main_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert tracer.main(["nope"]) == tracer.EX_USAGE
    assert "unknown tracer" in capsys.readouterr().err


def test_default_bpf_dir_is_checkout() -> None:
    assert tracer.default_bpf_dir() == str(BPF)


# ---------------------------------------------------------------- config -> cflags


def _flags(cfg: config_mod.Config, name: str = "smb", **kw: Any) -> dict[str, str]:
    opts = tracer.Options(name, **kw)
    paths = tracer.pin_paths(cfg.ring)
    out = {}
    for f in tracer.cflags(opts, cfg, paths, "/b", ("AOD_HAVE_X=1",)):
        k, _, v = f[2:].partition("=")
        out[f[:2] + k] = v
    return out


def test_cflags_from_config() -> None:
    cfg = config_mod.load_text(
        "latency:\n  mode: excludeonly\n  default_threshold_ms: 300\n  thresholds_ms: {WRITE: 120}\n"
        "  emergency_threshold_ms: 2000\nring:\n  path: /sys/fs/bpf/aodv2/events\n  size_kb: 8192\n")
    f = _flags(cfg)
    assert f["-I/b"] == ""
    assert f["-DAOD_TRACER_ID"] == "1"
    assert "-DAOD_EMIT_MIN_NS" not in f and "-DAOD_EMIT_CMD_MASK" not in f  # a map now: reload never rebuilds
    assert tracer.tracerlive.applied(cfg)["emit_min_ns"] == 120_000_000
    assert f["-DAOD_RING_PAGES"] == str(8192 * 1024 // 4096)
    assert f["-DAOD_RING_PIN"] == '"/sys/fs/bpf/aodv2/events"'
    assert f["-DAOD_DROPS_PIN"] == '"/sys/fs/bpf/aodv2/drops"'
    assert f["-DAOD_STATS_PIN"] == '"/sys/fs/bpf/aodv2/cmd_stats_v2"'  # layout 2: a name of its own
    assert f["-DAOD_IGNORED_PIN"] == '"/sys/fs/bpf/aodv2/ignored_status"'
    assert f["-DAOD_HAVE_X"] == "1"
    for pin in ("inflight_v1", "hung_v1", "servers_v1", "trees_v1", "conns_v1", "emit_cfg_v1"):
        assert f[f"-DAOD_{pin[:-3].upper()}_PIN"] == f'"/sys/fs/bpf/aodv2/{pin}"', pin
    mask = tracer.emit_cmd_mask(cfg.latency)
    assert not mask & (1 << 15)  # CHANGE_NOTIFY excluded by default
    assert mask & (1 << 9) and mask & (1 << 31)


def test_emit_cmd_mask_trackonly() -> None:
    lat = config_mod.load_text("latency: {mode: trackonly, track: [READ, WRITE]}\n").latency
    assert tracer.emit_cmd_mask(lat) == (1 << 8) | (1 << 9)


def test_cflags_synthetic() -> None:
    f = _flags(config_mod.Config(), "synthetic", synth_pid=42, synth_kind="error", synth_status=0xC0000022,
               synth_latency_ms=1.5)
    assert f["-DAOD_TRACER_ID"] == "2"
    assert f["-DAOD_SYNTH_PID"] == "42" and f["-DAOD_SYNTH_KIND"] == "2"
    assert f["-DAOD_SYNTH_STATUS"] == "0xc0000022U" and f["-DAOD_SYNTH_LATENCY_NS"] == "1500000ULL"
    assert "-DAOD_EMIT_MIN_NS" not in f and "-DAOD_IGNORED_PIN" not in f


def test_pin_paths_override_and_validation() -> None:
    ring = config_mod.RingConfig(path="/sys/fs/bpf/aodv2/events")
    p = tracer.pin_paths(ring, "/sys/fs/bpf/other/")
    assert (p.dir, p.ring, p.drops, p.cmd_stats, p.ignored) == (
        "/sys/fs/bpf/other", "/sys/fs/bpf/other/events", "/sys/fs/bpf/other/drops",
        "/sys/fs/bpf/other/cmd_stats_v2", "/sys/fs/bpf/other/ignored_status")
    assert not any("." in os.path.basename(x) for x in (p.ring, p.drops, p.cmd_stats, p.ignored))  # bpffs: EPERM
    for bad in ('/sys/fs/bpf/a"b', "/sys/fs/bpf/a b", "/sys/fs/bpf/x\\y"):
        with pytest.raises(tracer.SetupError) as ei:
            tracer.pin_paths(ring, bad)
        assert ei.value.code == tracer.EX_CONFIG


def test_ring_pages() -> None:
    assert tracer.ring_pages(4096, 4096) == 1024
    for bad in (3, 6, 2):
        with pytest.raises(tracer.SetupError):
            tracer.ring_pages(bad, 4096)


# ---------------------------------------------------------------- bpffs mount check


MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "25 22 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n"
    "36 25 0:31 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700\n"
    "40 22 0:40 / /tmp/with\\040space rw - bpf none rw\n"
)


def test_bpffs_mount() -> None:
    assert tracer.bpffs_mount("/sys/fs/bpf/aodv2", MOUNTINFO) == "/sys/fs/bpf"
    assert tracer.bpffs_mount("/sys/fs/bpf", MOUNTINFO) == "/sys/fs/bpf"
    assert tracer.bpffs_mount("/sys/fs/bpfx/a", MOUNTINFO) is None  # a sysfs path, not bpffs
    assert tracer.bpffs_mount("/tmp/with space/a", MOUNTINFO) == "/tmp/with space"
    assert tracer.bpffs_mount("/sys/fs/bpf/a", MOUNTINFO.replace(" - bpf bpf", " - tmpfs tmpfs")) is None


def test_prepare_pin_dir(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(f"1 0 0:1 / {tmp_path} rw - bpf bpf rw\n")
    paths = tracer.pin_paths(config_mod.RingConfig(path=f"{tmp_path}/aodv2/events"))
    tracer.prepare_pin_dir(paths, str(mi))
    assert os.stat(paths.dir).st_mode & 0o777 == 0o700
    mi.write_text(f"1 0 0:1 / {tmp_path} rw - tmpfs tmpfs rw\n")
    with pytest.raises(tracer.SetupError) as ei:
        tracer.prepare_pin_dir(paths, str(mi))
    assert ei.value.code == tracer.EX_OSERR and "mount -t bpf" in str(ei.value)


# ---------------------------------------------------------------- tracefs, kallsyms, plan


def test_parse_format() -> None:
    f = tracer.parse_format(CMD_ERR_FORMAT)
    assert f["tid"] == "__u32" and f["mid"] == "__u64" and f["rc"] == "int" and f["status"] == "__u32"
    assert tracer.parse_format(RECONNECT_FORMAT)["hostname"] == "__data_loc char"


def test_usable_tracepoints(tmp_path: Path) -> None:
    ev = make_cifs_events(tmp_path)
    (ev / "smb3_cmd_enter" / "format").write_text(CMD_DONE_FORMAT.replace(" cmd;", " command;"))
    got = tracer.usable_tracepoints(str(ev), tracer.SMB_TRACEPOINTS)
    assert got["smb3_cmd_done"] == "" and got["smb3_cmd_err"] == "" and got["smb3_reconnect"] == ""
    assert "cmd" in got["smb3_cmd_enter"]
    assert "smb3_ses_expired" not in got


KALLSYMS_60 = """ffffffffc0a00000 t smb2_mid_entry_alloc\t[cifs]
ffffffffc0a00100 T __release_mid\t[cifs]
ffffffffc0a00200 t release_mid\t[cifs]
ffffffff81000000 T _stext
"""
KALLSYMS_5 = """0000000000000000 t smb2_mid_entry_alloc [cifs]
0000000000000000 T _cifs_mid_q_entry_release [cifs]
0000000000000000 T cifs_mid_q_entry_release [cifs]
"""


def test_choose_release() -> None:
    assert kallsyms.choose_release(KALLSYMS_60, "6.1.0-18-amd64") == kallsyms.ReleaseProbe(
        "__release_mid", 0, 16)
    assert kallsyms.choose_release(KALLSYMS_60, "6.19.0") == kallsyms.ReleaseProbe("__release_mid", 1, 0)
    assert kallsyms.choose_release(KALLSYMS_5, "5.10.0-28-amd64") == kallsyms.ReleaseProbe(
        "_cifs_mid_q_entry_release", 0, 16)
    only_put = "0 T release_mid [cifs]\n"
    assert kallsyms.choose_release(only_put, "6.5.0") == kallsyms.ReleaseProbe("release_mid", 0, 0)
    other_mod = "0 T __release_mid [other]\n0 T smb2_mid_entry_alloc [other]\n"
    assert kallsyms.choose_release(other_mod, "6.1.0") is None
    assert kallsyms.choose_kprobes(other_mod, "6.1.0") is None
    data_sym = "0 d __release_mid [cifs]\n"  # not a function
    assert kallsyms.choose_release(data_sym, "6.1.0") is None
    builtin = "0 T smb2_mid_entry_alloc\n0 T __release_mid\n"
    assert kallsyms.choose_kprobes(builtin, "6.2.0") == kallsyms.KprobePlan(
        "smb2_mid_entry_alloc", kallsyms.ReleaseProbe("__release_mid", 0, 16))
    assert kallsyms.choose_kprobes("0 T __release_mid [cifs]\n", "6.2.0") is None  # no alloc symbol
    assert kallsyms.kernel_version("garbage") == (0, 0)


def test_plan_smb_tracepoints() -> None:
    tps = {"smb3_cmd_enter": "", "smb3_cmd_done": "", "smb3_cmd_err": "", "smb3_reconnect": "bad"}
    p = tracer.plan_smb(tps, None, "6.1.0")
    assert p.mode == "tracepoint"
    assert p.tracepoints == ("cifs:smb3_cmd_enter", "cifs:smb3_cmd_done", "cifs:smb3_cmd_err",
                             "syscalls:sys_enter_getppid")  # the aging trigger
    assert "AOD_HAVE_SMB3_CMD_ERR=1" in p.defines and not any("RECONNECT" in d for d in p.defines)
    assert any("smb3_reconnect" in n for n in p.notes)
    assert p.optional_kprobes == () and "AOD_CONN_PROBES=1" not in p.defines  # no kallsyms: no conn probes
    assert any("paired without their connection" in n for n in p.notes)


def test_plan_smb_connection_probes() -> None:
    tps = {"smb3_cmd_enter": "", "smb3_cmd_done": ""}
    both = KALLSYMS_60 + "0 t __smb2_find_mid\t[cifs]\n0 t smb2_find_mid\t[cifs]\n"
    p = tracer.plan_smb(tps, both, "6.1.0")
    assert p.mode == "tracepoint" and p.kprobes == () and "AOD_CONN_PROBES=1" in p.defines
    assert p.optional_kprobes == (("kprobe", "smb2_mid_entry_alloc", "aod_conn_alloc"),
                                  ("kprobe", "__smb2_find_mid", "aod_conn_recv"))
    old = tracer.plan_smb(tps, KALLSYMS_60 + "0 t smb2_find_mid [cifs]\n", "5.10.0")  # before __smb2_find_mid
    assert old.optional_kprobes[1] == ("kprobe", "smb2_find_mid", "aod_conn_recv")
    assert kallsyms.choose_conn_probes("0 t __smb2_find_mid [cifs]\n") is None  # no alloc symbol
    assert kallsyms.choose_conn_probes("0 t __smb2_find_mid [nfs]\n0 t smb2_mid_entry_alloc [cifs]\n") is None


class FakeBcc:
    """bcc.BPF stand-in for bcc_load: records attaches; `refuse` symbols fail like bcc does."""

    def __init__(self, refuse: tuple[str, ...]) -> None:
        self.refuse, self.attached = refuse, []  # type: ignore[var-annotated]
        outer = self

        class BPF:
            def __init__(self, src_file: bytes, cflags: list) -> None:
                pass

            def attach_kprobe(self, event: str, fn_name: str) -> None:
                if event in outer.refuse:
                    raise Exception(f"Failed to attach BPF program b'{fn_name}' to kprobe b'{event}'")
                outer.attached.append(event)

            attach_kretprobe = attach_kprobe

            def num_open_tracepoints(self) -> int:
                return 2

        self.BPF = BPF


def test_optional_kprobes_that_fail_to_attach_are_reported_not_fatal(tmp_path: Path) -> None:
    plan = tracer.AttachPlan("tracepoint", ("cifs:smb3_cmd_enter", "cifs:smb3_cmd_done"),
                             optional_kprobes=(("kprobe", "smb2_mid_entry_alloc", "aod_conn_alloc"),
                                               ("kprobe", "__smb2_find_mid", "aod_conn_recv")))
    fake = FakeBcc(refuse=("__smb2_find_mid",))
    loaded = tracer.bcc_load(fake, "x.c", [], plan, str(tmp_path / "ring"))
    assert fake.attached == ["smb2_mid_entry_alloc"] and loaded.kprobes == 1 and loaded.attached == 2
    assert len(loaded.failed) == 1 and loaded.failed[0].startswith("__smb2_find_mid: Failed to attach")
    required = tracer.AttachPlan("kprobe", (), kprobes=(("kprobe", "__smb2_find_mid", "aod_release"),))
    with pytest.raises(Exception, match="Failed to attach"):
        tracer.bcc_load(FakeBcc(refuse=("__smb2_find_mid",)), "x.c", [], required, str(tmp_path / "ring"))


def test_plan_smb_kprobe_fallback_and_none() -> None:
    p = tracer.plan_smb({"smb3_cmd_done": "", "smb3_cmd_err": ""}, KALLSYMS_60, "6.1.0")
    assert p.mode == "kprobe"
    assert ("kretprobe", "smb2_mid_entry_alloc", "aod_alloc_return") in p.kprobes
    assert ("kprobe", "__release_mid", "aod_release") in p.kprobes
    assert "AOD_KPROBE_MODE=1" in p.defines and "AOD_RELEASE_OFF=16" in p.defines
    assert p.tracepoints == ("cifs:smb3_cmd_err",)  # done unused: its pair is missing
    forced = tracer.plan_smb({"smb3_cmd_enter": "", "smb3_cmd_done": ""}, KALLSYMS_60, "6.1.0",
                             force_kprobes=True)
    assert forced.mode == "kprobe"
    with pytest.raises(tracer.SetupError) as ei:
        tracer.plan_smb({}, "", "4.9.0")
    assert ei.value.code == tracer.EX_CONFIG


# ---------------------------------------------------------------- waiting and run()


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str = "") -> None:
        self.sent.append(f"READY=1 STATUS={status}")

    def status(self, text: str) -> None:
        self.sent.append(f"STATUS={text}")

    def stopping(self) -> None:
        self.sent.append("STOPPING=1")

    def reloading(self) -> None:
        self.sent.append("RELOADING=1")


class FakeLoaded(tracer.Loaded):
    closed = False

    def close(self) -> None:
        self.closed = True


class FakeTable:
    """bcc's HashTable of u32 -> u32 as pins.sync_ignored uses it (keys, set, del by ctypes key)."""

    Key = ctypes.c_uint32
    Leaf = ctypes.c_uint32

    def __init__(self) -> None:
        self.d: dict[int, int] = {}
        self.ops: list[tuple[str, int]] = []

    def keys(self) -> list[ctypes.c_uint32]:
        return [ctypes.c_uint32(k) for k in self.d]

    def __setitem__(self, k: ctypes.c_uint32, v: ctypes.c_uint32) -> None:
        self.d[k.value] = v.value
        self.ops.append(("set", k.value))

    def __delitem__(self, k: ctypes.c_uint32) -> None:
        if k.value not in self.d:
            raise KeyError(k.value)
        del self.d[k.value]
        self.ops.append(("del", k.value))


class EmitCfg(ctypes.Structure):
    _fields_ = [("emit_min_ns", ctypes.c_uint64), ("cmd_mask", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class FakeArray:
    """bcc's array table of struct aod_emit_cfg (emit_cfg_v1): writes recorded."""

    Key = ctypes.c_uint32
    Leaf = EmitCfg

    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []

    def __setitem__(self, k: ctypes.c_uint32, v: EmitCfg) -> None:
        assert k.value == 0
        self.writes.append((v.emit_min_ns, v.cmd_mask))


class ProcKey(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("name", ctypes.c_char * 28)]  # struct aod_nfs_proc


class FakeProcs(dict):  # type: ignore[type-arg]
    """bcc's hash of struct aod_nfs_proc -> u16 (the nfs program's `procs`)."""

    Key = ProcKey
    Leaf = ctypes.c_uint16

    def __setitem__(self, k: ProcKey, v: ctypes.c_uint16) -> None:
        super().__setitem__((k.version, k.name), v.value)


class FakeBPF:
    """A loaded program's tables; the pinned ones are shared by every load (as bcc opens the pin)."""

    def __init__(self, pinned: dict[str, Any]) -> None:
        self.pinned = pinned

    def get_table(self, name: str) -> Any:
        new = {"emit_cfg": FakeArray, "procs": FakeProcs}.get(name, FakeTable)
        return self.pinned.setdefault(name, new())


class Harness:
    """A run() environment in tmp_path with counted sleeps and a recording loader."""

    def __init__(self, tmp_path: Path, *, bcc_missing: bool = False) -> None:
        self.tmp = tmp_path
        (tmp_path / "bpffs").mkdir()
        (tmp_path / "mountinfo").write_text(f"1 0 0:1 / {tmp_path}/bpffs rw - bpf bpf rw\n")
        (tmp_path / "config.yaml").write_text(f"ring: {{path: {tmp_path}/bpffs/aodv2/events, size_kb: 64}}\n")
        (tmp_path / "kallsyms").write_text("")
        self.tracefs = tmp_path / "tracing"
        self.tracefs.mkdir()
        self.stop = threading.Event()
        self.sleeps = 0
        self.loads: list[tuple[str, list, tracer.AttachPlan]] = []
        self.loaded: Optional[FakeLoaded] = None
        self.pinned: dict[str, Any] = {}
        self.state_dir = tmp_path / "run"
        self.state_dir.mkdir()
        self.aging_factory: Any = None
        self.attached = threading.Event()
        self.notifier = FakeNotifier()
        self.bcc_missing = bcc_missing

    def sleep(self, t: float) -> bool:
        self.sleeps += 1
        return self.stop.wait(min(t, 0.02))

    def import_bcc(self) -> Any:
        if self.bcc_missing:
            raise ImportError("No module named 'bcc'")
        return object()

    def load(self, bcc: Any, source: str, flags: list, plan: tracer.AttachPlan, ring: str) -> tracer.Loaded:
        self.loads.append((source, flags, plan))
        self.sleeps_at_load = self.sleeps
        self.loaded = FakeLoaded(FakeBPF(self.pinned), len(plan.tracepoints))
        self.attached.set()
        return self.loaded

    def env(self) -> tracer.Env:
        return tracer.Env(
            tracefs=(str(self.tracefs),), module_dir=str(self.tmp / "module-cifs"),
            kallsyms=str(self.tmp / "kallsyms"), mountinfo=str(self.tmp / "mountinfo"), release="6.1.0",
            btf_dir=str(self.tmp / "btf"),  # none: the kprobe choice by symbol and version (test_btf.py has BTF)
            page_size=4096, stop=self.stop, sleep=self.sleep, poll_sec=0.02, import_bcc=self.import_bcc,
            load=self.load, check_pinned=lambda p, n, name: [], create_pins=lambda p, n, name: [],
            notifier=self.notifier,
            state_dir=str(self.state_dir), aging_factory=self.aging_factory,
            trigger_tgid=lambda events_dir: (os.getpid(), ""))  # as in the host pid namespace

    def opts(self, name: str = "smb") -> tracer.Options:
        return tracer.Options(name, config=str(self.tmp / "config.yaml"), bpf_dir=str(BPF))


def test_wait_until_does_not_spin() -> None:
    stop = threading.Event()
    calls = {"ready": 0, "sleep": 0, "wait": 0}

    def ready() -> Optional[str]:
        calls["ready"] += 1
        return "ok" if calls["ready"] == 4 else None

    def sleep(t: float) -> bool:
        assert t == 1.5
        calls["sleep"] += 1
        return False

    def on_wait() -> None:
        calls["wait"] += 1

    assert tracer.wait_until(ready, stop, sleep, 1.5, on_wait) == "ok"
    assert calls == {"ready": 4, "sleep": 3, "wait": 1}  # one sleep between polls, status once


def test_wait_until_stopped() -> None:
    stop = threading.Event()
    assert tracer.wait_until(lambda: None, stop, lambda t: True, 1.0) is None


def test_run_waits_for_cifs_then_attaches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path)
    polls = []
    real_find = tracer.find_events_dir

    def counting_find(*a: Any, **kw: Any) -> Optional[str]:
        polls.append(h.sleeps)
        return real_find(*a, **kw)

    monkeypatch.setattr(tracer, "find_events_dir", counting_find)
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", tracer.run(h.opts(), h.env())))
    t.start()
    # the tracer is waiting: nothing loaded, STATUS says so
    deadline = threading.Event()
    while h.sleeps < 3 and not deadline.wait(0.01):
        pass
    assert not h.loads
    assert h.notifier.sent == ["READY=1 STATUS=waiting for cifs tracepoints"]  # started: boot need not wait
    sleeps_before = h.sleeps
    make_cifs_events(h.tracefs)  # "modprobe cifs"
    assert h.attached.wait(10)
    h.stop.set()
    t.join(10)
    assert result["rc"] == tracer.EX_OK
    assert h.loaded is not None and h.loaded.closed
    source, flags, plan = h.loads[0]
    assert source.endswith("smb.bpf.c") and plan.mode == "tracepoint"
    assert "-DAOD_HAVE_SMB3_CMD_ENTER=1" in flags
    assert f'-DAOD_RING_PIN="{tmp_path}/bpffs/aodv2/events"' in flags
    assert "-DAOD_RING_PAGES=16" in flags
    assert any(s.startswith("READY=1 STATUS=attached (5 tracepoints") for s in h.notifier.sent)  # + aging trigger
    assert h.notifier.sent[-1] == "STOPPING=1"
    # not a busy loop: exactly one sleep between consecutive polls of tracefs
    assert len(polls) >= 4 and polls == list(range(len(polls)))
    assert h.sleeps_at_load == len(polls) - 1 >= sleeps_before
    assert os.stat(tmp_path / "bpffs" / "aodv2").st_mode & 0o777 == 0o700


def test_run_stopped_while_waiting(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.stop.set()
    assert tracer.run(h.opts(), h.env()) == tracer.EX_OK and not h.loads


def test_run_old_kernel_without_anything(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (tmp_path / "module-cifs").mkdir()  # module loaded, no cifs tracepoints, no kprobe symbols
    rc = tracer.run(h.opts(), h.env())
    assert rc == tracer.EX_CONFIG and not h.loads
    assert any(s.startswith("STATUS=failed: cannot trace SMB") for s in h.notifier.sent)


def test_run_old_kernel_kprobes(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (tmp_path / "module-cifs").mkdir()
    (tmp_path / "kallsyms").write_text(KALLSYMS_5)
    t = threading.Thread(target=tracer.run, args=(h.opts(), h.env()))
    t.start()
    assert h.attached.wait(10)
    h.stop.set()
    t.join(10)
    plan = h.loads[0][2]
    assert plan.mode == "kprobe" and plan.kprobes[2][1] == "_cifs_mid_q_entry_release"


def test_run_bcc_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aod import log

    log.setup(force_stderr=True)
    h = Harness(tmp_path, bcc_missing=True)
    assert tracer.run(h.opts(), h.env()) == tracer.EX_UNAVAILABLE
    err = capsys.readouterr().err
    assert "python3-bpfcc" in err and "Traceback" not in err


def test_run_bad_config(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (tmp_path / "config.yaml").write_text("ring: {size_kb: 3}\n")
    assert tracer.run(h.opts(), h.env()) == tracer.EX_CONFIG


def test_run_no_bpffs(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (tmp_path / "mountinfo").write_text("1 0 0:1 / / rw - ext4 /dev/sda rw\n")
    assert tracer.run(h.opts(), h.env()) == tracer.EX_OSERR


def test_run_load_failure(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    make_cifs_events(h.tracefs)

    def boom(*a: Any) -> tracer.Loaded:
        raise Exception("Failed to compile BPF module")

    env = h.env()
    env.load = boom
    assert tracer.run(h.opts(), env) == tracer.EX_SOFTWARE


def test_run_synthetic_does_not_wait(tmp_path: Path) -> None:
    h = Harness(tmp_path)  # no cifs events at all: the synthetic tracer must not care
    env = h.env()
    env.sleep = lambda t: True  # stop right after attaching
    opts = tracer.Options("synthetic", config=str(tmp_path / "config.yaml"), bpf_dir=str(BPF), synth_pid=7)
    assert tracer.run(opts, env) == tracer.EX_OK
    source, flags, plan = h.loads[0]
    assert source.endswith("synthetic.bpf.c") and plan.tracepoints == ("syscalls:sys_enter_getppid",)
    assert "-DAOD_SYNTH_PID=7" in flags and "-DAOD_TRACER_ID=2" in flags


def test_run_nfs_waits_for_sunrpc_then_attaches_with_its_own_maps(tmp_path: Path) -> None:
    """The nfs front on the shared loader: it waits for events/sunrpc (the real 6.1 formats), pins its
    own maps beside the ring, loads the procedure names and applies the NFS view of the config."""
    h = Harness(tmp_path)
    (tmp_path / "config.yaml").write_text(f"ring: {{path: {tmp_path}/bpffs/aodv2/events, size_kb: 64}}\n"
                                          "nfs: {default_threshold_ms: 40, benign_statuses: [ENOENT, 10008]}\n")
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", tracer.run(h.opts("nfs"), h.env())))
    t.start()
    while h.sleeps < 3 and not h.stop.wait(0.01):
        pass
    assert not h.loads and h.notifier.sent == ["READY=1 STATUS=waiting for sunrpc tracepoints"]
    shutil.copytree(ROOT / "tests/fixtures/kernels/bookworm/events/sunrpc", h.tracefs / "events" / "sunrpc")
    assert h.attached.wait(10)
    h.stop.set()
    t.join(10)
    assert result["rc"] == tracer.EX_OK
    source, flags, plan = h.loads[0]
    assert source.endswith("nfs.bpf.c") and "-DAOD_TRACER_ID=4" in flags
    assert f'-DAOD_STATS_PIN="{tmp_path}/bpffs/aodv2/nfs_stats_v1"' in flags
    assert f'-DAOD_INFLIGHT_PIN="{tmp_path}/bpffs/aodv2/nfs_inflight_v1"' in flags
    assert "-DAOD_HAVE_XPRT_RETRANSMIT=1" in flags and "sunrpc:rpc_stats_latency" in plan.tracepoints
    assert not any("cmd_stats" in f or "SERVERS_PIN" in f for f in flags)  # nothing of the smb tracer's
    procs = h.pinned["procs"]
    assert procs[(3, b"READ")] == 0x0306 and procs[(4, b"SEQUENCE")] == 0x0429
    assert h.pinned["ignored_status"].d == {2: 1, 10008: 1}  # nfs.benign_statuses, not the NT statuses
    assert h.pinned["emit_cfg"].writes[0] == (40_000_000, 1 << 31)  # NFS codes: the last slot
    state = json.loads((h.state_dir / "tracer-nfs.json").read_text())
    assert state["state"] == "stopped" and state["health"]["attached"][0] == "rpc_task_complete"


# ---------------------------------------------------------------- the C side


def test_bpf_sources_use_the_shared_header() -> None:
    for src in ("smb.bpf.c", "synthetic.bpf.c", "nfs.bpf.c"):
        text = (BPF / src).read_text()
        assert '#include "aod_event.h"' in text
        assert "struct aod_event {" not in text  # never redefined
        assert 'section("maps/ringbuf:" AOD_RING_PIN)' in text
    smb = (BPF / "smb.bpf.c").read_text()
    for tp in tracer.SMB_TRACEPOINTS:
        assert f"#ifdef AOD_HAVE_{tp.upper()}" in smb and f"TRACEPOINT_PROBE(cifs, {tp})" in smb
    for _, _, fn in tracer.plan_smb({}, KALLSYMS_60, "6.1.0").kprobes:
        assert re.search(rf"\bint {fn}\(struct pt_regs \*ctx\)", smb)


# bcc stand-ins that make the BPF C an ordinary shared library: maps become arrays,
# the ring a capture buffer, the clock/task helpers test-controlled globals.
BCC_SIM = r"""
#include <stdint.h>
#include <string.h>
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;
typedef int32_t s32; typedef u8 __u8; typedef u16 __u16; typedef u32 __u32; typedef u64 __u64;
typedef s32 __s32;
#define PAGE_SIZE 4096
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
struct pt_regs { u64 di, si, ax; };
#define PT_REGS_PARM1(x) ((x)->di)
#define PT_REGS_PARM2(x) ((x)->si)
#define PT_REGS_RC(x) ((x)->ax)
u64 sim_now, sim_pid_tgid; char sim_comm[16]; int sim_ring_fail, sim_nevents;
void (*sim_delete_hook)(const char *); /* a test's stand-in for a concurrent user-space change */
u8 sim_events[256 * 72];
static u64 bpf_ktime_get_ns(void) { return sim_now; }
static u64 bpf_get_current_pid_tgid(void) { return sim_pid_tgid; }
static int bpf_get_current_comm(void *d, u32 n) { memcpy(d, sim_comm, n); return 0; }
static int bpf_probe_read(void *d, u32 n, const void *s) { memcpy(d, s, n); return 0; }
static int bpf_probe_read_kernel_str(void *d, u32 n, const void *s) { strncpy(d, s, n); ((char *)d)[n - 1] = 0;
  return (int)strlen(d) + 1; }
static u32 bpf_log2l(u64 v) { u32 r = 1; while (v >>= 1) r++; return r; } /* bcc: log2 + 1, and 1 for 0 */
static int sim_ringbuf_output(void *d, u64 n, u64 f) {
  if (sim_ring_fail || sim_nevents >= 256 || n != 72) return -11;
  memcpy(sim_events + 72 * sim_nevents++, d, n); return 0; }
#define ringbuf_output(a, b, c) max_entries * 0 + sim_ringbuf_output(a, b, c)
/* hash: update fails when full (-E2BIG); lru_hash: evicts the least recently used entry */
#define BPF_F_TABLE(_type, _k, _v, _name, _n, _f) \
  _k _name##_keys[_n]; _v _name##_vals[_n]; int _name##_used[_n]; u64 _name##_seen[_n], _name##_clock; \
  static _v *_name##_lookup(_k *k) { \
    if (strstr(_type, "array")) { u32 i = *(u32 *)k; return i < (u32)(_n) ? &_name##_vals[i] : 0; } \
    for (int i = 0; i < (_n); i++) \
      if (_name##_used[i] && !memcmp(&_name##_keys[i], k, sizeof(_k))) { \
        _name##_seen[i] = ++_name##_clock; return &_name##_vals[i]; } \
    return 0; } \
  static int _name##_update(_k *k, _v *v) { _v *p = _name##_lookup(k); \
    for (int i = 0; !p && i < (_n); i++) \
      if (!_name##_used[i]) { _name##_used[i] = 1; memcpy(&_name##_keys[i], k, sizeof(_k)); p = &_name##_vals[i]; \
        _name##_seen[i] = ++_name##_clock; } \
    if (!p && strstr(_type, "lru")) { int o = 0; \
      for (int i = 1; i < (_n); i++) if (_name##_seen[i] < _name##_seen[o]) o = i; \
      memcpy(&_name##_keys[o], k, sizeof(_k)); _name##_seen[o] = ++_name##_clock; p = &_name##_vals[o]; } \
    if (!p) { return -7; } \
    memcpy(p, v, sizeof(_v)); return 0; } \
  static int _name##_delete(_k *k) { if (sim_delete_hook) sim_delete_hook(_type); \
    for (int i = 0; i < (_n); i++) \
      if (_name##_used[i] && !memcmp(&_name##_keys[i], k, sizeof(_k))) { _name##_used[i] = 0; return 0; } \
    return -2; } \
  struct _name##_table_t { _v *(*lookup)(_k *); int (*update)(_k *, _v *); int (*delete)(_k *); }; \
  struct _name##_table_t _name = { _name##_lookup, _name##_update, _name##_delete }
#define BPF_TABLE(_t, _k, _v, _name, _n) BPF_F_TABLE(_t, _k, _v, _name, _n, 0)
#define BPF_TABLE_PINNED(_t, _k, _v, _name, _n, _p) BPF_F_TABLE(_t ":" _p, _k, _v, _name, _n, 0)
#define BPF_HASH(_name, _k, _v, _n) BPF_TABLE("hash", _k, _v, _name, _n)
#define BPF_PERCPU_ARRAY(_name, _v, _n) BPF_TABLE("percpu_array", u32, _v, _name, _n)
#define BPF_ARRAY(_name, _v, _n) BPF_TABLE("array", u32, _v, _name, _n)
/* every field any probe reads; __data_loc strings: offsets (from the record start) into data[] */
struct sim_args { u32 tid; u64 sesid; u16 cmd; u64 mid; u32 status; int rc; u64 currmid; u64 conn_id;
  u32 pid; u64 when_sent, when_received; int data_loc_hostname, data_loc_name;
  u32 task_id, client_id, xid; int version, ntrans; u64 execute; int data_loc_progname, data_loc_procname;
  char data[256]; };
#define TRACEPOINT_PROBE(cat, ev) int tracepoint__##cat##__##ev(struct sim_args *args)
"""


class SimArgs(ctypes.Structure):
    _fields_ = [("tid", ctypes.c_uint32), ("sesid", ctypes.c_uint64), ("cmd", ctypes.c_uint16),
                ("mid", ctypes.c_uint64), ("status", ctypes.c_uint32), ("rc", ctypes.c_int32),
                ("currmid", ctypes.c_uint64), ("conn_id", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("when_sent", ctypes.c_uint64), ("when_received", ctypes.c_uint64),
                ("data_loc_hostname", ctypes.c_int32), ("data_loc_name", ctypes.c_int32),
                ("task_id", ctypes.c_uint32), ("client_id", ctypes.c_uint32), ("xid", ctypes.c_uint32),
                ("version", ctypes.c_int32), ("ntrans", ctypes.c_int32), ("execute", ctypes.c_uint64),
                ("data_loc_progname", ctypes.c_int32), ("data_loc_procname", ctypes.c_int32),
                ("data", ctypes.c_char * 256)]


def sim_args(strings: Optional[dict[str, bytes]] = None, **kw: int) -> SimArgs:
    """SimArgs with __data_loc strings (hostname=b"srv", name=b"\\\\srv\\share") laid out in data[]."""
    a = SimArgs(**kw)
    pos = 0
    for field, text in (strings or {}).items():
        ctypes.memmove(ctypes.addressof(a) + SimArgs.data.offset + pos, text + b"\0", len(text) + 1)
        setattr(a, f"data_loc_{field}", ((len(text) + 1) << 16) | (SimArgs.data.offset + pos))
        pos += len(text) + 1
    return a


class PtRegs(ctypes.Structure):
    _fields_ = [("di", ctypes.c_uint64), ("si", ctypes.c_uint64), ("ax", ctypes.c_uint64)]


CC = shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")


class Sim:
    """bpf/<src> compiled against BCC_SIM and loaded with ctypes."""

    def __init__(self, tmp: Path, src: str, defines: list[str]) -> None:
        assert CC
        (tmp / "sim.h").write_text(BCC_SIM)
        for h in ("uapi/linux/ptrace.h", "linux/sched.h"):  # bcc's kernel includes: empty here
            (tmp / "inc" / h).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "inc" / h).write_text("")
        paths = tracer.pin_paths(config_mod.RingConfig())
        # the emit filter is the emit_cfg_v1 map now: AOD_EMIT_MIN_NS/AOD_EMIT_CMD_MASK here fill it
        emit = {d.split("=")[0]: int(d.split("=")[1].rstrip("UL"), 0) for d in defines if d.startswith("AOD_EMIT_")}
        defines = [d for d in defines if not d.startswith("AOD_EMIT_")]
        so = tmp / f"{src}.{abs(hash(tuple(defines)))}.so"
        argv = [CC, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-Wno-unused-function",
                "-include", str(tmp / "sim.h"), "-isystem", str(tmp / "inc"), f"-I{BPF}",
                f'-DAOD_RING_PIN="{paths.ring}"', f'-DAOD_DROPS_PIN="{paths.drops}"',
                f'-DAOD_STATS_PIN="{paths.cmd_stats}"', "-DAOD_INFLIGHT_MAX=64",
                *[f'-DAOD_{n}_PIN="{getattr(paths, n.lower())}"'
                  for n in ("INFLIGHT", "HUNG", "SERVERS", "TREES", "CONNS", "EMIT_CFG")],
                f'-DAOD_IGNORED_PIN="{paths.ignored}"', *[f"-D{d}" for d in defines], "-o", str(so), str(BPF / src)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)  # noqa: S603
        assert r.returncode == 0, r.stderr
        self.lib = ctypes.CDLL(str(so))
        self.now = ctypes.c_uint64.in_dll(self.lib, "sim_now")
        self.pid_tgid = ctypes.c_uint64.in_dll(self.lib, "sim_pid_tgid")
        self.ring_fail = ctypes.c_int.in_dll(self.lib, "sim_ring_fail")
        self.n = ctypes.c_int.in_dll(self.lib, "sim_nevents")
        self.buf = (ctypes.c_uint8 * (256 * 72)).in_dll(self.lib, "sim_events")
        if src == "smb.bpf.c":
            self.emit_cfg(emit.get("AOD_EMIT_MIN_NS", 0), emit.get("AOD_EMIT_CMD_MASK", 0xFFFFFFFF))

    def emit_cfg(self, min_ns: int, mask: int) -> None:
        """What the tracer's write_emit_cfg does to the pinned emit_cfg_v1 map."""
        raw = (ctypes.c_uint8 * 16).in_dll(self.lib, "emit_cfg_vals")
        struct.pack_into("<QII", raw, 0, min_ns, mask, 0)

    def table(self, name: str, n: int, key_size: int, value_size: int) -> tuple[Any, Any, Any]:
        """(keys, values, used) arrays of a simulated map, as ctypes byte arrays / ints."""
        keys = (ctypes.c_uint8 * (n * key_size)).in_dll(self.lib, f"{name}_keys")
        vals = (ctypes.c_uint8 * (n * value_size)).in_dll(self.lib, f"{name}_vals")
        used = (ctypes.c_int * n).in_dll(self.lib, f"{name}_used")
        return keys, vals, used

    def task(self, pid: int, comm: bytes) -> None:
        self.pid_tgid.value = (pid << 32) | (pid + 1)
        ctypes.memmove(ctypes.addressof(ctypes.c_char.in_dll(self.lib, "sim_comm")), comm.ljust(16, b"\0"), 16)

    def tp(self, event: str, strings: Optional[dict[str, bytes]] = None, system: str = "cifs", **kw: int) -> None:
        getattr(self.lib, f"tracepoint__{system}__{event}")(ctypes.byref(sim_args(strings, **kw)))

    def events(self) -> Any:
        import numpy as np

        from aod.record import EVENT_DTYPE

        return np.frombuffer(bytes(self.buf)[: 72 * self.n.value], dtype=EVENT_DTYPE).copy()

    def stats(self, slots: int = 32) -> Any:
        import numpy as np

        raw = (ctypes.c_uint8 * (CMD_STATS_DTYPE.itemsize * slots)).in_dll(self.lib, "cmd_stats_vals")
        return np.frombuffer(bytes(raw), dtype=CMD_STATS_DTYPE)

    def drops(self) -> int:
        return int(ctypes.c_uint64.in_dll(self.lib, "drops_vals").value)


MS = 1_000_000
TP_ALL = ["AOD_HAVE_SMB3_CMD_ENTER", "AOD_HAVE_SMB3_CMD_DONE", "AOD_HAVE_SMB3_CMD_ERR",
          "AOD_HAVE_SMB3_RECONNECT", "AOD_HAVE_SMB3_SES_EXPIRED"]
SIM_FLAGS = TP_ALL + ["AOD_EMIT_MIN_NS=100000000ULL", f"AOD_EMIT_CMD_MASK={0xFFFFFFFF & ~(1 << 15):#x}U"]


@needs_cc
def test_bpf_completion_pairing_threshold_and_stats(tmp_path: Path) -> None:
    from aod.record import KIND_COMPLETION, TRACER_SMB, hist_bucket

    s = Sim(tmp_path, "smb.bpf.c", SIM_FLAGS)
    s.task(1234, b"writer")
    s.now.value = 10 * MS
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=9, mid=100)  # WRITE, slow
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=5, mid=101)  # CREATE, fast
    s.tp("smb3_cmd_enter", tid=0, sesid=0, cmd=1, mid=1)  # SESSION_SETUP: no session id yet
    s.tp("smb3_cmd_enter", tid=0, sesid=0xAB, cmd=3, mid=2)  # TREE_CONNECT: no tree id yet
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=15, mid=103)  # CHANGE_NOTIFY: not emitted
    s.task(77, b"cifsd")  # completions arrive in another task
    s.now.value = 15 * MS
    s.tp("smb3_cmd_done", tid=5, sesid=0xAB, cmd=5, mid=101)
    s.now.value = 260 * MS
    s.tp("smb3_cmd_done", tid=5, sesid=0xAB, cmd=9, mid=100)
    s.tp("smb3_cmd_done", tid=0, sesid=0xCD, cmd=1, mid=1)  # response carries the new session id
    s.tp("smb3_cmd_done", tid=7, sesid=0xAB, cmd=3, mid=2)  # and the new tree id
    s.tp("smb3_cmd_done", tid=5, sesid=0xAB, cmd=15, mid=103)
    s.tp("smb3_cmd_done", tid=5, sesid=0xEE, cmd=9, mid=100)  # other session, same mid: unpaired
    ev = s.events()
    assert list(ev["command"]) == [9, 1, 3]
    w = ev[0]
    assert (w["kind"], w["tracer_id"], w["version"], w["size"]) == (KIND_COMPLETION, TRACER_SMB, 1, 72)
    assert (w["latency_ns"], w["ts_ns"], w["session_id"], w["tree_id"], w["mid"]) == (250 * MS, 260 * MS, 0xAB, 5, 100)
    assert (w["pid"], w["comm"], w["nt_status"], w["err"]) == (1234, b"writer", 0, 0)  # issuer, not cifsd
    assert (ev[1]["session_id"], ev[2]["tree_id"]) == (0xCD, 7)
    st = s.stats()
    assert st["hist"][5].sum() == 1 and st["hist"][5][int(hist_bucket(5 * MS))] == 1  # counted, not emitted
    assert st["hist"][9][int(hist_bucket(250 * MS))] == 1 and st["latency_sum_ns"][9] == 250 * MS
    assert st["hist"][15].sum() == 1  # excluded command still counted
    assert st["hist"].sum() == 5 and st["errors"].sum() == 0
    s.tp("smb3_cmd_done", tid=5, sesid=0xAB, cmd=9, mid=100)  # the entry is gone after completion
    assert s.n.value == 3
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=6, mid=104)
    s.tp("smb3_cmd_done", tid=5, sesid=0xAB, cmd=6, mid=104)  # under 1 us: bucket 0, as record.hist_bucket
    assert s.stats()["hist"][6][0] == 1 and int(hist_bucket(0)) == 0


@needs_cc
def test_bpf_pairing_key_names_the_connection(tmp_path: Path) -> None:
    """Two servers negotiating at once (mid 0, no session yet) and two channels of one session with
    the same mid in flight pair correctly: the kprobes name each request's connection."""
    s = Sim(tmp_path, "smb.bpf.c", TP_ALL + ["AOD_EMIT_MIN_NS=0ULL", "AOD_CONN_PROBES=1"])
    srv_a, srv_b, ch1, ch2 = 0xA000, 0xB000, 0xC100, 0xC200

    def issue(pid: int, comm: bytes, conn: int, at: int, **key: int) -> None:
        s.task(pid, comm)
        s.now.value = at * MS
        s.lib.aod_conn_alloc(ctypes.byref(PtRegs(si=conn)))  # smb2_mid_entry_alloc(shdr, server)
        s.tp("smb3_cmd_enter", **key)

    def received(pid: int, conn: int, at: int, event: str = "smb3_cmd_done", **key: int) -> None:
        s.task(pid, b"cifsd")
        s.now.value = at * MS
        s.lib.aod_conn_recv(ctypes.byref(PtRegs(di=conn)))  # find_mid(server, buf)
        s.tp(event, **key)

    neg = {"tid": 0, "sesid": 0, "cmd": 0, "mid": 0}
    issue(10, b"mount.a", srv_a, 100, **neg)
    issue(11, b"mount.b", srv_b, 150, **neg)
    s.task(11, b"mount.b")  # synchronous: the response is handled in the issuer
    s.now.value = 160 * MS
    s.tp("smb3_cmd_done", **neg)
    s.task(10, b"mount.a")
    s.now.value = 400 * MS
    s.tp("smb3_cmd_done", **neg)
    w = {"tid": 5, "sesid": 0x77, "cmd": 9, "mid": 42}
    issue(20, b"kworker", ch1, 1000, **w)  # async writes on two channels, same mid
    issue(20, b"kworker", ch2, 1001, **w)
    received(31, ch2, 1003, **w)  # each channel's cifsd completes its own
    received(30, ch1, 1500, **w)
    issue(21, b"reader", ch1, 2000, **{**w, "cmd": 8, "mid": 43})
    s.task(40, b"kworker/dec")  # a worker with no connection context: req_conn finds it
    s.now.value = 2010 * MS
    s.tp("smb3_cmd_done", **{**w, "cmd": 8, "mid": 43})
    issue(22, b"cat", ch2, 3000, **{**w, "cmd": 5, "mid": 44})
    received(31, ch2, 3020, event="smb3_cmd_err", status=0xC0000022, rc=-13, **{**w, "cmd": 5, "mid": 44})
    s.task(23, b"noalloc")  # the alloc probe did not attach: the enter has no connection
    s.now.value = 4000 * MS
    s.tp("smb3_cmd_enter", **{**w, "cmd": 16, "mid": 45})
    received(31, ch2, 4005, **{**w, "cmd": 16, "mid": 45})  # cifsd knows its connection: still pairs
    ev = s.events()
    got = [(int(e["command"]), int(e["pid"]), int(e["latency_ns"]) // MS) for e in ev]
    assert got == [(0, 11, 10), (0, 10, 300), (9, 20, 2), (9, 20, 500), (8, 21, 10), (5, 22, 20), (16, 23, 5)]
    assert ev[-3]["nt_status"] == 0 and ev[-2]["nt_status"] == 0xC0000022
    assert s.stats()["hist"].sum() == 7


@needs_cc
def test_bpf_lost_completions_do_not_block_new_requests(tmp_path: Path) -> None:
    """The in-flight map is an LRU: with more lost completions than it holds (64 here), a new
    request still pairs (a plain hash would refuse the insert and lose it)."""
    s = Sim(tmp_path, "smb.bpf.c", TP_ALL + ["AOD_EMIT_MIN_NS=0ULL"])
    s.task(5, b"app")
    for mid in range(64 + 10):
        s.tp("smb3_cmd_enter", tid=1, sesid=2, cmd=8, mid=mid)  # completions never come
    s.now.value = 7 * MS
    s.tp("smb3_cmd_enter", tid=1, sesid=2, cmd=8, mid=1000)
    s.now.value = 9 * MS
    s.tp("smb3_cmd_done", tid=1, sesid=2, cmd=8, mid=1000)
    ev = s.events()
    assert list(ev["mid"]) == [1000] and int(ev[0]["latency_ns"]) == 2 * MS


@needs_cc
def test_bpf_errors_reconnects_and_drops(tmp_path: Path) -> None:
    from aod.record import KIND_ERROR, KIND_RECONNECT

    s = Sim(tmp_path, "smb.bpf.c", SIM_FLAGS)
    s.task(42, b"cat")
    s.now.value = 1 * MS
    s.tp("smb3_cmd_enter", tid=5, sesid=1, cmd=5, mid=9)
    s.task(7, b"cifsd")
    s.now.value = 3 * MS
    s.tp("smb3_cmd_err", tid=5, sesid=1, cmd=5, mid=9, status=0xC0000022, rc=-13)  # fast error: emitted
    s.tp("smb3_cmd_err", tid=5, sesid=1, cmd=16, mid=10, status=0xC0000034, rc=-2)  # enter never seen
    s.tp("smb3_reconnect", currmid=55)
    s.tp("smb3_ses_expired", tid=5, sesid=1, cmd=8, mid=11)
    ev = s.events()
    assert list(ev["kind"]) == [KIND_ERROR, KIND_ERROR, KIND_RECONNECT, KIND_RECONNECT]
    e = ev[0]
    assert (e["nt_status"], e["err"], e["latency_ns"], e["pid"], e["comm"]) == (0xC0000022, 13, 2 * MS, 42, b"cat")
    assert (ev[1]["nt_status"], ev[1]["err"], ev[1]["latency_ns"], ev[1]["pid"]) == (0xC0000034, 2, 0, 7)
    assert (ev[2]["mid"], ev[2]["command"], ev[2]["session_id"]) == (55, 0xFFFF, 0)
    assert (ev[3]["nt_status"], ev[3]["session_id"], ev[3]["command"]) == (0xC000035C, 1, 8)
    st = s.stats()
    assert st["errors"][5] == 1 and st["errors"][16] == 1 and st["hist"][5].sum() == 1 and st["hist"][16].sum() == 0
    s.ring_fail.value = 1  # ring full
    s.tp("smb3_reconnect", currmid=56)
    s.tp("smb3_cmd_err", tid=5, sesid=1, cmd=5, mid=12, status=0xC0000022, rc=-13)
    assert s.drops() == 2 and s.n.value == 4


@needs_cc
def test_bpf_kprobe_fallback(tmp_path: Path) -> None:
    s = Sim(tmp_path, "smb.bpf.c", ["AOD_KPROBE_MODE", "AOD_HAVE_SMB3_CMD_ERR", "AOD_RELEASE_ARG=0",
                                    "AOD_RELEASE_OFF=16", "AOD_EMIT_MIN_NS=0ULL"])
    hdr = (ctypes.c_uint8 * 64)()  # SMB2 header as on the wire
    struct.pack_into("<H", hdr, 12, 9)  # Command WRITE
    struct.pack_into("<Q", hdr, 24, 300)  # MessageId
    struct.pack_into("<I", hdr, 36, 6)  # TreeId
    struct.pack_into("<Q", hdr, 40, 0x99)  # SessionId
    mid = (ctypes.c_uint8 * 128)()
    s.task(5, b"dd")
    s.now.value = 1 * MS
    s.lib.aod_alloc_enter(ctypes.byref(PtRegs(di=ctypes.addressof(hdr))))
    s.lib.aod_alloc_return(ctypes.byref(PtRegs(ax=ctypes.addressof(mid))))
    s.task(6, b"cifsd")
    s.now.value = 31 * MS
    s.lib.aod_release(ctypes.byref(PtRegs(di=ctypes.addressof(mid) + 16)))  # struct kref * inside the mid
    s.lib.aod_release(ctypes.byref(PtRegs(di=ctypes.addressof(mid) + 16)))  # second put: no entry left
    ev = s.events()
    assert len(ev) == 1
    e = ev[0]
    assert (e["command"], e["mid"], e["tree_id"], e["session_id"], e["latency_ns"], e["pid"], e["comm"]) == (
        9, 300, 6, 0x99, 30 * MS, 5, b"dd")
    s.tp("smb3_cmd_err", tid=6, sesid=0x99, cmd=5, mid=301, status=0xC0000022, rc=-13)
    assert s.n.value == 2 and s.stats()["errors"][5] == 1 and s.stats()["hist"][5].sum() == 0


@needs_cc
def test_bpf_kprobe_fallback_ignores_statuses_too(tmp_path: Path) -> None:
    s = Sim(tmp_path, "smb.bpf.c", ["AOD_KPROBE_MODE", "AOD_HAVE_SMB3_CMD_ERR", "AOD_RELEASE_ARG=0",
                                    "AOD_RELEASE_OFF=16", "AOD_EMIT_MIN_NS=0ULL"] + IGNORE)
    ignore(s, 0x80000006)
    s.tp("smb3_cmd_err", tid=6, sesid=0x99, cmd=14, mid=301, status=0x80000006, rc=-61)  # STATUS_NO_MORE_FILES
    s.tp("smb3_cmd_err", tid=6, sesid=0x99, cmd=5, mid=302, status=0xC0000022, rc=-13)
    st = s.stats()
    assert s.n.value == 1 and int(s.events()[0]["nt_status"]) == 0xC0000022
    assert (st["ignored"][14], st["errors"][14], st["errors"][5]) == (1, 0, 1)


@needs_cc
def test_bpf_synthetic(tmp_path: Path) -> None:
    from aod.record import KIND_ERROR, TRACER_SYNTHETIC

    s = Sim(tmp_path, "synthetic.bpf.c", ["AOD_TRACER_ID=2", "AOD_SYNTH_PID=4242", "AOD_SYNTH_KIND=2",
                                          "AOD_SYNTH_CMD=5", "AOD_SYNTH_LATENCY_NS=3000000ULL",
                                          "AOD_SYNTH_STATUS=0xC0000022U", "AOD_SYNTH_ERRNO=13"])
    fn = s.lib.tracepoint__syscalls__sys_enter_getppid
    s.task(4242, b"driver")
    fn(ctypes.byref(SimArgs()))
    fn(ctypes.byref(SimArgs()))
    s.task(1, b"init")
    fn(ctypes.byref(SimArgs()))  # another process: ignored
    ev = s.events()
    assert list(ev["mid"]) == [1, 2] and (ev["tracer_id"] == TRACER_SYNTHETIC).all()
    assert (ev["kind"] == KIND_ERROR).all() and (ev["nt_status"] == 0xC0000022).all() and (ev["err"] == 13).all()
    assert (ev["latency_ns"] == 3 * MS).all() and (ev["command"] == 5).all() and (ev["pid"] == 4242).all()
    s.ring_fail.value = 1
    s.task(4242, b"driver")
    fn(ctypes.byref(SimArgs()))
    assert s.drops() == 1


IGNORE = ["AOD_IGNORED_PIN=\"/sys/fs/bpf/aodv2/ignored_status\""]


def ignore(s: Sim, *statuses: int) -> None:
    """What the tracer's sync_ignored does to the pinned map, on the simulator's hash."""
    keys = (ctypes.c_uint32 * 256).in_dll(s.lib, "ignored_status_keys")
    used = (ctypes.c_int * 256).in_dll(s.lib, "ignored_status_used")
    for i in range(256):
        used[i] = 0
    for i, st in enumerate(statuses):
        keys[i], used[i] = st, 1


@needs_cc
def test_bpf_ignored_statuses_are_completions_not_errors(tmp_path: Path) -> None:
    """An error whose status is in the ignored_status map ends its request like a completion: the
    histogram and cmd_stats.ignored count it, errors do not, and it reaches the ring only when slow,
    as a completion record that keeps its status. Other statuses are errors as before."""
    from aod.record import KIND_COMPLETION, KIND_ERROR

    s = Sim(tmp_path, "smb.bpf.c", SIM_FLAGS + IGNORE)
    no_more_files, eof, denied = 0x80000006, 0xC0000011, 0xC0000022
    ignore(s, no_more_files, eof)
    s.task(42, b"ls")
    for mid, cmd, status, ms in ((1, 14, no_more_files, 5), (2, 8, eof, 400), (3, 5, denied, 5)):
        s.now.value = 1000 * MS * mid
        s.tp("smb3_cmd_enter", tid=5, sesid=1, cmd=cmd, mid=mid)
        s.now.value += ms * MS
        s.tp("smb3_cmd_err", tid=5, sesid=1, cmd=cmd, mid=mid, status=status, rc=-61)
    s.tp("smb3_cmd_err", tid=5, sesid=1, cmd=16, mid=9, status=eof, rc=-61)  # enter never seen: counted only
    ev = s.events()
    assert [(int(e["kind"]), int(e["command"]), int(e["nt_status"])) for e in ev] == [
        (KIND_COMPLETION, 8, eof), (KIND_ERROR, 5, denied)]  # the fast QUERY_DIRECTORY end: not emitted
    assert int(ev[0]["latency_ns"]) == 400 * MS and int(ev[0]["err"]) == 0
    st = s.stats()
    assert (st["ignored"][14], st["ignored"][8], st["ignored"][16], st["ignored"][5]) == (1, 1, 1, 0)
    assert (st["errors"][14], st["errors"][8], st["errors"][5]) == (0, 0, 1)
    assert (st["hist"][14].sum(), st["hist"][8].sum(), st["hist"][5].sum(), st["hist"][16].sum()) == (1, 1, 1, 0)
    ignore(s)  # the config lists none: every status is an error again (a reload empties the map)
    s.tp("smb3_cmd_enter", tid=5, sesid=1, cmd=14, mid=20)
    s.tp("smb3_cmd_err", tid=5, sesid=1, cmd=14, mid=20, status=no_more_files, rc=-61)
    assert int(s.events()[-1]["kind"]) == KIND_ERROR and s.stats()["errors"][14] == 1


@needs_cc
def test_bpf_async_response_pairs_without_its_tree_id(tmp_path: Path) -> None:
    """A response after an interim STATUS_PENDING is async: where the request had its TreeId, its
    header has the AsyncId, so done/err carry another tid. It still pairs, and the record names the
    request's tree."""
    s = Sim(tmp_path, "smb.bpf.c", SIM_FLAGS + IGNORE)
    s.task(42, b"cp")
    s.now.value = 1 * MS
    s.tp("smb3_cmd_enter", tid=5, sesid=1, cmd=9, mid=77)
    s.now.value = 901 * MS
    s.tp("smb3_cmd_done", tid=0xDEAD, sesid=1, cmd=9, mid=77)  # high half of the AsyncId
    s.tp("smb3_cmd_enter", tid=5, sesid=1, cmd=5, mid=78)
    s.now.value = 1400 * MS
    s.tp("smb3_cmd_err", tid=0xBEEF, sesid=1, cmd=5, mid=78, status=0xC0000022, rc=-13)
    ev = s.events()
    got = [(int(e["command"]), int(e["latency_ns"]) // MS, int(e["tree_id"])) for e in ev]
    assert got == [(9, 900, 5), (5, 499, 5)]


def test_cmd_stats_and_event_sizes_match_header() -> None:
    assert EVENT_SIZE == 72
    assert CMD_STATS_DTYPE.itemsize == (32 + 3) * 8


def _wait_ready(h: Harness, before: int = 0, what: str = "READY=1") -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(m.startswith(what) for m in h.notifier.sent[before:]):
        time.sleep(0.01)


def test_sighup_updates_the_emit_filter_map_without_a_reload_and_publishes_it(tmp_path: Path) -> None:
    """`systemctl reload aodv2` propagates to the tracer: the new threshold reaches the kernel as a
    map update (emit_cfg_v1), the program is loaded once and never closed while running (no
    overlap, nothing duplicated or lost), the state file says what is in force, and a bad config
    keeps the running filter."""
    from aod import tracerstate

    h = Harness(tmp_path)
    make_cifs_events(h.tracefs)
    cfg = tmp_path / "config.yaml"
    base = cfg.read_text()
    cfg.write_text(base + "latency: {default_threshold_ms: 300, emergency_threshold_ms: 3000}\n")
    env = h.env()
    t = threading.Thread(target=lambda: tracer.run(h.opts(), env), daemon=True)
    t.start()
    try:
        assert h.attached.wait(10)
        _wait_ready(h, 0, "READY=1 STATUS=attached")
        table = h.pinned["emit_cfg"]
        mask = tracer.emit_cmd_mask(config_mod.load_text("{}").latency)
        assert table.writes == [(300_000_000, mask)]
        d = tracerstate.read_detail(str(h.state_dir), "smb")
        assert (d["state"], d["emit_min_ns"], d["emit_cmd_mask"]) == ("attached", 300_000_000, mask)
        assert d["hung_threshold_ns"] == 0  # no aging scan in this harness
        assert set(d["health"]) == {"offered", "attached"}
        since = d["since"]

        def reload_and_wait(text: str) -> None:
            cfg.write_text(text)
            before = len(h.notifier.sent)
            env.reload.set()
            _wait_ready(h, before)

        reload_and_wait(base + "latency: {default_threshold_ms: 100, emergency_threshold_ms: 3000}\n")
        assert table.writes[-1] == (100_000_000, mask) and len(h.loads) == 1  # a map update, no re-load
        assert h.loaded is not None and not h.loaded.closed
        d = tracerstate.read_detail(str(h.state_dir), "smb")
        assert d["emit_min_ns"] == 100_000_000 and d["since"] == since  # still attached since then
        n = len(table.writes)
        reload_and_wait(base + "latency: {acceptable_count: -1}\n")  # invalid: the running filter stays
        assert len(table.writes) == n and len(h.loads) == 1
        assert tracerstate.read_detail(str(h.state_dir), "smb")["emit_min_ns"] == 100_000_000
        assert "STATUS=reloading: updating the maps" in h.notifier.sent
    finally:
        h.stop.set()
        t.join(10)
    assert h.loaded is not None and h.loaded.closed
    assert tracerstate.read_detail(str(h.state_dir), "smb")["state"] == "stopped"


def test_ignored_statuses_reach_the_map_at_attach_and_on_reload_without_a_rebuild(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned ignored_status map holds config ignored_statuses from attach on; a reload that
    changes only them updates the map (deletes first, then adds) and rebuilds nothing. The pin of
    the older cmd_stats layout is removed once the new program is attached."""
    from aod import bpfsys
    from aod.config import DEFAULT_IGNORED_STATUSES
    from aod.record import CMD_STATS_V1_DTYPE

    v1 = bpfsys.MapInfo(bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 9, 4, CMD_STATS_V1_DTYPE.itemsize, 32, 0, "cmd_stats")
    monkeypatch.setattr(bpfsys, "obj_get", lambda path, flags=0: os.open(path, os.O_RDONLY))
    monkeypatch.setattr(bpfsys, "map_info", lambda fd, what="": v1)
    h = Harness(tmp_path)
    make_cifs_events(h.tracefs)
    (tmp_path / "bpffs" / "aodv2").mkdir()
    stale = tmp_path / "bpffs" / "aodv2" / "cmd_stats"
    stale.write_bytes(b"")  # an aodv2 0.1 tracer pinned it
    cfg = tmp_path / "config.yaml"
    base = cfg.read_text()
    env = h.env()
    t = threading.Thread(target=lambda: tracer.run(h.opts(), env), daemon=True)
    t.start()
    try:
        assert h.attached.wait(10)
        deadline = time.monotonic() + 10  # READY=1 attached comes after the map is filled and the pin removed
        while time.monotonic() < deadline and not any(m.startswith("READY=1 STATUS=attached") for m in h.notifier.sent):
            time.sleep(0.01)
        table = h.pinned["ignored_status"]
        assert set(table.d) == set(DEFAULT_IGNORED_STATUSES) and not stale.exists()
        table.ops.clear()
        cfg.write_text(base + "ignored_statuses: [STATUS_END_OF_FILE, STATUS_NO_SUCH_FILE]\n")
        before = len(h.notifier.sent)
        env.reload.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(m.startswith("READY=1") for m in h.notifier.sent[before:]):
            time.sleep(0.01)
        assert set(table.d) == {0xC0000011, 0xC000000F} and len(h.loads) == 1  # no rebuild
        assert table.ops[-1] == ("set", 0xC000000F) and all(op == "del" for op, _ in table.ops[:-1])
    finally:
        h.stop.set()
        t.join(10)


def test_remove_stale_takes_only_a_map_of_the_older_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pins.remove_stale unlinks `cmd_stats` only when it is the 0.1 tracer's map; anything else of
    that name (another tool's pin, a file in a pin dir the config pointed elsewhere) stays."""
    from aod import bpfsys, pins
    from aod.record import CMD_STATS_V1_DTYPE

    stale = tmp_path / "cmd_stats"
    infos = {"v1": bpfsys.MapInfo(bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 9, 4, CMD_STATS_V1_DTYPE.itemsize, 32, 0, "x"),
             "other": bpfsys.MapInfo(bpfsys.BPF_MAP_TYPE_HASH, 9, 8, 8, 1024, 0, "x")}
    which = ["other"]
    monkeypatch.setattr(bpfsys, "map_info", lambda fd, what="": infos[which[0]])
    monkeypatch.setattr(bpfsys, "obj_get", lambda path, flags=0: os.open(path, os.O_RDONLY))
    assert pins.remove_stale(str(tmp_path)) == []  # nothing there
    stale.write_bytes(b"")
    (done,) = pins.remove_stale(str(tmp_path))
    assert "not an aodv2 map" in done and stale.exists()
    which[0] = "v1"
    assert pins.remove_stale(str(tmp_path)) == [str(stale)] and not stale.exists()


def test_check_pinned_reuses_or_refuses_what_a_previous_run_pinned(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from aod import bpfsys
    from aod.record import CMD_STATS_DTYPE

    paths = tracer.pin_paths(config_mod.RingConfig(path=str(tmp_path / "events")))
    for p in (paths.ring, paths.drops, paths.cmd_stats, paths.ignored):
        Path(p).write_bytes(b"")
    infos = {paths.ring: bpfsys.MapInfo(bpfsys.BPF_MAP_TYPE_RINGBUF, 1, 0, 0, 256 * 1024, 0, "events"),
             paths.drops: bpfsys.MapInfo(bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 2, 4, 8, 1, 0, "drops"),
             paths.cmd_stats: bpfsys.MapInfo(bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 3, 4, CMD_STATS_DTYPE.itemsize,
                                             32, 0, "cmd_stats"),
             paths.ignored: bpfsys.MapInfo(bpfsys.BPF_MAP_TYPE_HASH, 4, 4, 4, 256, 0, "ignored_status")}
    fds: dict[int, str] = {}

    def obj_get(path: str, flags: int = 0) -> int:
        fd = os.open(os.devnull, os.O_RDONLY)
        fds[fd] = path
        return fd

    monkeypatch.setattr(bpfsys, "obj_get", obj_get)
    monkeypatch.setattr(bpfsys, "map_info", lambda fd, what="": infos[fds[fd]])
    assert tracer.check_pinned(paths, 256 * 1024, "smb") == []
    warn = tracer.check_pinned(paths, 512 * 1024, "smb")  # the config asks for another size: reused
    assert len(warn) == 1 and "256 KiB" in warn[0] and "512 KiB" in warn[0]
    infos[paths.cmd_stats] = infos[paths.cmd_stats]._replace(value_size=8)  # an older layout
    with pytest.raises(tracer.SetupError) as ei:
        tracer.check_pinned(paths, 256 * 1024, "smb")
    assert ei.value.code == tracer.EX_CONFIG and f"rm {paths.cmd_stats}" in str(ei.value)
    assert tracer.check_pinned(paths, 256 * 1024, "synthetic") == []  # synthetic pins no cmd_stats
    infos[paths.cmd_stats] = infos[paths.cmd_stats]._replace(value_size=CMD_STATS_DTYPE.itemsize)
    infos[paths.ignored] = infos[paths.ignored]._replace(type=bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY)  # not a hash
    with pytest.raises(tracer.SetupError):  # bcc itself would open it unchecked
        tracer.check_pinned(paths, 256 * 1024, "smb")
    infos[paths.ignored] = infos[paths.ignored]._replace(type=bpfsys.BPF_MAP_TYPE_HASH, map_flags=1 << 7)
    with pytest.raises(tracer.SetupError, match="read-only"):  # BPF_F_RDONLY_PROG: the load would fail
        tracer.check_pinned(paths, 256 * 1024, "smb")
    infos[paths.ignored] = infos[paths.ignored]._replace(map_flags=1)  # BPF_F_NO_PREALLOC: usable
    assert tracer.check_pinned(paths, 256 * 1024, "smb") == []
    os.symlink(paths.ignored, paths.hung)  # a symlink pin: bcc would follow it unchecked
    with pytest.raises(tracer.SetupError, match="symbolic link") as ei:
        tracer.check_pinned(paths, 256 * 1024, "smb")
    assert ei.value.code == tracer.EX_CONFIG


def test_symbols_from_available_filter_functions(tmp_path: Path) -> None:
    """The unit's ProtectKernelTunables= hides /proc/kallsyms; tracefs lists the functions too."""
    aff = "do_one_initcall\nsmb2_mid_entry_alloc [cifs]\n__smb2_find_mid [cifs]\n__release_mid [cifs]\nnfs_x [nfs]\n"
    assert kallsyms.symbols(aff) == {"do_one_initcall", "smb2_mid_entry_alloc", "__smb2_find_mid", "__release_mid"}
    assert kallsyms.choose_conn_probes(aff) == ("smb2_mid_entry_alloc", "__smb2_find_mid")
    assert kallsyms.choose_kprobes(aff, "6.1.0") == kallsyms.KprobePlan(
        "smb2_mid_entry_alloc", kallsyms.ReleaseProbe("__release_mid", 0, 16))
    assert kallsyms.symbols("ffffffffc09b6c10 d smb2_find_mid\t[cifs]\n") == set()  # kallsyms data symbol
    tfs = tmp_path / "tracing"
    tfs.mkdir()
    ks = tmp_path / "kallsyms"
    ks.write_text(KALLSYMS_60)
    assert tracer.function_list([str(tfs)], str(ks)) == (KALLSYMS_60, str(ks))  # no tracefs list: kallsyms
    (tfs / "available_filter_functions").write_text(aff)
    assert tracer.function_list([str(tfs)], str(ks)) == (aff, str(tfs / "available_filter_functions"))
    (tfs / "available_filter_functions").unlink()
    ks.unlink()
    text, tried = tracer.function_list([str(tfs)], str(ks))
    assert text is None and str(ks) in tried and "available_filter_functions" in tried
    p = tracer.plan_smb({"smb3_cmd_enter": "", "smb3_cmd_done": ""}, None, "6.1.0", symbols_from=tried)
    assert any("cannot read" in n and str(ks) in n for n in p.notes)


@needs_cc
def test_bpf_a_failed_compound_part_ends_the_parts_after_it(tmp_path: Path) -> None:
    """A CREATE + QUERY_INFO + CLOSE compound whose CREATE fails: the kernel traces the CREATE's
    error only (6.1). Its later parts complete with it (histogram, no record), so they are never
    left in flight to be called hung; an async WRITE whose error comes from cifsd does not end
    the next WRITE of its writer; ECHO (never traced on completion) is not tracked."""
    s = Sim(tmp_path, "smb.bpf.c", SIM_FLAGS)

    def inflight() -> list[int]:
        keys, _, used = s.table("inflight", 64, 32, 32)
        return sorted(struct.unpack_from("<Q", bytes(keys), i * 32 + 16)[0] for i in range(64) if used[i])

    s.task(500, b"ls")
    s.now.value = 10 * MS
    for cmd, mid in ((5, 40), (16, 41), (6, 42)):  # the compound, entered one after another
        s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=cmd, mid=mid)
    s.task(600, b"other")
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=16, mid=43)  # another process's request
    s.tp("smb3_cmd_enter", tid=0, sesid=0xAB, cmd=13, mid=44)  # ECHO
    s.task(500, b"ls")
    s.now.value = 12 * MS
    s.tp("smb3_cmd_err", tid=5, sesid=0xAB, cmd=5, mid=40, status=0xC0000034, rc=-2)
    assert inflight() == [43]  # QUERY_INFO 41 and CLOSE 42 ended with the CREATE; ECHO never tracked
    st = s.stats()
    assert (int(st["hist"][16].sum()), int(st["hist"][6].sum()), int(st["errors"][5])) == (1, 1, 1)
    assert list(s.events()["command"]) == [5]  # the error's record only
    # async writes: two WRITEs entered by the writer, the first fails in cifsd
    s.task(700, b"dd")
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=9, mid=50)
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=9, mid=51)
    s.task(77, b"cifsd")
    s.tp("smb3_cmd_err", tid=5, sesid=0xAB, cmd=9, mid=50, status=0xC000007F, rc=-28)
    assert inflight() == [43, 51]
    # a compound whose parts all succeed leaves no link behind: a later failure of the same
    # thread's next request ends nothing else
    s.task(500, b"ls")
    for cmd, mid in ((5, 60), (6, 61)):
        s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=cmd, mid=mid)
    s.tp("smb3_cmd_done", tid=5, sesid=0xAB, cmd=5, mid=60)
    s.tp("smb3_cmd_done", tid=5, sesid=0xAB, cmd=6, mid=61)
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=5, mid=62)
    s.task(600, b"other")
    s.tp("smb3_cmd_enter", tid=5, sesid=0xAB, cmd=6, mid=63)
    s.task(500, b"ls")
    s.tp("smb3_cmd_err", tid=5, sesid=0xAB, cmd=5, mid=62, status=0xC0000022, rc=-13)
    assert inflight() == [43, 51, 63]
