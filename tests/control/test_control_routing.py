"""The gateway's placement and routing rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from openfang.control.routing import AgentDirectory, Gather, least_loaded, route, service_host
from openfang.protocol.bodies import AgentRef, AgentSend, Empty, MemoryStats, WorkerPing
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import NotFound, ProtocolError, UnknownType


@dataclass
class Load:
    agents: int = 0
    in_flight: int = 0


def _spawned(directory: AgentDirectory, worker: str, agent_id: str, service: str | None = None) -> None:
    directory.add(agent_id, worker, service)


def test_memory_reads_go_to_the_least_loaded_worker() -> None:
    """A memory read lands on the worker with the fewest agents plus requests in flight."""
    workers = {"w-0": Load(agents=3), "w-1": Load(agents=1, in_flight=1), "w-2": Load(agents=1)}
    assert route("memory.stats", MemoryStats(), AgentDirectory(), workers).workers == ["w-2"]


def test_absent_worker_and_service_are_not_found() -> None:
    """Routing to a worker that is not connected, or a service nobody serves, names what is missing."""
    with pytest.raises(NotFound, match="'nobody'"):
        route("agent.send", AgentSend(service="nobody", text="x"), AgentDirectory(), {"w-0": Load()})
    with pytest.raises(NotFound, match="'w-9'"):
        route("worker.ping", WorkerPing(worker="w-9"), AgentDirectory(), {"w-0": Load()})
    assert route("worker.ping", WorkerPing(worker="w-0"), AgentDirectory(), {"w-0": Load()}).workers == [
        "w-0"
    ]
    with pytest.raises(NotFound, match="no worker"):
        least_loaded({})


def test_service_requests_avoid_the_worker_that_falls_behind() -> None:
    """A service name is load-balanced to the hosting worker with the fewest requests in flight."""
    d = AgentDirectory()
    _spawned(d, "w-0", "c0", "classify")
    _spawned(d, "w-1", "c1", "classify")
    workers = {"w-0": Load(in_flight=50), "w-1": Load(in_flight=2)}
    send = AgentSend(service="classify", text="x")
    assert route("agent.send", send, d, workers).workers == ["w-1"]
    workers["w-1"].in_flight = 80
    assert route("agent.send", send, d, workers).workers == ["w-0"]


def test_removed_agent_leaves_the_counts() -> None:
    """Removing an agent drops it from its worker's and its service's counts."""
    d = AgentDirectory()
    _spawned(d, "w-0", "a1", "svc")
    d.remove("a1")
    assert d.count("w-0") == 0 and d.workers_serving("svc") == set()


def test_unknown_type_and_missing_address_are_protocol_errors() -> None:
    """A type nobody serves is unknown_type; an agent request without an address is bad_request."""
    with pytest.raises(UnknownType) as exc:
        route("launch.missiles", Empty(), AgentDirectory(), {"w-0": Load()})
    assert exc.value.code == "unknown_type"
    with pytest.raises(ProtocolError, match="agent_id"):
        route("agent.info", AgentRef(agent_id="a-1"), AgentDirectory(), {"w-0": Load()})


def test_gather_merges_every_worker_answer_and_reports_the_silent() -> None:
    """agent.list waits for every worker, keeps each answering worker's figures, lists the failed ones."""
    req = Envelope(type="agent.list")
    g = Gather(req, expected=2)
    assert g.collect(req.reply({"agents": [{"agent_id": "a"}], "workers": [{"worker": "w-0"}]})) is None
    done = g.collect(Envelope(type="error", body={"code": "timeout", "message": "w-1 silent"}, id=req.id))
    assert done.body == {
        "agents": [{"agent_id": "a"}],
        "errors": ["w-1 silent"],
        "workers": [{"worker": "w-0"}],
    }


def test_directory_keeps_one_worker_string_for_its_agents() -> None:
    """Worker ids decoded from separate messages are stored as one string object, with the counts right."""
    d = AgentDirectory()
    for n in range(3):
        d.add(f"a-{n}", b"workers-0".decode(), "billing")
    assert d.worker_of["a-0"] is d.worker_of["a-1"] is d.worker_of["a-2"] == "workers-0"
    assert d.count("workers-0") == 3 and d.workers_serving("billing") == {"workers-0"}


def test_service_host_picks_what_the_set_and_sort_picked() -> None:
    """service_host equals the fewest-in-flight host, first by id, among the connected hosts, over random
    directories and loads; a service with no connected host is not_found."""
    import random

    rng = random.Random(15)
    for _ in range(500):
        d = AgentDirectory()
        ids = [f"w-{i}" for i in range(rng.randint(1, 5))]
        for n in range(rng.randint(1, 8)):
            _spawned(d, rng.choice(ids), f"a{n}", rng.choice(["svc", "other"]))
        workers = {w: Load(in_flight=rng.randint(0, 3)) for w in ids if rng.random() < 0.8}
        hosts = d.workers_serving("svc") & set(workers)
        if not hosts:
            with pytest.raises(NotFound, match="'svc'"):
                service_host("svc", d, workers)
            continue
        assert service_host("svc", d, workers) == min(sorted(hosts), key=lambda w: workers[w].in_flight)
