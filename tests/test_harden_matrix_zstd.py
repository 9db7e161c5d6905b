"""The zstd program reads what the module reads, no more (aod/zstdprog.py, the cli backend).

The program as Debian builds it also inflates gzip, xz, lzma and lz4 frames, also after a zstd
frame; the module refuses those ("Unknown frame descriptor"). A crafted bundle could then pass
`aodv2 check` on one backend and fail it on the other, and feed those decoders (run as root by
`sudo aodv2 show`). The cli reader walks the frames it feeds and stops at a foreign one."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from aod import bundleread, zstdcodec

pytestmark = pytest.mark.skipif(not zstdcodec.cli_path(), reason="no zstd program")


def _inflate(monkeypatch: pytest.MonkeyPatch, backend: str, blob: bytes, n: int = 65536) -> bytes:
    monkeypatch.setenv(zstdcodec.ENV_VAR, backend)
    out = b""
    with zstdcodec.reader(io.BytesIO(blob)) as r:
        while True:
            d = r.read(n)
            if not d:
                return out
            out += d


def _valid() -> bytes:
    """Frames of every header form, a skippable frame, and a last frame without checksum."""
    return (zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(b"a" * 100_000)
            + b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
            + zstandard.ZstdCompressor(level=19).compress(os.urandom(30_000))
            + zstandard.ZstdCompressor(write_content_size=False).compress(bytes(range(256)) * 4000)
            + zstandard.ZstdCompressor(write_checksum=False, write_content_size=False).compress(b"tail" * 50_000))


@pytest.mark.parametrize("foreign", ["gzip", "xz", "lzma"])
def test_cli_refuses_foreign_frames_as_the_module_does(monkeypatch: pytest.MonkeyPatch, foreign: str) -> None:
    valid = _valid()
    want = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(valid), read_across_frames=True).read(1 << 24)
    for n in (4093, 65536):  # every frame kind, read in small and large pieces: the same bytes
        assert _inflate(monkeypatch, "cli", valid, n) == want
    extra = {"gzip": gzip.compress, "xz": lzma.compress,
             "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE)}[foreign](b"smuggled" * 1000)
    for backend in ("module", "cli"):
        with pytest.raises(zstdcodec.CodecError, match="Unknown frame descriptor") as ei:
            _inflate(monkeypatch, backend, valid + extra)
        assert ei.value.corrupt, backend


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_check_verdict_is_the_same_on_both_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle whose tail is a gzip frame: corrupt for the module, so for the program too."""
    inner = _tar({"aod_x/summary.json": b"{}"})
    path = tmp_path / "aod_latency_20240101T000000Z_1.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(inner) + gzip.compress(b"\0" * 4096))
    verdicts = {}
    for backend in ("module", "cli"):
        monkeypatch.setenv(zstdcodec.ENV_VAR, backend)
        verdicts[backend] = bundleread.stream(str(path), lambda tar, m: True, 1 << 20)
    assert verdicts["module"] != "", verdicts
    assert verdicts["cli"] == verdicts["module"] or verdicts["cli"].startswith("corrupt"), verdicts
