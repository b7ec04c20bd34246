"""The memory writer as a child of the real tree, and the `openfang memory` verbs against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Cluster, wait_for

from openfang.memory._driver import driver
from openfang.memory.client import MemoryClient

pytestmark = pytest.mark.integration


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", *args], capture_output=True, text=True, timeout=60
    )


def test_memory_verbs_search_history_stats_export_and_import(make_cluster: type[Cluster]) -> None:
    """Writes through the writer child show up in search, history, stats and export; import round-trips."""
    c = make_cluster(workers=1, memory=True).start()
    writer = MemoryClient(f"ipc://{c.data_dir}/run/memory.sock")
    writer.store("scribe-1", "The launch is planned for the third of March in Lisbon", kind="fact")
    writer.episode("scribe-1", "s1", "user", "when is the launch?")
    writer.close()
    ep = ["--endpoint", c.endpoint, "--json"]
    hits = json.loads(_ctl("memory", "search", "launch date", *ep).stdout)["hits"]
    assert hits and "Lisbon" in hits[0]["text"] and hits[0]["agent_id"] == "scribe-1"
    history = json.loads(_ctl("memory", "history", "scribe-1", *ep).stdout)["messages"]
    assert [m["text"] for m in history] == ["when is the launch?"]
    stats = json.loads(_ctl("memory", "stats", *ep).stdout)
    assert stats["counts"]["memories"] == 1 and stats["counts"]["episodes"] == 1
    export = _ctl("memory", "export", "--db", str(c.data_dir / "memory.db"))
    rows = [json.loads(line) for line in export.stdout.splitlines()[1:]]
    assert {r["table"] for r in rows} == {"memories", "episodes"}
    dump = c.dir / "dump.jsonl"
    dump.write_text(export.stdout)
    again = _ctl("memory", "import", str(dump), "--writer", f"ipc://{c.data_dir}/run/memory.sock", "--json")
    assert again.returncode == 0, again.stderr
    # Import is idempotent: the rows are in the database already (docs/memory.md).
    assert json.loads(again.stdout)["present"] == 2
    assert json.loads(_ctl("memory", "stats", *ep).stdout)["counts"]["memories"] == 1
    assert c.stop() == 0


def test_memory_export_import_and_audit_verify_follow_endpoint(make_cluster: type[Cluster]) -> None:
    """With only --endpoint: export reads the daemon's database, importing it back twice keeps every count,
    memory store adds one, and audit verify checks the daemon's audit log."""
    c = make_cluster(workers=1, memory=True).start()
    ep = ["--endpoint", c.endpoint]
    for i in range(10):
        stored = _ctl("memory", "store", "scribe-1", f"fact number {i} about Lisbon", "--kind", "fact", *ep)
        assert stored.returncode == 0, stored.stderr
    export = _ctl("memory", "export", *ep)
    assert export.returncode == 0 and f"from {c.data_dir / 'memory.db'}" in export.stderr, export.stderr
    dump = c.dir / "dump.jsonl"
    dump.write_text(export.stdout)
    for _ in range(2):
        res = _ctl("memory", "import", str(dump), "--json", *ep)
        assert res.returncode == 0 and json.loads(res.stdout)["present"] == 10, res.stderr
    assert json.loads(_ctl("memory", "stats", "--json", *ep).stdout)["counts"]["memories"] == 10
    hits = json.loads(_ctl("memory", "search", "Lisbon fact number 3", "--json", *ep).stdout)["hits"]
    assert hits[0]["text"] == "fact number 3 about Lisbon"
    sims = [h["similarity"] for h in hits if h["similarity"] is not None]
    assert sims and len(set(sims)) > 1 and all(-1.0 <= s <= 1.0 for s in sims)  # not one flat score
    human = _ctl("memory", "search", "Lisbon", *ep).stdout
    assert "SIM" in human and "cosine similarity" in human
    audit = _ctl("audit", "verify", "--json", *ep)
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["path"] == str(c.data_dir / "audit.db")
    assert c.stop() == 0


def test_memory_and_audit_verbs_without_a_daemon_name_what_is_missing(tmp_path: Path) -> None:
    """No daemon at --endpoint: export and audit verify say so (no '<config>' placeholder), exit 2."""
    for verb in (["memory", "export"], ["audit", "verify"], ["memory", "import", "x.jsonl"]):
        res = _ctl(*verb, "--endpoint", f"ipc://{tmp_path}/control.sock")
        assert res.returncode == 2, (verb, res.stderr)
        assert "<config>" not in res.stderr and f"no daemon at ipc://{tmp_path}/control.sock" in res.stderr


def test_killed_memory_writer_is_restarted_and_acknowledged_writes_survive(
    make_cluster: type[Cluster],
) -> None:
    """kill -9 of the writer child: the tree restarts it, nothing acknowledged is lost, clients carry on."""
    c = make_cluster(workers=1, memory=True).start()
    writer = MemoryClient(f"ipc://{c.data_dir}/run/memory.sock")
    for i in range(50):
        writer.episode("a1", "s", "user", f"message {i}")
    old = c.node("memory")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(
        lambda: c.node("memory")["pid"] not in (None, old) and c.node("memory")["state"] == "running",
        what="the writer to come back",
    )
    for i in range(50, 60):
        writer.episode("a1", "s", "user", f"message {i}")
    writer.close()
    stats = json.loads(_ctl("memory", "stats", "--endpoint", c.endpoint, "--json").stdout)
    assert stats["counts"]["episodes"] == 60
    assert c.stop() == 0


def test_status_names_the_embedder_and_says_when_it_is_the_fallback(make_cluster: type[Cluster]) -> None:
    """openfang status shows the memory store, which embedder is active (flagging the hashing fallback) and
    the SQLite driver memory runs on."""
    c = make_cluster(workers=1, memory=True).start(env={"OPENFANG_EMBEDDER": "hash"})
    status = json.loads(_ctl("status", "--endpoint", c.endpoint, "--json").stdout)
    assert status["embedder"].startswith("hash") and "fallback" in status["embedder"]
    assert status["sqlite"] == driver().summary()  # the worker runs memory on this interpreter's driver
    assert "episodes 0" in status["memory"]
    assert c.stop() == 0


def test_status_without_a_memory_writer_says_memory_is_unavailable(make_cluster: type[Cluster]) -> None:
    """A cluster with no memory child still answers status, and says memory is not configured."""
    c = make_cluster(workers=1).start()
    status = json.loads(_ctl("status", "--endpoint", c.endpoint, "--json").stdout)
    assert status["state"] == "running" and status["memory"].startswith("unavailable (not_found")
    assert c.stop() == 0
