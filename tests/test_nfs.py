"""NFS: procedure codes, the nfs config and its view, the per-protocol detectors, the actions of
an NFS anomaly, and the nfs front's plan on the real kernels' sunrpc formats (tests/fixtures/kernels)."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import numpy as np
import pytest

from aod import actions, config, confignfs, nfsproc, smb2
from aod.detectsplit import Detectors, throttle_key
from aod.dispatch import Columns
from aod.front_nfs import FRONT, OPTIONAL, REQUIRED
from aod.record import (
    CMD_SLOTS,
    KIND_COMPLETION,
    KIND_ERROR,
    KIND_HUNG,
    STATS_ROWS,
    TRACER_NFS,
    TRACER_SMB,
    empty,
    protocol_rows,
    row_command,
    stats_row,
)
from aod.tracepoints import SetupError
from aod.tracerfront import PlanInput

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "tests" / "fixtures" / "kernels"
HEADER = (ROOT / "bpf" / "aod_event.h").read_text()
NFS_C = (ROOT / "bpf" / "nfs.bpf.c").read_text()


# ---------------------------------------------------------------- procedure codes

@pytest.mark.parametrize("version,name,code", [(3, "GETATTR", 0x0301), (3, "READ", 0x0306), (3, "COMMIT", 0x0315),
                                               (4, "READ", 0x0401), (4, "OPEN", 0x0404), (4, "SEQUENCE", 0x0429),
                                               (4, "READ_PLUS", 0x0444), (4, "NOPE", 0x04FF)])
def test_codes_and_names(version: int, name: str, code: int) -> None:
    assert nfsproc.code(version, name) == code
    assert smb2.command_name(code) == (f"NFSv{version} {name}" if name != "NOPE" else f"NFSv{version} ?")


def test_rfc1813_numbers_and_the_v4_table_has_more_than_32() -> None:
    assert nfsproc.code(3, "NULL") == 0x0300 and nfsproc.code(3, "WRITE") & 0xFF == 7  # RFC 1813 procedure 7
    assert len(nfsproc.V4) > 32 and len(set(nfsproc.V4)) == len(nfsproc.V4) and len(set(nfsproc.V3)) == 22
    assert smb2.command_name(8) == "READ" and smb2.command_name(0xFFFF) == "CMD_65535"  # SMB untouched
    with pytest.raises(ValueError):
        nfsproc.name(0x0200)


def test_slots_match_the_kernel_program() -> None:
    """nfsproc.slot mirrors nfs_slot() of bpf/nfs.bpf.c: v3 in 0-31, v4 in 32-127, no two codes share."""
    assert "return idx < 32 ? idx : 31;" in NFS_C and "return idx < 95 ? 32 + idx : AOD_NFS_SLOTS - 1;" in NFS_C
    assert re.search(r"#define AOD_NFS_SLOTS 128\b", HEADER)
    codes = [nfsproc.code(v, n) for v, t in nfsproc.TABLES.items() for n in t]
    slots = [nfsproc.slot(c) for c in codes]
    assert len(set(slots)) == len(codes) and max(slots) < 128
    assert nfsproc.slot(0x03FF) == 31 and nfsproc.slot(0x04FF) == 127
    # the core reads kernel slot k into statistics row CMD_SLOTS + k: every NFS code must agree
    every = range(0x0300, 0x0500)
    assert [int(stats_row(c)) for c in every] == [CMD_SLOTS + nfsproc.slot(c) for c in every]


def test_name_keys_fit_the_bpf_key() -> None:
    m = re.search(r"#define AOD_NFS_NAME_LEN (\d+)", HEADER)
    assert m and int(m.group(1)) == nfsproc.NAME_LEN
    keys = list(nfsproc.name_keys())
    assert len(keys) == len(nfsproc.V3) + len(nfsproc.V4) <= int(re.search(r"AOD_NFS_PROCS_MAX (\d+)", HEADER)[1])
    for key, _code in keys:
        assert len(key) == 4 + nfsproc.NAME_LEN and key[4:].rstrip(b"\0").isascii()
        assert key[-1] == 0  # NUL-terminated as bpf_probe_read_kernel_str leaves it


def test_lookup_of_config_names() -> None:
    assert nfsproc.lookup("NFSv3 READ") == 0x0306 and nfsproc.lookup("v4.2 read") == 0x0401
    assert nfsproc.lookup("READ") is None and nfsproc.lookup("NFSv2 READ") is None


def test_status_names() -> None:
    assert nfsproc.status_name(10008, 0) == "NFS4ERR_DELAY" and nfsproc.status_name(0, errno.ESTALE) == "ESTALE"


# ---------------------------------------------------------------- config

def test_nfs_view_tracks_nfs_codes_only() -> None:
    cfg = config.load_text("nfs: {default_threshold_ms: 50, thresholds_ms: {COMMIT: 900}, exclude: [GETATTR]}")
    v = confignfs.nfs_view(cfg)
    lookup = config.threshold_lookup(v.latency)
    assert np.isinf(lookup[8]) and np.isinf(lookup[0x0301]) and np.isinf(lookup[0x0401 + 17])  # SMB READ; GETATTR
    assert lookup[0x0306] == 50e6 and lookup[0x0315] == 900e6 and lookup[0x0403] == 900e6
    assert v.errors[0].name == "nfs_errors" and errno.ENOENT not in v.errors[0].errnos
    assert errno.ESTALE in v.errors[0].errnos and 10008 in v.errors[0].statuses
    assert v.ignored_statuses == cfg.nfs.benign_statuses


def test_nfs_config_errors_name_the_path() -> None:
    with pytest.raises(config.ConfigError) as ei:
        config.load_text("nfs: {hung_threshold_ms: 20, exclude: [REED], errors: {acceptable_count: 0}}")
    text = str(ei.value)
    assert "nfs.hung_threshold_ms: expected 0 (off) or a number >= 100" in text
    assert "nfs.exclude[0]: expected an NFS procedure name" in text and "did you mean 'READ'" in text
    assert "nfs.errors.acceptable_count: expected an integer >= 1" in text


# ---------------------------------------------------------------- detection per protocol

def _recs(n: int, tracer: int, cmd: int, lat_ms: float, kind: int = KIND_COMPLETION, t0: int = 10**12) -> np.ndarray:
    r = empty(n)
    r["kind"], r["tracer_id"], r["command"] = kind, tracer, cmd
    r["latency_ns"] = int(lat_ms * 1e6)
    r["ts_ns"] = t0 + np.arange(n) * 1000
    return r


def _detectors(text: str) -> Detectors:
    return Detectors(config.load_text(text), mono=lambda: 10**12)


def test_simultaneous_smb_and_nfs_latency_are_two_anomalies() -> None:
    d = _detectors("latency: {acceptable_count: 3, default_threshold_ms: 100}\nnfs: {default_threshold_ms: 100}")
    batch = np.concatenate([_recs(3, TRACER_SMB, 8, 300), _recs(3, TRACER_NFS, 0x0306, 300)])
    found = d.immediate(batch, Columns.of(batch))
    assert sorted((a.type, a.protocol, a.key) for a in found) == [("latency", "nfs", "nfs_latency"),
                                                                 ("latency", "smb", "latency")]
    nfs = next(a for a in found if a.protocol == "nfs")
    assert nfs.commands == (0x0306,) and nfs.details["over_threshold_by_command"] == {"NFSv3 READ": 3}


def test_nfs_records_never_count_against_smb_thresholds() -> None:
    """An NFS code is no SMB command: 2 slow NFS and 2 slow SMB completions reach neither count of 3."""
    d = _detectors("latency: {acceptable_count: 3, default_threshold_ms: 100}\nnfs: {default_threshold_ms: 100}")
    batch = np.concatenate([_recs(2, TRACER_SMB, 8, 300), _recs(2, TRACER_NFS, 0x0401, 300)])
    assert d.immediate(batch, Columns.of(batch)) == []
    only_nfs = _recs(5, TRACER_NFS, 0x0401, 50)  # under the NFS threshold
    assert d.immediate(only_nfs) == []


def test_nfs_errors_benign_and_named() -> None:
    d = _detectors("nfs: {errors: {acceptable_count: 2}}")
    benign = _recs(5, TRACER_NFS, 0x0303, 1, KIND_ERROR)
    benign["err"] = errno.ENOENT
    assert d.immediate(benign) == []
    stale = _recs(2, TRACER_NFS, 0x0412, 1, KIND_ERROR, t0=2 * 10**12)
    stale["err"] = errno.ESTALE
    (a,) = d.immediate(stale)
    assert (a.key, a.rule) == ("nfs_error", "nfs_errors") and a.protocol == "nfs"


def test_nfs_hung_record_is_an_nfs_hung_anomaly() -> None:
    now = [10**12]
    d = Detectors(config.load_text("latency: {hung_group_ms: 0}"), mono=lambda: now[0])
    h = _recs(1, TRACER_NFS, 0x0401, 2000, KIND_HUNG)
    found = d.immediate(h) + d.tick()
    assert [(a.key, a.protocol) for a in found] == [("nfs_hung", "nfs")]


def test_throttle_keys_and_suppression_by_protocol() -> None:
    asked: list[str] = []
    d = Detectors(config.load_text("latency: {acceptable_count: 1}"), suppressing=lambda k: asked.append(k) or False)
    batch = _recs(1, TRACER_NFS, 0x0306, 900)
    d.immediate(batch)
    assert "nfs_latency" in asked and throttle_key("manual", "") == "manual"


# ---------------------------------------------------------------- actions

def test_actions_by_protocol() -> None:
    names = actions.ACTION_NAMES
    smb = actions.for_protocol(names, "smb")
    nfs = actions.for_protocol(names, "nfs")
    assert "cifs_debug" in smb and "nfs_mountstats" not in smb and "smbinfo" not in nfs
    assert {"nfs_mountstats", "nfs_rpc_stats", "nfs_mounts", "kernel_log", "mounts"} <= set(nfs)
    assert actions.for_protocol(names, "") == names
    assert actions.ACTIONS["nfs_rpc_stats"].files[0] == "{proc}/1/net/rpc/nfs"  # the host's namespace first


# ---------------------------------------------------------------- the front on real kernels

def _kernels() -> list[Path]:
    return sorted(d for d in KERNELS.iterdir() if (d / "events" / "sunrpc").is_dir())


@pytest.mark.parametrize("kdir", _kernels(), ids=lambda p: p.name)
def test_nfs_plan_on_real_kernels(kdir: Path) -> None:
    facts = dict(line.split("=", 1) for line in (kdir / "facts.txt").read_text().split() if "=" in line)
    want = json.loads((kdir / "expected_nfs.json").read_text())
    plan, health, _notes = FRONT.plan(PlanInput(str(kdir / "events" / "sunrpc"), (str(kdir),), "/none",
                                                facts["kernel"], "/none", "auto"))
    assert plan.tracepoints[:len(REQUIRED)] == tuple(f"sunrpc:{t}" for t in REQUIRED)
    assert health["attached"] == want["attached"], kdir.name
    assert sorted(d.split("=")[0] for d in plan.defines) == sorted(f"AOD_HAVE_{t.upper()}" for t in want["attached"])
    assert plan.tracepoints[-1] == "syscalls:sys_enter_getppid"


def test_real_formats_have_what_the_program_reads() -> None:
    """Every args-> field nfs.bpf.c reads per tracepoint is in each real kernel's format that offers it."""
    probes = re.findall(r"TRACEPOINT_PROBE\(sunrpc, (\w+)\)\n\{(.*?)\n\}", NFS_C, re.S)
    assert len(probes) >= 8
    for kdir in _kernels():
        for tp, body in probes:
            fmt = kdir / "events" / "sunrpc" / tp / "format"
            if not fmt.exists():
                assert tp in OPTIONAL, (kdir.name, tp)
                continue
            used = (set(re.findall(r"args->(?:data_loc_)?(\w+)", body)) | set(re.findall(r"AOD_IS_NFS\((\w+)\)", body))
                    | set(re.findall(r"AOD_LOC_STR\([^,]+, *(\w+)\)", body)))
            have = set(re.findall(r"field:[^;]*?(\w+)(?:\[\d*\])?;", fmt.read_text()))
            assert used <= have, (kdir.name, tp, used - have)
            assert set((REQUIRED | OPTIONAL)[tp]) <= have


def test_plan_without_the_request_events_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "rpc_task_begin").mkdir()
    (tmp_path / "rpc_task_begin" / "format").write_text("field:unsigned int task_id;\nfield:unsigned int client_id;\n")
    with pytest.raises(SetupError) as ei:
        FRONT.plan(PlanInput(str(tmp_path), (), "/none", "6.1", "/none", "auto"))
    assert "sunrpc:rpc_request (not offered by this kernel)" in str(ei.value) and ei.value.code == 78


def test_nfs_error_anomaly_names_errnos_and_nfs4_statuses() -> None:
    d = _detectors("nfs: {errors: {acceptable_count: 3}}")
    errs = _recs(3, TRACER_NFS, 0x0401, 1, KIND_ERROR)
    errs["err"] = [errno.ESTALE, errno.EACCES, 0]
    errs["nt_status"] = [0, 0, 10008]
    (a,) = d.immediate(errs)
    assert a.details["statuses"] == {"ESTALE": 1, "EACCES": 1, "NFS4ERR_DELAY": 1}


# ---------------------------------------------------------------- the tracer framework

def test_fronts_are_short_and_the_loader_names_no_protocol() -> None:
    """Each front declares its source, probes and constants in <= 200 lines; the loader's run()
    branches on what a front declares, never on a tracer's name."""
    from aod.tracerfront import fronts

    fs = fronts()
    assert sorted(fs) == ["nfs", "smb", "synthetic"]
    for name, f in fs.items():
        path = ROOT / "aod" / f"front_{name}.py"
        assert len(path.read_text().splitlines()) <= 200, path
        assert (ROOT / "bpf" / f.source).is_file() and f.name == name
    assert len({f.tracer_id for f in fs.values()}) == 3
    loader = (ROOT / "aod" / "tracer.py").read_text()
    assert not re.search(r"""name\s*[!=]=\s*["'](smb|nfs|synthetic)["']""", loader)
    assert fs["smb"].modes and not fs["nfs"].modes and fs["nfs"].system == "sunrpc" and fs["smb"].system == "cifs"
    from aod import tracerargs
    assert tuple(sorted(tracerargs.TRACERS)) == tuple(sorted(fs))


def test_review_findings_stay_fixed() -> None:
    """A non-ASCII digit in a version is a config error, not a traceback; the benign list is bounded
    by the kernel map; an excluded procedure is never called hung."""
    for text in ('nfs: {thresholds_ms: {"NFSv\u00b3 READ": 5}}', 'nfs: {exclude: ["NFSv\u0663 READ"]}',
                 "nfs: {benign_statuses: [" + ", ".join(str(i) for i in range(1, 300)) + "]}"):
        with pytest.raises(config.ConfigError):
            config.load_text(text)
    d = _detectors("latency: {hung_group_ms: 0}\nnfs: {exclude: [LOCK]}")
    assert d.immediate(_recs(1, TRACER_NFS, nfsproc.code(4, "LOCK"), 5000, KIND_HUNG)) + d.tick() == []


def test_each_protocol_carries_its_own_evidence_and_tally() -> None:
    from aod.dispatch import RecentEvents
    from aod.names import Names
    from aod.watch import Tally

    recent = RecentEvents(lambda: 60 * 10**9, mono=lambda: 10**12)
    d = Detectors(config.load_text("latency: {acceptable_count: 2, default_threshold_ms: 100}\n"
                                   "nfs: {default_threshold_ms: 100}"), mono=lambda: 10**12, recent=recent)
    smb_err = _recs(1, TRACER_SMB, 5, 1, KIND_ERROR)
    smb_err["err"] = errno.EACCES
    batch = np.concatenate([_recs(2, TRACER_NFS, 0x0306, 300), smb_err])
    recent.add(batch, Columns.of(batch))
    (a,) = d.immediate(batch, Columns.of(batch))
    assert a.protocol == "nfs" and set(a.records()["tracer_id"].tolist()) == {TRACER_NFS}
    tally = Tally(Names(None))
    tally.add(batch, Columns.of(batch))
    records, errors, _, _ = tally.take()
    assert records == 3 and errors == {(5, 0): 1}  # the NFS records are counted, never as SMB errors


# ---------------------------------------------------------------- statistics: nfs_stats_v1 in the core

def _stats(rows: dict[int, int], bucket: int = 10) -> np.ndarray:
    from aod.counters import zero_stats

    s = zero_stats()
    for code, n in rows.items():
        s["hist"][int(stats_row(code))][bucket] = n
    return s


def test_stats_rows_of_both_protocols() -> None:
    """SMB ids keep their cmd_stats slot; each NFS code has a row of its own after them, and the
    row names its code back (the catch-all rows name the version's unknown code)."""
    assert [int(stats_row(c)) for c in (0, 8, 18, 40)] == [0, 8, 18, CMD_SLOTS - 1]
    codes = [c for v, t in nfsproc.TABLES.items() for c in range(nfsproc.CODE_BASE[v], nfsproc.CODE_BASE[v] + len(t))]
    rows = [int(stats_row(c)) for c in codes]
    assert len(set(rows)) == len(rows) and min(rows) == CMD_SLOTS and max(rows) < STATS_ROWS
    assert all(row_command(r) == c for r, c in zip(rows, codes))
    assert row_command(int(stats_row(0x03FF))) == 0x03FF and row_command(int(stats_row(0x04FF))) == 0x04FF
    assert protocol_rows("nfs")[rows].all() and not protocol_rows("smb")[rows].any()


def test_low_rate_slow_nfs_mount_fires_the_share_rule_against_nfs_traffic_only() -> None:
    """One slow NFS READ a second: the count rule (10 in 10 s) is far off; the share rule, over the
    NFS rows of the statistics, fires. Busy SMB traffic in the same windows changes nothing."""
    d = _detectors("latency: {acceptable_count: 10, horizon_sec: 10, share: 0.5, share_min_count: 5}\n"
                   "nfs: {default_threshold_ms: 100}")
    found = []
    for sec in range(1, 9):
        batch = _recs(1, TRACER_NFS, 0x0401, 400, t0=sec * 10**9)  # NFSv4 READ
        found += d.immediate(batch, Columns.of(batch))
        stats = _stats({0x0401: 1, 8: 5000})  # and 5000 SMB READs a second, none slow
        found += d.window((sec + 1) * 10**9, stats, *d.take_matched())
        if found:
            break
    (a,) = found
    assert (a.key, a.details["trigger"], a.count, sec) == ("nfs_latency", "share", 5, 5)
    assert a.commands == (0x0401,) and a.details["over_threshold_by_command"] == {"NFSv4 READ": 5}


def test_smb_share_rule_does_not_count_nfs_completions() -> None:
    """5 slow SMB READs a second against 5 SMB completions is 100 %: 50000 NFS completions in the same
    statistics must not dilute it (they did when the SMB rule summed every row)."""
    d = _detectors("latency: {acceptable_count: 100, share: 0.5, share_min_count: 5, default_threshold_ms: 100}")
    batch = _recs(5, TRACER_SMB, 8, 300)
    assert d.immediate(batch, Columns.of(batch)) == []
    found = d.window(2 * 10**12, _stats({8: 5, 0x0401: 50000}), *d.take_matched())
    assert [(a.key, a.details["trigger"]) for a in found] == [("latency", "share")]


def test_nfs_bundle_percentiles_come_from_the_nfs_rows() -> None:
    from aod.summary import per_command

    d = _detectors("latency: {acceptable_count: 3}\nnfs: {default_threshold_ms: 100}")
    batch = _recs(3, TRACER_NFS, 0x0306, 300)
    (a,) = d.immediate(batch, Columns.of(batch))
    a.__dict__["_stats"] = _stats({0x0306: 1000, 0x0401: 7, 8: 99})  # what stats_gather would give
    rows = per_command(a)
    assert set(rows) == {"NFSv3 READ", "NFSv4 READ"}  # the SMB row is not this anomaly's protocol
    assert rows["NFSv3 READ"]["source"] == "histogram" and rows["NFSv3 READ"]["count"] == 1000
    assert rows["NFSv3 READ"]["slow_events"] == 3


class _Exports:
    """A namer of NFS clients (nfsnames.NfsNames' methods) from a table."""

    def __init__(self, exports: dict[int, str]) -> None:
        self.exports = exports

    def refresh(self, force: bool = False) -> bool:
        return False

    def share(self, sesid: int, tid: int) -> object:
        return self.exports.get(int(sesid))

    def server(self, conn_id: int) -> None:
        return None

    def server_of_session(self, sesid: int) -> object:
        e = self.exports.get(int(sesid))
        return e.partition(":")[0] if e else None

    def id_label(self, sesid: int, tid: int) -> str:
        return f"client {sesid}"


def test_nfs_metrics_families() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from aod import metrics
    from aod.watch import Tally

    stats = _stats({0x0401: 40, 0x0306: 2, 8: 10})
    stats["errors"][int(stats_row(0x0401))] = 3
    stats["ignored"][int(stats_row(0x0303))] = 4
    tally = Tally(None, _Exports({7: "192.0.2.7:/srv/a", 8: "192.0.2.7:/srv/b"}))
    err = _recs(2, TRACER_NFS, 0x0412, 1, KIND_ERROR)
    err["session_id"], err["tree_id"] = 7, [0x11, 0x12]  # two xids: one export
    err["err"] = errno.ESTALE
    v4 = _recs(1, TRACER_NFS, 0x0412, 1, KIND_ERROR)
    v4["nt_status"] = 10008  # NFS4ERR_DELAY
    v4["session_id"] = 8
    slow = _recs(3, TRACER_NFS, 0x0401, 700)
    slow["session_id"], slow["tree_id"] = 8, [1, 2, 3]
    batch = np.concatenate([err, v4, slow])
    tally.add(batch, Columns.of(batch))
    nfs_errors = tally.take()[3]
    text = metrics.render({"started": 1.0, "nfs_labels": tally.nfs_labels.snapshot()},
                          {"cmd_stats": stats, "nfs_errors": nfs_errors})
    plain = metrics.render({"started": 1.0}, {"cmd_stats": stats, "nfs_errors": nfs_errors})  # no names
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def val(fam: str, sample: str, **labels: str) -> float:
        got = [s.value for s in fams[fam].samples if s.name == sample and all(s.labels.get(k) == v
                                                                              for k, v in labels.items())]
        assert len(got) == 1, (fam, labels, got)
        return got[0]

    assert val("aodv2_nfs_procedures", "aodv2_nfs_procedures_total", procedure="NFSv4 READ") == 40
    assert val("aodv2_nfs_procedure_errors", "aodv2_nfs_procedure_errors_total", procedure="NFSv4 READ") == 3
    assert val("aodv2_nfs_procedure_benign_statuses", "aodv2_nfs_procedure_benign_statuses_total",
               procedure="NFSv3 LOOKUP") == 4
    assert val("aodv2_nfs_procedure_latency_seconds", "aodv2_nfs_procedure_latency_seconds_count",
               procedure="NFSv3 READ") == 2
    assert val("aodv2_nfs_errors", "aodv2_nfs_errors_total", procedure=nfsproc.name(0x0412), status="ESTALE",
               export="192.0.2.7:/srv/a") == 2
    assert val("aodv2_nfs_errors", "aodv2_nfs_errors_total", procedure=nfsproc.name(0x0412),
               status="NFS4ERR_DELAY", export="192.0.2.7:/srv/b") == 1
    assert val("aodv2_nfs_export_slow_latency_seconds", "aodv2_nfs_export_slow_latency_seconds_count",
               export="192.0.2.7:/srv/b") == 3
    plain_fams = {f.name: f for f in text_string_to_metric_families(plain)}
    assert [s.value for s in plain_fams["aodv2_nfs_errors"].samples
            if s.labels.get("status") == "ESTALE"] == [2]
    smb_names = {s.labels.get("command") for s in fams["aodv2_smb_commands"].samples}
    assert smb_names == {"READ"}  # no NFS procedure among the SMB commands


def test_nfs_summary_rows_are_requests_of_its_own_protocol() -> None:
    """A transport health record's command is an event code (9-12): not an SMB command's row."""
    from aod.anomaly import Anomaly
    from aod.record import KIND_HEALTH
    from aod.summary import per_command

    ev = np.concatenate([_recs(2, TRACER_NFS, 0x0306, 300), _recs(1, TRACER_NFS, 11, 0, KIND_HEALTH)])
    stats = _stats({0x0306: 50, 9: 12345, 11: 777})  # busy SMB WRITE (9) and 11 rows
    a = Anomaly(type="latency", rule="r", count=2, detected_wall=1.0, detected_mono_ns=1, window_start_ns=0,
                window_end_ns=1, events=ev, window_stats=stats, protocol="nfs")
    assert set(per_command(a)) == {"NFSv3 READ"}
