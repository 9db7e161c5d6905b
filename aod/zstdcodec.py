"""zstd for bundles: streaming compression and decompression (collect -> retain: the bundle's compression).

ring -> dispatch -> detect -> **collect** -> retain. bundle.py writes each `.tar.zst` through
writer() and reads bundles back through reader(); bundleread.py (`aodv2 show`, `list`) reads through
reader(). Two backends, one format (standard zstd frames; readers go across frames):

- module: the `zstandard` Python module (pip installs, Debian 12's python3-zstandard);
- cli: the `zstd` program (Debian 11 has zstd 1.4.8 but no python3-zstandard), run from CLI_PATHS
  by zstdprog.py: a fixed argv, its own session, registered with the core's reaper, killed and
  reaped on every error and after STALL_SEC without progress (CodecError): a stalled program
  never hangs a capture or a viewer.

This module is the public face: backend choice, CodecError (defined in zstdprog.py, so that module
needs nothing from this one), writer(), reader() and the module backend. zstdprog.py is the program
backend: the child process, its pipes and its reaping, and the frame walker that keeps it to zstd.

Default: the module when it imports, else the program. AOD_ZSTD_BACKEND=module|cli forces one
(for tests). With neither, backend() raises a one-line CodecError saying which package to install:
the daemon still runs and detects, its captures fail with that message.
"""

from __future__ import annotations

import importlib
import os
from typing import IO, Any

from .zstdprog import CliReader, CliWriter, Stream
from .zstdprog import CodecError as CodecError  # re-exported: callers and tests catch zstdcodec.CodecError

ENV_VAR = "AOD_ZSTD_BACKEND"
CLI_PATHS = ("/usr/bin/zstd", "/bin/zstd")
STALL_SEC = 30.0  # the zstd program made no progress this long: killed, CodecError
_NOT_LOADED: Any = object()
_mod: Any = _NOT_LOADED


def _module() -> Any:
    """The zstandard module, or None where it is not installed (imported once)."""
    global _mod
    if _mod is _NOT_LOADED:
        try:
            _mod = importlib.import_module("zstandard")
        except ImportError:
            _mod = None
    return _mod


def cli_path() -> str:
    """The zstd program, '' if there is none."""
    return next((p for p in CLI_PATHS if os.path.isfile(p) and os.access(p, os.X_OK)), "")


def backend() -> str:
    """'module' or 'cli': what writer() and reader() use now. Raises CodecError (one line: what is
    missing and which package provides it)."""
    want = os.environ.get(ENV_VAR, "")
    if want not in ("", "module", "cli"):
        raise CodecError(f"{ENV_VAR}={want!r}: expected module or cli")
    if want != "cli" and _module() is not None:
        return "module"
    if want != "module" and cli_path():
        return "cli"
    no_mod = "the Python module zstandard is not installed (package python3-zstandard)"
    no_cli = f"there is no zstd program ({' or '.join(CLI_PATHS)}; package zstd)"
    if want:
        raise CodecError(f"{ENV_VAR}={want} but " + (no_mod if want == "module" else no_cli))
    raise CodecError("no zstd to compress or read bundles: neither the Python module zstandard nor the zstd "
                     f"program ({' or '.join(CLI_PATHS)}) is installed; install python3-zstandard or zstd")


def describe() -> str:
    """For `aodv2 status`: 'module', 'cli /usr/bin/zstd' or 'none'."""
    try:
        b = backend()
    except CodecError:
        return "none"
    return f"cli {cli_path()}" if b == "cli" else b


def problem() -> str:
    """'' when bundles can be written and read, else why not (backend()'s message)."""
    try:
        backend()
    except CodecError as e:
        return str(e)
    return ""


def writer(raw: IO[bytes], level: int) -> Any:
    """A write-only stream for the tar; one zstd frame goes to raw (an open file, at its offset).
    Raises CodecError (and OSError from raw with the module)."""
    if backend() == "module":
        return _ModuleWriter(raw, level)
    return CliWriter(raw, level, cli_path() or CLI_PATHS[0], STALL_SEC)


def reader(raw: IO[bytes]) -> Any:
    """read(n) of what raw holds (from its offset on) decompressed, across frames. Truncated input
    ends early without an error (as the module does); garbled input raises CodecError(corrupt=True)."""
    if backend() == "module":
        return _ModuleReader(raw)
    return CliReader(raw, cli_path() or CLI_PATHS[0], STALL_SEC)


class _ModuleWriter(Stream):
    def __init__(self, raw: IO[bytes], level: int) -> None:
        z = _module()
        self._err = z.ZstdError
        self._zw = z.ZstdCompressor(level=level, threads=0).stream_writer(raw, closefd=False)

    def write(self, data: bytes) -> int:
        try:
            self._zw.write(data)
        except self._err as e:
            raise CodecError(str(e)) from e
        return len(data)

    def close(self) -> None:  # ends the frame; raw stays open
        if not self._zw.closed:
            try:
                self._zw.close()
            except self._err as e:
                raise CodecError(str(e)) from e

    def abort(self) -> None:
        try:
            self.close()
        except (CodecError, OSError):
            pass


class _ModuleReader(Stream):
    def __init__(self, raw: IO[bytes]) -> None:
        z = _module()
        self._err = z.ZstdError
        self._zr = z.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self._zr.read(n))
        except self._err as e:
            raise CodecError(str(e), corrupt=True) from e

    def close(self) -> None:
        self._zr.close()
