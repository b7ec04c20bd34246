"""`make run` (python -m openfang.demo) turns the HTTP face on and talks to an agent through it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.integration


def test_demo_serves_the_http_face_even_when_its_port_is_taken() -> None:
    """With 127.0.0.1:8470 taken, the demo moves the face to a free port and chats over the OpenAI API."""
    data = tempfile.mkdtemp(prefix="ofdemo-http-", dir="/tmp")
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", 8470))
            holder.listen()
        except OSError:
            pass  # someone else holds it: the demo must move just the same
        out = subprocess.run(
            [sys.executable, "-m", "openfang.demo", "--data-dir", data, "--once"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
        shutil.rmtree(data, ignore_errors=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "port 8470 is in use: the HTTP face listens on 127.0.0.1:" in out.stdout
    assert "greeter -> you: I am greeter" in out.stdout.split("(the OpenAI-compatible API)")[1]
    assert "/.well-known/agent-card.json" in out.stdout and "/mcp" in out.stdout
