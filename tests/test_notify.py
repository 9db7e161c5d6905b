"""sd_notify against a real datagram socket bound by the test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from aod.notify import Notifier


@pytest.fixture
def notify_sock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


def recv(s: socket.socket) -> str:
    return s.recv(4096).decode()


def test_ready_status_watchdog_reloading_stopping(notify_sock: socket.socket,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.enabled and n.ping_interval() == 2.0
    n.ready("1 events/s")
    assert recv(notify_sock) == "READY=1\nSTATUS=1 events/s"
    n.status("x")
    assert recv(notify_sock) == "STATUS=x"
    n.watchdog()
    assert recv(notify_sock) == "WATCHDOG=1"
    n.reloading()
    msg = recv(notify_sock)
    assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=") and int(msg.split("=")[-1]) > 0
    n.stopping()
    assert recv(notify_sock) == "STOPPING=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"aodv2-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    Notifier().ready()
    assert recv(s) == "READY=1"
    s.close()


def test_watchdog_pid_of_other_process_disables_pings(notify_sock: socket.socket,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier().ping_interval() is None


def test_noop_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    n = Notifier()
    assert not n.enabled and n.ping_interval() is None
    n.ready()
    n.watchdog()
    assert n.sent == []
