"""Workers are forked: a host created after fork (even from a parent that ran wasmtime) compiles and runs."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sandbox_helpers import make_host, manifest


def _child_work(write_fd: int) -> None:
    d = make_host()
    try:
        aid = d.ok("agent.spawn", manifest=manifest("bot"))["agent_id"]
        reply = d.ok("agent.send", agent_id=aid, text="hi from the child")["reply"]
        os.write(write_fd, reply.encode())
    finally:
        d.host.close()


@pytest.mark.integration
def test_fork_host_after_parent_used_wasmtime() -> None:
    """A parent with a live engine (and its epoch thread) forks; the child's new host compiles and answers."""
    parent = make_host()
    parent.ok("agent.spawn", manifest=manifest("bot"))  # the parent now has an engine and a ticker thread
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            _child_work(w)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("child host did not finish within 60 s (deadlock after fork?)")
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.read(r, 4096).decode() == "echo: hi from the child [1 user msgs]"
    finally:
        os.close(r)
        parent.host.close()
