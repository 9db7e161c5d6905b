"""Hostile pin directories for the tracer's create_missing (aod/pins.py) and the core's
ensure_pinned_ringbuf (aod/bpfsys.py): a symlink swapped in after the pin is never chmod-ed
through, an entry that appears after check_pinned is checked before bcc opens it, a ring whose
basename the kernel refuses as a map name still gets a map, a pin directory or a pin of another
user is refused. The pure tests fake the bpf syscalls; the kernel ones mount a private bpffs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from aod import bpfsys, pins
from aod import config as config_mod
from aod.tracepoints import EX_CONFIG, SetupError

RING = 256 * 1024


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_text("root's file\n")
    v.chmod(0o644)
    return v


def _fake_create(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> None:
    def create(mtype: int, ks: int, vs: int, entries: int, name: str) -> int:
        names.append(name)
        return os.open("/dev/null", os.O_RDONLY)

    monkeypatch.setattr(bpfsys, "map_create", create)
    monkeypatch.setattr(bpfsys, "ringbuf_create", lambda size, name="events": os.open("/dev/null", os.O_RDONLY))


def test_chmod_after_pin_never_follows_a_symlink_swapped_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever can write the pin dir replaces the fresh pin by a symlink to /etc/passwd between
    BPF_OBJ_PIN and the chmod: root must not chmod the target 0600 (and must not go on to let bcc
    open it)."""
    victim = _victim(tmp_path)
    d = tmp_path / "pins"
    d.mkdir()
    paths = pins.pin_paths(config_mod.RingConfig(path=str(d / "events")))
    _fake_create(monkeypatch, [])

    def pin_then_swap(fd: int, path: str) -> None:
        os.symlink(victim, path)  # the attacker won the race

    monkeypatch.setattr(bpfsys, "obj_pin", pin_then_swap)
    with pytest.raises(SetupError, match="symbolic link"):
        pins.create_missing(paths, RING, "synthetic")
    assert victim.stat().st_mode & 0o777 == 0o644


def test_core_ring_chmod_never_follows_a_symlink_swapped_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = _victim(tmp_path)
    _fake_create(monkeypatch, [])
    monkeypatch.setattr(bpfsys, "obj_pin", lambda fd, path: os.symlink(victim, path))
    with pytest.raises(OSError):
        bpfsys.ensure_pinned_ringbuf(str(tmp_path / "pins" / "events"), RING)
    assert victim.stat().st_mode & 0o777 == 0o644


def test_entry_appearing_after_check_pinned_is_checked_before_bcc(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracer runs check_pinned, then create_missing: a symlink planted in between was skipped
    as 'already pinned' and bcc followed it to a map nobody checked."""
    d = tmp_path / "pins"
    d.mkdir()
    paths = pins.pin_paths(config_mod.RingConfig(path=str(d / "events")))
    _fake_create(monkeypatch, [])
    monkeypatch.setattr(bpfsys, "obj_pin", lambda fd, path: open(path, "x").close())
    os.symlink(tmp_path / "elsewhere", paths.ring)  # appeared after check_pinned
    with pytest.raises(SetupError, match="symbolic link"):
        pins.create_missing(paths, RING, "synthetic")


def test_map_names_are_ones_the_kernel_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ring.path may end in 'aod-ring' or 'a+b' (pin_paths allows - and +); BPF_MAP_CREATE refuses
    such a map name (EINVAL), so the tracer could never start."""
    d = tmp_path / "pins"
    d.mkdir()
    paths = pins.pin_paths(config_mod.RingConfig(path=str(d / "aod-ring+1")))
    names: list[str] = []
    _fake_create(monkeypatch, names)
    monkeypatch.setattr(bpfsys, "obj_pin", lambda fd, path: open(path, "x").close())
    monkeypatch.setattr(pins, "check_pinned", lambda *a, **k: [])
    pins.create_missing(paths, RING, "smb")
    assert len(names) == len(paths.maps())
    for n in names:
        assert re.fullmatch(r"[A-Za-z0-9_.]+", n), n


def _mountinfo(tmp_path: Path) -> str:
    mi = tmp_path / "mountinfo"
    mi.write_text(f"1 0 0:1 / {tmp_path} rw - bpf bpf rw\n")
    return str(mi)


def test_pin_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    """`mount -t bpf bpf /sys/fs/bpf` (what the tracer's message suggests) makes the bpffs root
    1777: any user can mkdir /sys/fs/bpf/aodv2 0777 before the first start and then plant
    symlinks, or their own maps, beside root's."""
    mi = _mountinfo(tmp_path)
    d = tmp_path / "aodv2"
    d.mkdir()
    d.chmod(0o777)
    paths = pins.pin_paths(config_mod.RingConfig(path=str(d / "events")))
    with pytest.raises(SetupError) as ei:
        pins.prepare_pin_dir(paths, mi)
    assert ei.value.code == EX_CONFIG and "writable" in str(ei.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_pin_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    mi = _mountinfo(tmp_path)
    d = tmp_path / "aodv2"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    paths = pins.pin_paths(config_mod.RingConfig(path=str(d / "events")))
    with pytest.raises(SetupError, match="owned by uid 65534"):
        pins.prepare_pin_dir(paths, mi)


# ---------------------------------------------------------------- a real kernel, a private bpffs



def test_kernel_ring_basename_with_a_dash(bpffs: Path) -> None:
    d = bpffs / "aodv2"
    d.mkdir(mode=0o700)
    paths = pins.pin_paths(config_mod.RingConfig(path=str(d / "aod-events")))
    made = pins.create_missing(paths, RING, "synthetic")
    assert sorted(made) == sorted([paths.ring, paths.drops])
    assert pins.check_pinned(paths, RING, "synthetic") == []


def test_kernel_map_pinned_by_another_user_is_refused(bpffs: Path) -> None:
    """Right shape, but pinned (or chowned) by someone else: they can read or feed what it holds."""
    d = bpffs / "aodv2"
    d.mkdir(mode=0o700)
    paths = pins.pin_paths(config_mod.RingConfig(path=str(d / "events")))
    pins.create_missing(paths, RING, "synthetic")
    os.chown(paths.drops, 65534, 65534)
    with pytest.raises(SetupError, match="pinned by uid 65534"):
        pins.check_pinned(paths, RING, "synthetic")
    with pytest.raises(SetupError, match="pinned by uid 65534"):
        pins.create_missing(paths, RING, "synthetic")
