"""The daemon starts without the cyclic collector until it forks; every other process keeps it on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openfang._coldstart import is_daemon


@pytest.mark.parametrize(
    ("orig_argv", "argv", "daemon"),
    [
        (["python", "-m", "openfang.control.daemon", "--config", "c.toml"], ["/x/daemon.py"], True),
        (["python", "-P", "-X", "importtime", "-m", "openfang.control.daemon"], ["/x/daemon.py"], True),
        (
            ["/opt/openfang/bin/python", "/opt/openfang/bin/openfang-supervisor"],
            ["/opt/bin/openfang-supervisor"],
            True,
        ),
        (["python", "-m", "pytest", "tests"], ["/x/pytest/__main__.py"], False),
        (["python", "-m", "openfang.cli"], ["/x/cli/__main__.py"], False),
        (["python", "-c", "import openfang"], ["-c"], False),
        (["python", "-m"], [], False),
        (["openfang"], ["/usr/bin/openfang"], False),
    ],
)
def test_coldstart_is_daemon_by_its_command_line(orig_argv: list[str], argv: list[str], daemon: bool) -> None:
    """Only ``python -m openfang.control.daemon`` and the ``openfang-supervisor`` script are the daemon."""
    assert is_daemon(orig_argv, argv) is daemon


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_coldstart_daemon_imports_without_the_collector_until_resume() -> None:
    """In the daemon, importing openfang turns the collector off; resume() freezes what is there and turns it
    back on (a second resume changes nothing)."""
    out = _run(
        "import sys\n"
        "sys.orig_argv = [sys.executable, '-m', 'openfang.control.daemon']\n"
        "import gc, openfang.control.daemon\n"
        "off = not gc.isenabled()\n"
        "openfang._coldstart.resume()\n"
        "frozen = gc.get_freeze_count()\n"
        "openfang._coldstart.resume()\n"
        "print(off, gc.isenabled(), frozen > 10_000, gc.get_freeze_count() == frozen)"
    )
    assert out == "True True True True"


def test_coldstart_other_processes_keep_the_collector() -> None:
    """Any other process importing the daemon's module (the CLI, a test) keeps its collector on."""
    assert (
        _run("import gc, openfang.control.daemon\nprint(gc.isenabled(), gc.get_freeze_count())") == "True 0"
    )


def test_coldstart_child_forked_during_the_start_has_the_collector() -> None:
    """A process the daemon forks before resume() (the gateway, the workers) turns its collector on at
    once; the daemon's stays off until resume()."""
    out = _run(
        "import sys\n"
        "sys.orig_argv = [sys.executable, '-m', 'openfang.control.daemon']\n"
        "import gc, os, openfang\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(w, str(gc.isenabled()).encode())\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "child = os.read(r, 16).decode()\n"
        "paused = not gc.isenabled()\n"
        "openfang._coldstart.resume()\n"
        "print(child, paused, gc.isenabled())"
    )
    assert out == "True True True"


def test_coldstart_start_leaves_socket_and_hashlib_out() -> None:
    """The daemon's, the gateway's and the worker's imports load neither socket.py (its enums and array,
    ~1.6 ms: the uplinks and sd_notify use _socket) nor hashlib or hmac (libcrypto, ~2.4 ms:
    security/_hashing), nor platform (~2 ms) or pickle (~1 ms: openfang/_optional's stand-ins), nor grp
    (a socket group by name only); the uplink pair is still close-on-exec and passes a packet."""
    out = _run(
        "import os, sys\n"
        "import openfang.control.daemon, openfang.control.gateway, openfang.workers.worker\n"
        "out = {'socket', 'array', 'hashlib', 'hmac', '_hashlib', 'platform', 'pickle', 'grp'}\n"
        "print(sorted(out & set(sys.modules)))\n"
        "from openfang.supervisor.child import uplink_pair\n"
        "parent, child = uplink_pair()\n"
        "child.send(b'x' * 70000)\n"
        "inheritable = os.get_inheritable(parent.fileno()), os.get_inheritable(child.fileno())\n"
        "print(*inheritable, len(parent.recv(1 << 17)))"
    )
    # a name in the first line: a module of the start imports it again (see the docstring for the why)
    assert out.splitlines() == ["[]", "False False 70000"]
