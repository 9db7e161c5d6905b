"""Logging through the real systemd-python JournalHandler.

journald's native socket is /run/systemd/journal/socket. Where no journald runs
(these CI machines), the test binds that socket itself and decodes the datagrams
the real handler sends; where journald runs, it reads the entry back with journalctl.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from aod import log

SOCK = Path("/run/systemd/journal/socket")


def _decode(datagram: bytes) -> dict[str, str]:
    """journald native protocol: KEY=value lines, or KEY\\n<u64 le len><data>\\n."""
    out: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            n = int.from_bytes(datagram[nl + 1:nl + 9], "little")
            out[line.decode()] = datagram[nl + 9:nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return out


def test_journal_handler_sends_structured_alert(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("systemd.journal", reason="systemd-python not installed (pip install .[journald])")
    monkeypatch.setenv("INVOCATION_ID", uuid.uuid4().hex)
    tag = uuid.uuid4().hex
    live = SOCK.exists()
    server = None
    if not live:
        if os.geteuid() != 0:
            pytest.skip("no journald and cannot bind /run/systemd/journal/socket without root")
        SOCK.parent.mkdir(parents=True, exist_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(str(SOCK))
        server.settimeout(5)
    try:
        assert log.setup() == "journal"
        log.emit("anomaly", log.ALERT, f"AOD detected anomaly: latency with 7 events {tag}",
                 AOD_ANOMALY="latency", AOD_COUNT=7, AOD_COMMAND="WRITE")
        if server is not None:
            fields = _decode(server.recv(65536))
        else:
            jc = shutil.which("journalctl")
            assert jc, "journald runs but journalctl is missing"
            r = subprocess.run([jc, "-o", "json", "--no-pager", f"MESSAGE_ID={log.MESSAGE_IDS['anomaly']}",
                                "-n", "50"], capture_output=True, text=True, timeout=30)
            entries = [json.loads(line) for line in r.stdout.splitlines() if tag in line]
            assert entries, r.stdout[-2000:]
            fields = entries[-1]
    finally:
        log.setup(force_stderr=True)
        if server is not None:
            server.close()
            SOCK.unlink()
    assert fields["MESSAGE"] == f"AOD detected anomaly: latency with 7 events {tag}"
    assert fields["PRIORITY"] == "1"  # LOG_ALERT
    assert fields["SYSLOG_IDENTIFIER"] == "aodv2"
    assert fields["MESSAGE_ID"] == log.MESSAGE_IDS["anomaly"]
    assert (fields["AOD_ANOMALY"], fields["AOD_COUNT"], fields["AOD_COMMAND"]) == ("latency", "7", "WRITE")


def test_stderr_fallback_without_systemd(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert log.setup() == "stderr"
    log.emit("component_restart", logging.WARNING, "AOD component x restarted due to unexpected exit",
             AOD_COMPONENT="x")
    assert capsys.readouterr().err == (
        "aodv2 warning: AOD component x restarted due to unexpected exit [AOD_COMPONENT=x]\n")


def test_stderr_to_journal_stream_uses_priority_prefix(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    import builtins

    real_import = builtins.__import__

    def no_systemd(name: str, *a, **k):  # type: ignore[no-untyped-def]
        if name.startswith("systemd"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    monkeypatch.setattr(builtins, "__import__", no_systemd)
    assert log.setup() == "stderr-journal"
    log.emit("anomaly", log.ALERT, "AOD detected anomaly: error with 3 events", AOD_ANOMALY="error")
    assert capsys.readouterr().err.startswith("<1>AOD detected anomaly: error with 3 events")
