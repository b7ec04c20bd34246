"""The http child: supervised and restarted, bearer tokens, TLS, and JSON errors that name the problem."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from daemon_harness import Cluster, wait_for
from http_kit import GREETER, start_with_agents, wait_face

from openfang.protocol.client import Client
from openfang.protocol.errors import OpenFangError

pytestmark = pytest.mark.integration
TOKEN = "test-token-0123456789abcdef"


def test_http_child_is_restarted_after_a_kill_and_serves_again(make_cluster: type[Cluster]) -> None:
    """SIGKILL the http child: its supervisor restarts it (new pid) and it answers again."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    before = c.node("http")
    assert before["state"] == "running" and httpx.get(c.http_url + "/v1/models").status_code == 200
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(
        lambda: c.node("http").get("pid") not in (None, before["pid"]),
        timeout=60,
        what="http child restarted",
    )

    def answers() -> bool:
        try:
            return httpx.get(c.http_url + "/v1/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout=60, what="the restarted http child to serve")
    assert c.node("http")["restarts"] >= 1
    assert c.stop() == 0


def test_http_tokens_are_required_when_configured(make_cluster: type[Cluster]) -> None:
    """With tokens: no header or a wrong token is 401 with a JSON reason, the right token passes."""
    c = make_cluster(workers=1, http=True)
    c.settings["http_table"] = f'[http]\nlisten = "127.0.0.1:{c.http_port}"\ntokens = ["{TOKEN}"]\n\n'
    c.write_config()
    start_with_agents(c)
    url = c.http_url + "/v1/models"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "missing 'Authorization: Bearer <token>'" in missing.json()["error"]["message"]
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid bearer token"
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.stop() == 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_http_serves_https_with_the_configured_certificate(make_cluster: type[Cluster]) -> None:
    """tls_cert/tls_key: the face speaks HTTPS, verified against that certificate."""
    c = make_cluster(workers=1, http=True)
    cert, key = _self_signed(c.dir)
    c.settings["http_table"] = (
        f'[http]\nlisten = "127.0.0.1:{c.http_port}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n\n'
    )
    c.write_config()
    start_with_agents(c, GREETER)
    reply = httpx.get(
        f"https://127.0.0.1:{c.http_port}/v1/models", verify=ssl.create_default_context(cafile=str(cert))
    )
    assert reply.status_code == 200 and reply.json()["data"][0]["name"] == "greeter"
    assert c.stop() == 0


def test_http_bad_requests_get_json_errors_naming_the_problem(make_cluster: type[Cluster]) -> None:
    """Bad JSON, missing fields, unknown agents, routes and methods: a JSON error that says what is wrong."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    chat = c.http_url + "/v1/chat/completions"
    cases = [
        (httpx.post(chat, content=b"{not json"), 400, "not valid JSON", None),
        (httpx.post(chat, json=[1]), 400, "must be a JSON object", None),
        (httpx.post(chat, json={"messages": [{"role": "user", "content": "hi"}]}), 400, "'model'", "model"),
        (httpx.post(chat, json={"model": "greeter", "messages": []}), 400, "non-empty", "messages"),
        (
            httpx.post(chat, json={"model": "greeter", "messages": [{"role": "system", "content": "x"}]}),
            400,
            "no message with role 'user'",
            "messages",
        ),
        (httpx.post(chat, json={"model": "greeter", "messages": [], "colour": 1}), 400, "'colour'", "colour"),
        (
            httpx.post(chat, json={"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "no agent with id or name 'ghost'",
            "model",
        ),
        (httpx.get(c.http_url + "/nowhere"), 404, "no route '/nowhere'", None),
        (httpx.get(chat), 405, "method GET is not allowed", None),
    ]
    for response, status, needle, param in cases:
        error = response.json()["error"]
        assert response.status_code == status, (response.status_code, error)
        assert needle in error["message"], (needle, error)
        assert error["param"] == param, error
    assert c.stop() == 0


def test_http_face_serves_again_after_the_gateway_restarts(make_cluster: type[Cluster]) -> None:
    """The face is a gateway client: when the gateway is killed and restarted, its requests flow again."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    chat = {"model": "greeter", "messages": [{"role": "user", "content": "hello"}]}
    assert httpx.post(c.http_url + "/v1/chat/completions", json=chat, timeout=30).status_code == 200
    gateway = c.node("control")["pid"]
    os.kill(gateway, signal.SIGKILL)

    def gateway_back() -> bool:
        # A fresh client each time: a request sent into the dead connection is lost, not late.
        try:
            with Client(c.endpoint, timeout=2) as client:
                pids = [n.get("pid") for n in client.request("tree")["children"] if n["id"] == "control"]
                client.request("worker.ping", {"worker": "workers-0"})
                return pids[0] not in (None, gateway)
        except OpenFangError:
            return False

    wait_for(gateway_back, timeout=60, what="the gateway restarted, with its worker")

    def answers() -> bool:
        try:
            reply = httpx.post(c.http_url + "/v1/chat/completions", json=chat, timeout=30)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"].startswith(
            "Hello"
        )

    wait_for(answers, timeout=60, what="a chat through the restarted gateway")
    assert c.stop() == 0


def test_http_oversized_message_is_refused_naming_the_limit(make_cluster: type[Cluster]) -> None:
    """A user message over the wire protocol's text limit is a 400 that says which field and which limit."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    chat = {"model": "greeter", "messages": [{"role": "user", "content": "x" * 70_000}]}
    reply = httpx.post(c.http_url + "/v1/chat/completions", json=chat, timeout=30)
    assert reply.status_code == 400, reply.text
    assert "body.text: must be a string of at most 65536 characters" in reply.json()["error"]["message"]
    assert c.stop() == 0


def test_http_face_signs_its_requests_when_the_cluster_requires_signatures(
    make_cluster: type[Cluster],
) -> None:
    """With [security.signing] require = true, unsigned clients are refused but the face still works: it
    signs with the cluster's key ring, like the scheduler and the CLI."""
    c = make_cluster(workers=1, http=True)
    key = c.dir / "ops.key"
    key.write_text(os.urandom(32).hex())
    keys = f'keys = [{{id = "ops", alg = "hmac-sha256", file = "{key}"}}]\n'
    c.write_config(f"\n[security.signing]\nrequire = true\n{keys}")
    c.start()
    wait_face(c)
    manifest = c.dir / "greeter.toml"
    manifest.write_text(GREETER)
    spawn = [sys.executable, "-m", "openfang.cli.main", "agent", "spawn", str(manifest), "--config"]
    out = subprocess.run([*spawn, str(c.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert c.call("agent.list").body["code"] == "denied", "an unsigned request is refused"
    chat = {"model": "greeter", "messages": [{"role": "user", "content": "who are you?"}]}
    reply = httpx.post(c.http_url + "/v1/chat/completions", json=chat, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].startswith("I am greeter")
    assert c.stop() == 0


def _maps(pid: int, needle: str) -> bool:
    """Whether process ``pid`` has a file whose path contains ``needle`` mapped (a loaded extension)."""
    return needle in Path(f"/proc/{pid}/maps").read_text()


def test_http_face_does_not_hold_back_ready_or_the_first_reply(make_cluster: type[Cluster]) -> None:
    """READY comes before the web stack is loaded: an agent answers at once, the root never maps the stack,
    and an HTTP request made at READY waits in the listen backlog and is answered once the app is up."""
    c = make_cluster(workers=1, http=True)
    c.start()
    assert c.proc is not None
    root = c.proc.pid
    # ready = bound and listening: a connection made now is accepted by the kernel, not refused.
    early = httpx.get(c.http_url + "/v1/models", timeout=60)
    assert early.status_code == 200, early.text
    wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="worker connected")
    agent = c.ok("agent.spawn", {"manifest": GREETER})["agent_id"]
    assert c.ok("agent.send", {"agent_id": agent, "text": "hello"})["reply"].startswith("Hello")
    face = c.node("http")["pid"]
    assert _maps(face, "pydantic_core"), "the face has loaded its web stack (MCP, A2A: pydantic)"
    assert not _maps(root, "pydantic_core"), "the root supervisor must not carry the face's web stack"
    events = [e.get("event") for e in c.log_events()]
    assert events.index("tree_started") < events.index("http_listening"), "READY before the app was built"
    assert c.stop() == 0


def test_http_port_in_use_is_a_failed_start_naming_the_port(make_cluster: type[Cluster]) -> None:
    """A port already taken fails the face's start (before ready): the daemon exits and says which port."""
    c = make_cluster(workers=1, http=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", c.http_port))
        taken.listen(1)
        c.start(wait_ready=False)
        assert c.proc is not None
        assert c.proc.wait(timeout=60) != 0
    assert f"cannot listen on 127.0.0.1:{c.http_port}" in c.log()


def test_http_bad_certificate_is_a_failed_start(make_cluster: type[Cluster]) -> None:
    """A tls_cert that is not a certificate fails the face's start (before ready), naming the file."""
    c = make_cluster(workers=1, http=True)
    cert, key = _self_signed(c.dir)
    cert.write_text("not a certificate\n")
    c.settings["http_table"] = (
        f'[http]\nlisten = "127.0.0.1:{c.http_port}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n\n'
    )
    c.write_config()
    c.start(wait_ready=False)
    assert c.proc is not None
    assert c.proc.wait(timeout=60) != 0
    assert f"[http] tls_cert/tls_key {cert}" in c.log()


def test_http_child_forked_after_the_integrity_helper_is_released_is_not_taken_for_hung(
    make_cluster: type[Cluster],
) -> None:
    """The face forked after layer 14's helper is released (whose socket's fd number its uplink reuses) still
    has its heartbeats read: past its heartbeat_ms (5 s) it is the same process, never reported hung."""
    # An empty package list: the helper answers at once, so the root releases it in its loop while the
    # workers start, before the face's fork (the order in which the freed fd number went to the face).
    c = make_cluster(workers=1, http=True, extra="\n[security.integrity]\npackages = []\n")
    start_with_agents(c)
    pid = c.node("http")["pid"]
    time.sleep(6.5)
    assert "child_hung" not in c.log()
    assert c.node("http")["pid"] == pid
    assert httpx.get(c.http_url + "/metrics", timeout=10).status_code == 200
    assert c.stop() == 0
