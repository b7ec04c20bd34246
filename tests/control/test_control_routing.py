"""The gateway's placement and routing rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from openfang.control.routing import AgentDirectory, Gather, least_loaded, route
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import NotFound, ProtocolError, UnknownType


@dataclass
class Load:
    agents: int = 0
    in_flight: int = 0


def _spawned(directory: AgentDirectory, worker: str, agent_id: str, service: str | None = None) -> None:
    req = Envelope(type="agent.spawn", body={"manifest": ""})
    body = {"agent_id": agent_id, **({"service": service} if service else {})}
    directory.learn(worker, req, req.reply(body))


def test_spawn_goes_to_the_least_loaded_worker() -> None:
    """A spawn without a worker lands on the worker with the fewest agents plus requests in flight."""
    workers = {"w-0": Load(agents=3), "w-1": Load(agents=1, in_flight=1), "w-2": Load(agents=1)}
    assert route(Envelope(type="agent.spawn"), AgentDirectory(), workers).workers == ["w-2"]


def test_messages_to_an_agent_go_to_its_worker() -> None:
    """agent.send by id is routed to the worker that answered the spawn."""
    d = AgentDirectory()
    _spawned(d, "w-1", "a1")
    workers = {"w-0": Load(), "w-1": Load()}
    assert route(Envelope(type="agent.send", body={"agent_id": "a1", "text": "hi"}), d, workers).workers == [
        "w-1"
    ]


def test_unknown_agent_and_absent_worker_are_not_found() -> None:
    """Routing to an agent nobody hosts, or a worker that is not connected, names what is missing."""
    with pytest.raises(NotFound, match="'ghost'"):
        route(Envelope(type="agent.info", body={"agent_id": "ghost"}), AgentDirectory(), {"w-0": Load()})
    with pytest.raises(NotFound, match="'w-9'"):
        route(Envelope(type="worker.ping", body={"worker": "w-9"}), AgentDirectory(), {"w-0": Load()})
    with pytest.raises(NotFound, match="no worker"):
        least_loaded({})


def test_service_requests_avoid_the_worker_that_falls_behind() -> None:
    """A service name is load-balanced to the hosting worker with the fewest requests in flight."""
    d = AgentDirectory()
    _spawned(d, "w-0", "c0", "classify")
    _spawned(d, "w-1", "c1", "classify")
    workers = {"w-0": Load(in_flight=50), "w-1": Load(in_flight=2)}
    env = Envelope(type="agent.send", body={"service": "classify", "text": "x"})
    assert route(env, d, workers).workers == ["w-1"]
    workers["w-1"].in_flight = 80
    assert route(env, d, workers).workers == ["w-0"]


def test_restarted_worker_forgets_its_old_agents() -> None:
    """A worker that says hello with no agents no longer hosts the ones it had before its restart."""
    d = AgentDirectory()
    _spawned(d, "w-0", "a1")
    _spawned(d, "w-1", "a2")
    d.forget_worker("w-0", keep=[])
    assert "a1" not in d.worker_of and d.worker_of["a2"] == "w-1"


def test_kill_removes_the_agent_from_the_directory() -> None:
    """After agent.kill succeeds, the agent is no longer routable."""
    d = AgentDirectory()
    _spawned(d, "w-0", "a1")
    req = Envelope(type="agent.kill", body={"agent_id": "a1"})
    d.learn("w-0", req, req.reply({}))
    assert d.count("w-0") == 0


def test_unknown_type_and_missing_address_are_protocol_errors() -> None:
    """A type nobody serves is unknown_type; an agent request without an address is bad_request."""
    with pytest.raises(UnknownType) as exc:
        route(Envelope(type="launch.missiles"), AgentDirectory(), {"w-0": Load()})
    assert exc.value.code == "unknown_type"
    with pytest.raises(ProtocolError, match="agent_id"):
        route(Envelope(type="agent.info", body={}), AgentDirectory(), {"w-0": Load()})


def test_gather_merges_every_worker_answer_and_reports_the_silent() -> None:
    """agent.list waits for every worker and lists the errors of those that failed."""
    req = Envelope(type="agent.list")
    g = Gather(req, expected=2)
    assert g.collect(req.reply({"agents": [{"agent_id": "a"}]})) is None
    done = g.collect(Envelope(type="error", body={"code": "timeout", "message": "w-1 silent"}, id=req.id))
    assert done.body == {"agents": [{"agent_id": "a"}], "errors": ["w-1 silent"]}


def test_an_explicit_agent_id_already_running_elsewhere_is_refused() -> None:
    """Agent ids are unique in the cluster: a manifest naming a running agent's id is already_exists."""
    from openfang.protocol.errors import AlreadyExists

    d = AgentDirectory()
    _spawned(d, "w-0", "analyst-01")
    manifest = '[agent]\nname = "analyst"\n[sandbox]\nagent_id = "analyst-01"\n'
    with pytest.raises(AlreadyExists, match="analyst-01"):
        route(Envelope(type="agent.spawn", body={"manifest": manifest}), d, {"w-0": Load(), "w-1": Load()})
    fresh = manifest.replace("analyst-01", "analyst-02")
    assert route(
        Envelope(type="agent.spawn", body={"manifest": fresh}), d, {"w-0": Load(), "w-1": Load()}
    ).workers
