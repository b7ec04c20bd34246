"""Layer 8 on a real daemon: an agent's http_fetch follows no redirect to a forbidden address."""

from __future__ import annotations

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from daemon_harness import Cluster, wait_for

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


def test_agent_fetch_redirected_to_another_loopback_is_refused(make_cluster: type[Cluster]) -> None:
    """127.0.0.1 is allow-listed; its redirect to 127.0.0.2 (same port) is refused, audited, never reached."""
    good = _Server("127.0.0.1", "good")
    evil = _Server("127.0.0.2", "evil", port=good.port)
    try:
        c = make_cluster(workers=1)
        c.write_config('\n[security.network]\nallow_hosts = ["127.0.0.1"]\n')
        c.start()
        url = f"http://127.0.0.1:{good.port}/redirect?to=http://127.0.0.2:{good.port}/admin"
        manifest = f"""
[agent]
name = "hopper"
module = "builtin:llm-agent"
tools = ["http_fetch"]

[agent.model]
provider = "scripted"
default = "ok"
script = [{{match = 'go', tool = 'http_fetch', args = {{url = '{url}'}}, then = '{{result}}'}}]
"""
        agent = c.ok("agent.spawn", {"manifest": manifest})["agent_id"]
        reply = c.ok("agent.send", {"agent_id": agent, "text": "go"})["reply"]
        assert "127.0.0.2" in reply and "loopback" in reply, reply
        assert evil.hits == [] and len(good.hits) == 1

        def denied() -> list[dict[str, Any]]:
            with sqlite3.connect(c.data_dir / "audit.db") as db:
                rows = db.execute("SELECT record FROM audit_log WHERE kind = 'tools.denied'").fetchall()
            return [json.loads(r[0])["fields"] for r in rows]

        assert any("127.0.0.2" in r.get("error", "") for r in wait_for(denied, what="tools.denied"))
        assert c.stop() == 0
    finally:
        good.close()
        evil.close()
