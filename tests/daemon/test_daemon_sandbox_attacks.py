"""Sandbox attacks at spawn time on a real daemon: start-function loops, tables, bad exports, junk bytes.

One cluster for the module (one worker, so the hostile agent and its neighbour share a worker process and its
one polling thread). Each test performs the attack as a client would, then checks that it was stopped with a
clear error, audited, and that the neighbour and the worker carried on.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_harness import Cluster, wait_for

from openfang.protocol.envelope import Envelope, encode
from openfang.security.audit import key_beside, verify

pytestmark = pytest.mark.integration

NASTY = Path(__file__).resolve().parents[2] / "examples" / "agents" / "nasty"
# fuel_max is raised so that a hostile manifest may ask for enough fuel to outlast the worker's heartbeat
# (3 s): the start function must then be stopped by its call deadline, with the worker alive all along.
# The neighbour is pinged as fast as it answers: rate limits (layer 3) are not what is tested here.
EXTRA = """
[security.sandbox]
fuel_max = 100_000_000_000

[security.ratelimit.client_requests]
rate = 0

[security.ratelimit.agent_requests]
rate = 0
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(workers=1, intensity=5, request_timeout_ms=20000, extra=EXTRA)
    try:
        c.start()
        yield c
    finally:
        c.close()


def hostile(name: str, guest: str, extra: str = "") -> str:
    return f'[agent]\nname = "{name}"\nmodule = "{NASTY / guest}"\n{extra}'


def spawn(c: Cluster, manifest: str) -> str:
    return str(c.ok("agent.spawn", {"manifest": manifest})["agent_id"])


def audit(c: Cluster, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(c.data_dir / "audit.db") as db:
        rows = db.execute("SELECT record FROM audit_log WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [json.loads(r)["fields"] for (r,) in rows]


def wait_audit(c: Cluster, kind: str, **match: Any) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        return [r for r in audit(c, kind) if all(r.get(k) == v for k, v in match.items())]

    return list(wait_for(found, 20, f"audit record {kind} {match}"))


def worker_pid(c: Cluster) -> int:
    return int(c.node("workers", "workers-0")["pid"])


def neighbour_answers(c: Cluster, agent_id: str) -> None:
    reply = c.call("agent.send", {"agent_id": agent_id, "text": "still here?"})
    assert not reply.is_error and "still here?" in reply.body["reply"], reply.body


def test_start_function_loop_is_sliced_and_refused_while_a_neighbour_answers(cluster: Cluster) -> None:
    """A start function spinning past the heartbeat runs in slices: the neighbour is answered throughout,
    the worker is not killed as hung, and the spawn is refused at call_timeout_ms and audited."""
    neighbour = spawn(cluster, '[agent]\nname = "neighbour"\nmodule = "builtin:echo"\n')
    pid = worker_pid(cluster)
    attack = Envelope(
        type="agent.spawn",
        body={
            "manifest": hostile(
                "starter",
                "start_loop.wat",
                "call_timeout_ms = 4000\n[sandbox.fuel]\nmax_fuel = 50_000_000_000\n",
            )
        },
    )
    cluster.send_raw(encode(attack))
    replies: dict[str, Envelope] = {}
    answered = 0
    slowest = 0.0
    while attack.id not in replies:
        ping = Envelope(type="agent.send", body={"agent_id": neighbour, "text": f"ping {answered}"})
        sent = time.monotonic()
        cluster.send_raw(encode(ping))
        while ping.id not in replies:
            reply = cluster.recv_env(timeout=20)
            replies[reply.id] = reply
        slowest = max(slowest, time.monotonic() - sent)
        assert not replies[ping.id].is_error and f"ping {answered}" in replies[ping.id].body["reply"]
        answered += 1
    refused = replies[attack.id]
    assert refused.is_error and refused.body["code"] == "sandbox_error", refused.body
    assert "refused: its start function did not finish within call_timeout_ms=4000" in refused.body["message"]
    # The neighbour was answered all along (on main: not once, and the worker was killed at 3 s).
    assert answered >= 20, (answered, slowest)
    assert worker_pid(cluster) == pid
    wait_audit(cluster, "sandbox.start_refused", detail="did not finish within call_timeout_ms=4000")
    assert not [a for a in cluster.ok("agent.list")["agents"] if a.get("name") == "starter"]
    neighbour_answers(cluster, neighbour)


def test_start_function_loop_is_refused_at_its_fuel_budget(cluster: Cluster) -> None:
    """With a long deadline, one refuel interval's fuel (max_fuel) is all a start function gets."""
    reply = cluster.call(
        "agent.spawn",
        {"manifest": hostile("burner", "start_loop.wat", "[sandbox.fuel]\nmax_fuel = 50_000_000\n")},
    )
    assert reply.is_error and reply.body["code"] == "sandbox_error", reply.body
    assert "its start function used more than max_fuel=50000000" in reply.body["message"]
    wait_audit(cluster, "sandbox.start_refused", module=str(NASTY / "start_loop.wat"))


@pytest.mark.parametrize(
    ("guest", "message"),
    [
        ("huge_table.wat", "table minimum size of 100000000 elements exceeds table limits"),
        ("many_tables.wat", "table count too high at 8"),
        ("many_memories.wat", "memory count too high at 3"),
    ],
)
def test_declared_tables_and_memories_past_the_limits_are_refused(
    cluster: Cluster, guest: str, message: str
) -> None:
    """A 100M-element table, 8 tables or 3 memories: the module never instantiates; the refusal is audited."""
    reply = cluster.call(
        "agent.spawn", {"manifest": hostile(guest.removesuffix(".wat").replace("_", "-"), guest)}
    )
    assert reply.is_error and reply.body["code"] == "sandbox_error", reply.body
    assert "instantiation failed" in reply.body["message"] and message in reply.body["message"]
    recs = wait_for(
        lambda: [r for r in audit(cluster, "sandbox.instantiate_refused") if message in r["detail"]]
    )
    assert recs[0]["module"] == str(NASTY / guest)


def test_table_grow_loop_stops_at_the_cap_and_the_worker_stays_small(cluster: Cluster) -> None:
    """table.grow in a loop gets -1 at max_table_elements (no trap); the table is metered and audited."""
    pid = worker_pid(cluster)
    before = psutil.Process(pid).memory_info().rss
    agent = spawn(cluster, hostile("grower", "table_grow.wat", "call_timeout_ms = 3000\n"))
    reply = cluster.call("agent.send", {"agent_id": agent, "text": "grow"})
    assert not reply.is_error and reply.body["reply"] == "table.grow failed at 9001", reply.body
    info = cluster.ok("agent.info", {"agent_id": agent})
    assert info["memory_bytes"] == 65536 + 9001 * 8 and info["restarts"] == 0
    grown = psutil.Process(pid).memory_info().rss - before
    assert grown < 64 << 20, f"worker grew by {grown >> 20} MiB"  # on main: gigabytes within the deadline
    wait_audit(cluster, "sandbox.table_cap", agent_id=agent)
    assert verify(cluster.data_dir / "audit.db", key=key_beside(cluster.data_dir / "audit.db")).ok


def test_handler_with_the_wrong_signature_is_refused_at_spawn(cluster: Cluster) -> None:
    """agent_handle returning i32 is refused at spawn, naming the export and both types."""
    reply = cluster.call("agent.spawn", {"manifest": hostile("wrong", "wrong_handler.wat")})
    assert reply.is_error and reply.body["code"] == "sandbox_error", reply.body
    assert (
        "export 'agent_handle' has type (i32, i32) -> i32, the guest ABI expects (i32, i32) -> i64"
        in reply.body["message"]
    )
    assert not [a for a in cluster.ok("agent.list")["agents"] if a.get("name") == "wrong"]


def test_random_bytes_as_a_module_are_not_a_webassembly_module(cluster: Cluster, tmp_path: Path) -> None:
    """A module file of random bytes is refused as "not a WebAssembly module", never a utf-8 codec error."""
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"\xfe" + os.urandom(8191))
    reply = cluster.call("agent.spawn", {"manifest": f'[agent]\nname = "junk"\nmodule = "{junk}"\n'})
    assert reply.is_error and reply.body["code"] == "sandbox_error", reply.body
    assert "junk.wasm: not a WebAssembly module: no \\0asm header" in reply.body["message"]
    assert "codec" not in reply.body["message"]
