"""The evidence helper (`aodv2 evidence`) and the core's client: request validation, the task
filter over a fake /proc, the in-flight table, bounds, and the client's failure modes."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from evidencekit import CIFS_STACK, add_task, fake_helper, standard_tasks

from aod import cli, evidence, evidence_client

# --- requests ---------------------------------------------------------------------------------


def serve(line: bytes, proc: Optional[Path] = None, pin_dir: str = "/nonexistent") -> tuple[int, dict[str, Any]]:
    out = io.BytesIO()
    rc = evidence.serve(io.BytesIO(line), out, proc=str(proc or "/proc"), pin_dir=pin_dir)
    return rc, json.loads(out.getvalue())


@pytest.mark.parametrize("line", [
    b"", b"not json", b"[]", b"{}", b'{"want": "stacks"}', b'{"want": []}', b'{"want": ["stack"]}',
    b'{"want": ["stacks"], "pids": [0]}', b'{"want": ["stacks"], "pids": ["1"]}',
    b'{"want": ["stacks"], "pids": [true]}', b'{"want": ["stacks"], "pids": 5}',
    b'{"want": ["stacks"], "pids": [5000000]}', b'{"want": ["stacks"], "extra": 1}',
    b'{"want": ["stacks"], "budget_ms": 1}', b'{"want": ["stacks"], "budget_ms": 1.5}',
    b'{"want": ["stacks"], "pids": [' + b",".join(b"%d" % i for i in range(1, 300)) + b"]}",
    b'{"want": ["stacks"], "x": "' + b"a" * 5000 + b'"}', b"\xff\xfe{}",
])
def test_bad_requests_get_a_json_error(line: bytes) -> None:
    rc, resp = serve(line + b"\n")
    assert rc == 2 and set(resp) == {"version", "error"} and resp["error"]


def test_bad_request_through_the_cli_has_no_traceback(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"want": 1}\n')))
    out = io.BytesIO()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(out))
    assert cli.main(["evidence"]) == 2
    assert b'"error"' in out.getvalue() and "Traceback" not in capsys.readouterr().err


def test_valid_request_is_normalised() -> None:
    req = evidence.parse_request(b'{"want": ["inflight", "stacks", "inflight"], "pids": [9, 3, 9]}')
    assert req == {"want": ["inflight", "stacks"], "pids": [3, 9], "budget_ms": evidence.BUDGET_MS_DEFAULT}


# --- stacks -----------------------------------------------------------------------------------


def test_stacks_filter_d_state_cifs_frames_cifsd_and_requested(tmp_path: Path) -> None:
    standard_tasks(tmp_path)
    tasks, cut, err = evidence.collect_stacks(str(tmp_path), [300], time.monotonic() + 10)
    got = {(t["tid"], t["comm"]): t["why"] for t in tasks}
    assert got == {(100, "dd"): ["D", "cifs"], (200, "cifsd"): ["cifs", "cifsd"], (250, "ls"): ["cifs"],
                   (300, "bash"): ["requested"], (500, "jbd2/sda1-8"): ["D"]}  # not the idle sshd, dd's worker
    dd = next(t for t in tasks if t["tid"] == 100)
    assert dd["pid"] == 100 and dd["state"] == "D" and dd["wchan"] == "wait_for_response"
    assert "[<0>] SMB2_write+0x1a3/0x3c0 [cifs]" in dd["stack"] and not cut and err == ""


def test_frame_matcher() -> None:
    assert evidence.is_cifs_stack(CIFS_STACK.splitlines())
    assert evidence.is_cifs_stack(["[<0>] smb2_reconnect+0x1/0x2"])
    assert not evidence.is_cifs_stack(["[<0>] do_select+0x6a1/0x7d0", "[<0>] ext4_file_write_iter+0x1/0x2"])
    assert evidence.parse_stat("12 (a) b (c)) D 1 2") == ("a) b (c)", "D")


def test_stack_and_task_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_task(tmp_path, 10, 10, "big", "D", "[<0>] x+0x1/0x2\n" * 10000)
    tasks, _, _ = evidence.collect_stacks(str(tmp_path), [], time.monotonic() + 10)
    assert tasks[0]["stack_truncated"] and sum(len(x) + 1 for x in tasks[0]["stack"]) <= evidence.STACK_CAP + 40
    for i in range(20, 40):
        add_task(tmp_path, i, i, "w", "D", CIFS_STACK)
    monkeypatch.setattr(evidence, "TASKS_MAX", 5)
    tasks, cut, _ = evidence.collect_stacks(str(tmp_path), [], time.monotonic() + 10)
    assert len(tasks) == 5 and cut
    tasks, cut, err = evidence.collect_stacks(str(tmp_path), [], time.monotonic() - 1)  # budget spent
    assert cut and tasks == [] and "bound" in err


def test_real_proc_as_this_user() -> None:
    """On this host: our own pid is returned when asked for, with its state and comm."""
    tasks, _, _ = evidence.collect_stacks("/proc", [os.getpid()], time.monotonic() + 10)
    mine = [t for t in tasks if t["pid"] == os.getpid()]
    assert mine and "requested" in mine[0]["why"] and mine[0]["state"] in "RSD"


# --- in flight --------------------------------------------------------------------------------


def pair(conn: int, ses: int, mid: int, cmd: int, ts: int, pid: int, tree: int, comm: bytes) -> tuple[bytes, bytes]:
    return evidence.KEY.pack(conn, ses, mid, cmd, 0, 0), evidence.START.pack(ts, pid, tree, comm)


def test_inflight_table_from_both_maps(tmp_path: Path) -> None:
    now = time.monotonic_ns()
    maps = {str(tmp_path / "inflight_v1"): [pair(0xFFFF888012345678, 0x1234, 7, 9, now - 2_000_000_000, 42, 5, b"dd")],
            str(tmp_path / "hung_v1"): [pair(0xFFFF888012345678, 0x1234, 8, 5, now - 40_000_000_000, 43, 5, b"ls")]}

    class Names:
        def share(self, ses: int, tree: int) -> Optional[str]:
            return "\\\\srv\\data" if (ses, tree) == (0x1234, 5) else None

        def server_of_session(self, ses: int) -> Optional[str]:
            return "srv"

    rows, cut, err, missing = evidence.collect_inflight(str(tmp_path), lambda p, n: (maps[p], False), Names())
    assert [(r["map"], r["command"], r["mid"], r["pid"], r["comm"]) for r in rows] == [
        ("hung", "CREATE", 8, 43, "ls"), ("inflight", "WRITE", 7, 42, "dd")]
    assert 40_000 <= rows[0]["age_ms"] < 41_000 and rows[0]["share"] == "\\\\srv\\data"
    assert rows[0]["conn"] and "888012345678" not in rows[0]["conn"]  # no kernel address in a bundle
    assert not cut and err == "" and missing == ""
    text = evidence_client.render("inflight", {"inflight": rows}).decode()
    assert "hung" in text and "CREATE" in text and "\\\\srv\\data" in text and "0x1234" in text


def test_inflight_without_pins_is_missing(tmp_path: Path) -> None:
    rows, _, err, missing = evidence.collect_inflight(str(tmp_path))
    assert rows == [] and err == "" and "no in-flight maps pinned" in missing


def test_key_layouts_match_the_bpf_source() -> None:
    src = (Path(__file__).resolve().parent.parent / "bpf" / "aod_event.h").read_text()
    key = src[src.index("struct aod_key {"):].split("};")[0]
    start = src[src.index("struct aod_start {"):].split("};")[0]
    def types(body: str) -> list[str]:
        return [ln.split()[0].lstrip("_") for ln in body.splitlines()[1:] if ln.strip()]

    assert types(key) == ["u64", "u64", "u64", "u16", "u16", "u32"]
    assert types(start) == ["u64", "u32", "u32", "char"]
    assert evidence.KEY.size == 32 and evidence.START.size == 32


# --- bounds and connections -------------------------------------------------------------------


def test_response_is_bounded() -> None:
    resp = {"version": 1, "errors": {}, "truncated": {}, "connections": "x" * 100,
            "stacks": [{"stack": ["y" * 1000] * 10} for _ in range(2000)], "inflight": []}
    data = evidence.encode(resp, limit=1024 * 1024)
    assert len(data) <= 1024 * 1024 and json.loads(data)["truncated"]["stacks"] is True


def test_ss_argv_filters_smb_ports_without_a_shell() -> None:
    argv = evidence.ss_argv("/usr/bin/ss")
    assert argv[:2] == ["/usr/bin/ss", "-t"] and "-i" in argv and ":445" in argv and ":139" in argv
    assert all(" " not in a for a in argv)


def test_run_bounded_kills_at_timeout_and_caps_output() -> None:
    t0 = time.monotonic()
    out, problem = evidence.run_bounded(["/bin/sleep", "30"], 0.3, 100)
    assert "timed out" in problem and time.monotonic() - t0 < 3
    out, problem = evidence.run_bounded(["/bin/sh", "-c", "yes | head -c 100000"], 5, 1000)  # noqa: S604
    assert len(out) == 1000 and "cut" in problem


def test_connections_on_this_host() -> None:
    if shutil.which("ss", path=evidence.SYS_PATH) is None:
        pytest.skip("ss not installed")
    text, cut, err, missing = evidence.collect_connections(lambda n: shutil.which(n, path=evidence.SYS_PATH))
    assert text.startswith("State") and not cut and err == "" and missing == ""
    text, _, _, missing = evidence.collect_connections(lambda n: None)
    assert text == "" and "iproute2" in missing


# --- the client -------------------------------------------------------------------------------


def test_client_round_trip_through_a_socket(tmp_path: Path) -> None:
    h = fake_helper(tmp_path)
    try:
        resp = evidence_client.request(str(h.path), ["stacks", "inflight"], [300], 5.0)
    finally:
        h.close()
    assert {t["comm"] for t in resp["stacks"]} >= {"dd", "cifsd", "bash"}
    assert resp["inflight"] == [] and "inflight" in resp["missing"]
    sent = json.loads(h.requests[0])
    assert sent["want"] == ["stacks", "inflight"] and sent["pids"] == [300] and sent["budget_ms"] == 4000
    text = evidence_client.render("stacks", resp).decode()
    assert "100 100 dd D wait_for_response (D,cifs)" in text and "    [<0>] SMB2_write" in text


def test_client_missing_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(evidence_client.Unavailable, match="No such file"):
        evidence_client.request(str(tmp_path / "none.sock"), ["stacks"], [], 1.0)


@pytest.mark.parametrize("mode", ["hang", "garbage"])
def test_client_hung_or_broken_helper_is_a_bounded_error(tmp_path: Path, mode: str) -> None:
    h = fake_helper(tmp_path, mode=mode)
    t0 = time.monotonic()
    try:
        with pytest.raises(evidence_client.EvidenceError) as e:
            evidence_client.request(str(h.path), ["stacks"], [], 0.5)
    finally:
        h.close()
    assert time.monotonic() - t0 < 2.0
    assert not isinstance(e.value, evidence_client.Unavailable)
    assert ("within 0.5s" if mode == "hang" else "not JSON") in str(e.value)


def test_bpfsys_next_key_attr_layout() -> None:
    from aod import bpfsys

    assert bpfsys.BPF_MAP_GET_NEXT_KEY == 4
    assert struct.unpack("<IIQQQ", bpfsys.pack_lookup(7, 0, 0x1000)) == (7, 0, 0, 0x1000, 0)
