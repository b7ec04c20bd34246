"""The read path: snapshots, read-your-writes, read-only connections, scopes, episodic queries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from memory_testkit import ENV

from openfang.memory import _db
from openfang.memory.client import MemoryClient
from openfang.memory.reader import MemoryReader
from openfang.protocol.errors import MemoryStoreError, SecurityError, Timeout

PAIRS = r"""
import sys
from openfang.memory.client import MemoryClient
endpoint, n = sys.argv[1], int(sys.argv[2])
c = MemoryClient(endpoint, max_in_flight=20)
for i in range(n):
    ops = [
        {"type": "memory.episode",
         "body": {"agent_id": "a", "session": "s", "role": "tool", "text": "call %d" % i}},
        {"type": "memory.tool_call", "body": {"agent_id": "a", "tool": "t", "status": "ok", "session": "s"}},
    ]
    c.submit("memory.write", {"ops": ops})
    c.poll()
c.wait_all(60)
c.close()
"""


@pytest.mark.integration
def test_reader_never_sees_a_torn_snapshot_while_the_writer_commits(writer) -> None:
    """Each write adds one episode and one tool call; every snapshot shows equal counts."""
    w = writer()
    n = 3000
    loader = subprocess.Popen([sys.executable, "-c", PAIRS, w.endpoint, str(n)], env=ENV)
    seen = set()
    try:
        with MemoryReader(w.db) as r:
            while loader.poll() is None or len(seen) < 2:
                with r.snapshot() as conn:
                    eps = conn.execute("SELECT count(*) FROM episodes").fetchone()[0]
                    calls = conn.execute("SELECT count(*) FROM tool_calls").fetchone()[0]
                assert eps == calls
                seen.add(eps)
                if loader.poll() is not None and eps == n:
                    break
    finally:
        if loader.poll() is None:
            loader.kill()
        loader.wait(60)
    assert loader.returncode == 0
    assert len(seen) > 3, "the reader must have observed the writer mid-way"


@pytest.mark.integration
def test_read_your_writes_waits_for_the_ack_seq(writer) -> None:
    """After wait_for(ack.seq) the reader's snapshot includes the acknowledged write."""
    w = writer()
    with MemoryClient(w.endpoint) as c, MemoryReader(w.db) as r:
        for i in range(20):
            ack = c.episode("a", "s", "user", f"msg {i}")
            r.wait_for(ack["seq"])
            assert r.history(scope={"a"}, agent_id="a")[-1].text == f"msg {i}"
        with pytest.raises(Timeout, match="waiting for"):
            r.wait_for(r.seq() + 100, timeout_s=0.2)


def test_reader_connection_is_read_only(local_store) -> None:
    """A reader cannot write the database, even by accident."""
    with MemoryReader(local_store.db) as r, pytest.raises(_db.driver().DatabaseError, match="readonly"):
        r.conn.execute("UPDATE meta SET value = 99")


def test_reader_of_a_missing_database_says_where(tmp_path: Path) -> None:
    """Opening a reader on a path with no database names the path."""
    with pytest.raises(MemoryStoreError, match="no memory database"):
        MemoryReader(tmp_path / "nope.db")


def test_scope_refuses_agents_outside_it_on_every_query(local_store) -> None:
    """Queries for an agent outside the caller's scope raise SecurityError; in-scope ones work."""
    local_store.ok("memory.episode", {"agent_id": "b", "session": "s", "role": "user", "text": "b private"})
    with MemoryReader(local_store.db) as r:
        for query in (
            lambda: r.history(scope={"a"}, agent_id="b"),
            lambda: r.search_episodes("private", scope={"a"}, agent_ids=["b"]),
            lambda: r.recall(scope={"a"}, agent_id="b", text="private"),
            lambda: r.tool_calls(scope={"a"}, agent_id=["a", "b"]),
            lambda: r.tool_stats(scope={"a"}, agent_id="b"),
        ):
            with pytest.raises(SecurityError, match="outside the caller's scope"):
                query()
        assert r.search_episodes("private", scope={"a"}) == []
        assert [e.text for e in r.search_episodes("private", scope={"a", "b"})] == ["b private"]


def test_history_returns_latest_messages_oldest_first_per_session(local_store) -> None:
    """history: the last N of the session, in order; FTS search over messages ranks matches."""
    for i in range(10):
        local_store.ok(
            "memory.episode",
            {
                "agent_id": "a",
                "session": "s1" if i % 2 else "s2",
                "role": "user",
                "text": f"note {i}",
                "ts": 100 + i,
            },
        )
    with MemoryReader(local_store.db) as r:
        assert [e.text for e in r.history(scope={"a"}, agent_id="a", session="s1", limit=3)] == [
            "note 5",
            "note 7",
            "note 9",
        ]
        assert [e.text for e in r.search_episodes("note 4", scope={"a"}, k=1)] == ["note 4"]
