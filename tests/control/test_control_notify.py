"""sd_notify speaks the systemd datagram protocol on a real unix socket."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from openfang.control.notify import Notifier


def _listener() -> tuple[socket.socket, str]:
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_notifier_sends_ready_status_and_mainpid_in_one_datagram() -> None:
    """READY=1 carries STATUS= and MAINPID= in the same datagram, as systemd expects."""
    sock, path = _listener()
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready("running: 3 children")
    fields = sock.recv(4096).decode().split("\n")
    assert fields[0] == "READY=1"
    assert "STATUS=running: 3 children" in fields
    assert f"MAINPID={os.getpid()}" in fields


def test_notifier_reloading_carries_monotonic_usec() -> None:
    """notify-reload requires RELOADING=1 together with MONOTONIC_USEC."""
    sock, path = _listener()
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    fields = dict(f.split("=", 1) for f in sock.recv(4096).decode().split("\n"))
    assert fields["RELOADING"] == "1"
    assert int(fields["MONOTONIC_USEC"]) > 0


def test_notifier_supports_abstract_socket_addresses() -> None:
    """An '@' NOTIFY_SOCKET is an abstract-namespace address."""
    name = f"openfang-test-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
    assert sock.recv(4096).decode().startswith("STOPPING=1")


def test_notifier_is_a_noop_without_notify_socket(tmp_path: Path) -> None:
    """Outside systemd nothing is sent and nothing fails."""
    n = Notifier({})
    assert not n.enabled
    n.ready("x")
    n.watchdog()


def test_notifier_watchdog_interval_is_half_of_watchdog_usec_for_this_pid() -> None:
    """WATCHDOG_USEC is honoured only for our pid, and pinged at half the interval."""
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval_s == 1.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 1.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_notifier_survives_a_vanished_socket() -> None:
    """A service manager that went away never raises into the daemon."""
    sock, path = _listener()
    n = Notifier({"NOTIFY_SOCKET": path})
    sock.close()
    os.unlink(path)
    n.ready("x")
