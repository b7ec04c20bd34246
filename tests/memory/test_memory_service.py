"""Catalogue memory requests (memory.search / history / stats) answered from the database."""

from __future__ import annotations

import pytest

import openfang.protocol.messages  # noqa: F401  (registers the catalogue's body validators)
from openfang.memory._db import driver, pack_vector
from openfang.memory.embed import HashingEmbedder
from openfang.memory.reader import MemoryReader
from openfang.memory.service import MemoryService
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import ProtocolError, SecurityError


def _roundtrip(msg_type: str, body: dict) -> dict:
    """The reply through the real codec, so the catalogue validates its shape."""
    return decode(encode(Envelope(type=f"{msg_type}.ok", body=body))).body


def test_service_answers_search_history_and_stats_in_the_catalogue_shapes(local_store) -> None:
    """Replies pass the protocol catalogue's validators and carry what was stored."""
    emb = HashingEmbedder()
    for text in ("the invoice from ACME is overdue", "lunch with Carol on Friday"):
        vec = pack_vector(emb.embed([text])[0])
        local_store.ok("memory.store", {"agent_id": "a", "text": text, "embedder": emb.id, "vector": vec})
    for i, role in enumerate(("user", "assistant", "user")):
        local_store.ok("memory.episode", {"agent_id": "a", "session": "s", "role": role, "text": f"turn {i}"})
    with MemoryReader(local_store.db) as reader:
        svc = MemoryService(reader, emb)
        found = _roundtrip("memory.search", svc.answer("memory.search", {"query": "overdue invoice"}, {"a"}))
        assert found["hits"][0]["text"] == "the invoice from ACME is overdue"
        kw = svc.answer("memory.search", {"query": "carol", "mode": "keyword", "limit": 1}, {"a"})
        assert [h["text"] for h in kw["hits"]] == ["lunch with Carol on Friday"]
        hist = _roundtrip(
            "memory.history", svc.answer("memory.history", {"agent_id": "a", "limit": 2}, {"a"})
        )
        assert [m["text"] for m in hist["messages"]] == ["turn 2", "turn 1"]  # newest first
        stats = _roundtrip("memory.stats", svc.answer("memory.stats", {}))
        assert stats["counts"]["memories"] == 2 and stats["counts"]["episodes"] == 3
        assert stats["embedder"] == "hash384-v1"
        assert stats["sqlite"] == driver().summary() and stats["sqlite"].startswith(driver().route)
        with pytest.raises(SecurityError):
            svc.answer("memory.history", {"agent_id": "a"}, {"b"})
        with pytest.raises(ProtocolError, match="not a memory read request"):
            svc.answer("memory.store", {})
