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
