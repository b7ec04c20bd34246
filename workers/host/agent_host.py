"""AgentHost: one per worker process, an agent supervisor over many sandboxes run in fuel slices.

The host is a dynamic supervisor with ``simple_one_for_one`` semantics over its agents: every agent is a
child started from a manifest; a crashed agent (trap, wall-clock deadline, failed init) is an abnormal exit,
decided by the tree's own rules (:func:`openfang.supervisor.restart.should_restart` with the manifest's
``restart`` policy, and a :class:`~openfang.supervisor.restart.RestartWindow` of ``restart_intensity``
within ``restart_period_ms``): restarted, or given up — only that agent, never its siblings. Every restart
and death is reported (``events``) so the gateway's agent registry stays right.

Requests go through an explicit ``{message type: (body class, handler)}`` dispatcher: each handler gets
its body typed by the protocol catalogue. Each agent's state is an explicit record
(:class:`~openfang.workers.host.record.HostedAgent`); collaborators get what they need passed in:
:class:`~openfang.workers.host.spawner.Spawner` (manifest -> loaded sandbox), ``Services`` (LLM and tool
jobs), ``ToolContexts``, ``AgentTraffic`` (agent-to-agent tools).

Driving it (the worker's loop)::

    host.submit(env)               # agent.spawn / send / list / info / suspend / resume / kill
                                   # / hibernate / wake
    replies = host.step(0.02)      # run ready agents round-robin for up to 20 ms, collect finished replies
    poll(host.wakeup_fd(), timeout=host.next_deadline())

Hibernation (``agent.hibernate``, or ``idle_hibernate_s`` of idleness between calls): the guest state of an
idle agent is captured on the loop, its sandbox freed, and the snapshot written to
``<snapshot_dir>/<agent_id>.snap`` by a background thread (:mod:`~openfang.workers.host.hibernation`). The
next ``agent.send`` (or ``agent.wake``) restores it into a new sandbox without running ``agent_init``.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from openfang.protocol import messages
from openfang.protocol.bodies import AgentList, AgentMove, AgentRef, AgentSend, AgentSpawn
from openfang.protocol.envelope import Envelope
from openfang.protocol.envelope import made as _envelope
from openfang.protocol.errors import (
    AlreadyExists,
    Busy,
    NotFound,
    OpenFangError,
    ProtocolError,
    Restarting,
    SandboxError,
    SecurityError,
)
from openfang.protocol.messages import CHUNK_TYPE
from openfang.protocol.twin import construction_twin
from openfang.security._errors import Denied
from openfang.supervisor.restart import abnormal, should_restart
from openfang.supervisor.spec import Restart
from openfang.workers.host import jobs
from openfang.workers.host.agents import AgentTraffic, LoopHandoff
from openfang.workers.host.hibernation import ASLEEP, Hibernation
from openfang.workers.host.memory import HostMemory
from openfang.workers.host.record import HostedAgent, ParkedAgent, Phase
from openfang.workers.host.security import HostSecurity
from openfang.workers.host.services import Services, ToolContexts
from openfang.workers.host.spawner import Spawner
from openfang.workers.host.stats import HostStats
from openfang.workers.manifest import ModelConfig
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasmtime import EngineOptions
from openfang.workers.sandbox.instance import Outcome, Sandbox, State
from openfang.workers.sandbox.snapshot import Snapshot, SnapshotError, capture, restore
from openfang.workers.tools import kv as _tools_kv
from openfang.workers.tools.mcp import McpServerConfig

log = structlog.get_logger("openfang.workers.host.agent_host")
LIST_DESCRIPTION_CHARS = 1024  # agent.list records: keeps a 500-agent reply to the gateway under 1 MiB
MAX_INBOX = 1024
MOVE_WAIT_MS = 5000  # how long the source half of agent.move waits for a busy agent to become idle
Sink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class HostParts:
    """What a host is built from (all optional: a bare host runs built-in guests with no tools)."""

    llm_factory: Callable[[ModelConfig], Any] | None = None  # default: workers.llm.make_provider
    tools: Any = None  # a workers.tools.ToolRegistry
    audit: Sink | None = None  # denials and give-ups (besides the audit chain, when security is on)
    events: Sink | None = None  # agent.state changes
    clock: Callable[[], float] = time.monotonic
    tool_context: Callable[[Sandbox], Any] | None = None  # replaces each agent's default ToolContext
    engine_options: EngineOptions | None = None
    max_threads: int = 4  # job threads for LLM and tool calls
    module_cache_dir: Path | None = None  # compiled modules persist here (0700): a restarted worker is warm
    shipped_module_dir: Path | None = None  # the built-in guests compiled at install time (read-only)
    capabilities: Any = None  # security.capabilities.CapabilityPolicy (default: the security's own)
    security: HostSecurity | None = None  # the agent-side security layers
    memory: HostMemory | None = None  # episodic/procedural recording and memory tools
    max_agents: int | None = None  # agents hosted at once (spawns past it answer busy)
    mcp_servers: tuple[McpServerConfig, ...] = ()  # MCP servers any agent here may name (worker args)
    snapshot_dir: Path | None = None  # hibernated agents' snapshots (None: this host cannot hibernate)
    idle_hibernate_s: float | None = None  # the default for manifests without idle_hibernate_s (None: never)
    max_resident: int | None = None  # agents holding a sandbox at once; past it LRU idle ones hibernate


class AgentHost:
    """Hosts many agents in one thread. Not thread-safe: call everything from the worker's loop
    (tool threads reach it only through the :class:`LoopHandoff`)."""

    def __init__(self, worker_id: str, parts: HostParts | None = None) -> None:
        parts = parts or HostParts()
        self.worker_id = worker_id
        self.clock = parts.clock
        self.max_agents = parts.max_agents
        self._events = parts.events
        self._audit = parts.audit
        self._security = parts.security
        self._memory = parts.memory
        self._agents: _AgentTable = _AgentTable()
        self._pools: dict[str, tuple[int, list[HostedAgent]]] = {}  # service -> (table version, agents)
        # Agents with a call in progress (insertion order = round robin).
        self._active: dict[str, HostedAgent] = {}
        self._replies: list[Envelope] = []
        # Parts of streamed replies (agent.send with stream = true), from any thread; step() sends them first.
        self._chunks: deque[Envelope] = deque()
        self._tools = parts.tools
        self._ids = itertools.count(1)
        self._rr: dict[str, int] = {}
        self._bound = log.bind(worker=worker_id)
        self.stats = HostStats(worker_id)  # answered with agent.list (WorkerStats)
        self._runner = jobs.JobRunner(parts.max_threads)
        self._handoff = LoopHandoff(self._runner)
        self.traffic = AgentTraffic(
            worker_id,
            agents=self._agents,
            submit=self.submit,
            security=parts.security,
            handoff=self._handoff,
        )
        self._kv = _tools_kv.KVStore()
        contexts = ToolContexts(
            kv=self._kv,
            traffic=self.traffic,
            security=parts.security,
            memory=parts.memory,
            custom=parts.tool_context,
        )
        services = Services(
            agents=self._agents,
            tools=parts.tools,
            runner=self._runner,
            contexts=contexts,
            audit=self._audit_record,
            emit_chunk=self.emit_chunk,
            security=parts.security,
            memory=parts.memory,
            stats=self.stats,
        )
        self._spawner = Spawner(
            services=services,
            clock=parts.clock,
            tools=parts.tools,
            llm_factory=parts.llm_factory,
            engine_options=parts.engine_options,
            module_cache_dir=parts.module_cache_dir,
            shipped_module_dir=parts.shipped_module_dir,
            security=parts.security,
            capabilities=parts.capabilities,
            mcp_servers=parts.mcp_servers,
        )
        self._capabilities = self._spawner.capabilities
        self._hib = Hibernation(
            parts.snapshot_dir, parts.idle_hibernate_s, worker_id, max_resident=parts.max_resident
        )
        self._dispatch: dict[str, tuple[type[Any], Callable[[Envelope, Any], None]]] = {
            "agent.spawn": (AgentSpawn, self._on_spawn),
            "agent.send": (AgentSend, self._on_send),
            "agent.list": (AgentList, self._on_list),
            "agent.info": (AgentRef, self._on_info),
            "agent.suspend": (AgentRef, self._on_suspend),
            "agent.resume": (AgentRef, self._on_resume),
            "agent.kill": (AgentRef, self._on_kill),
            "agent.hibernate": (AgentRef, self._on_hibernate),
            "agent.wake": (AgentRef, self._on_wake),
            "agent.move": (AgentMove, self._on_move),
        }
        self._moving: dict[str, HostedAgent] = {}  # agents whose move out waits (idle, or its file written)
        # Hibernated agents whose state is only in their snapshot file: no HostedAgent, rebuilt on their
        # next request (_unpark). Not in _agents: the resident cap, pools and timers never see them.
        self._parked: dict[str, ParkedAgent] = {}
        self._unparked_now: list[HostedAgent] = []  # rebuilt for the request in hand (parked again after)

    # -- public API ------------------------------------------------------------------------------------
    def wakeup_fd(self) -> int:
        """Readable when a background LLM/tool job finished; poll it beside the worker's sockets."""
        return self._runner.fileno()

    def set_remote_send(self, send: Callable[[str, Envelope], Future[Any]] | None) -> None:
        """How agents reach the gateway: ``send(sender_id, agent.send | agent.spawn envelope) -> Future``.

        The worker forwards through the gateway, which checks that the sender really lives on this worker
        (so no worker can speak for another's agents), routes messages and registers spawned children.
        """
        self.traffic.remote_send = send

    def submit(self, env: Envelope, *, decoded: bool = False) -> None:
        """Accept one agent.* request. Replies come out of :meth:`step` (immediately for cheap requests).

        ``decoded``: ``env`` is what ``envelope.decode`` returned, unchanged, so its body was validated
        against its type's schema there and is not validated again (``messages.parse``'s ``decoded``); an
        envelope made in this process (an agent's own request) is validated here.
        """
        entry = self._dispatch.get(env.type)
        if entry is None:
            self._replies.append(env.error(ProtocolError(f"type: agent host does not serve {env.type!r}")))
            return
        body_class, handler = entry
        try:
            if decoded and body_class is AgentSend:  # most requests: built as parse builds it, ~1 us less
                handler(env, _send_body(env.body))
            else:
                handler(env, messages.parse(env, body_class, decoded=decoded))
        except OpenFangError as exc:
            self._replies.append(env.error(exc))
        except Exception as exc:  # a bug or a provider's odd exception must not end the worker
            self._bound.exception("request_failed", type=env.type)
            self._replies.append(env.error(OpenFangError(f"{env.type} failed: {type(exc).__name__}: {exc}")))
        while self._unparked_now:  # rebuilt for this request but not woken (info, hibernate, a refusal)
            agent = self._unparked_now.pop()
            if agent.unparked and self._agents.get(agent.agent_id) is agent:
                self._maybe_park(agent)

    def step(self, max_seconds: float) -> list[Envelope]:
        """Run ready agents round-robin, one fuel slice each per turn, for up to ``max_seconds``."""
        self._handoff.run_pending()
        for agent_id in self._runner.drain():
            agent = self._active.get(agent_id)
            if agent is not None:
                self._guarded(agent, lambda a: self._apply(a, a.sandbox.refresh(self.clock())))
        end = time.perf_counter() + max_seconds
        while self._active:
            ran = False
            now = self.clock()
            for agent in list(self._active.values()):
                ran = self._guarded(agent, self._turn, now) or ran  # no lambda per agent and turn
            if not ran or time.perf_counter() >= end:
                break
        for agent in self._hib.reap(self._agents):  # asleep, their file on disk: the worker lets them go
            self._maybe_park(agent)
        for agent in list(self._moving.values()):
            self._move_step(agent)
        for agent in self._hib.due(self._agents, self.clock()):
            self._idle_hibernate(agent)
        for agent in self._hib.over_cap(self._agents):  # max_resident: the least recently used sleep
            self._idle_hibernate(agent, "cap")
        out, self._replies = self._replies, []
        if self._chunks:  # a stream's parts go out before the reply that ends it
            parts = []
            while self._chunks:
                parts.append(self._chunks.popleft())
            out = [*parts, *out]
        out = self.traffic.route_replies(out)
        if self._memory is not None:
            self._memory.pump()
        if self._security is not None:
            self._security.audit.flush()
        return out

    def emit_chunk(self, request: Envelope, body: dict[str, Any]) -> None:
        """Queue one part of ``request``'s streamed reply (any thread); the loop sends it next step."""
        self._chunks.append(Envelope(type=CHUNK_TYPE, body=body, id=request.id))
        self._runner.poke()

    def next_deadline(self) -> float | None:
        """The next moment :meth:`step` has work without new input (now, a refuel, or a call deadline)."""
        best: float | None = self._hib.next_deadline()
        if self._moving:  # a move waits for its snapshot file (written on a thread) or for its deadline
            best = self.clock() + 0.002
        for agent in self._active.values():
            if agent.sandbox.runnable():
                return self.clock()
            t = agent.sandbox.wake_time()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def agents(self) -> list[dict[str, Any]]:
        out = [self._record(a) for a in self._agents.values()]
        out += [self._parked_record(i, p) for i, p in self._parked.items()]
        return out

    def agent_ids(self) -> list[str]:
        return [*self._agents, *self._parked]

    def agent_count(self) -> int:
        """Agents hosted here, parked ones included."""
        return len(self._agents) + len(self._parked)

    def parked_count(self) -> int:
        """Hibernated agents this worker holds only as a :class:`ParkedAgent` (their state in the file)."""
        return len(self._parked)

    def revoke(self, agent_id: str, function: str) -> None:
        """Withdraw a host function from a running agent (its next call gets E_DENIED and is audited)."""
        agent = self._agents.get(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id!r} on worker {self.worker_id}")
        agent.sandbox.revoke(function)

    def warm_up(self) -> list[Callable[[], None]]:
        """Steps that do a first spawn's one-time work ahead, for the worker to run one per idle turn while
        it waits for its first request: :meth:`Spawner.warm_up`, then open layer 16's version state
        (:meth:`HostSecurity.warm_up_versions`)."""
        security = self._security
        return [*self._spawner.warm_up(), *(security.warm_up_versions() if security is not None else ())]

    def spare_wanted(self) -> bool:
        """A spawn left a module whose next agent can be instantiated ahead (Spawner.prepare_spare)."""
        return self._spawner.spare_wanted()

    def prepare_spare(self) -> None:
        """Instantiate that spare now (the worker calls this when idle, after its replies left)."""
        self._spawner.prepare_spare()

    def release_spare(self) -> None:
        """Free the spare (the worker's quiet trim)."""
        self._spawner.release_spare()

    def runtime_stats(self) -> dict[str, int]:
        return {"live_stores": self._spawner.live_stores(), "agents": self.agent_count()}

    def close(self) -> None:
        """Free every sandbox and engine now and stop the job threads."""
        for agent in list(self._agents.values()):
            agent.sandbox.close()
        self._agents.clear()
        self._parked.clear()
        self._hib.close()
        self._active.clear()
        self._runner.close()
        self._spawner.close()
        if self._memory is not None:
            self._memory.close()
        if self._security is not None:
            self._security.close()

    # -- requests ---------------------------------------------------------------------------------------
    def _on_spawn(self, env: Envelope, body: AgentSpawn) -> None:
        try:
            self._spawn(env, body)
        except SecurityError as exc:
            # The layers audit their own refusals (Denied); the sandbox's import checks do not.
            if self._security is not None and not isinstance(exc, Denied):
                self._security.audit.append("sandbox.spawn_refused", worker=self.worker_id, error=exc.message)
            raise

    def _spawn(self, env: Envelope, body: AgentSpawn) -> None:
        manifest = self._spawner.manifest(
            body.manifest, Path(body.manifest_path) if body.manifest_path else None
        )
        if manifest.mcp and self._tools is not None:  # issue 12: MCP servers' tools join the registry
            from openfang.workers.tools import mcp as _mcp

            if not _mcp.ready(self._tools, manifest.mcp):
                # Starting a server takes seconds: off this loop, then this spawn runs again on it.
                handoff = self._handoff

                def resume() -> None:  # on the MCP thread: hand the spawn back to this loop
                    handoff.later(lambda: self.submit(env))

                _mcp.connect_later(self._tools, manifest.mcp, resume)
                return
            tools = _mcp.attach(self._tools, manifest.mcp, manifest.tools, manifest.source)
            manifest = dataclasses.replace(manifest, tools=tools)
        # In a cluster the gateway assigns the id (from its registry: never reused); a host on its own
        # (tests, benchmarks) falls back to the manifest's agent_id or <name>-<n>.
        agent_id = body.agent_id or manifest.sandbox.agent_id
        if agent_id is None:
            agent_id = f"{manifest.name}-{next(self._ids)}"
            while agent_id in self._agents:
                agent_id = f"{manifest.name}-{next(self._ids)}"
        if agent_id in self._agents or agent_id in self._parked:
            raise AlreadyExists(f"agent {agent_id!r} already exists on worker {self.worker_id}")
        if self.max_agents is not None and self.agent_count() >= self.max_agents:
            if self._security is not None:
                self._security.audit.append(
                    "sandbox.max_agents", worker=self.worker_id, agents=len(self._agents), name=manifest.name
                )
            raise Busy(f"worker {self.worker_id} already hosts {len(self._agents)} agents (max_agents)")
        parent = self.traffic.spawn_parents.pop(env.id, None) or body.parent
        if body.resume and not manifest.mcp and self._hib.file_asleep(agent_id, manifest.restore):
            self._park_on_arrival(env, body, manifest.service, agent_id, parent)
            return
        for idle in self._hib.over_cap(self._agents, most=2, room=1):  # max_resident holds while spawning
            self._idle_hibernate(idle, "cap")
        agent = self._spawner.build(body, manifest, agent_id, parent)
        agent.manifest_path, agent.parent = body.manifest_path, parent
        self._agents[agent_id] = agent
        agent.spawn_env = env
        if body.resume and self._hib.can_stay_asleep(agent):
            self._arrive_asleep(agent)  # its state is in its snapshot file: no sandbox until a message
            return
        if body.resume:  # a re-spawn after its worker died: from its snapshot when there is one (_begin)
            self._resume_conversation(agent)
            self._begin(agent)
            return
        self._start(agent)

    def _on_send(self, env: Envelope, body: AgentSend) -> None:
        agent = self._pick(body.agent_id, body.service)
        if agent.moving is not None:  # the gateway holds its own clients' messages; an agent's send gets this
            raise Restarting(f"agent {agent.agent_id} is moving to another worker; retry", retry_after_ms=250)
        if len(agent.inbox) >= MAX_INBOX:
            raise Busy(f"agent {agent.agent_id} has {MAX_INBOX} messages waiting")
        if agent.hibernated:
            try:
                self._wake(agent, "message")
            except OpenFangError:
                if agent.agent_id not in self._agents:  # no restart left: the message fails with the wake
                    raise
                # else restarted fresh (_wake): the message waits in the inbox for the new instance
        text = body.text
        sec = self._security
        if sec is not None:
            sec.charge(agent.agent_id, requests=1)  # layer 3: rate_limited
            injection = sec.injection  # layer 2: denied (HostSecurity.check_input, one frame fewer)
            if injection is not None:
                from_agent = self.traffic.is_internal(env.id)
                text = injection.check_text(
                    text, source="agent" if from_agent else "user", agent_id=agent.agent_id
                )
        if self._memory is not None:
            self._memory.record_message(agent.agent_id, _session(body.session), "user", text, None)
        payload, message = abi.user_entry(text, session=body.session)
        agent.post((env, body, payload, message))
        if agent.current is None and agent.phase is _READY:
            self._next_message(agent)

    def _pick(self, agent_id: str | None, service: str | None) -> HostedAgent:
        if agent_id is not None:
            agent = self._agents.get(agent_id) or self._unpark(agent_id)
            if agent is None:
                raise NotFound(f"no agent {agent_id!r} on worker {self.worker_id}")
            return agent
        pool = self._service_pool(str(service))
        if not pool:  # every agent of the service may be parked: wake one (a scan, only in this case)
            parked = next((i for i, p in self._parked.items() if p.service == service), None)
            if parked is not None:
                agent = self._unpark(parked)
                if agent is not None:
                    return agent
        if not pool:
            raise NotFound(f"no agent serves {service!r} on worker {self.worker_id}")
        if len(pool) == 1:  # the rotation and the least-loaded choice of one agent: that agent
            return pool[0]
        # Least loaded first; ties broken round-robin so equal agents share the traffic.
        start = self._rr.get(str(service), 0)
        self._rr[str(service)] = start + 1
        rotated = pool[start % len(pool) :] + pool[: start % len(pool)]
        chosen = min(rotated, key=lambda a: len(a.inbox) + (a.current is not None))
        if chosen.moving is not None:  # leaving this worker: another agent of the service takes it if any
            staying = [a for a in rotated if a.moving is None]
            if staying:
                return min(staying, key=lambda a: len(a.inbox) + (a.current is not None))
        return chosen

    def _service_pool(self, service: str) -> list[HostedAgent]:
        """The agents serving ``service``, rebuilt only when an agent came or went (a scan of every agent
        per message made routing 6-12x slower beside 10,000 idle agents: perf/bench_scale.py)."""
        version = self._agents.version  # an _AgentTable (made in __init__, never replaced)
        cached = self._pools.get(service)
        if cached is None or cached[0] != version:
            cached = (version, [a for a in self._agents.values() if a.manifest.service == service])
            self._pools[service] = cached
        return cached[1]

    def _on_list(self, env: Envelope, body: AgentList) -> None:
        """Live figures of the agents the gateway names (``ids``: one page's, at most 500 a message), every
        agent without ``ids``. Descriptions are cut to 1,024 characters (agent.info has the whole one)."""
        if body.ids is None:
            records = self.agents()
        else:
            records = []
            for agent_id in body.ids:
                agent, parked = self._agents.get(agent_id), self._parked.get(agent_id)
                if agent is not None:
                    records.append(self._record(agent))
                elif parked is not None:  # from what the park kept: listing never wakes or rebuilds
                    records.append(self._parked_record(agent_id, parked))
        for r in records:
            if len(r.get("description") or "") > LIST_DESCRIPTION_CHARS:
                r["description"] = r["description"][:LIST_DESCRIPTION_CHARS]
        self._replies.append(env.reply({"agents": records, "workers": [self.stats.to_wire()]}))

    def _on_info(self, env: Envelope, body: AgentRef) -> None:
        parked = self._parked.get(body.agent_id)
        if parked is not None:  # answered from what the park kept: no rebuild, no wake
            self._replies.append(env.reply(self._parked_record(body.agent_id, parked)))
            return
        self._replies.append(env.reply(self._record(self._get(body))))

    def _on_suspend(self, env: Envelope, body: AgentRef) -> None:
        agent = self._get(body)
        if agent.hibernated:
            raise SandboxError(f"agent {agent.agent_id} is hibernated: wake it before suspending it")
        agent.sandbox.suspend()
        self._event(agent, "suspended")
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": "suspended"}))

    def _on_resume(self, env: Envelope, body: AgentRef) -> None:
        agent = self._get(body)
        if agent.hibernated:
            raise SandboxError(f"agent {agent.agent_id} is hibernated, not suspended: agent.wake wakes it")
        agent.sandbox.resume()
        self._event(agent, "running")
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": "running"}))
        if agent.current is None and not agent.inbox and agent.phase is Phase.READY:
            self._hib.arm(agent, self.clock())  # idle again: its idle timer starts now

    def _on_kill(self, env: Envelope, body: AgentRef) -> None:
        agent = self._get(body)
        self._remove(agent, "dead", SandboxError(f"agent {agent.agent_id} was killed"), why="killed")
        if self._memory is not None:
            self._memory.reclaim(agent.agent_id, agent.manifest.retention)
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": "dead"}))

    def _on_hibernate(self, env: Envelope, body: AgentRef) -> None:
        agent = self._get(body)
        if not agent.hibernated:
            self._hibernate(agent, "request")
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": "hibernated"}))

    def _on_wake(self, env: Envelope, body: AgentRef) -> None:
        agent = self._get(body)
        if agent.hibernated:
            self._wake(agent, "request")
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": agent.state}))

    def _get(self, body: AgentRef | AgentMove) -> HostedAgent:
        agent = self._agents.get(body.agent_id) or self._unpark(body.agent_id)
        if agent is None:
            raise NotFound(f"no agent {body.agent_id!r} on worker {self.worker_id}")
        return agent

    # -- the supervisor: start, run, crash, restart, remove -------------------------------------------------
    def _begin(self, agent: HostedAgent) -> None:
        """(Re)start after a crash: from the agent's snapshot file when there is one to use, else fresh.

        A file is used when the manifest says ``restore = "snapshot"`` (the last snapshot, kept after every
        wake) or when the agent was hibernated when its worker died (a ``restore = "fresh"`` agent's file is
        deleted when it wakes, so one that exists holds the state it was hibernated with).
        """
        if self._hib.has_file(agent.agent_id) and self._restore_last(agent):
            agent.resumed = []  # the guest has its own conversation back: none from memory on top
            agent.restored = "snapshot"
            self._started(agent)
            return
        agent.restored = "fresh"
        self._start(agent)

    def _restore_last(self, agent: HostedAgent) -> bool:
        """Restore the snapshot file into the agent's freshly loaded sandbox; False (and a new fresh
        sandbox) when it cannot be used."""
        t0 = time.perf_counter()
        try:
            snap = self._hib.load(agent)
            restore(agent.sandbox, snap, fresh=True)
        except OpenFangError as exc:
            self._bound.warning("agent_snapshot_restore_failed", agent_id=agent.agent_id, error=exc.message)
            agent.sandbox.close()
            agent.sandbox = self._spawner.sandbox(agent.manifest, agent.agent_id, agent.grant)
            return False
        self._restore_kv(agent, snap)
        ms = round((time.perf_counter() - t0) * 1000, 3)
        self._bound.info("agent_restored_from_snapshot", agent_id=agent.agent_id, restore_ms=ms)
        if agent.manifest.restore != "snapshot":
            self._hib.delete(agent.agent_id)  # as after a wake: stale from now on, a crash restarts it fresh
        return True

    def _start(self, agent: HostedAgent) -> None:
        if agent.sandbox.begin_init():
            self._active[agent.agent_id] = agent
        else:
            self._started(agent)

    def _started(self, agent: HostedAgent) -> None:
        agent.phase = Phase.READY
        self._event(agent, "running")
        self._answer_spawn(agent)
        self._next_message(agent)

    def _answer_spawn(self, agent: HostedAgent) -> None:
        if agent.spawn_env is not None:
            body = {
                "agent_id": agent.agent_id,
                "worker": self.worker_id,
                "service": agent.manifest.service,
                "spawn": agent.sandbox.spawn_kind,
                "spawn_ms": round(agent.sandbox.spawn_seconds * 1000, 3),
                "restore": agent.restored,  # fresh | snapshot (a re-spawn or a move's target half)
            }
            self._replies.append(agent.spawn_env.reply(body))
            agent.spawn_env = None

    def _next_message(self, agent: HostedAgent) -> None:
        if agent.sandbox.state is not _IDLE:
            return  # busy (a message, or agent_init after a restart): the inbox waits for _started/_apply
        inbox = agent.inbox
        if agent.current is not None or not inbox:
            if agent.current is None and agent.moving is not None:
                self._active.pop(agent.agent_id, None)
                self._move_step(agent)  # idle now: the move it waited for goes ahead
            elif agent.current is None:
                self._active.pop(agent.agent_id, None)
                if not agent.sandbox.user_suspended:
                    self._hib.arm(agent, self.clock())  # idle from now: the idle timer starts
            return
        env, send, payload, message = inbox[0]
        agent.sandbox.begin_message(payload, message)
        agent.idle_token += 1  # busy: a pending idle timer no longer applies
        agent.take()
        agent.current, agent.current_send = env, send
        agent.usage = {"prompt_tokens": 0, "completion_tokens": 0, "tool_calls": 0}
        session = send.session  # _session(send.session), inlined
        agent.session = session if isinstance(session, str) and session else "default"
        agent.failure = None
        agent.task = None
        if agent.guard is not None:
            agent.guard.refusal = None
        agent.fuel_at_start = agent.sandbox.fuel_used
        self._active[agent.agent_id] = agent

    def _turn(self, agent: HostedAgent, now: float) -> bool:
        sb = agent.sandbox
        refreshed = sb.refresh(now)
        if refreshed is not None:  # mostly None: a running call before its deadline
            self._apply(agent, refreshed)
        if agent.agent_id in self._active and sb.runnable():
            self._apply(agent, sb.run_slice())
            return True
        return False

    def _guarded(self, agent: HostedAgent, work: Callable[..., bool | None], *args: Any) -> bool:
        """Run ``work(agent, *args)``, one agent's turn; an unexpected host-side failure crashes that agent
        only, never the worker."""
        try:
            return bool(work(agent, *args))
        except Exception as exc:  # isolate the failure to the agent it happened in
            self._bound.exception("agent_turn_failed", agent_id=agent.agent_id)
            if agent.agent_id in self._agents and agent.sandbox.state is not State.CLOSED:
                env, agent.current = agent.current, None
                if env is not None:
                    self._replies.append(env.error(SandboxError(f"host error: {type(exc).__name__}: {exc}")))
                self._crashed(agent, SandboxError(f"host error: {type(exc).__name__}"), cause="host_error")
            return False

    def _apply(self, agent: HostedAgent, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        self._account(agent, outcome)
        if outcome.phase == "init":
            if outcome.ok:
                self._active.pop(agent.agent_id, None)
                self._started(agent)
            elif outcome.refused:  # the module cannot start (its start function): no restart can help
                err = outcome.error if isinstance(outcome.error, OpenFangError) else SandboxError("refused")
                self._remove(agent, "dead", err, reason=err.message, why="restart_failed")
            else:
                self._crashed(agent, outcome.error or SandboxError("agent_init failed"), cause="init_failed")
            return
        env, agent.current = agent.current, None
        if env is not None:
            self._replies.append(self._answer(agent, env, outcome))
        if outcome.crashed:
            self._crashed(
                agent, outcome.error or SandboxError("agent crashed"), cause=outcome.limit or "trap"
            )
        else:
            self._next_message(agent)

    def _account(self, agent: HostedAgent, outcome: Outcome) -> None:
        """Limits hit by the call (traps for the capability policy, memory caps for the audit chain)."""
        if outcome.limit is not None and self._capabilities is not None:
            self._capabilities.record_trap(agent.agent_id, outcome.limit, phase=outcome.phase)
        elif self._security is not None and outcome.phase == "handle":
            cap = agent.manifest.sandbox.memory.max_heap_mb << 20
            used = agent.sandbox.memory_bytes()
            if used + 65536 > cap:  # memory.grow was refused at the cap (the guest coped with it)
                self._security.audit.append(
                    "sandbox.memory_cap", agent_id=agent.agent_id, memory_bytes=used, cap_bytes=cap
                )

    def _answer(self, agent: HostedAgent, env: Envelope, outcome: Outcome) -> Envelope:
        """The reply to the message ``outcome`` ended: the guest's answer, or its error."""
        if not outcome.ok:
            err = (
                outcome.error
                if isinstance(outcome.error, OpenFangError)
                else SandboxError(str(outcome.error))
            )
            refusal = agent.guard.refusal if agent.guard is not None else None
            if refusal is not None:
                err = refusal
            elif agent.failure is not None and not outcome.crashed:
                err = agent.failure  # the guest gave up on an LLM error: report the LLM error itself
            llm = err.details() if hasattr(err, "details") else None
            self._bound.warning(
                "agent_message_failed", agent_id=agent.agent_id, code=err.code, error=err.message, llm=llm
            )
            return env.error(err)
        # The message's own dict (_next_message makes a new one per message; its jobs have all finished): the
        # reply takes it with its fuel, no copy.
        usage = agent.usage
        usage["fuel"] = agent.sandbox.fuel_used - agent.fuel_at_start
        reply = outcome.reply.decode("utf-8", "replace")
        redactor = self._security.redactor if self._security is not None else None
        if redactor is not None and reply:  # layer 11 (HostSecurity.redact, one frame fewer)
            reply = redactor.redact_text(reply)
        if self._memory is not None:
            tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            self._memory.record_message(agent.agent_id, agent.session, "assistant", reply, tokens)
        body = {"reply": reply, "agent_id": agent.agent_id, "usage": usage}
        if agent.task is not None:  # task_update: the A2A state and artifacts of this message
            body["task"] = agent.task
            agent.task = None
        return _envelope(env.type + ".ok", body, env.id)  # env.reply(body) less its copy of body

    def _crashed(self, agent: HostedAgent, error: BaseException, *, cause: str = "trap") -> None:
        """simple_one_for_one: restart this agent per its policy and window; siblings are never touched.

        ``cause`` (trap, deadline, memory_cap, init_failed, wake_failed, host_error) labels the restart in
        the worker's figures."""
        reason = str(error)
        self._bound.warning("agent_crashed", agent_id=agent.agent_id, reason=reason)
        agent.sandbox.close()
        self._active.pop(agent.agent_id, None)
        # The tree's own rules: a crash is an abnormal exit; the window is OTP's add_restart.
        restart = should_restart(Restart(agent.manifest.restart), abnormal(detail=reason))
        if not restart or not agent.window.add_restart(self.clock()):
            why = "restart_intensity" if restart else "crashed"
            err = SandboxError(f"agent {agent.agent_id} crashed: {reason}")
            self._remove(agent, "dead", err, reason=reason, why=why)
            if restart:
                self._audit_record({"kind": "agent_gave_up", "agent_id": agent.agent_id, "reason": reason})
            return
        agent.phase = Phase.RESTARTING
        self._event(agent, "restarting", reason=reason)
        try:
            agent.sandbox = self._spawner.sandbox(agent.manifest, agent.agent_id, agent.grant)
        except OpenFangError as exc:
            self._remove(agent, "dead", exc, reason=f"restart failed: {exc.message}", why="restart_failed")
            return
        agent.restarts += 1
        self.stats.restarts.add(cause)
        self._resume_conversation(agent)
        self._begin(agent)

    def _resume_conversation(self, agent: HostedAgent) -> None:
        """A re-spawned built-in LLM agent picks its conversation up from episodic memory.

        Its guest memory (where the built-in agent keeps the conversation) is new, so the newest
        ``history_messages`` user and assistant turns are read back and put before what the new instance
        sends the model (``Services.start_llm``). Custom guests keep their own state: not touched.
        """
        if self._memory is None or agent.manifest.module != "builtin:llm-agent":
            return
        try:
            rows = self._memory.history(agent.agent_id, {"limit": agent.manifest.history_messages})
        except OpenFangError as exc:
            self._bound.warning("agent_resume_failed", agent_id=agent.agent_id, error=str(exc))
            return
        agent.resumed = [
            {"role": r["role"], "content": r["text"]}
            for r in rows
            if r.get("role") in ("user", "assistant") and isinstance(r.get("text"), str)
        ]
        self._bound.info("agent_resumed", agent_id=agent.agent_id, turns=len(agent.resumed))

    def _drop(self, agent: HostedAgent) -> None:
        """Free what this worker holds for ``agent`` (sandbox, security grant, kv, its place in the tables):
        the common part of removing, parking and letting go of an agent."""
        agent.sandbox.close()
        if self._security is not None:
            self._security.release(agent.agent_id)
        self._kv.drop(agent.agent_id)
        self._agents.pop(agent.agent_id, None)
        self._active.pop(agent.agent_id, None)

    def _remove(
        self, agent: HostedAgent, state: str, error: OpenFangError, *, reason: str = "", why: str = ""
    ) -> None:
        self._drop(agent)
        waiting = [agent.spawn_env] if agent.spawn_env else []
        waiting += [agent.current] if agent.current else []
        waiting += [env for env, *_ in agent.take_all()]
        waiting += [agent.moving[0]] if agent.moving else []
        agent.moving = None
        self._moving.pop(agent.agent_id, None)
        for env in waiting:
            self._replies.append(env.error(error))
        agent.current = agent.spawn_env = None
        agent.snapshot = None
        self._hib.delete(agent.agent_id)  # a dead agent's snapshot is of no use
        self._event(agent, state, reason=reason, **({"why": why} if why else {}))

    # -- hibernate and wake ---------------------------------------------------------------------------------
    def _hibernate(self, agent: HostedAgent, why: str) -> None:
        """Capture an idle agent's guest state, free its sandbox, write the snapshot off the loop.

        Refused (SandboxError, the agent left running as it was) unless the agent is at a quiescent point:
        started, no message in progress or waiting, not suspended, no host job pending.
        """
        what = f"agent {agent.agent_id} cannot be hibernated"
        self._hib.path(agent.agent_id)  # refuses at once on a host without a snapshot directory
        if agent.phase is not Phase.READY:
            raise SandboxError(f"{what} while it is {agent.state}")
        if agent.current is not None or agent.inbox:
            raise SandboxError(
                f"{what} now: it is handling a message ({len(agent.inbox)} more waiting); "
                "retry when it is idle"
            )
        if agent.sandbox.user_suspended:
            raise SandboxError(f"{what} while suspended: resume it first")
        t0 = time.perf_counter()
        snap = self._capture(agent)  # SnapshotError names the problem; the sandbox is untouched
        snap = dataclasses.replace(snap, meta={**snap.meta, ASLEEP: True})  # a re-spawn keeps it asleep
        agent.sandbox.close()
        self._active.pop(agent.agent_id, None)
        agent.forget_chats()  # parsed chat segments: rebuilt on demand after the wake
        agent.hibernated = True
        agent.idle_token += 1
        self._hib.write_later(agent, snap)
        self.stats.hibernations.add(why)
        ms = round((time.perf_counter() - t0) * 1000, 3)
        self._bound.info(
            "agent_hibernated",
            agent_id=agent.agent_id,
            why=why,
            memory_bytes=snap.memory_bytes,
            stored_bytes=snap.stored_bytes,
            loop_ms=ms,
        )
        self._event(
            agent, "hibernated", why=why, memory_bytes=snap.memory_bytes, stored_bytes=snap.stored_bytes
        )

    def _arrive_asleep(self, agent: HostedAgent) -> None:
        """A re-spawn (its worker or the daemon restarted) of an agent with a snapshot file: it is
        registered hibernated, its sandbox freed at once, and wakes from the file on its next message. So
        a restart of 100,000 agents does not make them all resident (and the resident cap re-hibernate
        them all). The spawn is answered now; the ``hibernated`` event follows on the next step, after the
        reply, so the gateway's row ends ``hibernated``."""
        agent.sandbox.close()
        agent.phase = Phase.READY
        agent.hibernated = True
        agent.restored = "snapshot"  # its state is the file's (woken from it on its next message)
        self._hib.asleep(agent.agent_id)
        self._answer_spawn(agent)  # no message can be waiting yet: the gateway queues them meanwhile
        self._handoff.later(lambda: self._event(agent, "hibernated", why="restore", memory_bytes=0))
        self._maybe_park(agent)  # its state is in its file: keep only the ParkedAgent

    def _idle_hibernate(self, agent: HostedAgent, why: str = "idle") -> None:
        """The idle timer fired (or the resident cap, ``why = "cap"``): hibernate, or stop trying for it
        (its module cannot be snapshotted)."""
        if agent.phase is not Phase.READY or agent.current is not None or agent.inbox:
            return  # busy since: re-armed when it is idle again
        if agent.sandbox.user_suspended:
            return  # re-armed by its resume
        try:
            self._hibernate(agent, why)
        except SnapshotError as exc:
            agent.no_hibernate = exc.message
            self._bound.warning("agent_idle_hibernate_off", agent_id=agent.agent_id, error=exc.message)
        except OpenFangError as exc:
            self._bound.warning("agent_idle_hibernate_failed", agent_id=agent.agent_id, error=exc.message)

    def _capture(self, agent: HostedAgent) -> Snapshot:
        """The agent's guest state, with its kv_* namespace (so a move or a restore from the file brings
        the agent's keys along; a wake on this worker finds them still in memory)."""
        snap = capture(agent.sandbox)
        return dataclasses.replace(snap, meta={**snap.meta, "kv": self._kv.export(agent.agent_id)})

    def _restore_kv(self, agent: HostedAgent, snap: Snapshot) -> None:
        values = snap.meta.get("kv")
        if values is None:  # a snapshot from before kv was carried
            return
        try:
            self._kv.load(agent.agent_id, values)
        except OpenFangError as exc:  # the guest state is back; keys past this worker's limits are not
            self._bound.warning("agent_kv_restore_failed", agent_id=agent.agent_id, error=exc.message)

    def _wake(self, agent: HostedAgent, why: str) -> None:
        """Restore a hibernated agent into a new sandbox (no agent_init). If its snapshot cannot be read or
        restored, the agent is restarted fresh by its restart policy (as a crash) and the error raised."""
        t0 = time.perf_counter()
        try:
            snap = self._hib.load(agent)
            if agent.unparked:  # rebuilt from its ParkedAgent: its loaded, never started instance
                agent.unparked = False
                sandbox = agent.sandbox
            else:
                sandbox = self._spawner.sandbox(agent.manifest, agent.agent_id, agent.grant)
            try:
                restore(sandbox, snap, fresh=True)
            except BaseException:
                sandbox.close()
                raise
        except OpenFangError as exc:
            self._bound.error("agent_wake_failed", agent_id=agent.agent_id, error=exc.message)
            agent.hibernated, agent.snapshot = False, None
            self._hib.delete(agent.agent_id)  # unusable: the restart below must not try it again
            self._crashed(
                agent, SandboxError(f"wake from snapshot failed: {exc.message}"), cause="wake_failed"
            )
            raise SandboxError(
                f"agent {agent.agent_id} could not be woken from its snapshot ({exc.message}); "
                "it was restarted by its restart policy instead"
            ) from None
        agent.sandbox = sandbox
        agent.hibernated, agent.snapshot = False, None
        if self._hib.woke(agent.agent_id):  # it arrived asleep: its kv_* keys are in the file, not here
            self._restore_kv(agent, snap)
        if agent.manifest.restore != "snapshot":
            self._hib.delete(agent.agent_id)  # stale from now on; a crash restarts it fresh
        seconds = time.perf_counter() - t0
        self.stats.wakes.add(why)
        self.stats.wake_seconds.observe(seconds)
        ms = round(seconds * 1000, 3)
        self._bound.info("agent_woken", agent_id=agent.agent_id, why=why, wake_ms=ms)
        self._event(agent, "running", woken=True, why=why, wake_ms=ms)
        self._next_message(agent)

    # -- park: a hibernated agent whose file is written costs only a ParkedAgent --------------------------
    def _maybe_park(self, agent: HostedAgent) -> None:
        """Let a hibernated agent go from the table once its state is only in its snapshot file: its
        sandbox, record, grant and kv namespace (in the file too) are dropped, a :class:`ParkedAgent` kept.
        Not while its file is being written, it moves, or it has work; not for MCP agents (their tools
        are attached at spawn)."""
        if (
            not agent.hibernated
            or agent.snapshot is not None
            or self._hib.writing(agent.agent_id)
            or agent.moving is not None
            or agent.current is not None
            or agent.inbox
            or agent.spawn_env is not None
            or agent.phase is not Phase.READY
            or agent.manifest.mcp
            or self._hib.dir is None
        ):
            return
        self._drop(agent)
        self._hib.park(agent.agent_id)
        path = agent.manifest_path
        self._parked[agent.agent_id] = ParkedAgent(
            manifest_text=sys.intern(agent.manifest_text),
            manifest_path=sys.intern(path) if path else None,
            parent=agent.parent,
            created_at=agent.created_at,
            restarts=agent.restarts,
            service=agent.manifest.service,
        )

    def _park_on_arrival(
        self, env: Envelope, body: AgentSpawn, service: str | None, agent_id: str, parent: str | None
    ) -> None:
        """A re-spawn (worker or daemon restart) of an agent whose file a hibernation wrote: parked at once,
        no record built and no sandbox loaded (the security checks run when a request rebuilds it). The
        spawn is answered now and the ``hibernated`` event (why restore) follows on the next step, after
        the reply, so the gateway's row ends ``hibernated``."""
        path = body.manifest_path
        self._parked[agent_id] = ParkedAgent(
            manifest_text=sys.intern(body.manifest),
            manifest_path=sys.intern(path) if path else None,
            parent=parent,
            created_at=time.time(),
            restarts=0,
            service=service,
        )
        reply = {
            "agent_id": agent_id,
            "worker": self.worker_id,
            "service": service,
            "spawn": "parked",
            "spawn_ms": 0.0,
            "restore": "snapshot",
        }
        self._replies.append(env.reply(reply))
        if self._events is not None:
            events = self._events
            state = {"kind": "agent.state", "agent_id": agent_id, "worker": self.worker_id}
            self._handoff.later(
                lambda: events({**state, "state": "hibernated", "why": "restore", "memory_bytes": 0})
            )

    def _unpark(self, agent_id: str) -> HostedAgent | None:
        """Rebuild a parked agent's record (hibernated, its sandbox loaded but not started: a wake restores
        into it); None if it is not parked here. Checked by the security layers as a spawn is."""
        parked = self._parked.get(agent_id)
        if parked is None:
            return None
        path = Path(parked.manifest_path) if parked.manifest_path else None
        manifest = self._spawner.manifest(parked.manifest_text, path)
        body = AgentSpawn(
            manifest=parked.manifest_text,
            manifest_path=parked.manifest_path,
            agent_id=agent_id,
            parent=parked.parent,
            resume=True,
        )
        agent = self._spawner.build(body, manifest, agent_id, parked.parent)  # raises: it stays parked
        del self._parked[agent_id]
        agent.manifest_path, agent.parent = parked.manifest_path, parked.parent
        agent.created_at, agent.restarts = parked.created_at, parked.restarts
        agent.phase = Phase.READY
        agent.hibernated = True
        agent.restored = "snapshot"
        agent.unparked = True
        agent.idle_token = time.monotonic_ns()  # past any stale idle-timer or LRU entry of its old record
        self._agents[agent_id] = agent
        self._hib.asleep(agent_id)  # woken from the file: its kv_* keys come back from it too
        self._unparked_now.append(agent)
        return agent

    def _parked_record(self, agent_id: str, parked: ParkedAgent) -> dict[str, Any]:
        path = Path(parked.manifest_path) if parked.manifest_path else None
        m = self._spawner.manifest(parked.manifest_text, path)
        return {
            "agent_id": agent_id,
            "name": m.name,
            "version": m.version,
            "service": m.service,
            "module": m.module,
            "restart": m.restart,
            "fuel_used": 0,
            "memory_bytes": 0,
            "spawn": "parked",
            "spawn_ms": 0.0,
            "description": m.description,
            "tools": list(m.tools),
            "worker": self.worker_id,
            "state": "hibernated",
            "activity": "hibernated",
            "restarts": parked.restarts,
            "created_at": parked.created_at,
            "inbox": 0,
            "llm_usage": {},
        }

    # -- move (the source half; the gateway spawns the target half from the snapshot file) ------------------
    def _on_move(self, env: Envelope, body: AgentMove) -> None:
        """Let an agent go to another worker: once it is idle (messages already here are answered first,
        for up to ``wait_ms``), its guest state is written to its snapshot file, which the target's
        re-spawn restores, and its record here is dropped. A module a snapshot cannot hold (or a worker
        without a data directory) goes by a fresh start on the target instead: the reply says which
        (``path``). Refused, the agent staying here as it was, while it starts or restarts, when it was
        suspended in the middle of a message, or when it is still busy at the deadline."""
        agent = self._get(body)
        what = f"agent {agent.agent_id} cannot be moved"
        if agent.moving is not None:
            raise Busy(f"{what}: a move of it is already in progress")
        if agent.phase is not Phase.READY:
            raise SandboxError(f"{what} while it is {agent.state}; retry when it runs")
        if agent.sandbox.user_suspended and agent.current is not None:
            raise SandboxError(f"{what}: it was suspended in the middle of a message; resume it first")
        wait_s = (MOVE_WAIT_MS if body.wait_ms is None else body.wait_ms) / 1000
        agent.moving = (env, body, self.clock() + wait_s)
        self._moving[agent.agent_id] = agent
        busy = len(agent.inbox) + (agent.current is not None)
        self._bound.info("agent_moving_out", agent_id=agent.agent_id, to=body.to, messages_first=busy)
        self._move_step(agent)

    def _move_step(self, agent: HostedAgent) -> None:
        """Advance a move out: wait for idleness, snapshot and free the sandbox, wait for the file, let go."""
        if agent.moving is None:
            self._moving.pop(agent.agent_id, None)
            return
        env, move, deadline = agent.moving
        if agent.phase is not Phase.READY or agent.current is not None or agent.inbox:
            if self.clock() >= deadline:
                agent.moving = None
                self._moving.pop(agent.agent_id, None)
                waited = MOVE_WAIT_MS if move.wait_ms is None else move.wait_ms
                self._replies.append(
                    env.error(
                        SandboxError(
                            f"agent {agent.agent_id} cannot be moved: still busy after {waited} ms "
                            f"({len(agent.inbox)} messages waiting); it stays on {self.worker_id}; retry"
                        )
                    )
                )
            return
        if not agent.hibernated:
            if self._hib.dir is None:
                self._let_go(agent, "fresh", f"worker {self.worker_id} has no data directory for snapshots")
                return
            try:
                snap = self._capture(agent)
            except SnapshotError as exc:  # hidden state: it starts fresh on the target (its reply says so)
                self._let_go(agent, "fresh", exc.message)
                return
            agent.sandbox.close()
            self._active.pop(agent.agent_id, None)
            agent.hibernated = True
            agent.idle_token += 1
            self._hib.write_later(agent, snap)
        if self._hib.writing(agent.agent_id):
            return  # the writer thread is at it: step() comes back
        if agent.snapshot is not None:  # the write failed: the state is in memory only, it stays here
            agent.moving = None
            self._moving.pop(agent.agent_id, None)
            self._replies.append(
                env.error(
                    SandboxError(
                        f"agent {agent.agent_id} cannot be moved: its snapshot could not be written "
                        f"(see the worker's log); it stays on {self.worker_id}, hibernated"
                    )
                )
            )
            return
        self._let_go(agent, "snapshot", "")

    def _let_go(self, agent: HostedAgent, path: str, why_fresh: str) -> None:
        """The agent has left: drop its record (not a death: no event, its file and memories stay)."""
        assert agent.moving is not None
        env, move, _ = agent.moving
        agent.moving = None
        self._moving.pop(agent.agent_id, None)
        state = "suspended" if agent.sandbox.user_suspended else "running"
        self._drop(agent)
        if path == "fresh":
            self._hib.delete(agent.agent_id)  # the target must not restore an older state
        self._bound.info(
            "agent_moved_out", agent_id=agent.agent_id, path=path, to=move.to, why_fresh=why_fresh
        )
        body = {"agent_id": agent.agent_id, "state": state, "moved_from": self.worker_id, "path": path}
        if why_fresh:
            body["why_fresh"] = why_fresh
        self._replies.append(env.reply(body))

    # -- reporting ----------------------------------------------------------------------------------------
    def _record(self, agent: HostedAgent) -> dict[str, Any]:
        info = agent.sandbox.info()
        suspended = agent.sandbox.user_suspended
        info.update(
            agent_id=agent.agent_id,
            name=agent.manifest.name,
            # The HTTP face builds MCP tools and A2A cards from these (issue 12).
            description=agent.manifest.description,
            tools=list(agent.manifest.tools),
            worker=self.worker_id,
            state=agent.state,
            activity="suspended"
            if suspended
            else "hibernated"
            if agent.hibernated
            else agent.sandbox.state.value,
            restarts=agent.restarts,
            created_at=agent.created_at,
            inbox=len(agent.inbox),
            llm_usage=dict(agent.llm_usage),
        )
        return info

    def _event(self, agent: HostedAgent, state: str, **extra: Any) -> None:
        if self._events is not None:
            self._events(
                {
                    "kind": "agent.state",
                    "agent_id": agent.agent_id,
                    "worker": self.worker_id,
                    "state": state,
                    **extra,
                }
            )

    def _audit_record(self, record: dict[str, Any]) -> None:
        if self._security is not None:
            # The audit chain: tool denials are layer 9, the sandbox's own refusals and give-ups layers 5-7.
            fields = dict(record)
            kind = str(fields.pop("kind", "event"))
            layer = "permissions" if kind == "tool_denied" else "sandbox"
            self._security.audit.append(f"{layer}.{kind}", worker=self.worker_id, **fields)
            return
        if self._capabilities is not None and record.get("kind") in ("host_call_denied", "tool_denied"):
            what = record.get("function") or record.get("tool")
            self._capabilities.record_trap(str(record.get("agent_id")), "call_denied", name=what)
        record = {"worker": self.worker_id, "time": time.time(), **record}
        self._bound.info("audit", **record)
        if self._audit is not None:
            self._audit(record)


# Enum members as plain module names for the per-message paths (a lookup through the enum class costs ~90 ns).
_READY, _IDLE = Phase.READY, State.IDLE
# agent.send bodies are built on a construction twin (protocol/twin.py): plain attribute stores, no call per
# field, then AgentSend by ``__class__`` assignment.
_SendTwin = construction_twin(AgentSend, ("text", "agent_id", "service", "session", "stream"))


def _send_body(raw: dict[str, Any]) -> AgentSend:
    """``messages.parse(env, AgentSend, decoded=True)`` of a body ``decode`` validated: each field is the
    body's value as it is (the schema builds strings and booleans as themselves; nil or absent is None),
    stored on the twin instead of through the frozen dataclass ``__init__``. Same value
    (``tests/workers/test_host_submit.py``)."""
    get = raw.get
    body = _SendTwin()
    body.text = get("text")
    body.agent_id = get("agent_id")
    body.service = get("service")
    body.session = get("session")
    body.stream = get("stream")
    body.__class__ = AgentSend
    return body  # type: ignore[no-any-return]


def _session(value: Any) -> str:
    return value if isinstance(value, str) and value else "default"


class _AgentTable(dict[str, HostedAgent]):
    """The host's agents by id, with a version bumped on every add and removal (what the per-service pools
    are cached on). Only these mutators are used on it."""

    version = 0

    def __setitem__(self, key: str, value: HostedAgent) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.version += 1
        return super().pop(key, *default)

    def clear(self) -> None:
        self.version += 1
        super().clear()
