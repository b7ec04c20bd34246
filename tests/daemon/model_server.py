"""A real HTTP model server on 127.0.0.1 speaking the OpenAI chat protocol (POST /v1/chat/completions), told
how to answer: the daemon tests' stand-in for a remote model that works, fails or is slow."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWERS = ("ok", "500", "notjson", "nochoices", "slow", "hold")


class ModelServer:
    """Each request takes the next behaviour from ``plan``, else ``default``:

    - ``ok``: ``echo: <last message>`` at once;
    - ``500``: HTTP 500 with an OpenAI error body;
    - ``notjson``: a 200 HTML page; ``nochoices``: JSON without ``choices``;
    - ``slow``: no answer for 2.5 s (past a 1 s model timeout), then the connection closes;
    - ``hold``: waits until :meth:`release` (at most 30 s), then answers as ``ok``.

    ``arrived`` is set by every request; ``requests`` keeps their bodies."""

    def __init__(self) -> None:
        self.plan: deque[str] = deque()
        self.default = "ok"
        self.requests: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        self._released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.arrived.set()
                how = server.plan.popleft() if server.plan else server.default
                assert how in ANSWERS, how
                if how == "slow":
                    time.sleep(2.5)
                    return
                if how == "hold":
                    server._released.wait(30)
                status, payload, ctype = 200, b"", "application/json"
                if how == "500":
                    status = 500
                    payload = b'{"error": {"message": "upstream exploded", "type": "server_error"}}'
                elif how == "notjson":
                    payload, ctype = b"<html>gateway page</html>", "text/html"
                elif how == "nochoices":
                    payload = json.dumps({"id": "x", "object": "chat.completion", "model": "m"}).encode()
                else:
                    last = body["messages"][-1]["content"]
                    answer = {"role": "assistant", "content": f"echo: {last}"}
                    payload = json.dumps(
                        {
                            "model": body["model"],
                            "choices": [{"message": answer, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                        }
                    ).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        """Let every held request (and any later ``hold``) answer."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
