"""http_request and web_search against real local HTTP servers speaking each search backend's API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from openfang.workers.tools.registry import SearchConfig, ToolContext, default_registry

REG = default_registry()


class Api:
    """A real HTTP server on 127.0.0.1 that records requests and answers by path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": parts.path,
                        "query": parse_qs(parts.query),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": raw.decode(),
                    }
                )
                status, body = outer.answer(self.command, parts.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        if path == "/search" and method == "GET":  # SearXNG
            return 200, {
                "results": [{"title": "SearX hit", "url": "https://a.example/1", "content": "from searx"}]
            }
        if path == "/res/v1/web/search":  # Brave
            return 200, {
                "web": {"results": [{"title": "Brave hit", "url": "https://b.example", "description": "d"}]}
            }
        if path == "/search" and method == "POST":  # Tavily
            return 200, {"results": [{"title": "Tavily hit", "url": "https://t.example", "content": "c"}]}
        if path.startswith("/broken"):
            return 503, {"error": "down"}
        return 200, {"method": method, "path": path}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api() -> Iterator[Api]:
    a = Api()
    yield a
    a.close()


def ctx(allowed: str = "*", **kw: Any) -> ToolContext:
    return ToolContext(agent_id="a1", allowed=frozenset({allowed}), **kw)


def test_http_request_sends_json_with_method_query_and_parses_the_answer(api: Api) -> None:
    """A PATCH with query and JSON body arrives as sent; the JSON answer comes back parsed."""
    c = ctx(net_allow_hosts=("127.0.0.1",))
    res = REG.invoke(
        c,
        "http_request",
        {"url": api.url + "/items/7", "method": "PATCH", "query": {"v": 2}, "json": {"a": 1}},
    )
    assert res.ok, res
    assert res.value["status"] == 200 and res.value["json"] == {"method": "PATCH", "path": "/items/7"}
    req = api.requests[0]
    assert req["query"] == {"v": ["2"]} and json.loads(req["body"]) == {"a": 1}
    assert req["headers"]["content-type"] == "application/json"
    res = REG.invoke(c, "http_request", {"url": api.url + "/f", "method": "POST", "form": {"x": "1 2"}})
    assert res.ok and api.requests[1]["body"] == "x=1+2"


def test_http_request_keeps_the_ssrf_guard_and_refuses_nonsense(api: Api) -> None:
    """Loopback is refused without an allow list entry; two bodies or a GET body are bad_args."""
    assert REG.invoke(ctx(), "http_request", {"url": api.url + "/x"}).code == "denied"
    c = ctx(net_allow_hosts=("127.0.0.1",))
    assert REG.invoke(c, "http_request", {"url": api.url, "json": {}, "form": {}}).code == "bad_args"
    assert REG.invoke(c, "http_request", {"url": api.url, "method": "GET", "body": "x"}).code == "bad_args"
    assert REG.invoke(ctx("net.search"), "http_request", {"url": api.url}).code == "denied"


@pytest.mark.parametrize(
    ("backend", "title", "check"),
    [
        ("searxng", "SearX hit", lambda r: r["query"] == {"q": ["rust wasm"], "format": ["json"]}),
        ("brave", "Brave hit", lambda r: r["headers"]["x-subscription-token"] == "brave-key"),
        ("tavily", "Tavily hit", lambda r: r["headers"]["authorization"] == "Bearer tav-key"),
    ],
)
def test_web_search_speaks_each_backend(
    api: Api, monkeypatch: pytest.MonkeyPatch, backend: str, title: str, check: Any
) -> None:
    """Each backend gets its own request shape and key; results come back as title, url, snippet."""
    monkeypatch.setenv("BRAVE_API_KEY", "brave-key")
    monkeypatch.setenv("TAVILY_API_KEY", "tav-key")
    c = ctx(web_search=SearchConfig(backend=backend, base_url=api.url))
    res = REG.invoke(c, "web_search", {"query": "rust wasm"})
    assert res.ok, res
    (hit,) = res.value["results"]
    assert hit["title"] == title and hit["url"].startswith("https://") and hit["snippet"]
    assert check(api.requests[0])
    if backend == "tavily":
        assert json.loads(api.requests[0]["body"]) == {"query": "rust wasm", "max_results": 5}


def test_web_search_without_a_backend_or_key_says_what_to_set(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No backend configured, a missing key variable, or a failing backend: clear errors, no crash."""
    monkeypatch.delenv("OPENFANG_WEB_SEARCH_BACKEND", raising=False)
    monkeypatch.delenv("BRAVE_API_KEY", raising=False)
    res = REG.invoke(ctx(), "web_search", {"query": "x"})
    assert res.code == "unavailable" and "OPENFANG_WEB_SEARCH_BACKEND" in (res.error or "")
    res = REG.invoke(
        ctx(web_search=SearchConfig(backend="brave", base_url=api.url)), "web_search", {"query": "x"}
    )
    assert res.code == "unavailable" and "BRAVE_API_KEY" in (res.error or "")
    monkeypatch.setenv("OPENFANG_WEB_SEARCH_BACKEND", "searxng")
    monkeypatch.setenv("OPENFANG_WEB_SEARCH_URL", api.url + "/broken-instance")
    res = REG.invoke(ctx(), "web_search", {"query": "x"})
    assert res.code == "fetch_failed" and "searxng answered HTTP 503" in (res.error or "")


def test_manifest_web_search_table_is_validated() -> None:
    """[agent.web_search] needs a known backend, and a base_url for searxng."""
    from openfang.protocol.errors import ConfigError
    from openfang.workers.manifest import load_manifest

    head = '[agent]\nname = "s"\n[agent.model]\nprovider = "scripted"\n'
    m = load_manifest(head + '[agent.web_search]\nbackend = "brave"\nmax_results = 3\n')
    assert m.web_search == SearchConfig(backend="brave", max_results=3)
    with pytest.raises(ConfigError) as exc:
        load_manifest(head + '[agent.web_search]\nbackend = "google"\n')
    assert "must be one of searxng, brave, tavily" in str(exc.value)
    with pytest.raises(ConfigError, match="required for searxng"):
        load_manifest(head + '[agent.web_search]\nbackend = "searxng"\n')
