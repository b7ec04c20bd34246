"""The Node.js example client (written from PROTOCOL.md alone) against a real ROUTER speaking the protocol."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from protocol_testkit import ipc_dir, serving

from openfang.protocol.curve import generate_keys

pytestmark = pytest.mark.integration

CLIENT_DIR = Path(__file__).resolve().parents[2] / "examples" / "node-client"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the example's packages installed (npm install once, under a lock)."""
    binary = shutil.which("node")
    assert binary is not None, "node (>= 20) is required on every machine: install nodejs"
    if not (CLIENT_DIR / "node_modules" / "zeromq").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is required to install the node client's packages"
        with open(CLIENT_DIR / "package.json") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers must not run npm install concurrently
            if not (CLIENT_DIR / "node_modules" / "zeromq").is_dir():
                subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, check=True, timeout=300
                )
    return binary


@pytest.fixture
def endpoint() -> Iterator[str]:
    with ipc_dir() as path, serving(f"ipc://{path}/control.sock") as (bound, _):
        yield bound


def _run(node: str, endpoint: str, *args: str) -> tuple[int, Any, str]:
    proc = subprocess.run(
        [node, str(CLIENT_DIR / "client.mjs"), "--endpoint", endpoint, "--timeout", "15000", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, body, proc.stderr


def test_node_client_gets_ping_status_and_tree(node: str, endpoint: str) -> None:
    """node client.mjs ping|status|tree prints each reply body as JSON and exits 0."""
    code, ping, err = _run(node, endpoint, "ping")
    assert code == 0, err
    assert ping["pid"] == os.getpid() and isinstance(ping["time"], float)
    code, status, err = _run(node, endpoint, "status")
    assert code == 0, err
    assert (status["name"], status["state"], status["children"]["workers"]) == ("openfang", "running", 2)
    code, tree, err = _run(node, endpoint, "tree")
    assert code == 0, err
    assert tree["children"][0]["children"][0]["id"] == "worker-0"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xc1\x00garbage", "bad_request"),
        (msgpack.packb({"v": 2, "id": "x1", "type": "ping", "body": {}}), "unsupported_version"),
        (msgpack.packb({"v": 1, "id": "x2", "type": "ping", "body": {"extra": 1}}), "bad_request"),
    ],
    ids=["not-msgpack", "wrong-version", "unknown-field"],
)
def test_node_client_sends_a_malformed_frame_and_gets_the_typed_error(
    node: str, endpoint: str, payload: bytes, code: str
) -> None:
    """A malformed frame sent by the Node client is answered with an error of the right code (exit 2)."""
    exit_code, body, err = _run(node, endpoint, "raw", payload.hex())
    assert exit_code == 2, err
    assert body["code"] == code and body["message"]
    assert f"error {code}:" in err


def test_node_client_reports_unknown_types_and_bad_bodies(node: str, endpoint: str) -> None:
    """Requests the server cannot serve come back as unknown_type / bad_request errors the client prints."""
    exit_code, body, _ = _run(node, endpoint, "agent.teleport")
    assert (exit_code, body["code"]) == (2, "unknown_type")
    exit_code, body, _ = _run(node, endpoint, "--body", '{"worker": 7}', "worker.ping")
    assert (exit_code, body["code"]) == (2, "bad_request")
    assert "body.worker: must be a string" in body["message"]


def test_node_client_times_out_when_nobody_answers(node: str) -> None:
    """With no server on the endpoint the client gives up after --timeout and exits 3."""
    with ipc_dir() as path:
        proc = subprocess.run(
            [
                node,
                str(CLIENT_DIR / "client.mjs"),
                "--endpoint",
                f"ipc://{path}/none.sock",
                "--timeout",
                "300",
                "ping",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 3 and "no reply" in proc.stderr


def test_node_client_with_curve_keys_is_answered_over_tcp_and_without_is_not(
    node: str, tmp_path: Path
) -> None:
    """Over tcp the Node client is answered with its generated keys, and gets nothing without them."""
    generate_keys(tmp_path / "keys", "alice")
    with serving("tcp://127.0.0.1:0", keys_dir=str(tmp_path / "keys")) as (endpoint, server):
        code, body, err = _run(
            node, endpoint, "--keys-dir", str(tmp_path / "keys"), "--name", "alice", "ping"
        )
        assert code == 0, err
        assert body["pid"] == os.getpid()
        proc = subprocess.run(
            [node, str(CLIENT_DIR / "client.mjs"), "--endpoint", endpoint, "--timeout", "1000", "ping"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 3 and "no reply" in proc.stderr
        assert server.handled == 1
