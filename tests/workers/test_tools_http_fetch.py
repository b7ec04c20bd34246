"""http_fetch against a real local HTTP(S) server: the SSRF guard on every hop, pinning, limits."""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from openfang.workers.tools.net import fetch
from openfang.workers.tools.registry import ToolContext, ToolError, default_registry

pytestmark = pytest.mark.integration
REG = default_registry()


class Server:
    """A real HTTP server on 127.0.0.1:0 with a few behaviours chosen by path; counts hits per path."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.hits: list[str] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def send(
                self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8", **hdr: str
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in hdr.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                outer.hits.append(url.path)
                q = parse_qs(url.query)
                if url.path == "/hello":
                    self.send(200, f"hello, Host={self.headers['Host']}".encode())
                elif url.path == "/headers":
                    self.send(200, json.dumps(dict(self.headers.items())).encode(), "application/json")
                elif url.path == "/big":
                    self.send(200, b"x" * 100_000)
                elif url.path == "/bin":
                    self.send(200, b"\x00\x01\x02", "application/octet-stream")
                elif url.path == "/redirect":
                    self.send(int(q.get("code", ["302"])[0]), b"", Location=q["to"][0])
                elif url.path == "/loop":
                    self.send(302, b"", Location="/loop")
                elif url.path == "/slow":
                    outer.stop.wait(10)
                else:
                    self.send(404, b"not found")

            def do_POST(self) -> None:
                outer.hits.append(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/see-other":
                    self.send(303, b"", Location="/hello")
                else:
                    self.send(200, b"got " + body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def run(args: dict[str, Any], **ctx: Any) -> Any:
    c = ToolContext(agent_id="a", allowed=frozenset({"net.http"}), **ctx)
    return REG.invoke(c, "http_fetch", args)


LOCAL = {"net_allow_hosts": ("127.0.0.1",)}


def test_http_fetch_refuses_loopback_by_default_without_connecting(server: Server) -> None:
    """Without an allowlist a loopback URL is denied and the server never sees a request."""
    res = run({"url": server.url("/hello")})
    assert res.code == "denied" and "loopback" in (res.error or "")
    assert server.hits == []


def test_http_fetch_gets_an_allowlisted_host(server: Server) -> None:
    """An allowlisted address is fetched: status, headers and text body come back."""
    res = run({"url": server.url("/hello")}, **LOCAL)
    assert res.ok, res
    v = res.value
    assert (v["status"], v["body"], v["truncated"], v["redirects"]) == (
        200,
        f"hello, Host=127.0.0.1:{server.port}",
        False,
        0,
    )
    assert v["headers"]["content-type"].startswith("text/plain")


def test_http_fetch_rechecks_every_redirect(server: Server) -> None:
    """A redirect to a place the guard refuses (another loopback, metadata) is denied before connecting."""
    for target in ("http://127.0.0.2:1/", "http://169.254.169.254/latest/meta-data/"):
        res = run({"url": server.url(f"/redirect?to={target}")}, **LOCAL)
        assert res.code == "denied", res
    assert server.hits == ["/redirect", "/redirect"]
    ok = run({"url": server.url("/redirect?to=/hello&code=307")}, **LOCAL)
    assert ok.ok and ok.value["redirects"] == 1 and ok.value["url"] == server.url("/hello")


def test_http_fetch_connects_to_the_checked_address_not_a_new_dns_answer(server: Server) -> None:
    """A name resolved (and checked) once is connected to at that address, with its own Host header."""
    resolver_calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolver_calls.append(host)
        return ["127.0.0.1"]

    res = run(
        {"url": f"http://svc.test:{server.port}/hello"}, net_allow_hosts=("svc.test",), resolver=resolver
    )
    assert res.ok, res
    assert res.value["body"] == f"hello, Host=svc.test:{server.port}"
    assert resolver_calls == ["svc.test"]


def test_http_fetch_cuts_the_body_at_max_bytes(server: Server) -> None:
    """A body over max_bytes is cut there and flagged truncated."""
    v = run({"url": server.url("/big"), "max_bytes": 1000}, **LOCAL).value
    assert (v["bytes"], len(v["body"]), v["truncated"]) == (1000, 1000, True)


def test_http_fetch_times_out_on_a_slow_server(server: Server) -> None:
    """A server slower than timeout_s gives a timeout error result."""
    res = run({"url": server.url("/slow"), "timeout_s": 0.3}, **LOCAL)
    assert res.code == "timeout" and "timed out" in (res.error or "")


def test_http_fetch_refuses_other_schemes_by_schema() -> None:
    """file:// and ftp:// never reach the fetcher: the schema refuses them."""
    for url in ("file:///etc/passwd", "ftp://example.com/"):
        assert run({"url": url}).code == "bad_args"


def test_http_fetch_drops_host_and_hop_by_hop_headers(server: Server) -> None:
    """The agent cannot set Host or Connection; its other headers are sent."""
    v = run(
        {"url": server.url("/headers"), "headers": {"Host": "evil.test", "X-Ask": "1", "Connection": "x"}},
        **LOCAL,
    ).value
    sent = json.loads(v["body"])
    assert sent["Host"] == f"127.0.0.1:{server.port}" and sent["X-Ask"] == "1"
    assert sent.get("Connection") != "x"


def test_http_fetch_does_not_return_binary_bodies(server: Server) -> None:
    """A binary body is counted but not returned."""
    v = run({"url": server.url("/bin")}, **LOCAL).value
    assert v["body"] is None and v["bytes"] == 3 and "binary" in v["note"]


def test_http_fetch_post_and_303_turns_into_get(server: Server) -> None:
    """POST sends the body; a 303 answer is followed with a GET."""
    assert (
        run({"url": server.url("/echo"), "method": "POST", "body": "ping"}, **LOCAL).value["body"]
        == "got ping"
    )
    v = run({"url": server.url("/see-other"), "method": "POST", "body": "x"}, **LOCAL).value
    assert v["status"] == 200 and v["body"].startswith("hello")
    assert server.hits[-2:] == ["/see-other", "/hello"]


def test_http_fetch_stops_redirect_loops(server: Server) -> None:
    """More than five redirects fail with fetch_failed."""
    res = run({"url": server.url("/loop")}, **LOCAL)
    assert res.code == "fetch_failed" and "redirects" in (res.error or "")


# ---- TLS: SNI and certificate checked against the host name while connecting to the pinned address


def _cert(tmp: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_fetch_https_verifies_the_certificate_for_the_host_name(tmp_path: Path) -> None:
    """HTTPS to a pinned address still checks the certificate against the URL's host (SNI)."""
    cert, key = _cert(tmp_path, "secure.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = Server(tls=server_ctx)
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        pinned = {"resolver": lambda h, p: ["127.0.0.1"], "ssl_context": client_ctx}
        v = fetch(
            f"https://secure.test:{srv.port}/hello", allow_hosts=["secure.test", "other.test"], **pinned
        )
        assert v["status"] == 200 and v["body"] == f"hello, Host=secure.test:{srv.port}"
        with pytest.raises(ToolError, match=r"TLS failed for other\.test"):
            fetch(f"https://other.test:{srv.port}/hello", allow_hosts=["other.test"], **pinned)
    finally:
        srv.close()


def test_http_fetch_runs_the_egress_check_on_every_hop(server: Server) -> None:
    """The host's egress check sees each hop (tool, url, headers, body); a refusal stops the fetch."""
    from openfang.protocol.errors import SecurityError

    seen: list[tuple[str, str]] = []

    def check(tool: str, url: str, headers: Any, body: str | None) -> None:
        seen.append((tool, url))
        if "secret" in url:
            raise SecurityError("would send secret data to a network sink")

    ok = run({"url": server.url("/redirect?to=/hello")}, egress_check=check, **LOCAL)
    assert ok.ok and [u for _, u in seen] == [server.url("/redirect?to=/hello"), server.url("/hello")]
    assert {t for t, _ in seen} == {"http_fetch"}
    hits = len(server.hits)
    res = run({"url": server.url("/hello?token=secret")}, egress_check=check, **LOCAL)
    assert res.code == "denied" and "network sink" in (res.error or "")
    assert len(server.hits) == hits
