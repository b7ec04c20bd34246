"""``openfang agent spawn FILE --send TEXT``: the spawn's fields, then the first reply; a failed first message
is exit 1 with the agent's id still printed; ``--session`` alone is a usage error before any request."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from openfang.cli.main import EXIT_REMOTE, EXIT_USAGE, _spawned_with_message, build_parser

SPAWNED = {"agent_id": "echo-3", "worker": "workers-0", "service": None, "spawn": "warm", "spawn_ms": 0.1}


def test_agent_spawn_parser_takes_send_and_session() -> None:
    """--send TEXT and --session S are options of agent spawn (absent: None, a plain spawn)."""
    args = build_parser().parse_args(["agent", "spawn", "a.toml", "--send", "hi there", "--session", "s1"])
    assert (args.send, args.session) == ("hi there", "s1")
    plain = build_parser().parse_args(["agent", "spawn", "a.toml"])
    assert plain.send is None and plain.session is None


def test_agent_spawn_session_without_send_is_a_usage_error(tmp_path: Path) -> None:
    """--session without --send: exit 2 naming --send, and no daemon is asked (none runs at the endpoint,
    which would be exit 3)."""
    manifest = tmp_path / "a.toml"
    manifest.write_text('[agent]\nname = "a"\nmodule = "builtin:echo"\n')
    cmd = [sys.executable, "-m", "openfang.cli.main", "--endpoint", f"ipc://{tmp_path}/none.sock"]
    res = subprocess.run(
        [*cmd, "--timeout", "1", "agent", "spawn", str(manifest), "--session", "s1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == EXIT_USAGE, (res.returncode, res.stderr)
    assert "--send" in res.stderr


def test_spawned_with_message_prints_fields_then_the_reply(capsys: pytest.CaptureFixture[str]) -> None:
    """Success: the spawn's fields (no reply, usage) and, after a blank line, the reply; exit 0."""
    body = {**SPAWNED, "reply": "hello back", "usage": {"fuel": 10}}
    assert _spawned_with_message(argparse.Namespace(json=False), body) == 0
    out = capsys.readouterr().out
    fields, reply = out.rstrip("\n").split("\n\n")
    assert "echo-3" in fields and "workers-0" in fields and "usage" not in fields and "reply" not in fields
    assert reply == "hello back"


def test_spawned_with_message_failed_message_exits_1_with_the_agent_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """send_error: the agent's fields still on stdout, the error (code and message) on stderr, exit 1; with
    --json the whole body (send_error included) on stdout, exit 1."""
    body = {**SPAWNED, "send_error": {"code": "denied", "message": "prompt injection", "layer": "injection"}}
    assert _spawned_with_message(argparse.Namespace(json=False), body) == EXIT_REMOTE
    captured = capsys.readouterr()
    assert "echo-3" in captured.out and "send_error" not in captured.out
    assert "error denied: prompt injection" in captured.err and "spawned" in captured.err
    assert _spawned_with_message(argparse.Namespace(json=True), body) == EXIT_REMOTE
    assert json.loads(capsys.readouterr().out) == body
