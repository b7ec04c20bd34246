"""The per-agent record of a host and what an idle resident agent costs: slotted, containers made when first
used, what identical agents have in common shared, and per-agent mutable state never shared."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest
from sandbox_helpers import Driver, make_host

from openfang.protocol.bodies import AgentSend
from openfang.protocol.envelope import Envelope
from openfang.security.audit import AuditLog
from openfang.security.config import security_from_args
from openfang.workers.host.agent_host import AgentHost, HostParts
from openfang.workers.host.record import HostedAgent
from openfang.workers.host.security import HostAudit, HostSecurity
from openfang.workers.tools.registry import default_registry

ECHO = '[agent]\nname = "e"\nmodule = "builtin:echo"\n'
ECHO_NO_LOG = ECHO + '[sandbox.permissions]\ndenied_host_functions = ["log"]\n'
LLM = """
[agent]
name = "route"
module = "builtin:llm-agent"
service = "billing"
history_messages = 1
[agent.model]
provider = "scripted"
default = "handled"
"""


def _agent(d: Driver, text: str) -> HostedAgent:
    aid = str(d.ok("agent.spawn", manifest=text)["agent_id"])
    return d.host._agents[aid]


def _message(text: str) -> tuple[Envelope, AgentSend, bytes]:
    env = Envelope(type="agent.send", body={"agent_id": "a", "text": text})
    return env, AgentSend(agent_id="a", text=text), text.encode()


def test_record_is_slotted() -> None:
    """A HostedAgent has no instance dict (a dict of 37 fields is ~1.2 KiB more per agent)."""
    d = make_host()
    try:
        agent = _agent(d, ECHO)
        assert not hasattr(agent, "__dict__") and "agent_id" in HostedAgent.__slots__
    finally:
        d.host.close()


def test_record_inbox_is_made_on_first_message_and_let_go_once_drained() -> None:
    """An idle agent has no inbox deque; post/take keep order; the last take lets the deque go."""
    d = make_host()
    try:
        agent = _agent(d, ECHO)
        assert agent.inbox == () and agent._inbox is None
        first, second = _message("one"), _message("two")
        agent.post(first)
        agent.post(second)
        assert list(agent.inbox) == [first, second]
        assert agent.take() is first
        assert agent.take() is second
        assert agent._inbox is None and agent.inbox == ()
        with pytest.raises(IndexError):
            agent.take()
        agent.post(first)
        assert agent.take_all() == [first] and agent._inbox is None
    finally:
        d.host.close()


def test_record_idle_agent_after_traffic_holds_no_inbox_or_finished_call() -> None:
    """After answering messages an agent is as small as a fresh one: no inbox, no finished call kept."""
    d = make_host()
    try:
        agent = _agent(d, ECHO)
        for text in ("a", "b", "c"):
            assert f'"content":"{text}"' in d.ok("agent.send", agent_id=agent.agent_id, text=text)["reply"]
        assert agent._inbox is None
        inst = agent.sandbox.native_instance()
        assert inst._call is None  # the finished call and its ctypes buffers were let go
        assert agent.sandbox._import_check is None  # consulted at load only
    finally:
        d.host.close()


def test_record_inboxes_of_two_agents_are_never_shared() -> None:
    """A message posted to one agent never shows in another's inbox (the empty inbox is immutable)."""
    d = make_host()
    try:
        a, b = _agent(d, ECHO), _agent(d, ECHO)
        assert a.inbox is b.inbox  # both empty: the one immutable empty inbox
        a.post(_message("for a"))
        assert len(a.inbox) == 1 and b.inbox == ()
        b.post(_message("for b"))
        assert a._inbox is not b._inbox
        a.take_all()
        b.take_all()
    finally:
        d.host.close()


def test_record_agents_of_one_manifest_share_grants_and_manifest() -> None:
    """Two agents of one manifest share the parsed manifest and the sandbox's granted-import set."""
    d = make_host()
    try:
        a, b = _agent(d, LLM), _agent(d, LLM)
        assert a.manifest is b.manifest
        assert a.sandbox.granted is b.sandbox.granted
        assert a.sandbox.module_digest is b.sandbox.module_digest
    finally:
        d.host.close()


def test_record_a_changed_manifest_gets_its_own_grants() -> None:
    """An agent whose manifest grants less does not share the other's granted set (nor its manifest)."""
    d = make_host()
    try:
        plain, quiet = _agent(d, ECHO), _agent(d, ECHO_NO_LOG)
        assert plain.manifest is not quiet.manifest
        assert plain.sandbox.granted is not quiet.sandbox.granted
        assert "log" in plain.sandbox.granted and "log" not in quiet.sandbox.granted
    finally:
        d.host.close()


def test_record_revoking_from_one_agent_leaves_its_twin_alone() -> None:
    """A host function revoked from one agent stays granted to another agent of the same manifest."""
    d = make_host()
    try:
        a, b = _agent(d, ECHO), _agent(d, ECHO)
        d.host.revoke(a.agent_id, "log")
        assert "log" not in a.sandbox.granted
        assert "log" in b.sandbox.granted
        assert a.sandbox.granted is not b.sandbox.granted
    finally:
        d.host.close()


def test_record_chat_cache_is_made_on_first_model_call_and_dropped_by_hibernation(tmp_path: Path) -> None:
    """An agent that never called its model holds no chat cache; one that did drops it when hibernated."""
    d = make_host(snapshot_dir=tmp_path)
    try:
        agent = _agent(d, LLM)
        assert agent._chat_cache is None
        assert d.ok("agent.send", agent_id=agent.agent_id, text="hi")["reply"]
        assert agent._chat_cache is not None
        d.ok("agent.hibernate", agent_id=agent.agent_id)
        assert agent._chat_cache is None
    finally:
        d.host.close()


def _heap_per_agent(host: AgentHost, text: str, count: int) -> float:
    """Python heap per spawned agent: the smaller of two rounds of ``count`` spawns, so a one-time build
    elsewhere in the process (a lazy table, another test's leftover thread) that lands in one round is not
    charged to the agents; a steady per-agent cost shows in both. Fails naming the top allocation sites."""
    d = Driver(host)
    for _ in range(3):  # compile and cache first: measure agents, not code
        d.ok("agent.spawn", manifest=text)
    rounds: list[tuple[float, list[str]]] = []
    for _ in range(2):
        gc.collect()
        tracemalloc.start(8)
        try:
            first = tracemalloc.take_snapshot()
            for _ in range(count):
                d.ok("agent.spawn", manifest=text)
            gc.collect()
            last = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        diff = last.compare_to(first, "traceback")
        grown = sum(stat.size_diff for stat in diff)
        sites = [f"{stat.size_diff} B at {stat.traceback.format()[-1].strip()}" for stat in diff[:5]]
        rounds.append((grown / count, sites))
    best = min(rounds)
    print("largest allocation sites:", *best[1], sep="\n  ")
    return best[0]


def test_record_idle_agent_python_heap_stays_small() -> None:
    """An idle resident LLM agent in a host without security costs under 5 KiB of Python heap (it was
    ~7.6 KiB: record dict, deques, finished call, logger, grant set each agent; ~2.6 KiB now). tracemalloc,
    so other tests in this process do not move the figure."""
    host = AgentHost("w-mem", HostParts(tools=default_registry()))
    try:
        per_agent = _heap_per_agent(host, LLM, 300)
    finally:
        host.close()
    print(f"python heap per idle agent: {per_agent:.0f} B")
    assert per_agent < 5 * 1024, f"an idle agent costs {per_agent:.0f} B of Python heap"


def test_record_idle_agent_python_heap_with_security_stays_small(tmp_path: Path) -> None:
    """The same with every agent-side security layer on (guard, identity, exfil, grant): under 8 KiB
    (it was ~12.5 KiB; ~4.4 KiB now)."""
    cfg = security_from_args(None, data_dir=str(tmp_path))
    sec = HostSecurity(cfg, HostAudit(AuditLog(tmp_path / "audit.db")), data_dir=tmp_path)
    host = AgentHost("w-mem-sec", HostParts(tools=default_registry(), security=sec))
    try:
        per_agent = _heap_per_agent(host, LLM, 300)
    finally:
        host.close()
    print(f"python heap per idle agent with security: {per_agent:.0f} B")
    assert per_agent < 8 * 1024, f"an idle agent costs {per_agent:.0f} B of Python heap"
