"""Host-side tests of the VM harness (tests/vm/image.py, tests/vm/run.py).

No root, qemu or kernel: a fake `qemu-system-x86_64` on PATH plays the guest
(prints the runner's console marks, writes /share/guest-exit), so run.py's
share preparation, qemu argv and outcome classification are checked fast.
The real VM run is `make vm-smoke` (see tests/vm/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

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


image = _load("image")
run = _load("run")

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
    key = image.cache_key(image.mirror_lines())
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
