"""The durable agent registry: rows survive a reopen, ids are never reused, writes are grouped."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from openfang.control.registry import AgentRegistry, AgentRow, manifest_digest
from openfang.protocol.errors import AlreadyExists

MANIFEST = '[agent]\nname = "greeter"\nmodule = "builtin:echo"\n'


def _row(registry: AgentRegistry, agent_id: str | None = None, name: str = "greeter") -> AgentRow:
    row = AgentRow(
        agent_id=agent_id or registry.next_id(name), name=name, manifest_digest=manifest_digest(MANIFEST)
    )
    return registry.add(row, MANIFEST)


def test_registry_rows_survive_a_reopen(tmp_path: Path) -> None:
    """A committed row, its manifest text and its state are read back by a new registry on the same file."""
    reg = AgentRegistry(tmp_path / "agents.db")
    row = _row(reg)
    row.state, row.placement, row.restarts = "running", "workers-0", 2
    reg.save(row)
    reg.commit()
    reg.close()
    again = AgentRegistry(tmp_path / "agents.db")
    back = again.get(row.agent_id)
    assert back is not None and (back.state, back.placement, back.restarts) == ("running", "workers-0", 2)
    assert again.manifest(back) == MANIFEST
    again.close()


def test_registry_uncommitted_changes_are_not_on_disk(tmp_path: Path) -> None:
    """Until commit, nothing is written: another connection sees no row."""
    reg = AgentRegistry(tmp_path / "agents.db")
    _row(reg)
    assert reg.pending
    db = sqlite3.connect(tmp_path / "agents.db")
    assert db.execute("SELECT COUNT(*) FROM agents").fetchone() == (0,)
    assert reg.commit() == 1 and not reg.pending
    assert db.execute("SELECT COUNT(*) FROM agents").fetchone() == (1,)
    db.close()
    reg.close()


def test_registry_default_ids_are_never_reused(tmp_path: Path) -> None:
    """<name>-<n> counts on across removals and reopens, and skips ids taken explicitly."""
    reg = AgentRegistry(tmp_path / "agents.db")
    first = _row(reg)
    assert first.agent_id == "greeter-1"
    reg.remove(first.agent_id)
    _row(reg, agent_id="greeter-2")  # an explicit id that looks like a default one
    assert _row(reg).agent_id == "greeter-3"
    reg.close()
    again = AgentRegistry(tmp_path / "agents.db")
    assert again.next_id("greeter") == "greeter-4"
    assert again.get("greeter-1") is None
    again.close()


def test_registry_refuses_a_live_duplicate_and_replaces_a_dead_one(tmp_path: Path) -> None:
    """An explicit id of a live agent is already_exists; a dead agent's row may be taken over."""
    reg = AgentRegistry(tmp_path / "agents.db")
    row = _row(reg, agent_id="analyst-01")
    with pytest.raises(AlreadyExists, match="analyst-01"):
        _row(reg, agent_id="analyst-01")
    row.state = "dead"
    again = _row(reg, agent_id="analyst-01")
    assert again.state == "starting" and reg.get("analyst-01") is again
    reg.close()


def test_registry_stores_one_text_per_distinct_manifest(tmp_path: Path) -> None:
    """A thousand agents of one manifest keep one manifest text."""
    reg = AgentRegistry(tmp_path / "agents.db")
    for _ in range(1000):
        _row(reg)
    reg.commit()
    db = sqlite3.connect(tmp_path / "agents.db")
    assert db.execute("SELECT COUNT(*) FROM manifests").fetchone() == (1,)
    assert db.execute("SELECT COUNT(*) FROM agents").fetchone() == (1000,)
    db.close()
    reg.close()


def _walk(reg: AgentRegistry, limit: int, **filters: str) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = reg.page(limit, after=after, **filters)
        pages.append([r.agent_id for r in page.rows])
        if page.next is None:
            return pages
        assert page.next == page.rows[-1].agent_id, "the cursor is the page's last id"
        after = page.next


def _flat(pages: list[list[str]]) -> list[str]:
    return [agent_id for page in pages for agent_id in page]


def test_registry_page_walks_every_row_once_in_id_order(tmp_path: Path) -> None:
    """Pages of 4 over 10 rows: 4, 4, 2 ids in sorted order, none twice, next None on the last, total 10."""
    reg = AgentRegistry(tmp_path / "agents.db")
    ids = [_row(reg, f"a-{n:02d}").agent_id for n in (7, 3, 9, 1, 5, 0, 8, 2, 6, 4)]
    pages = _walk(reg, 4)
    assert [len(p) for p in pages] == [4, 4, 2]
    assert _flat(pages) == sorted(ids)
    assert reg.page(4).total == 10 and reg.page(10).next is None


def test_registry_page_filters_by_state_and_worker_with_their_total(tmp_path: Path) -> None:
    """state= and worker= keep only matching rows; total counts the matches of every page, not this one."""
    reg = AgentRegistry(tmp_path / "agents.db")
    for n in range(12):
        row = _row(reg, f"a-{n:02d}")
        row.state = "hibernated" if n % 3 == 0 else "running"
        row.placement = f"workers-{n % 2}"
    hib = reg.page(2, state="hibernated")
    assert [r.agent_id for r in hib.rows] == ["a-00", "a-03"] and hib.total == 4 and hib.next == "a-03"
    assert _flat(_walk(reg, 2, state="hibernated")) == ["a-00", "a-03", "a-06", "a-09"]
    both = reg.page(100, state="running", worker="workers-1")
    assert [r.agent_id for r in both.rows] == ["a-01", "a-05", "a-07", "a-11"] and both.total == 4
    assert reg.page(5, state="dead").rows == [] and reg.page(5, state="dead").total == 0


def test_registry_page_cursor_survives_adds_and_removes(tmp_path: Path) -> None:
    """A cursor whose agent was removed still starts after it; a row added behind the cursor is not seen,
    one added ahead is; an id is never returned twice; a reopened registry pages in the same order."""
    reg = AgentRegistry(tmp_path / "agents.db")
    for n in range(6):
        _row(reg, f"a-{n}")
    first = reg.page(3)
    assert first.next == "a-2"
    reg.remove("a-2")
    _row(reg, "a-0b")  # behind the cursor: missed by this walk
    _row(reg, "a-4b")  # ahead of it: seen once
    rest = reg.page(10, after=first.next)
    assert [r.agent_id for r in rest.rows] == ["a-3", "a-4", "a-4b", "a-5"] and rest.next is None
    reg.commit()
    reg.close()
    again = AgentRegistry(tmp_path / "agents.db")
    assert _flat(_walk(again, 2)) == ["a-0", "a-0b", "a-1", "a-3", "a-4", "a-4b", "a-5"]
    again.close()


def test_registry_page_refuses_a_limit_below_one(tmp_path: Path) -> None:
    """limit 0 is a caller's bug (the protocol refuses it earlier): ValueError naming limit."""
    reg = AgentRegistry(tmp_path / "agents.db")
    with pytest.raises(ValueError, match="limit"):
        reg.page(0)


def test_registry_loaded_rows_share_their_repeated_strings(tmp_path: Path) -> None:
    """Rows read back from disk hold one string per distinct name, digest, policy, worker and state (not
    one per row), with the values unchanged; distinct values stay distinct."""
    reg = AgentRegistry(tmp_path / "agents.db")
    for n in range(4):
        row = _row(reg)
        row.state, row.placement, row.service = "running", f"workers-{n % 2}", "billing"
        reg.save(row)
    reg.commit()
    reg.close()
    again = AgentRegistry(tmp_path / "agents.db")
    rows = sorted(again.rows.values(), key=lambda r: r.agent_id)
    first = rows[0]
    for row in rows[1:]:
        assert row.name is first.name and row.manifest_digest is first.manifest_digest
        assert row.restart is first.restart and row.state is first.state and row.service is first.service
    assert rows[2].placement is rows[0].placement and rows[1].placement is rows[3].placement
    assert [r.placement for r in rows] == ["workers-0", "workers-1", "workers-0", "workers-1"]
    assert first.manifest_digest == manifest_digest(MANIFEST) and again.manifest(first) == MANIFEST
    again.close()


def test_registry_manifest_digest_is_one_string_per_text() -> None:
    """Two digests of equal texts (received as separate strings) are the same object."""
    text = "".join(MANIFEST)
    assert manifest_digest(MANIFEST) is manifest_digest(text.encode().decode())
    assert manifest_digest(MANIFEST) != manifest_digest(MANIFEST + "\n")


def _sync_level(reg: AgentRegistry) -> int:
    """The connection's ``PRAGMA synchronous`` after a commit: 2 FULL (fsync'd), 1 NORMAL (in the file)."""
    return int(reg._db.execute("PRAGMA synchronous").fetchone()[0])


def test_registry_new_row_is_durable_only_after_its_commit(tmp_path: Path) -> None:
    """durable() is False from add() to the commit that writes the row (fsync'd), True after; other ids
    (never added, or committed before) are durable."""
    reg = AgentRegistry(tmp_path / "agents.db")
    old = _row(reg)
    reg.commit()
    new = _row(reg)
    assert not reg.durable(new.agent_id) and reg.durable(old.agent_id) and reg.durable("nobody")
    reg.commit()
    assert reg.durable(new.agent_id) and _sync_level(reg) == 2
    db = sqlite3.connect(tmp_path / "agents.db")
    assert db.execute("SELECT COUNT(*) FROM agents").fetchone() == (2,)
    db.close()
    reg.close()


def test_registry_commit_of_fsync_free_changes_only_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    """A commit holding only save(fsync=False) changes is written with synchronous NORMAL (in the file, read
    back by another connection); any other change in the same commit (a save, a new row, a removal, a
    counter) makes it FULL again."""
    reg = AgentRegistry(tmp_path / "agents.db")
    a, b = _row(reg), _row(reg)
    reg.commit()
    assert _sync_level(reg) == 2
    a.state = "running"
    reg.save(a, fsync=False)
    reg.commit()
    assert _sync_level(reg) == 1
    db = sqlite3.connect(tmp_path / "agents.db")
    assert db.execute("SELECT state FROM agents WHERE agent_id = ?", (a.agent_id,)).fetchone() == ("running",)
    db.close()
    for change in (
        lambda: reg.save(b),
        lambda: reg.remove(b.agent_id),
        lambda: _row(reg),
        lambda: reg.next_id("other"),
    ):
        reg.save(a, fsync=False)
        change()
        reg.commit()
        assert _sync_level(reg) == 2
        reg.save(a, fsync=False)
        reg.commit()
        assert _sync_level(reg) == 1
    reg.close()
    again = AgentRegistry(tmp_path / "agents.db")
    assert again.get(a.agent_id) is not None and again.get(b.agent_id) is None
    assert again.next_id("other") == "other-2"
    again.close()


def test_registry_schema_is_written_once_and_a_reopen_writes_nothing(
    tmp_path: Path, sql_statements: list[str]
) -> None:
    """A fresh file gets its tables and schema version in one transaction; opening it again runs no schema
    statement (no write, so no fsync, on the gateway's start)."""
    statements = sql_statements
    path = tmp_path / "agents.db"
    reg = AgentRegistry(path)
    assert reg._db.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in reg._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"agents", "manifests", "counters"}
    assert any(s.startswith("BEGIN IMMEDIATE") for s in statements)
    reg.close()
    statements.clear()
    AgentRegistry(path).close()
    assert not [s for s in statements if "CREATE" in s or "user_version =" in s or "BEGIN" in s]


def test_registry_commit_writes_each_kind_of_change_alone_and_together(tmp_path: Path) -> None:
    """A commit holding one row, several rows, only a removal or only a counter writes exactly that: a reopen
    reads back the same rows, texts and counters."""
    path = tmp_path / "agents.db"
    reg = AgentRegistry(path)
    one = _row(reg)
    assert reg.commit() == 1
    many = [_row(reg) for _ in range(3)]
    one.state = "running"
    reg.save(one, fsync=False)
    assert reg.commit() == 4
    reg.remove(many[0].agent_id)
    assert reg.commit() == 1
    reg.next_id("other")  # a counter alone
    assert reg.commit() == 0 and not reg.pending
    reg.close()
    again = AgentRegistry(path)
    assert sorted(again.rows) == sorted(r.agent_id for r in (one, *many[1:]))
    back = again.get(one.agent_id)
    assert back is not None and back.state == "running"
    assert again.next_id("greeter") == "greeter-5" and again.next_id("other") == "other-2"
    again.close()
