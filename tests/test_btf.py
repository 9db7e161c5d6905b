"""aod/btf.py (the BTF reader) and the kprobe choice it drives (aod/kallsyms.py, plan_smb).

Synthetic blobs come from tests/btfkit.py; the host's own /sys/kernel/btf/vmlinux is read too
where the kernel has BTF (every CI host: kernel 6.x with CONFIG_DEBUG_INFO_BTF).
"""

from __future__ import annotations

import os
import random
import struct
import time
from pathlib import Path

import btfkit
import pytest

from aod import btf, kallsyms, tracepoints

AFF = ("smb2_mid_entry_alloc [cifs]\n__smb2_find_mid [cifs]\nsmb2_find_mid [cifs]\n"
       "__release_mid [cifs]\nrelease_mid [cifs]\nvfs_read\n")
AFF_5 = "smb2_mid_entry_alloc [cifs]\nsmb2_find_mid [cifs]\n_cifs_mid_q_entry_release [cifs]\n"
HOST_BTF = Path("/sys/kernel/btf")


# ---------------------------------------------------------------- the reader


def test_split_btf_ids_continue_after_the_base_and_names_come_from_the_base(tmp_path: Path) -> None:
    k = btfkit.kref_kernel(names_in_base=["__release_mid", "refcount", "mid_q_entry"])
    assert k.cifs.s("__release_mid") < k.cifs.str_base  # the name really is in vmlinux's section
    kb = btfkit.load(k, tmp_path)
    assert kb.btf is not None and kb.why == "" and kb.where == str(tmp_path / "btf" / "cifs")
    assert kb.btf.start_id == len(k.vmlinux.types) + 1 and kb.btf.count == len(k.cifs.types)
    assert kb.btf.func_params("__release_mid") == (btf.Param("refcount", "struct kref *"),)
    assert kb.btf.func_params("smb2_mid_entry_alloc") == (
        btf.Param("shdr", "struct smb2_hdr *"), btf.Param("server", "struct TCP_Server_Info *"))  # const dropped
    assert kb.btf.func_return("smb2_mid_entry_alloc") == "struct mid_q_entry *"
    assert kb.btf.func_params("__smb2_find_mid")[2] == btf.Param("dequeue", "_Bool")  # typedef bool resolved
    assert kb.btf.member("mid_q_entry", "refcount") == (16, "struct kref")
    assert kb.btf.member("list_head", "prev") == (8, "struct list_head *")  # a base struct, from the split blob
    assert kb.btf.func_params("vfs_read") is None and kb.btf.member("mid_q_entry", "nope") is None


def test_split_blob_parsed_without_its_base_is_refused() -> None:
    k = btfkit.kref_kernel(names_in_base=["__release_mid"])
    alone, why = btf.parse(k.cifs.blob())  # its strings do not start a section of their own
    assert alone is None and "not NUL-delimited" in why
    k.cifs.strs[0:0] = b"\0"  # even when they could: ids and names point into a base it has not got
    k.cifs.offsets = {n: o + 1 for n, o in k.cifs.offsets.items()}
    alone, why = btf.parse(k.cifs.blob())
    assert alone is not None, why
    sig, why = btf.signature(alone, "__release_mid")
    assert sig is None and "out of range" in why


def test_big_endian_blob() -> None:
    k = btfkit.server_mid_kernel()
    base, why = btf.parse(k.vmlinux.blob(">"))
    assert base is not None, why
    mod, why = btf.parse(k.cifs.blob(">"), base)
    assert mod is not None, why
    assert [p.type for p in mod.func_params("__release_mid") or ()] == ["struct TCP_Server_Info *",
                                                                          "struct mid_q_entry *"]


def _corrupt(blob: bytes, at: int, value: bytes) -> bytes:
    return blob[:at] + value + blob[at + len(value):]


def _bad_blobs() -> dict[str, tuple[bytes, str]]:
    good = btfkit.kref_kernel().vmlinux.blob()
    t_len = struct.unpack_from("<I", good, 12)[0]
    return {
        "empty": (b"", "shorter than a BTF header"),
        "magic": (_corrupt(good, 0, b"\0\0"), "no BTF magic"),
        "version": (_corrupt(good, 2, b"\x02"), "unsupported BTF version"),
        "header length": (_corrupt(good, 4, struct.pack("<I", 10)), "header length"),
        "section outside": (_corrupt(good, 20, struct.pack("<I", 1 << 30)), "outside the blob"),
        "unknown kind": (_corrupt(good, 24 + 4, struct.pack("<I", 31 << 24)), "unknown kind 31"),
        "strings not NUL-ended": (good[:-1] + b"x", "not NUL-delimited"),
        "record truncated": (_corrupt(good, 12, struct.pack("<I", t_len - 3)), "truncated"),
        "tail past section": (_corrupt(good, 24 + 4, struct.pack("<I", (4 << 24) | 60000)), "runs past"),
    }


@pytest.mark.parametrize("case", sorted(_bad_blobs()))
def test_malformed_blob_gives_none_and_a_reason(case: str) -> None:
    blob, want = _bad_blobs()[case]
    got, why = btf.parse(blob)
    assert got is None and want in why and why.startswith("malformed BTF")


def test_lookups_in_a_blob_with_bad_references_give_a_reason() -> None:
    k = btfkit.Kernel()
    c = k.cifs
    loop = c.start_id + len(c.types)
    c.typedef("loop_t", loop)  # a typedef of itself
    c.func("looped", [("x", loop)])
    c.func("dangling", [("x", 99999)])
    arr = c.start_id + len(c.types)
    c.add(btf.ARRAY, tail=struct.pack("<III", arr, k.int, 4))  # an array of itself
    c.func("array_loop", [("x", c.ptr(arr))])
    c.func("bad_name", [("x", k.int)])
    proto_of_bad = c.types[-2]
    c.types[-2] = (proto_of_bad[0], proto_of_bad[1], proto_of_bad[2],
                   struct.pack("<II", 1 << 30, k.int))  # a parameter name offset out of range
    base, _ = btf.parse(k.vmlinux.blob())
    mod, why = btf.parse(c.blob(), base)
    assert mod is not None, why
    for name, want in (("looped", "loop"), ("array_loop", "loop"), ("dangling", "type id 99999 out of range"),
                       ("bad_name", "name offset"), ("absent", "no FUNC absent")):
        sig, why = btf.signature(mod, name)
        assert sig is None and want in why, (name, why)
    got, why = btf.member(mod, "nothing", "x")
    assert got is None and "no struct nothing" in why


def test_every_truncation_and_random_damage_is_a_reason_never_an_exception() -> None:
    k = btfkit.server_mid_kernel()
    base_blob, mod_blob = k.vmlinux.blob(), k.cifs.blob()
    base, _ = btf.parse(base_blob)
    rng = random.Random(15)
    t0 = time.monotonic()
    blobs = [mod_blob[:n] for n in range(len(mod_blob))]
    for _ in range(3000):
        b = bytearray(mod_blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        blobs.append(bytes(b))
    parsed = 0
    for blob in blobs:
        mod, why = btf.parse(blob, base)
        assert (mod is None) == bool(why)
        if mod is None:
            continue
        parsed += 1
        for name in ("__release_mid", "smb2_mid_entry_alloc", "__smb2_find_mid"):
            sig, why = btf.signature(mod, name)
            assert (sig is None) == bool(why)
        btf.member(mod, "mid_q_entry", "refcount")
    assert parsed > 100  # damage to names and offsets only is common: those paths ran too
    assert time.monotonic() - t0 < 60


def test_input_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big"
    p.write_bytes(b"\0" * 4096)
    data, why = btf.read_blob(str(p), limit=1024)
    assert data is None and "larger than" in why
    monkeypatch.setattr(btf, "MAX_BYTES", 100)
    got, why = btf.parse(btfkit.kref_kernel().vmlinux.blob())
    assert got is None and "larger than" in why


def test_module_btf_where_the_kernel_has_it_and_where_not(tmp_path: Path) -> None:
    k = btfkit.kref_kernel()
    none = btf.module_btf("cifs", str(tmp_path / "absent"))
    assert none.btf is None and "CONFIG_DEBUG_INFO_BTF" in none.why
    only = btf.module_btf("cifs", str(k.write(tmp_path / "v", module=False)))  # Debian 11: 5.10, vmlinux only
    assert only.btf is not None and only.btf.func_params("__release_mid") is None
    assert "CONFIG_DEBUG_INFO_BTF_MODULES" in only.why and only.where.endswith("vmlinux")
    d = k.write(tmp_path / "bad")
    (d / "vmlinux").write_bytes(b"garbage " * 8)
    bad = btf.module_btf("cifs", str(d))
    assert bad.btf is None and "base" in bad.why and "magic" in bad.why
    (d / "vmlinux").unlink()
    gone = btf.module_btf("cifs", str(d))
    assert gone.btf is None and "cannot read" in gone.why
    (d / "cifs").unlink()
    (d / "cifs").mkdir()  # unreadable as a file
    k.write(d, module=False)
    assert "cannot read" in btf.module_btf("cifs", str(d)).why


def test_the_hosts_vmlinux_btf() -> None:
    """Every CI host runs a 6.x kernel with BTF; where /sys/kernel/btf is absent, say why instead."""
    if not HOST_BTF.is_dir():
        kb = btf.module_btf("cifs")
        assert kb.btf is None and "CONFIG_DEBUG_INFO_BTF" in kb.why
        return
    vmlinux = HOST_BTF / "vmlinux"
    assert vmlinux.is_file(), f"{HOST_BTF} exists but has no vmlinux"
    t0 = time.monotonic()
    got, why = btf.load(str(vmlinux))
    assert got is not None, why
    params = got.func_params("vfs_read")
    assert params is not None and [p.type for p in params] == [
        "struct file *", "char *", "long unsigned int", "long long int *"]
    assert [p.name for p in params] == ["file", "buf", "count", "pos"]
    assert got.member("kref", "refcount") == (0, "struct refcount_struct")
    assert time.monotonic() - t0 < 30
    kb = btf.module_btf("cifs")
    if (HOST_BTF / "cifs").exists():  # cifs loaded on the host: the real choice must come from BTF
        assert kb.btf is not None and kb.btf.start_id == got.count + 1, kb.why
        aff = Path("/sys/kernel/tracing/available_filter_functions")
        text = aff.read_text() if os.access(aff, os.R_OK) else AFF
        rel, notes = kallsyms.release_choice(text, os.uname().release, kb)
        assert rel is not None and rel.how.startswith("by BTF"), notes
    else:
        assert kb.btf is not None and "cifs missing" in kb.why and kb.where == str(vmlinux)


# ---------------------------------------------------------------- the choice


def test_kref_release_by_btf_wins_over_the_version(tmp_path: Path) -> None:
    kb = btfkit.load(btfkit.kref_kernel(), tmp_path)
    for release in ("6.1.0-18-amd64", "6.19.0"):  # a version saying 6.19 is wrong here: BTF decides
        rel, notes = kallsyms.release_choice(AFF, release, kb)
        assert rel == kallsyms.ReleaseProbe("__release_mid", 0, 16) and notes == []
        assert rel is not None and rel.how.startswith("by BTF: __release_mid(struct kref *refcount)")


def test_server_mid_release_by_btf_on_an_older_version(tmp_path: Path) -> None:
    kb = btfkit.load(btfkit.server_mid_kernel(), tmp_path)  # a 6.19 change backported to "6.1"
    rel = kallsyms.choose_release(AFF, "6.1.0-30-amd64", kb)
    assert rel == kallsyms.ReleaseProbe("__release_mid", 1, 0) and rel.how.startswith("by BTF")


def test_cifs_mid_q_entry_release_by_btf(tmp_path: Path) -> None:
    kb = btfkit.load(btfkit.kref_kernel("_cifs_mid_q_entry_release"), tmp_path)
    rel = kallsyms.choose_release(AFF_5, "5.15.0", kb)
    assert rel == kallsyms.ReleaseProbe("_cifs_mid_q_entry_release", 0, 16) and "by BTF" in rel.how


def test_kref_offset_comes_from_btf(tmp_path: Path) -> None:
    k = btfkit.Kernel()
    mid = k.mid(kref_at=24)  # a layout with another member before refcount
    k.alloc(mid)
    k.cifs.func("__release_mid", [("refcount", k.p(k.kref))])
    rel = kallsyms.choose_release(AFF, "6.1.0", btfkit.load(k, tmp_path))
    assert rel == kallsyms.ReleaseProbe("__release_mid", 0, 24)


def test_release_whose_signature_does_not_fit_is_refused(tmp_path: Path) -> None:
    k = btfkit.Kernel()
    mid = k.mid(kref_type=k.int)  # refcount is no kref: a kref pointer cannot be turned into the mid
    k.alloc(mid)
    k.cifs.func("__release_mid", [("refcount", k.p(k.kref))])
    k.cifs.func("release_mid", [("server", k.p(k.server)), ("x", k.int), ("mid", k.p(mid))])  # arg 2
    rel, notes = kallsyms.release_choice(AFF, "6.1.0", btfkit.load(k, tmp_path))
    assert rel is None
    assert notes == ["__release_mid not probed: mid_q_entry.refcount is int, not struct kref",
                     "release_mid not probed: BTF says release_mid(struct TCP_Server_Info *server, int x, "
                     "struct mid_q_entry *mid): the mid is argument 2; the program reads 0 or 1"]


def test_a_refused_release_falls_through_to_the_next_candidate(tmp_path: Path) -> None:
    k = btfkit.Kernel()
    mid = k.mid()
    k.alloc(mid)
    k.cifs.func("__release_mid", [("x", k.int)])
    k.cifs.func("release_mid", [("mid", k.p(mid))])
    rel, notes = kallsyms.release_choice(AFF, "6.1.0", btfkit.load(k, tmp_path))
    assert rel == kallsyms.ReleaseProbe("release_mid", 0, 0)
    assert notes == ["__release_mid not probed: BTF says __release_mid(int x): no struct mid_q_entry * or "
                     "struct kref * argument"]


def test_without_cifs_btf_the_symbol_then_the_version_decides(tmp_path: Path) -> None:
    vmlinux_only = btfkit.load(btfkit.kref_kernel(), tmp_path, module=False)
    for kb in (None, vmlinux_only, btf.KernelBtf(None, "/x/cifs", "cannot read /x/cifs")):
        old = kallsyms.choose_release(AFF, "6.1.0", kb)
        new = kallsyms.choose_release(AFF, "6.19.1", kb)
        assert old == kallsyms.ReleaseProbe("__release_mid", 0, 16) and old.how.startswith("by kernel version 6.1")
        assert new == kallsyms.ReleaseProbe("__release_mid", 1, 0) and new.how.startswith("by kernel version 6.19")
        v5 = kallsyms.choose_release(AFF_5, "6.19.1", kb)  # the name alone decides: no version
        assert v5 == kallsyms.ReleaseProbe("_cifs_mid_q_entry_release", 0, 16) and v5.how.startswith("by symbol")
    assert "no cifs BTF" in kallsyms.choose_release(AFF, "6.1.0", vmlinux_only).how


def test_module_btf_without_the_function_falls_back(tmp_path: Path) -> None:
    k = btfkit.Kernel()  # pahole left __release_mid out (e.g. an inconsistent prototype)
    k.alloc(k.mid())
    rel = kallsyms.choose_release(AFF, "6.19.0", btfkit.load(k, tmp_path))
    assert rel == kallsyms.ReleaseProbe("__release_mid", 1, 0)
    assert rel.how == "by kernel version 6.19 (no FUNC __release_mid in its BTF)"


def test_builtin_cifs_is_described_by_vmlinux_btf(tmp_path: Path) -> None:
    k = btfkit.Kernel()
    v = k.vmlinux  # CONFIG_CIFS=y: the functions are in vmlinux's BTF, no /sys/kernel/btf/cifs
    mid = v.struct("mid_q_entry", [("qhead", k.list_head, 0), ("refcount", k.kref, 16)], 256)
    v.func("__release_mid", [("server", v.ptr(v.struct("TCP_Server_Info", [], 8))), ("mid", v.ptr(mid))])
    rel = kallsyms.choose_release("__release_mid\n", "6.1.0", btfkit.load(k, tmp_path, module=False))
    assert rel == kallsyms.ReleaseProbe("__release_mid", 1, 0) and rel.how.endswith("/btf/vmlinux")


def test_alloc_probe_is_checked(tmp_path: Path) -> None:
    ok = btfkit.load(btfkit.kref_kernel(), tmp_path / "ok")
    assert kallsyms.kprobe_choice(AFF, "6.1.0", ok)[0] == kallsyms.KprobePlan(
        "smb2_mid_entry_alloc", kallsyms.ReleaseProbe("__release_mid", 0, 16))
    old = btfkit.Kernel()  # 5.10..5.13 call it smb2_sync_hdr
    sync = old.cifs.struct("smb2_sync_hdr", [], 64)
    old.alloc(old.mid(), hdr=sync)
    old.cifs.func("_cifs_mid_q_entry_release", [("refcount", old.p(old.kref))])
    assert kallsyms.choose_kprobes(AFF_5, "5.10.0", btfkit.load(old, tmp_path / "old")) is not None

    bad = btfkit.Kernel()
    bad.alloc(bad.mid(), hdr=bad.char)  # the entry probe reads the SMB2 header from argument 0
    bad.cifs.func("__release_mid", [("refcount", bad.p(bad.kref))])
    kp, notes = kallsyms.kprobe_choice(AFF, "6.1.0", btfkit.load(bad, tmp_path / "bad"))
    assert kp is None and notes == [
        "smb2_mid_entry_alloc not probed: BTF says smb2_mid_entry_alloc(char *shdr, struct TCP_Server_Info "
        "*server): argument 0 is char *, not struct smb2_hdr * or struct smb2_sync_hdr *"]
    with pytest.raises(tracepoints.SetupError) as ei:
        tracepoints.plan_smb({}, AFF, "6.1.0", kernel_btf=btfkit.load(bad, tmp_path / "bad2"))
    assert ei.value.code == tracepoints.EX_CONFIG and "argument 0 is char *" in str(ei.value)

    ret = btfkit.Kernel()
    ret.cifs.func("smb2_mid_entry_alloc", [("shdr", ret.p(ret.hdr)), ("server", ret.p(ret.server))], ret.int)
    ret.cifs.func("__release_mid", [("refcount", ret.p(ret.kref))])
    kp, notes = kallsyms.kprobe_choice(AFF, "6.1.0", btfkit.load(ret, tmp_path / "ret"))
    assert kp is None and "returns int, not struct mid_q_entry *" in notes[0]


def test_connection_probes_are_checked(tmp_path: Path) -> None:
    k = btfkit.Kernel()
    k.alloc(k.mid())
    k.find_mid("__smb2_find_mid", first=k.p(k.char))  # server not in argument 0: refused
    k.find_mid("smb2_find_mid")
    conn, notes = kallsyms.conn_choice(AFF, btfkit.load(k, tmp_path / "a"))
    assert conn == ("smb2_mid_entry_alloc", "smb2_find_mid")
    assert notes == ["__smb2_find_mid not probed: BTF says __smb2_find_mid(char *server, char *buf, _Bool "
                     "dequeue): argument 0 is char *, not struct TCP_Server_Info *"]
    assert kallsyms.conn_choice(AFF, None)[0] == ("smb2_mid_entry_alloc", "__smb2_find_mid")  # no BTF: names

    bad = btfkit.Kernel()
    bad.alloc(bad.mid(), server=bad.hdr)  # the alloc probe reads the server from argument 1
    bad.find_mid()
    kb = btfkit.load(bad, tmp_path / "b")
    conn, notes = kallsyms.conn_choice(AFF, kb)
    assert conn is None and "argument 1 is struct smb2_hdr *, not struct TCP_Server_Info *" in notes[0]
    plan = tracepoints.plan_smb({"smb3_cmd_enter": "", "smb3_cmd_done": ""}, AFF, "6.1.0", kernel_btf=kb)
    assert plan.mode == "tracepoint" and plan.optional_kprobes == () and "AOD_CONN_PROBES=1" not in plan.defines
    assert any("not probed" in n for n in plan.notes) and any("were refused" in n for n in plan.notes)


@pytest.mark.parametrize("kernel,release,how,arg,off", [
    (btfkit.kref_kernel, "6.19.0", "by BTF", 0, 16),
    (btfkit.server_mid_kernel, "6.1.0", "by BTF", 1, 0),
    (None, "6.1.0", "by kernel version 6.1 (no cifs BTF: ", 0, 16),
])
def test_the_plan_note_says_what_decided(tmp_path: Path, kernel: object, release: str, how: str,
                                         arg: int, off: int) -> None:
    kb = btfkit.load(kernel(), tmp_path) if callable(kernel) else btf.module_btf("cifs", str(tmp_path / "none"))
    plan = tracepoints.plan_smb({}, AFF, release, kernel_btf=kb)
    assert plan.mode == "kprobe"
    assert f"AOD_RELEASE_ARG={arg}" in plan.defines and f"AOD_RELEASE_OFF={off}" in plan.defines
    note = [n for n in plan.notes if n.startswith("kprobe fallback")]
    assert len(note) == 1 and f"(arg {arg}, offset {off}; {how}" in note[0]
