"""The host-facing API and the operator functions, end to end against a real writer process."""

from __future__ import annotations

import io
import json

import pytest

from openfang.memory import cli
from openfang.memory.api import MemoryAPI
from openfang.memory.client import MemoryClient
from openfang.memory.embed import HashingEmbedder
from openfang.protocol.errors import ProtocolError, SecurityError

pytestmark = pytest.mark.integration


def test_api_store_recall_history_and_patterns_read_their_own_writes(writer) -> None:
    """What a worker does for an agent: every read sees the writes made just before it."""
    w = writer()
    api = MemoryAPI.open(w.endpoint, w.db, HashingEmbedder())
    try:
        stored = api.memory_store("ag1", "The staging server password rotates every Monday", importance=0.9)
        api.memory_store("ag1", "Lunch is at noon", kind="habit")
        api.memory_store("ag2", "ag2 also knows about the staging server")
        hits = api.memory_recall("ag1", "when does the staging password rotate", k=2)
        assert hits[0]["id"] == stored["id"] and {h["agent_id"] for h in hits} == {"ag1"}
        assert [h["text"] for h in api.memory_recall("ag1", "lunch", kind="habit")] == ["Lunch is at noon"]

        api.record_message("ag1", "s1", "user", "please fetch the report")
        api.record_message("ag1", "s1", "assistant", "fetched it")
        for tool in ("search", "fetch", "search", "fetch"):
            api.record_tool_call("ag1", tool, "ok", session="s1", duration_ms=12.5, args={"q": tool})
        history = api.memory_history("ag1", session="s1")  # no explicit wait: the API catches up
        assert [h["role"] for h in history] == ["user", "assistant"]
        patterns = api.patterns("ag1")
        assert {t["tool"]: t["calls"] for t in patterns["tools"]} == {"search": 2, "fetch": 2}
        assert patterns["sequences"][0]["tools"] == ("search", "fetch")
        assert len(api.tool_calls("ag1", limit=3)) == 3
        assert all(c.ok for c in api.pump())

        with pytest.raises(SecurityError):
            api.reader.history(scope=api._scope("ag1", None), agent_id="ag2")
        wide = api.memory_recall("ag1", "staging server", k=5, scope={"ag2"})
        assert {h["agent_id"] for h in wide} == {"ag1"}, "recall covers the acting agent's store"
        with pytest.raises(ProtocolError, match="empty"):
            api.memory_recall("ag1", "   ")
        assert api.reclaim("ag2", "purge")["counts"]["memories"] == 1
    finally:
        api.close()


def test_cli_export_then_import_round_trips_and_reimport_stores_nothing_twice(writer) -> None:
    """export -> import into a fresh writer reproduces every row; importing again is all dups."""
    src, dst = writer(), writer()
    emb = HashingEmbedder()
    with MemoryClient(src.endpoint) as c:
        c.episode("a", "s", "user", "hello there", ts=1000.0)
        c.tool_call("a", "search", "error", error="boom", args={"q": 1}, duration_ms=3.0)
        c.store(
            "a", "vectors survive export", embedder=emb.id, vector=emb.embed(["vectors survive export"])[0]
        )
        c.store("b", "no vector here", tags=["misc", "x"], importance=0.0)
    out = io.StringIO()
    assert cli.export(src.db, out) == 4
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0]) == {"openfang_memory_export": 1}

    first = cli.import_jsonl(dst.endpoint, io.StringIO(out.getvalue()))
    again = cli.import_jsonl(dst.endpoint, io.StringIO(out.getvalue()))
    assert first == {"episodes": 1, "tool_calls": 1, "memories": 2, "dup": 0, "present": 0}
    assert again == {"episodes": 0, "tool_calls": 0, "memories": 0, "dup": 4, "present": 0}

    found = cli.search(dst.db, "vectors export", agent="a", embedder=emb)
    assert found["memories"][0]["text"] == "vectors survive export"
    assert found["memories"][0]["vector_rank"] == 1
    assert [h["text"] for h in cli.history(dst.db, "a")] == ["hello there"]
    (b_mem,) = cli.search(dst.db, "vector", agent="b", embedder=emb)["memories"]
    assert b_mem["tags"] == ("misc", "x") and b_mem["importance"] == 0.0
    stats = cli.stats(dst.db, embedder=emb)
    assert stats["counts"]["memories"] == 2 and stats["agents"] == 2
    assert stats["active_embedder"]["id"] == "hash384-v1"


def test_cli_import_into_its_own_database_twice_keeps_the_count(writer) -> None:
    """export, then import the export twice into the database it came from: still ten memories."""
    w = writer()
    emb = HashingEmbedder()
    with MemoryClient(w.endpoint) as c:
        for i in range(10):
            c.store("a", f"fact number {i}", embedder=emb.id, vector=emb.embed([f"fact number {i}"])[0])
        c.store("a", "fact number 0", embedder=emb.id, vector=emb.embed(["fact number 0"])[0])  # a twin
        c.episode("a", "s", "user", "hello", ts=1000.0)
    out = io.StringIO()
    cli.export(w.db, out)
    for _ in range(2):
        counts = cli.import_jsonl(w.endpoint, io.StringIO(out.getvalue()), db_path=w.db)
        assert counts == {"episodes": 0, "tool_calls": 0, "memories": 0, "dup": 0, "present": 12}
    stats = cli.stats(w.db, embedder=emb)["counts"]
    assert stats["memories"] == 11 and stats["episodes"] == 1


def test_cli_import_stores_only_the_rows_a_database_lacks(writer) -> None:
    """A partial database gets exactly the missing rows, twins counted as many times as they occur."""
    src, dst = writer(), writer()
    with MemoryClient(src.endpoint) as c:
        c.store("a", "twice")
        c.store("a", "twice")
        c.store("a", "once")
    with MemoryClient(dst.endpoint) as c:
        c.store("a", "twice")
    out = io.StringIO()
    cli.export(src.db, out)
    counts = cli.import_jsonl(dst.endpoint, io.StringIO(out.getvalue()), db_path=dst.db)
    assert counts["memories"] == 2 and counts["present"] == 1
    assert cli.stats(dst.db, embedder=HashingEmbedder())["counts"]["memories"] == 3


def test_cli_store_embeds_here_and_recall_reports_the_similarity(writer) -> None:
    """memory store writes through the writer with this machine's embedder; a vector hit has a similarity."""
    w = writer()
    emb = HashingEmbedder()
    ack = cli.store(w.endpoint, "a", "the launch is in Lisbon", kind="fact", tags=["trip"], embedder=emb)
    assert ack["id"] >= 1 and ack["embedder"] == emb.id
    (hit,) = cli.search(w.db, "launch Lisbon", agent="a", embedder=emb)["memories"]
    assert hit["kind"] == "fact" and hit["tags"] == ("trip",)
    assert hit["vector_rank"] == 1 and 0.5 < hit["similarity"] <= 1.0
    assert hit["score"] < 0.05  # the fused score orders hits; it is not the similarity


def test_cli_import_refuses_a_file_with_bad_lines_and_names_each(writer) -> None:
    """A bad export line stops the whole import before anything is sent, with every problem listed."""
    w = writer()
    bad = '{"table": "episodes", "agent_id": "a"}\nnot json\n{"table": "nope"}\n'
    with pytest.raises(ProtocolError) as info:
        cli.import_jsonl(w.endpoint, io.StringIO(bad))
    msg = str(info.value)
    assert "line 1: body.session: required" in msg and "line 2: not JSON" in msg and "line 3: table" in msg
    assert cli.stats(w.db, embedder=HashingEmbedder())["counts"]["episodes"] == 0


def test_cli_migrate_creates_a_database_readers_can_open(tmp_path) -> None:
    """migrate on a new path creates the schema; stats then works without a writer."""
    db = tmp_path / "sub" / "memory.db"
    assert cli.migrate(db) == ["0001_initial", "0002_memory_tags"]
    assert cli.stats(db, embedder=HashingEmbedder())["seq"] == 0


def test_host_callbacks_store_and_recall_for_the_calling_agent_only(writer) -> None:
    """The worker's memory_store / memory_recall tool callbacks: tags kept, other agents invisible."""
    w = writer()
    api = MemoryAPI.open(w.endpoint, w.db, HashingEmbedder())
    try:
        cbs = api.host_callbacks()
        stored = cbs["memory_store"]("ag1", {"text": "the wifi password is on the fridge", "tags": ["home"]})
        cbs["memory_store"]("ag2", {"text": "ag2 knows a different wifi password"})
        hits = cbs["memory_recall"]("ag1", {"query": "wifi password", "k": 5})
        assert [h["id"] for h in hits] == [stored["id"]]
        assert hits[0]["tags"] == ["home"] and hits[0]["kind"] == "note"
        json.dumps(hits)  # tool results go back to the guest as JSON
    finally:
        api.close()
