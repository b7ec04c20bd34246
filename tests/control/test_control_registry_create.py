"""A fresh agents.db is complete or absent after a crash (security.dbfile); its first commit is paid early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openfang.control.registry import SCHEMA_VERSION, AgentRegistry, AgentRow, manifest_digest

MANIFEST = '[agent]\nname = "greeter"\nmodule = "builtin:echo"\n'


def _add(reg: AgentRegistry, name: str = "greeter") -> AgentRow:
    row = AgentRow(agent_id=reg.next_id(name), name=name, manifest_digest=manifest_digest(MANIFEST))
    return reg.add(row, MANIFEST)


def _is_wal_file(path: Path) -> bool:
    return path.read_bytes()[18:20] == b"\x02\x02"  # the header's read/write versions: 2 is WAL


def test_registry_create_leaves_one_complete_file_in_wal_mode(tmp_path: Path) -> None:
    """A fresh registry is one file in WAL mode with the schema and its version; no private file is left,
    and it takes and keeps rows like any other."""
    path = tmp_path / "agents.db"
    reg = AgentRegistry(path)
    assert _is_wal_file(path)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    row = _add(reg)
    reg.commit()
    reg.close()
    again = AgentRegistry(path)
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert again.get(row.agent_id) is not None
    again.close()


def test_registry_create_crash_before_the_link_leaves_no_registry_and_the_next_start_works(
    tmp_path: Path,
) -> None:
    """A process that dies after writing its private file but before linking it (a power cut, kill -9)
    leaves no agents.db: the next start makes a working one."""
    path = tmp_path / "agents.db"
    code = (
        "import os\n"
        "os.link = lambda *a: os._exit(9)\n"
        "from openfang.control.registry import AgentRegistry\n"
        f"AgentRegistry({str(path)!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    assert not path.exists()
    assert all(p.name.startswith(".agents.db.") for p in tmp_path.iterdir())  # the dead one's private file
    reg = AgentRegistry(path)
    row = _add(reg)
    reg.commit()
    reg.close()
    assert AgentRegistry(path).get(row.agent_id) is not None


def test_registry_create_without_hard_links_makes_the_file_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links the registry is made in place, as before, and works."""

    def no_links(src: Any, dst: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "agents.db"
    reg = AgentRegistry(path)
    row = _add(reg)
    reg.commit()
    reg.close()
    assert _is_wal_file(path) and AgentRegistry(path).get(row.agent_id) is not None
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_registry_warm_up_commits_nothing_and_only_once(tmp_path: Path) -> None:
    """warm_up makes one commit that changes nothing (no row, the same schema version), with synchronous
    FULL; a second call, or one after a commit, runs no statement."""
    reg = AgentRegistry(tmp_path / "agents.db")
    statements: list[str] = []
    reg._db.set_trace_callback(statements.append)
    reg.warm_up()
    assert statements[-1].startswith("COMMIT") and any("user_version = 1" in s for s in statements)
    assert reg._db.execute("PRAGMA synchronous").fetchone() == (2,)
    assert len(reg) == 0 and reg._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    statements.clear()
    reg.warm_up()
    assert statements == []
    reg.close()
    other = AgentRegistry(tmp_path / "agents.db")
    _add(other)
    other.commit()
    other._db.set_trace_callback(statements.append)
    other.warm_up()
    assert statements == []
    other.close()
