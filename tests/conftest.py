"""Shared fixtures. With AOD_STRICT=1 (set by tests/run as root, so in CI) a skip is a failure."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("AOD_STRICT") != "1":
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = tr.stats.get("skipped", []) if tr else []
    if skipped:
        for rep in skipped:
            tr.write_line(f"AOD_STRICT: a skipped test is a failure here: {rep.nodeid} {rep.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record the aodv2 logger emits during the test (DEBUG and up)."""
    got: list[logging.LogRecord] = []

    class H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    lg = logging.getLogger("aodv2")
    h, old = H(logging.DEBUG), lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    yield got
    lg.removeHandler(h)
    lg.setLevel(old)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(params=["module", "cli"])
def zstd_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: bundles written and read by the zstandard module, then by the zstd
    program (aod/zstdcodec.py; AOD_ZSTD_BACKEND reaches child processes too)."""
    from aod import zstdcodec

    if request.param == "cli" and not zstdcodec.cli_path():
        pytest.skip("no zstd program (tests/run installs the zstd package)")
    monkeypatch.setenv(zstdcodec.ENV_VAR, request.param)
    return str(request.param)


@pytest.fixture(autouse=True)
def _fresh_log_handler() -> None:
    """Bind the aodv2 log handler to this test's stderr (capsys swaps it per test)."""
    from aod import log

    log.setup(force_stderr=True)


@pytest.fixture(autouse=True)
def _host_state_guard() -> Iterator[None]:
    """A test that touched the host's /run/aodv2, /var/log/aodv2 or /sys/fs/bpf/aodv2 fails
    (tests/hostguard.py), even if the code under test swallowed the refusal."""
    import hostguard

    hostguard.install()
    hostguard.take()
    yield
    touched = hostguard.take()
    if touched:
        pytest.fail("touched the host's aodv2 state: " + "; ".join(sorted(set(touched))[:10]), pytrace=False)


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    """A private bpf filesystem under tmp_path (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount bpffs and create BPF maps")
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount bpffs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
