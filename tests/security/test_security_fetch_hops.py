"""http_fetch (layer 8) hop by hop against real local servers: every redirect is re-checked, and the
connection goes to the address that was checked, whatever a resolver answers later (DNS rebinding)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from openfang.protocol.errors import SecurityError
from openfang.workers.tools.net import fetch

pytestmark = pytest.mark.integration


class _Server:
    """A real HTTP server on ``host``; /redirect?to=URL answers 302, anything else names the server."""

    def __init__(self, host: str, name: str, port: int = 0) -> None:
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits.append(self.path)
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    """The allowed server on 127.0.0.1 and a forbidden one on 127.0.0.2, on the same port."""
    good = _Server("127.0.0.1", "good")
    evil = _Server("127.0.0.2", "evil", port=good.port)
    yield good, evil
    good.close()
    evil.close()


class _FlippingResolver:
    """Answers ``first`` for the first lookup of a name and ``then`` for every later one."""

    def __init__(self, first: str, then: str) -> None:
        self.first, self.then = first, then
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return [self.first if len(self.calls) == 1 else self.then]


def test_fetch_connects_to_the_checked_address_when_dns_rebinds(servers: tuple[_Server, _Server]) -> None:
    """The name resolves to the allowed 127.0.0.1, then to 127.0.0.2: only the checked address is reached."""
    good, evil = servers
    resolver = _FlippingResolver("127.0.0.1", "127.0.0.2")
    out = fetch(f"http://svc.test:{good.port}/data", allow_hosts=["127.0.0.1"], resolver=resolver)
    assert out["status"] == 200 and out["body"] == "good"
    assert resolver.calls == ["svc.test"]  # resolved once, for the check; the connection used that answer
    assert evil.hits == []


def test_fetch_rechecks_a_redirect_to_a_name_that_now_resolves_to_a_forbidden_address(
    servers: tuple[_Server, _Server],
) -> None:
    """Hop 1 passes (127.0.0.1); the redirect to the same name resolves to 127.0.0.2 and is refused."""
    good, evil = servers
    resolver = _FlippingResolver("127.0.0.1", "127.0.0.2")
    url = f"http://svc.test:{good.port}/redirect?to=http://svc.test:{good.port}/secret"
    with pytest.raises(SecurityError) as err:
        fetch(url, allow_hosts=["127.0.0.1"], resolver=resolver)
    assert "127.0.0.2" in str(err.value) and "loopback" in str(err.value)
    assert resolver.calls == ["svc.test", "svc.test"]  # checked again on the redirect hop
    assert good.hits == [f"/redirect?to=http://svc.test:{good.port}/secret"] and evil.hits == []


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/x", "http://169.254.169.254/latest/meta-data/"])
def test_fetch_refuses_a_redirect_to_a_forbidden_address(
    servers: tuple[_Server, _Server], target: str
) -> None:
    """A redirect from an allowed server to another loopback or the metadata address is never followed."""
    good, evil = servers
    url = f"http://127.0.0.1:{good.port}/redirect?to={target.format(port=good.port)}"
    with pytest.raises(SecurityError):
        fetch(url, allow_hosts=["127.0.0.1"])
    assert evil.hits == [] and len(good.hits) == 1
