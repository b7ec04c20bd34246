"""The memory writer as a child of the real tree, and the `openfang memory` verbs against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from daemon_harness import Cluster, wait_for
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
    assert json.loads(_ctl("memory", "stats", *ep).stdout)["counts"]["memories"] == 2
    assert c.stop() == 0


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
    """openfang status shows the memory store and which embedder is active, flagging the hashing fallback."""
    c = make_cluster(workers=1, memory=True).start(env={"OPENFANG_EMBEDDER": "hash"})
    status = json.loads(_ctl("status", "--endpoint", c.endpoint, "--json").stdout)
    assert status["embedder"].startswith("hash") and "fallback" in status["embedder"]
    assert "episodes 0" in status["memory"]
    assert c.stop() == 0


def test_status_without_a_memory_writer_says_memory_is_unavailable(make_cluster: type[Cluster]) -> None:
    """A cluster with no memory child still answers status, and says memory is not configured."""
    c = make_cluster(workers=1).start()
    status = json.loads(_ctl("status", "--endpoint", c.endpoint, "--json").stdout)
    assert status["state"] == "running" and status["memory"].startswith("unavailable (not_found")
    assert c.stop() == 0
