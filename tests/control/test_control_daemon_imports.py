"""What the daemon and the gateway import before they are ready: modules a start never uses stay out."""

from __future__ import annotations

import subprocess
import sys

# Each is imported where it is first needed, never on the way to READY in a cluster with ipc endpoints.
LATER = {
    "tempfile": "the run record's directory: only when no temp dir candidate is usable",
    "argparse": "the daemon's command line: a plain one is read without it (--help, mistakes use it)",
    "difflib": "the hint of a config problem naming an unknown key",
    "uuid": "structlog's thread-local API (a stand-in until used)",
    "openfang.protocol.curve": "CURVE keys, for tcp endpoints",
    "zmq.auth": "CURVE keys, for tcp endpoints",
}


def test_daemon_imports_leave_out_what_the_start_does_not_use() -> None:
    """Importing the daemon imports none of the modules of ``LATER`` (each costs ~1-4 ms of every start)."""
    names = sorted(LATER)
    code = f"import sys, openfang.control.daemon\nprint(sorted(m for m in {names!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_gateway_imports_leave_out_the_schedule_store() -> None:
    """The gateway's module (imported after its fork, before it is ready) leaves out the schedule store and
    zoneinfo and cronsim under it (~5 ms): the first schedule.* request imports them."""
    code = (
        "import sys, openfang.control.gateway\n"
        "print(sorted(m for m in ('openfang.control.schedules', 'zoneinfo', 'cronsim') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
