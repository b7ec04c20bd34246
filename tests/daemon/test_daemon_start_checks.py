"""The root's own checks before READY (its audit log handle, layer 14's baseline) still fail the start.

The root makes them while its children after the gateway start (control/daemon.py ``_before_ready``), not
after the tree has started: a failure must still stop the tree and exit before READY=1.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from daemon_harness import HERE, Cluster

from openfang.control.daemon import EXIT_START_FAILED

pytestmark = pytest.mark.integration

# The daemon with its own audit open refused (the gateway's and the workers' opens are their own, untouched).
_REFUSING_ROOT = """
import sys
import openfang.control.daemon as daemon
from openfang.protocol.errors import ConfigError, Problem

def refuse(config):
    raise ConfigError([Problem(config.audit.path, "cannot open the audit log: refused by the test")])

daemon.open_audit = refuse
sys.exit(daemon.main(["--config", sys.argv[1]]))
"""


def _failed_before_ready(c: Cluster) -> None:
    assert c.proc is not None
    c.proc.wait(60)
    assert c.proc.returncode == EXIT_START_FAILED, c.log()[-3000:]
    sent = "\n".join(c.notifications + list("\n".join(f) for f in c.drain_notifications()))
    assert "READY=1" not in sent.split("\n"), sent
    assert "STOPPING=1" in sent.split("\n"), sent
    c.remember_pids()
    c.assert_no_survivors()
    assert not (c.data_dir / "run" / "supervisor.pid").exists()


def test_root_audit_log_that_cannot_be_opened_fails_the_start(make_cluster: type[Cluster]) -> None:
    """The root's handle on the audit log refused: the tree (gateway and workers, started meanwhile) is
    stopped and the daemon exits with the failed start's status, never having sent READY=1."""
    c = make_cluster(workers=2)
    env = dict(os.environ, NOTIFY_SOCKET=c.notify_path)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    with c.log_path.open("ab") as log:
        c.proc = subprocess.Popen(
            [sys.executable, "-c", _REFUSING_ROOT, str(c.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=c.dir,
        )
    _failed_before_ready(c)
    assert "audit_open_failed" in c.log() and "refused by the test" in c.log()


def test_unreadable_integrity_file_fails_the_start(make_cluster: type[Cluster]) -> None:
    """A file layer 14 must watch that cannot be read (missing): the helper gives no baseline, the root's
    own attempt fails, and the start fails before READY=1."""
    c = make_cluster(workers=2)
    missing = c.dir / "no-such-file"
    c.write_config(f'\n[security.integrity]\nfiles = ["{missing}"]\n')
    c.start(wait_ready=False)
    _failed_before_ready(c)
    assert "integrity_baseline_failed" in c.log() and "no-such-file" in c.log()
