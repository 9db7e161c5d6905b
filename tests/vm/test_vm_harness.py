"""Host-side tests of the VM harness (tests/vm/image.py, tests/vm/run.py, tests/vm/e2e_summary.py,
the guest drivers' loop tests/vm/guest/guestkit.py, .ci/run).

No root, qemu or kernel: a fake `qemu-system-x86_64` on PATH plays the guest
(prints the runner's console marks, writes /share/guest-exit), so run.py's
share preparation, qemu argv and outcome classification are checked fast.
guestkit's scenario loop runs here with trivial scenarios and a fake `run`
(no journalctl or systemctl), and e2e_summary prints the report it writes.
The real VM run is `make vm-smoke` (see tests/vm/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List

import pytest

VM_DIR = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    if str(VM_DIR) not in sys.path:
        sys.path.insert(0, str(VM_DIR))  # run.py imports its sibling image.py
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, VM_DIR / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _load_guest(name: str) -> ModuleType:
    """A guest driver module (tests/vm/guest/, imported by name as in /share/vmlib)."""
    guest = str(VM_DIR / "guest")
    if guest not in sys.path:
        sys.path.append(guest)
    return importlib.import_module(name)


image = _load("image")
run = _load("run")
summary = _load("e2e_summary")

FAKE_QEMU = r'''#!{python}
import json, os, sys, time
argv = sys.argv[1:]
share = argv[argv.index("-virtfs") + 1].split("path=")[1].split(",")[0]
with open(os.path.join(share, "qemu-argv.json"), "w") as f:
    json.dump(argv, f)
mode = os.environ["FAKE_QEMU"]
def say(s):
    print(s, flush=True)
say("[    0.000000] Linux version 6.1.0-fake")
if mode in ("hangboot",):
    time.sleep(60)
if mode == "panic":
    say("Kernel panic - not syncing: VFS: Unable to mount root fs")
    sys.exit(0)
say("AODV2-VMTEST: begin uptime=1.00 timeout=5s")
if mode == "hangrun":
    time.sleep(60)
if mode == "died":
    sys.exit(0)
rc = {{"pass": "0", "fail": "3", "gtimeout": "124", "noscript": "no-script"}}[mode]
with open(os.path.join(share, "guest-exit"), "w") as f:
    f.write(rc + "\n")
say("AODV2-VMTEST: end rc=" + rc)
'''


@pytest.fixture
def fake_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cached fake image + fake qemu on PATH; returns the share dir."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AOD_VM_CACHE", str(cache))
    monkeypatch.delenv("AOD_VM_SUITE", raising=False)
    monkeypatch.setattr(image, "archive_versions", lambda mirrors, wanted, cache: {"bookworm x": "1"})
    key = image.image_key("bookworm")[0]
    d = cache / key
    d.mkdir(parents=True)
    for name in ("rootfs.img", "vmlinuz", "initrd.img"):
        (d / name).write_bytes(b"")
    (d / "manifest.json").write_text(json.dumps({"key": key}))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    q = bindir / "qemu-system-x86_64"
    q.write_text(FAKE_QEMU.format(python=sys.executable))
    q.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(image, "ensure_host_deps", lambda: None)
    return tmp_path / "share"


@pytest.fixture
def script(tmp_path: Path) -> Path:
    s = tmp_path / "guest.sh"
    s.write_text("#!/bin/sh\necho hi\n")
    return s


@pytest.mark.parametrize(
    "mode,status,code",
    [
        ("pass", "passed", 0),
        ("fail", "script-failed", 3),
        ("gtimeout", "script-timeout", 124),
        ("panic", "boot-failure", run.EXIT_BOOT_FAILURE),
        ("died", "vm-died", run.EXIT_VM_DIED),
        ("noscript", "harness-error", run.EXIT_VM_DIED),
    ],
)
def test_outcome_classification(fake_vm: Path, script: Path, monkeypatch: pytest.MonkeyPatch,
                                mode: str, status: str, code: int) -> None:
    monkeypatch.setenv("FAKE_QEMU", mode)
    r = run.run_vm(fake_vm, script, timeout=5, boot_timeout=20)
    assert (r.status, r.exit_code) == (status, code), r.message
    assert r.ok == (status == "passed")
    assert (fake_vm / "console.log").read_text().startswith("[    0.000000] Linux")


def test_boot_hang_is_killed(fake_vm: Path, script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU", "hangboot")
    r = run.run_vm(fake_vm, script, timeout=5, boot_timeout=1)
    assert r.status == "boot-failure" and r.exit_code == run.EXIT_BOOT_FAILURE
    assert "did not reach the test runner" in r.message


def test_run_hang_is_killed(fake_vm: Path, script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU", "hangrun")
    r = run.run_vm(fake_vm, script, timeout=1, boot_timeout=10, grace=0)
    assert r.status == "vm-timeout" and r.exit_code == run.EXIT_VM_TIMEOUT
    assert "boot_to_script" in r.timings


def test_share_prepared_and_qemu_argv(fake_vm: Path, script: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "payload"
    extra.mkdir()
    (extra / "x.txt").write_text("x")
    monkeypatch.setenv("FAKE_QEMU", "pass")
    r = run.run_vm(fake_vm, script, timeout=42, boot_timeout=20, copies=[extra])
    assert r.ok
    gr = fake_vm / "guest-run"
    assert gr.read_text() == script.read_text()
    assert gr.stat().st_mode & stat.S_IXUSR
    assert (fake_vm / "guest-timeout").read_text().strip() == "42"
    assert (fake_vm / "vmlib" / "lib.sh").is_file()
    assert (fake_vm / "payload" / "x.txt").read_text() == "x"
    argv = json.loads((fake_vm / "qemu-argv.json").read_text())
    joined = " ".join(argv)
    for needle in ("-accel tcg,thread=multi", "-cpu max", "-nic none", "-no-reboot",
                   "if=virtio,format=raw,snapshot=on", "mount_tag=share,security_model=none",
                   "root=/dev/vda rw console=ttyS0"):
        assert needle in joined
    assert not any("kvm" in a for a in argv)


def test_stale_status_is_not_reused(fake_vm: Path, script: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU", "pass")
    assert run.run_vm(fake_vm, script, timeout=5, boot_timeout=20).ok
    monkeypatch.setenv("FAKE_QEMU", "panic")
    r = run.run_vm(fake_vm, script, timeout=5, boot_timeout=20)
    assert r.status == "boot-failure"


def test_missing_script_is_a_clear_error(fake_vm: Path, tmp_path: Path) -> None:
    r = run.run_vm(fake_vm, tmp_path / "nope.sh")
    assert r.status == "harness-error" and "no such guest script" in r.message


def test_main_exit_code_is_guest_status(fake_vm: Path, script: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU", "fail")
    assert run.main(["--share", str(fake_vm), "--script", str(script), "--timeout", "5"]) == 3


def test_parse_sources_deb822_and_one_line() -> None:
    deb822 = (
        "Types: deb\n# comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert image.parse_debian_uris([("debian.sources", deb822)]) == {
        "debian": "http://mirror.example/debian",
        "security": "http://mirror.example/debian-security",
    }
    one = ("deb [arch=amd64] http://m.example/debian/ bookworm main\n"
           "deb https://other.example/apt cloud-sdk-bookworm main\n")
    got = image.parse_debian_uris([("sources.list", one)])
    assert got["debian"] == "http://m.example/debian"
    assert got["security"] == "http://deb.debian.org/debian-security"  # fallback


def test_cache_key_tracks_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    m = image.mirror_lines()
    k1 = image.cache_key(m)
    assert k1 == image.cache_key(m)
    monkeypatch.setattr(image, "PACKAGES", [*image.PACKAGES, "hello"])
    assert image.cache_key(m) != k1
    monkeypatch.undo()
    assert image.cache_key([*m[:1], "deb http://x/debian bookworm main"]) != k1


def test_suite_choice_packages_and_mirrors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AOD_VM_SUITE", "trixie")
    assert image.suite() == "trixie"
    monkeypatch.setenv("AOD_VM_SUITE", "buster")
    with pytest.raises(image.BuildError, match="bullseye, bookworm, trixie"):
        image.suite()
    assert "python3-zstandard" not in image.packages("bullseye")  # not in Debian 11's archive
    assert "python3-zstandard" in image.packages("trixie") and "zstd" in image.packages("bullseye")
    assert [ln.split()[2] for ln in image.mirror_lines("bullseye")] == [
        "bullseye", "bullseye-updates", "bullseye-security"]
    # the host's bookworm sources name the mirror every suite is fetched from
    deb822 = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main\n"
    assert image.parse_debian_uris([("d.sources", deb822)])["debian"] == "http://m.example/debian"


def test_archive_versions_key_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive update (a new kernel) gives a new key; the index is fetched only when its hash moves."""
    import lzma
    index = b"Package: linux-image-amd64\nVersion: 6.1.1-1\n\nPackage: other\nVersion: 2\n"
    xz = lzma.compress(index)
    sha = __import__("hashlib").sha256(xz).hexdigest()
    inrelease = f"Origin: Debian\nSHA256:\n {sha} {len(xz)} main/binary-amd64/Packages.xz\n".encode()
    fetched: list = []

    def fetch(url: str, timeout: float = 60.0, limit: int = 0) -> bytes:
        fetched.append(url)
        return inrelease if url.endswith("InRelease") else xz

    monkeypatch.setattr(image, "_fetch", fetch)
    monkeypatch.setattr(image, "verified_release", lambda data: data.decode())  # unsigned test text
    m = ["deb http://m.example/debian bookworm main"]
    v1 = image.archive_versions(m, ["linux-image-amd64"], tmp_path)
    assert v1 == {"bookworm linux-image-amd64": "6.1.1-1"} and len(fetched) == 2
    assert image.archive_versions(m, ["linux-image-amd64"], tmp_path) == v1 and len(fetched) == 3  # memo
    with pytest.raises(image.BuildError, match="not in the bookworm archive: hello"):
        image.archive_versions(m, ["linux-image-amd64", "hello"], tmp_path)
    k1 = image.cache_key(m, v1)
    assert image.cache_key(m, {"bookworm linux-image-amd64": "6.1.2-1"}) != k1
    xz_bad = b"not the indexed file"
    monkeypatch.setattr(image, "_fetch",
                        lambda url, timeout=60.0, limit=0: inrelease if url.endswith("InRelease") else xz_bad)
    with pytest.raises(image.BuildError, match="does not match"):
        image.archive_versions(m, ["other"], tmp_path / "fresh")


ARCHIVE = Path(__file__).resolve().parent.parent / "fixtures" / "archive"


def test_inrelease_signature_is_checked_by_gpgv() -> None:
    """A real bullseye InRelease verifies against the Debian keyring; one changed byte does not."""
    real = (ARCHIVE / "bullseye-InRelease").read_bytes()
    text = image.verified_release(real)
    assert "Codename: bullseye" in text and "BEGIN PGP" not in text
    sha = image.packages_index_sha(text)
    assert sha is not None and len(sha) == 64
    forged = real.replace(b"Codename: bullseye", b"Codename: bullsEye", 1)
    with pytest.raises(image.BuildError, match="signature not valid"):
        image.verified_release(forged)


def test_expired_inrelease_and_bad_hashes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess as sp
    old = b"Origin: Debian\nValid-Until: Sat, 01 Jan 2000 00:00:00 UTC\n"
    monkeypatch.setattr(image.subprocess, "run",
                        lambda *a, **k: sp.CompletedProcess(a[0], 0, old, b""))
    with pytest.raises(image.BuildError, match="expired"):
        image.verified_release(b"signed")
    fresh = b"Origin: Debian\nValid-Until: Sat, 01 Jan 2100 00:00:00 UTC\n"
    monkeypatch.setattr(image.subprocess, "run",
                        lambda *a, **k: sp.CompletedProcess(a[0], 0, fresh, b""))
    assert "2100" in image.verified_release(b"signed")
    bad = "SHA256:\n ../../etc/passwd 12 main/binary-amd64/Packages.xz\n"
    assert image.packages_index_sha(bad) is None  # never a path into a cache file name


def test_fetch_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    class Body(io.BytesIO):
        def __enter__(self) -> Body:
            return self

    monkeypatch.setattr(image.urllib.request, "urlopen", lambda url, timeout: Body(b"x" * 300_000))
    assert len(image._fetch("http://m.example/a", limit=300_000)) == 300_000
    with pytest.raises(image.BuildError, match="more than 299999 bytes"):
        image._fetch("http://m.example/a", limit=299_999)


def test_prune_keeps_other_suites(tmp_path: Path) -> None:
    names = ["bookworm-" + "a" * 16, "bookworm-" + "b" * 16, "bookworm-" + "c" * 16, "trixie-" + "d" * 16,
             "e" * 16]
    for i, n in enumerate(names):
        (tmp_path / n).mkdir()
        os.utime(tmp_path / n, (i, i))
    gone = {p.name for p in image.prune_cache(tmp_path, "bookworm-" + "c" * 16, spare=1)}
    assert gone == {"bookworm-" + "a" * 16, "e" * 16}  # the newest other bookworm one is spared; trixie stays
    assert (tmp_path / ("trixie-" + "d" * 16)).is_dir()


def test_incomplete_cache_dir_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "vmlinuz").write_bytes(b"")
    assert image.load_cached(tmp_path) is None


def test_overlay_has_runner_unit_and_9p() -> None:
    ov = image.OVERLAY
    assert "share /share 9p trans=virtio,version=9p2000.L" in (ov / "etc/fstab").read_text()
    mods = (ov / "usr/share/initramfs-tools/modules.d/aodv2-vm").read_text().split()
    assert {"9p", "9pnet_virtio"} <= set(mods)
    unit = (ov / "etc/systemd/system/aodv2-vmtest.service").read_text()
    assert "FailureAction=poweroff-force" in unit and "SuccessAction=poweroff-force" in unit
    assert os.access(ov / "usr/local/sbin/aodv2-vmtest", os.X_OK)


def test_stale_package_removed_from_a_persistent_share(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "aodv2_0.0.9-1_all.deb").write_text("old")
    (share / "aodv2_0.1.0-1_all.deb").write_text("same name, older build")
    (share / "other_1.0_all.deb").write_text("another package")
    new = tmp_path / "dist" / "aodv2_0.1.0-1_all.deb"
    new.parent.mkdir()
    new.write_text("new")
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    run.prepare_share(share, script, 10, [new])
    assert sorted(p.name for p in share.glob("*.deb")) == ["aodv2_0.1.0-1_all.deb", "other_1.0_all.deb"]
    assert (share / "aodv2_0.1.0-1_all.deb").read_text() == "new"


# ---------------------------------------------------------------- e2e_summary and guestkit's loop

def _report(tmp_path: Path, rep: Dict[str, Any]) -> str:
    p = tmp_path / "report.json"
    p.write_text(json.dumps(rep))
    return str(p)


RUN_OK = {"pass": True, "seconds": 1.0, "kernel": "6.1", "failed": [], "skipped": []}


def test_summary_of_a_failed_scenario_prints_journal_and_status(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    journal = [f"[ 10.{i:03d}] aodv2[42]: line {i}" for i in range(60)]
    status = ["x aodv2.service - aodv2 core", "     Active: failed (Result: watchdog)",
              "x aodv2-tracer@smb.service - aodv2 tracer smb"] + [f"status {i}" for i in range(100)]
    rep = {"1_install_enable": {"pass": True, "detail": {"checks": {"ok": True}}, "seconds": 3.0},
           "7_core_hangs": {"pass": False, "seconds": 9.0, "stop_to_core_active_s": 80.0,
                            "detail": {"checks": {"core restarted": False, "config reloaded": True},
                                       "journal_tail": journal, "unit_status": status}},
           "_run": dict(RUN_OK, **{"pass": False, "failed": ["7_core_hangs"]})}
    assert summary.main(_report(tmp_path, rep)) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    fail = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL 7_core_hangs"))
    assert "'core restarted'" in lines[fail] and "stop_to_core_active_s" in lines[fail]
    after = "\n".join(lines[fail + 1:])
    assert "      [ 10.059] aodv2[42]: line 59" in after  # the newest journal line, indented
    assert "line 19" not in after and "line 20" in after  # capped to the last 40
    assert "      x aodv2-tracer@smb.service - aodv2 tracer smb" in after
    assert "Active: failed (Result: watchdog)" in after
    assert "status 56" in after and "status 57" not in after  # capped to the first 60
    assert "PASS 1_install_enable" in out and "line" not in out.split("FAIL 7_core_hangs")[0]


def test_summary_of_a_passing_report_is_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rep = {"1_install_enable": {"pass": True, "detail": {"checks": {"ok": True}}, "seconds": 3.0, "install_s": 2.0},
           "_run": RUN_OK}
    assert summary.main(_report(tmp_path, rep)) == 0
    out = capsys.readouterr().out
    assert 'PASS 1_install_enable {"seconds": 3.0, "install_s": 2.0}' in out and "RUN PASS" in out


@pytest.mark.parametrize("rep,needle", [
    ({"1_a": {"pass": True, "seconds": 1.0}, "2_b": {"pass": False, "skipped": True, "seconds": 0},
      "_run": dict(RUN_OK, **{"pass": False, "skipped": ["2_b"]})}, "SKIP 2_b"),
    ({"_run": RUN_OK}, "has no scenario"),
    ({}, "has no scenario"),
    ({"1_a": {"pass": True, "seconds": 1.0}}, "RUN INCOMPLETE"),  # the driver died before the end
    ([1, 2], "expected a JSON object"),
])
def test_summary_fails_on_skipped_missing_or_incomplete(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        rep: Any, needle: str) -> None:
    assert summary.main(_report(tmp_path, rep)) == 1
    assert needle in capsys.readouterr().out


def test_summary_of_an_unreadable_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert summary.main(str(tmp_path / "missing.json")) == 1
    assert "cannot read" in capsys.readouterr().out


@pytest.fixture
def guestkit(monkeypatch: pytest.MonkeyPatch) -> Any:
    """guestkit with `run` faked: journalctl prints 60 lines, systemctl status 3 units; calls recorded."""
    gk = _load_guest("guestkit")
    calls: List[List[str]] = []

    def fake_run(argv: List[str], timeout: float = 120, env: Any = None) -> subprocess.CompletedProcess:
        calls.append(list(argv))
        if argv[0] == "journalctl":
            return subprocess.CompletedProcess(argv, 0, "".join(f"j{i}\n" for i in range(60)), "")
        if argv[:2] == ["systemctl", "status"]:
            return subprocess.CompletedProcess(argv, 3, "* aodv2.service\n* aodv2-tracer@smb.service\n", "")
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(gk, "run", fake_run)
    monkeypatch.setattr(gk, "calls", calls, raising=False)
    return gk


def _scenarios(ran: List[str]) -> List[Any]:
    def ok(name: str) -> Callable[[Any], None]:
        return lambda c: (ran.append(name), c.check("fine", True))[1]

    def bad(c: Any) -> None:
        ran.append("2_bad")
        c.check("broken", False, "details")
    return [("1_install", ok("1_install")), ("2_bad", bad), ("3_late", ok("3_late")), ("3b_later", ok("3b_later"))]


def test_run_scenarios_records_unselected_as_skipped_and_keeps_diagnostics(
        guestkit: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran: List[str] = []
    path = tmp_path / "r.json"
    rc = guestkit.run_scenarios(_scenarios(ran), str(path), only="2", always=("1",),
                                diag_units=("aodv2.service", "aodv2-tracer@*"))
    assert rc == 1 and ran == ["1_install", "2_bad"]
    rep = json.loads(path.read_text())
    assert list(rep) == ["1_install", "2_bad", "3_late", "3b_later", "_run"]
    assert rep["3_late"] == {"pass": False, "skipped": True, "seconds": 0} == rep["3b_later"]
    assert rep["_run"]["skipped"] == ["3_late", "3b_later"] and rep["_run"]["failed"] == ["2_bad"]
    assert rep["_run"]["pass"] is False and rep["1_install"]["pass"] is True
    d = rep["2_bad"]["detail"]
    assert d["journal_tail"] == [f"j{i}" for i in range(20, 60)]  # the last 40 lines
    assert d["unit_status"] == ["* aodv2.service", "* aodv2-tracer@smb.service"]
    j = next(a for a in guestkit.calls if a[0] == "journalctl")
    st = next(a for a in guestkit.calls if a[:2] == ["systemctl", "status"])
    assert ["-u", "aodv2-tracer@*"] == j[j.index("aodv2-tracer@*") - 1:j.index("aodv2-tracer@*") + 1]
    assert st[-2:] == ["aodv2.service", "aodv2-tracer@*"]
    assert "detail" not in rep["1_install"] or "journal_tail" not in rep["1_install"]["detail"]
    capsys.readouterr()
    assert summary.main(str(path)) == 1
    out = capsys.readouterr().out
    assert "SKIP 3_late" in out and "SKIP 3b_later" in out and "FAIL 2_bad" in out
    assert "      j59" in out and "      * aodv2-tracer@smb.service" in out


def test_run_scenarios_all_selected_and_passing_is_0(guestkit: Any, tmp_path: Path) -> None:
    # faults_run.py's call: no `always`, word="part", all parts; here without the failing one
    ran: List[str] = []
    parts = [s for s in _scenarios(ran) if s[0] != "2_bad"]
    path = tmp_path / "r.json"
    assert guestkit.run_scenarios(parts, str(path), "", word="part") == 0
    rep = json.loads(path.read_text())
    assert ran == ["1_install", "3_late", "3b_later"]
    assert rep["_run"]["pass"] is True and rep["_run"]["skipped"] == [] and rep["_run"]["failed"] == []
    assert not [a for a in guestkit.calls if a[0] in ("journalctl", "systemctl")]  # no diagnostics
    assert summary.main(str(path)) == 0


def test_run_scenarios_exception_fails_only_that_scenario(guestkit: Any, tmp_path: Path) -> None:
    cleaned: List[int] = []

    def boom(c: Any) -> None:
        raise RuntimeError("tc missing")
    path = tmp_path / "r.json"
    rc = guestkit.run_scenarios([("1_boom", boom), ("2_ok", lambda c: c.check("ok", True))], str(path),
                                only="1,2", cleanup=lambda: cleaned.append(1))
    rep = json.loads(path.read_text())
    assert rc == 1 and cleaned == [1] and rep["2_ok"]["pass"] and not rep["1_boom"]["pass"]
    assert any("tc missing" in k for k in rep["1_boom"]["detail"]["checks"])


def test_guest_run_missing_tool_is_127() -> None:
    gk = _load_guest("guestkit")
    r = gk.run(["/nonexistent/aodv2-no-such-tool", "x"])
    assert r.returncode == 127 and "aodv2-no-such-tool" in r.stderr


@pytest.mark.parametrize("text,secs", [
    ("30s", 30.0), ("1min", 60.0), ("1min 30s", 90.0), ("500ms", 0.5), ("2h 1min", 7260.0),
    ("30000000", 30.0), ("750\u00b5s", 0.00075), ("750us", 0.00075), ("0", 0.0),
    ("", None), ("infinity", None), ("30 parsecs", None), ("s30", None), ("30s x", None),
])
def test_timespan_s(text: str, secs: Any) -> None:
    got = _load_guest("guestkit").timespan_s(text)
    assert got == (pytest.approx(secs) if secs is not None else None)


@pytest.mark.parametrize("p50,ok", [(786.432, True), (800.0, True), (400.0, True), (2400.0, True),
                                    (399.0, False), (2401.0, False), (786432.0, False), (0.786, False),
                                    (None, False)])
def test_e2e_p50_bounds_catch_a_wrong_unit(p50: Any, ok: bool) -> None:
    e2e = _load_guest("e2e_run")
    assert e2e.LAT_DELAY_MS == 400 and e2e.P50_MAX_FACTOR == 6
    assert e2e.p50_reflects_delay(p50, e2e.LAT_DELAY_MS) is ok


@pytest.fixture
def ci_copy(tmp_path: Path) -> Path:
    """.ci/run in a tree whose tests/run only records that it ran (never the real suite)."""
    root = VM_DIR.parent.parent
    (tmp_path / ".ci").mkdir()
    shutil.copy2(root / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "tests").mkdir()
    fake = tmp_path / "tests" / "run"
    fake.write_text('#!/bin/sh\necho "RAN AOD_REQUIRE_VM=$AOD_REQUIRE_VM"\n')
    fake.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fid = bindir / "id"
    fid.write_text('#!/bin/sh\necho "$FAKE_UID"\n')
    fid.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("uid,skip,ok,needle", [
    ("0", None, True, "RAN AOD_REQUIRE_VM=1"),
    ("0", "0", True, "RAN AOD_REQUIRE_VM=1"),
    ("0", "1", False, "AOD_SKIP_VM=1 is set"),
    ("1000", None, False, "must run as root"),
])
def test_ci_run_requires_root_and_the_vm(ci_copy: Path, uid: str, skip: Any, ok: bool, needle: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("AOD_SKIP_VM", "AOD_REQUIRE_VM")}
    env.update(PATH=f"{ci_copy / 'bin'}{os.pathsep}{env.get('PATH', '')}", FAKE_UID=uid)
    if skip is not None:
        env["AOD_SKIP_VM"] = skip
    r = subprocess.run([str(ci_copy / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=30)
    assert (r.returncode == 0) == ok and needle in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
    assert ("RAN" in r.stdout) == ok


@pytest.mark.parametrize("state, up", [("active", True), ("reloading", True), ("activating", False),
                                       ("inactive", False), ("failed", False), ("", False)])
def test_active_counts_a_propagated_reload_as_up(monkeypatch: pytest.MonkeyPatch, state: str, up: bool) -> None:
    """A reload of aodv2 propagates to the tracer (ReloadPropagatedFrom=): 'reloading' for a moment
    is up, not down (CI once failed 'tracer running' on it)."""
    gk = _load_guest("guestkit")
    monkeypatch.setattr(gk, "run", lambda argv, timeout=120, env=None: subprocess.CompletedProcess(
        argv, 0 if up else 3, state + "\n", ""))
    assert gk.active("aodv2-tracer@smb.service") is up
