"""shell_exec in bubblewrap: no network, only /work writable, resource limits, never unconfined."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from openfang.workers.tools import shell
from openfang.workers.tools.registry import ShellPolicy, ToolContext, default_registry

REG = default_registry()

if shell.sandbox_available() is not None:
    if os.environ.get("CI"):  # under CI the isolation layer must be there: failing beats a silent skip
        pytest.fail(f"shell_exec sandbox unavailable under CI: {shell.sandbox_available()}", pytrace=False)
    pytest.skip(f"bubblewrap cannot run here: {shell.sandbox_available()}", allow_module_level=True)

PY = shutil.which("python3", path="/usr/bin:/bin") and "python3"


def run(tmp_path: Path, argv: list[str], allowed: str = "*", **policy: Any) -> Any:
    pol = ShellPolicy(allow=("echo", "sh", "cat", "ls", "sleep", "yes", "python3", "touch"), **policy)
    c = ToolContext(agent_id="a1", allowed=frozenset({allowed}), fs_root=tmp_path / "files", shell=pol)
    return REG.invoke(c, "shell_exec", {"argv": argv})


def test_shell_exec_runs_an_allowed_command_in_the_agents_folder(tmp_path: Path) -> None:
    """The command's working directory is the agent's folder at /work, and what it writes stays there."""
    res = run(tmp_path, ["sh", "-c", "echo hi > out.txt; pwd; ls"])
    assert res.ok, res
    assert res.value["exit_code"] == 0 and res.value["stdout"] == "/work\nout.txt\n"
    assert (tmp_path / "files" / "out.txt").read_text() == "hi\n"


def test_shell_exec_refuses_commands_outside_the_allow_list_and_without_a_policy(tmp_path: Path) -> None:
    """A command outside [agent.shell] allow, no [agent.shell], or no permission: each is denied."""
    res = run(tmp_path, ["rm", "-rf", "/"])
    assert res.code == "denied" and "'rm' is not in this agent's allow list" in (res.error or "")
    c = ToolContext(agent_id="a1", allowed=frozenset({"*"}), fs_root=tmp_path)
    assert REG.invoke(c, "shell_exec", {"argv": ["echo"]}).code == "denied"
    assert run(tmp_path, ["echo", "x"], allowed="fs.read").code == "denied"
    assert run(tmp_path, [], allowed="*").code == "bad_args"


def test_shell_exec_has_no_network(tmp_path: Path) -> None:
    """A server listening on the host's loopback cannot be reached from inside the sandbox."""
    if not PY:
        pytest.skip("no /usr/bin/python3 to probe the network with")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {srv.getsockname()[1]}), timeout=2)"
        res = run(tmp_path, ["python3", "-c", probe])
        assert res.ok and res.value["exit_code"] != 0
        assert "Connection refused" in res.value["stderr"] or "unreachable" in res.value["stderr"]
    finally:
        srv.close()


def test_shell_exec_sees_neither_host_secrets_nor_the_host_filesystem(tmp_path: Path) -> None:
    """/root, /home and /etc/shadow are not there; /usr cannot be written."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    res = run(
        tmp_path, ["sh", "-c", f"cat {secret}; cat /etc/shadow; ls /root /home; touch /usr/x; echo done"]
    )
    assert res.ok
    out = res.value["stdout"] + res.value["stderr"]
    assert "top secret" not in out and "root:" not in out
    assert "Read-only file system" in out and res.value["stdout"].endswith("done\n")


def test_shell_exec_kills_a_command_past_its_timeout(tmp_path: Path) -> None:
    """A command running past timeout_s is killed with everything it started, and reported timed out."""
    res = run(tmp_path, ["sh", "-c", "sleep 60 & sleep 60"], timeout_s=1)
    assert res.ok and res.value["timed_out"] is True and res.value["duration_ms"] < 30_000


def test_shell_exec_caps_output(tmp_path: Path) -> None:
    """A command printing without end is stopped at max_output_bytes and marked truncated."""
    res = run(tmp_path, ["yes"], max_output_bytes=4096, timeout_s=20)
    assert res.ok and res.value["truncated"] is True and len(res.value["stdout"]) == 4096


def test_shell_exec_enforces_the_memory_limit(tmp_path: Path) -> None:
    """Allocating past memory_mb fails inside the command; the worker is untouched."""
    if not PY:
        pytest.skip("no /usr/bin/python3 to allocate with")
    res = run(tmp_path, ["python3", "-c", "x = bytearray(400 << 20); print('allocated')"], memory_mb=128)
    assert res.ok and res.value["exit_code"] != 0 and "allocated" not in res.value["stdout"]
    assert "MemoryError" in res.value["stderr"]


def test_shell_exec_refuses_to_run_unconfined_when_the_sandbox_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a working bubblewrap the tool answers unavailable and the command never runs."""
    monkeypatch.setattr(shell, "BWRAP", "/nonexistent/bwrap")
    res = run(tmp_path, ["touch", "ran.txt"])
    assert res.code == "unavailable" and "refuses to run unconfined" in (res.error or "")
    assert "not installed" in (res.error or "")
    assert not (tmp_path / "files" / "ran.txt").exists()
    monkeypatch.setattr(shell, "BWRAP", "false")  # installed, but fails like bwrap without namespaces
    res = run(tmp_path, ["touch", "ran.txt"])
    assert res.code == "unavailable" and "cannot create namespaces" in (res.error or "")
    assert not (tmp_path / "files" / "ran.txt").exists()
