"""agent.list pages on a real daemon (issue 9): 2,500 agents walked in pages of 1,000 (none missing, none
twice, ``next`` nil on the last, ``total`` right), filters by state and worker, bad bodies refused naming
the field, an empty body is the first page, and ``openfang agent list --all`` walks every page."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from daemon_harness import Cluster

from openfang.protocol.envelope import Envelope, encode

pytestmark = pytest.mark.integration

AGENTS = 2_500
ECHO = '[agent]\nname = "pager"\nmodule = "builtin:echo"\n'
UNLIMITED = (
    "\n[security.ratelimit.client_requests]\nrate = 0\nburst = 0\n"
    "\n[security.ratelimit.global_requests]\nrate = 0\nburst = 0\n"
)
WINDOW = 200  # spawns in flight


def spawn_many(c: Cluster, n: int) -> list[str]:
    """``n`` echo agents, ``WINDOW`` spawns in flight on one socket; every reply checked."""
    ids: list[str] = []
    waiting: set[str] = set()
    sent = 0
    while len(ids) < n:
        while sent < n and len(waiting) < WINDOW:
            req = Envelope(type="agent.spawn", body={"manifest": ECHO})
            c.send_raw(encode(req))
            waiting.add(req.id)
            sent += 1
        reply = c.recv_env(30)
        if reply.id in waiting:
            assert not reply.is_error, reply.body
            waiting.discard(reply.id)
            ids.append(str(reply.body["agent_id"]))
    return ids


def walk(c: Cluster, **body: Any) -> list[dict[str, Any]]:
    pages = []
    while True:
        page = c.ok("agent.list", body)
        pages.append(page)
        if page["next"] is None:
            return pages
        body = {**body, "after": page["next"]}


def refused(c: Cluster, body: dict[str, Any]) -> str:
    reply = c.call("agent.list", body)
    assert reply.is_error and reply.body["code"] == "bad_request", reply.body
    return str(reply.body["message"])


def test_agent_list_pages_walk_every_agent_once_with_filters(make_cluster: Any) -> None:
    """2,500 agents on 2 workers: pages of 1,000 are 1,000/1,000/500 in id order, the union is every
    spawned id once, next is nil only on the last, total 2,500 on each, live figures on every record; a
    state filter and a worker filter give exactly their agents; bad bodies are refused naming the field."""
    c = make_cluster(workers=2, extra=UNLIMITED).start()
    ids = spawn_many(c, AGENTS)
    pages = walk(c, limit=1000)
    assert [len(p["agents"]) for p in pages] == [1000, 1000, 500]
    assert [p["total"] for p in pages] == [AGENTS] * 3
    assert [p["next"] is None for p in pages] == [False, False, True]
    listed = [a["agent_id"] for p in pages for a in p["agents"]]
    assert listed == sorted(ids) and len(set(listed)) == AGENTS, "every agent once, in id order"
    assert all(a["state"] == "running" and "fuel_used" in a for p in pages for a in p["agents"])
    assert {w["worker"] for w in pages[0]["workers"]} == {"workers-0", "workers-1"}, "one stats per worker"
    assert len(pages[0]["workers"]) == 2 and pages[0]["errors"] == []

    first = c.ok("agent.list")  # an empty body: the first page of 1,000
    assert [a["agent_id"] for a in first["agents"]] == listed[:1000] and first["next"] == listed[999]

    by_worker = {w: walk(c, worker=w, limit=1000) for w in ("workers-0", "workers-1")}
    on = {w: [a["agent_id"] for p in ps for a in p["agents"]] for w, ps in by_worker.items()}
    assert all(a["worker"] == w for w, ps in by_worker.items() for p in ps for a in p["agents"])
    assert sorted(on["workers-0"] + on["workers-1"]) == sorted(ids) and all(on.values())
    assert by_worker["workers-0"][0]["total"] == len(on["workers-0"])

    for aid in listed[:3]:
        c.ok("agent.kill", {"agent_id": aid})
    running = walk(c, state="running", limit=1000)
    assert running[0]["total"] == AGENTS - 3
    assert [a["agent_id"] for p in running for a in p["agents"]] == listed[3:]
    none = c.ok("agent.list", {"state": "suspended"})
    assert none["agents"] == [] and none["total"] == 0 and none["next"] is None

    assert "body.limit" in refused(c, {"limit": 0})
    assert "body.limit" in refused(c, {"limit": 20_000})
    assert "body.after" in refused(c, {"after": "x" * 200})
    assert "body.state" in refused(c, {"state": "asleep"})
    assert "body.ids" in refused(c, {"ids": [listed[0]]})

    cmd = [sys.executable, "-m", "openfang.cli.main", "--endpoint", c.endpoint, "agent", "list"]
    out = subprocess.run([*cmd, "--all", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    every = json.loads(out.stdout)
    assert [a["agent_id"] for a in every["agents"]] == listed[3:] and every["next"] is None

    page = subprocess.run([*cmd, "--limit", "10"], capture_output=True, text=True, timeout=60)
    assert page.returncode == 0, page.stderr
    lines = page.stdout.splitlines()
    assert len(lines) == 1 + 10 + 1 and f"--after {listed[12]}" in lines[-1], lines[-1]
    after = subprocess.run([*cmd, "--after", listed[-2]], capture_output=True, text=True, timeout=60)
    assert after.stdout.splitlines()[1].startswith(listed[-1]) and "--after" not in after.stdout
    bad = subprocess.run([*cmd, "--limit", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "body.limit" in bad.stdout + bad.stderr
