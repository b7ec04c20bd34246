"""AgentHost: one per worker process; hosts many sandboxes on one thread and runs them in fuel slices.

The host is a dynamic supervisor with ``simple_one_for_one`` semantics over its agents: every agent is a
child started from a manifest; a crashed agent (trap, wall-clock deadline, failed init) is restarted per its
manifest's ``restart`` policy within an intensity window (more than ``restart_intensity`` restarts in
``restart_period_ms`` and the agent is given up: only that agent, never its siblings). The window is the
supervisor tree's own pure ``openfang.supervisor.restart.RestartWindow`` (the one part of ``supervisor``
that ``workers`` may import), so agents and processes restart by the same rule.

Driving it (the worker's loop)::

    host.submit(env)               # agent.spawn / send / list / info / suspend / resume / kill
    replies = host.step(0.02)      # run ready agents round-robin for up to 20 ms, collect finished replies
    poll(host.wakeup_fd(), timeout=host.next_deadline())
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import threading
import time
import tomllib
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import structlog
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import (
    AlreadyExists,
    Busy,
    NotFound,
    OpenFangError,
    ProtocolError,
    SandboxError,
    SecurityError,
)
from openfang.protocol.messages import CHUNK_TYPE
from openfang.security._errors import Denied
from openfang.supervisor.restart import RestartWindow, abnormal, should_restart
from openfang.supervisor.spec import Restart
from openfang.workers.host import jobs as jobs
from openfang.workers.host.agents import AgentTraffic
from openfang.workers.host.memory import HostMemory
from openfang.workers.host.security import HostSecurity
from openfang.workers.host.services import HostedAgent, Services
from openfang.workers.llm import providers as _llm
from openfang.workers.manifest import AgentManifest, ModelConfig, load_manifest
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasmtime import EngineOptions, HostFunctionSpec, Runtime
from openfang.workers.sandbox.instance import Outcome, Sandbox, State
from openfang.workers.tools import kv as _tools_kv
from openfang.workers.tools.mcp import McpServerConfig

log = structlog.get_logger("openfang.workers.host.agent_host")
MAX_INBOX = 1024
MANIFEST_CACHE = 256  # distinct manifest texts kept parsed
HOST_SPECS = tuple(HostFunctionSpec(name=n, nparams=p, is_async=a) for n, p, a in abi.HOST_FUNCTIONS)


class AgentHost(AgentTraffic):
    """Hosts many agents in one thread. Not thread-safe: call everything from the worker's loop
    (tool threads reach it only through :meth:`from_tool_thread`)."""

    mcp_servers: tuple[McpServerConfig, ...] = ()  # MCP servers any agent here may name (worker args)

    def __init__(
        self,
        worker_id: str,
        *,
        llm_factory: Callable[[ModelConfig], Any] | None = None,
        tools: Any | None = None,
        audit: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: Callable[[dict[str, Any]], None] | None = None,
        tool_context: Callable[[Sandbox], Any] | None = None,
        engine_options: EngineOptions | None = None,
        max_threads: int = 4,
        module_cache_dir: Path | None = None,
        capabilities: Any | None = None,
        security: HostSecurity | None = None,
        memory: HostMemory | None = None,
        max_agents: int | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.llm_factory = llm_factory
        self.tools = tools
        self._audit = audit
        self._events = events
        self._tool_context = tool_context
        self.clock = clock
        self._options = engine_options or EngineOptions()
        # Compiled modules persist here (by sha256 + engine settings): a restarted worker skips compiling.
        self._cache_dir = module_cache_dir
        # The agent-side security layers (None: only the sandbox's own checks) and the memory recorder.
        self._security = security
        self._memory = memory
        self.max_agents = max_agents  # agents this host accepts at once (None: no limit)
        # security.capabilities.CapabilityPolicy (duck-typed): cluster limits and import allow/deny patterns.
        if capabilities is None and security is not None:
            capabilities = security.capabilities
        self._capabilities = capabilities
        self._runtimes: dict[int, Runtime] = {}
        self._agents: dict[str, HostedAgent] = {}
        self._active: dict[
            str, HostedAgent
        ] = {}  # agents with a call in progress (insertion order = round robin)
        self._replies: list[Envelope] = []
        self._runner = jobs.JobRunner(max_threads)
        self._ids = itertools.count(1)
        self._rr: dict[str, int] = {}
        self._bound = log.bind(worker=worker_id)
        # Deep model validation when the providers module is present (it owns provider semantics).
        self._validate_model = _llm.validate_model_config if llm_factory is None else None
        self._kv = _tools_kv.KVStore()
        # Work tool threads hand to the loop (agent_send/spawn/list), and where internal requests' replies go.
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._internal: dict[str, Future[Any]] = {}
        self._manifest_cache: OrderedDict[tuple[str, str], AgentManifest] = OrderedDict()
        self._spawn_parents: dict[str, str] = {}
        self._loop_thread = threading.get_ident()
        # Parts of streamed replies (agent.send with stream = true), from any thread; step() sends them first.
        self._chunks: deque[Envelope] = deque()

    # -- public API ------------------------------------------------------------------------------------
    def wakeup_fd(self) -> int:
        """Readable when a background LLM/tool job finished; poll it beside the worker's sockets."""
        return self._runner.fileno()

    def submit(self, env: Envelope) -> None:
        """Accept one agent.* request. Replies come out of :meth:`step` (immediately for cheap requests)."""
        handler = getattr(self, "_on_" + env.type.removeprefix("agent.").replace(".", "_"), None)
        if not env.type.startswith("agent.") or handler is None:
            self._replies.append(env.error(ProtocolError(f"type: agent host does not serve {env.type!r}")))
            return
        try:
            handler(env)
        except OpenFangError as exc:
            self._replies.append(env.error(exc))
        except Exception as exc:  # a bug or a provider's odd exception must not end the worker
            self._bound.exception("request_failed", type=env.type)
            self._replies.append(env.error(OpenFangError(f"{env.type} failed: {type(exc).__name__}: {exc}")))

    def step(self, max_seconds: float) -> list[Envelope]:
        """Run ready agents round-robin, one fuel slice each per turn, for up to ``max_seconds``."""
        self._run_calls()
        for agent_id in self._runner.drain():
            agent = self._active.get(agent_id)
            if agent is not None:
                self._guarded(agent, lambda a: self._apply(a, a.sandbox.refresh(self.clock())))
        end = time.perf_counter() + max_seconds
        while self._active:
            ran = False
            now = self.clock()
            for agent in list(self._active.values()):
                ran = self._guarded(agent, lambda a, t=now: self._turn(a, t)) or ran
            if not ran or time.perf_counter() >= end:
                break
        out, self._replies = self._replies, []
        if self._chunks:  # a stream's parts go out before the reply that ends it
            parts = []
            while self._chunks:
                parts.append(self._chunks.popleft())
            out = [*parts, *out]
        if self._internal:
            out = self._route_internal(out)
        if self._memory is not None:
            self._memory.pump()
        if self._security is not None:
            self._security.audit.flush()
        return out

    def emit_chunk(self, request: Envelope, body: dict[str, Any]) -> None:
        """Queue one part of ``request``'s streamed reply (any thread); the loop sends it next step."""
        self._chunks.append(Envelope(type=CHUNK_TYPE, body=body, id=request.id))
        self._runner.poke()

    def _turn(self, agent: HostedAgent, now: float) -> bool:
        sb = agent.sandbox
        self._apply(agent, sb.refresh(now))
        if agent.agent_id in self._active and sb.runnable():
            self._apply(agent, sb.run_slice())
            return True
        return False

    def _guarded(self, agent: HostedAgent, work: Callable[..., bool | None]) -> bool:
        """Run one agent's turn; an unexpected host-side failure crashes that agent only, never the worker."""
        try:
            return bool(work(agent))
        except Exception as exc:  # isolate the failure to the agent it happened in
            self._bound.exception("agent_turn_failed", agent_id=agent.agent_id)
            if agent.agent_id in self._agents and agent.sandbox.state is not State.CLOSED:
                env, agent.current = agent.current, None
                if env is not None:
                    self._replies.append(env.error(SandboxError(f"host error: {type(exc).__name__}: {exc}")))
                self._crashed(agent, SandboxError(f"host error: {type(exc).__name__}"))
            return False

    def next_deadline(self) -> float | None:
        """The next moment :meth:`step` has work without new input (now, a refuel, or a call deadline)."""
        best: float | None = None
        for agent in self._active.values():
            if agent.sandbox.runnable():
                return self.clock()
            t = agent.sandbox.wake_time()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def agents(self) -> list[dict[str, Any]]:
        return [self._record(a) for a in self._agents.values()]

    def agent_ids(self) -> list[str]:
        return list(self._agents)

    def agent_count(self) -> int:
        return len(self._agents)

    def revoke(self, agent_id: str, function: str) -> None:
        """Withdraw a host function from a running agent (its next call gets E_DENIED and is audited)."""
        agent = self._agents.get(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id!r} on worker {self.worker_id}")
        agent.sandbox.revoke(function)

    def runtime_stats(self) -> dict[str, int]:
        return {
            "live_stores": sum(rt.live_stores for rt in self._runtimes.values()),
            "agents": len(self._agents),
        }

    def close(self) -> None:
        """Free every sandbox and engine now and stop the job threads."""
        for agent in list(self._agents.values()):
            agent.sandbox.close()
        self._agents.clear()
        self._active.clear()
        self._runner.close()
        for rt in self._runtimes.values():
            rt.close()
        self._runtimes.clear()
        if self._memory is not None:
            self._memory.close()
        if self._security is not None:
            self._security.close()

    # -- requests ---------------------------------------------------------------------------------------
    def _on_spawn(self, env: Envelope) -> None:
        try:
            self._spawn(env)
        except SecurityError as exc:
            # The layers audit their own refusals (Denied); the sandbox's import checks do not.
            if self._security is not None and not isinstance(exc, Denied):
                self._security.audit.append("sandbox.spawn_refused", worker=self.worker_id, error=exc.message)
            raise

    def _parsed_manifest(self, text: str, path: Path | None) -> AgentManifest:
        """The validated manifest for ``text``; identical texts (a pool of one manifest) are parsed once.

        Parsing and validating is most of a warm spawn's CPU. The result is a frozen value, so sharing it
        between agents is safe; only successful parses are kept, so a bad manifest is reported every time.
        """
        key = (text, str(path) if path else "")
        manifest = self._manifest_cache.get(key)
        if manifest is not None:
            self._manifest_cache.move_to_end(key)
            return manifest
        names = self.tools.names() if self.tools is not None and hasattr(self.tools, "names") else None
        manifest = load_manifest(
            text,
            source=path.name if path else "agent.toml",
            base_dir=path.parent if path else None,
            tool_names=set(names) if names is not None else None,
            shared_mcp=self.mcp_servers,
            validate_model=self._validate_model,
        )
        self._manifest_cache[key] = manifest
        if len(self._manifest_cache) > MANIFEST_CACHE:
            self._manifest_cache.popitem(last=False)
        return manifest

    def _spawn(self, env: Envelope) -> None:
        text = env.body.get("manifest")
        if not isinstance(text, str):
            raise ProtocolError("body.manifest: must be the agent.toml text")
        mpath = env.body.get("manifest_path")

        path = Path(mpath) if isinstance(mpath, str) and mpath else None
        manifest = self._parsed_manifest(text, path)
        # In a cluster the gateway assigns the id (from its registry: never reused); a host on its own
        # (tests, benchmarks) falls back to the manifest's agent_id or <name>-<n>.
        given = env.body.get("agent_id")
        agent_id = given if isinstance(given, str) and given else manifest.sandbox.agent_id
        if agent_id is None:
            agent_id = f"{manifest.name}-{next(self._ids)}"
            while agent_id in self._agents:
                agent_id = f"{manifest.name}-{next(self._ids)}"
        if agent_id in self._agents:
            raise AlreadyExists(f"agent {agent_id!r} already exists on worker {self.worker_id}")
        if self.max_agents is not None and len(self._agents) >= self.max_agents:
            if self._security is not None:
                self._security.audit.append(
                    "sandbox.max_agents", worker=self.worker_id, agents=len(self._agents), name=manifest.name
                )
            raise Busy(f"worker {self.worker_id} already hosts {len(self._agents)} agents (max_agents)")
        provider = None
        if manifest.model is not None and self.llm_factory is not None:
            provider = self.llm_factory(manifest.model)
        elif manifest.model is not None:
            provider = _llm.make_provider(manifest.model.raw, where=f"{manifest.source}: [agent.model]")
        window = RestartWindow(manifest.restart_intensity, manifest.restart_period_ms / 1000)
        sec = self._security
        parent = self._spawn_parents.pop(env.id, None) or env.body.get("parent")
        digest = _module_digest(manifest)
        if sec is not None:
            sec.check_version(manifest, digest)  # layer 16, before any work is spent on an old manifest
            sec.attest(manifest, _parsed(text))  # layer 13: signed manifests
        grant = None
        if self._capabilities is not None:
            raw = _parsed(text)
            grant = self._capabilities.grant(agent_id, _effective(raw, manifest), source=manifest.source)
            manifest = _apply_grant(manifest, raw, grant)
        sandbox = self._new_sandbox(manifest, agent_id, grant)
        agent = HostedAgent(
            agent_id=agent_id, manifest=manifest, sandbox=sandbox, provider=provider, window=window
        )
        agent.grant = grant
        agent.manifest_text = text
        if sec is not None:
            try:
                agent.guard = sec.admit(manifest, agent_id, parent=parent)
                sec.accept_version(manifest, digest)
            except BaseException:
                sandbox.close()
                sec.release(agent_id)
                raise
        self._agents[agent_id] = agent
        agent.spawn_env = env
        if env.body.get("resume"):
            self._resume_conversation(agent)
        self._start(agent)

    def _resume_conversation(self, agent: HostedAgent) -> None:
        """A re-spawned built-in LLM agent picks its conversation up from episodic memory.

        Its guest memory (where the built-in agent keeps the conversation) is new, so the newest
        ``history_messages`` user and assistant turns are read back and put before what the new instance
        sends the model (:meth:`Services.start_llm`). Custom guests keep their own state: not touched.
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

    def _new_sandbox(self, manifest: AgentManifest, agent_id: str, grant: Any = None) -> Sandbox:
        check = None
        if self._capabilities is not None and grant is not None:
            caps = self._capabilities

            def check(imports: list[tuple[str, str, str]]) -> None:
                caps.check_imports(grant, [(module, name) for module, name, _ in imports])

        sandbox = Sandbox(
            manifest,
            self._runtime(manifest.sandbox.memory.stack_size_kb),
            agent_id=agent_id,
            services=Services(self),
            clock=self.clock,
            import_check=check,
        )
        sandbox.load()  # raises (and frees) on refusal: nothing is registered for a failed spawn
        return sandbox

    def _start(self, agent: HostedAgent) -> None:
        if agent.sandbox.begin_init():
            self._active[agent.agent_id] = agent
        else:
            self._started(agent)

    def _started(self, agent: HostedAgent) -> None:
        self._event(agent, "running")
        if agent.spawn_env is not None:
            body = {
                "agent_id": agent.agent_id,
                "worker": self.worker_id,
                "service": agent.manifest.service,
                "spawn": agent.sandbox.spawn_kind,
                "spawn_ms": round(agent.sandbox.spawn_seconds * 1000, 3),
            }
            self._replies.append(agent.spawn_env.reply(body))
            agent.spawn_env = None
        self._next_message(agent)

    def _on_send(self, env: Envelope) -> None:
        text = env.body.get("text")
        if not isinstance(text, str):
            raise ProtocolError("body.text: must be a string")
        agent = self._pick(env.body.get("agent_id"), env.body.get("service"))
        if len(agent.inbox) >= MAX_INBOX:
            raise Busy(f"agent {agent.agent_id} has {MAX_INBOX} messages waiting")
        session = env.body.get("session")
        if self._security is not None:
            self._security.charge(agent.agent_id, requests=1)  # layer 3: rate_limited
            from_agent = env.id in self._internal
            text = self._security.check_input(  # layer 2: denied
                agent.agent_id, text, source="agent" if from_agent else "user"
            )
        if self._memory is not None:
            self._memory.record_message(agent.agent_id, _session(session), "user", text, None)
        agent.inbox.append(
            (env, abi.user_message(text, session=session if isinstance(session, str) else None))
        )
        if agent.current is None and agent.spawn_env is None:
            self._next_message(agent)

    def _pick(self, agent_id: Any, service: Any) -> HostedAgent:
        if isinstance(agent_id, str):
            agent = self._agents.get(agent_id)
            if agent is None:
                raise NotFound(f"no agent {agent_id!r} on worker {self.worker_id}")
            return agent
        pool = [a for a in self._agents.values() if a.manifest.service == service]
        if not pool:
            raise NotFound(f"no agent serves {service!r} on worker {self.worker_id}")
        # Least loaded first; ties broken round-robin so equal agents share the traffic.
        start = self._rr.get(str(service), 0)
        self._rr[str(service)] = start + 1
        rotated = pool[start % len(pool) :] + pool[: start % len(pool)]
        return min(rotated, key=lambda a: len(a.inbox) + (a.current is not None))

    def _on_list(self, env: Envelope) -> None:
        self._replies.append(env.reply({"agents": self.agents()}))

    def _on_info(self, env: Envelope) -> None:
        self._replies.append(env.reply(self._record(self._get(env))))

    def _on_suspend(self, env: Envelope) -> None:
        agent = self._get(env)
        agent.sandbox.suspend()
        self._event(agent, "suspended")
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": "suspended"}))

    def _on_resume(self, env: Envelope) -> None:
        agent = self._get(env)
        agent.sandbox.resume()
        self._event(agent, "running")
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": "running"}))

    def _on_kill(self, env: Envelope) -> None:
        agent = self._get(env)
        self._remove(agent, "dead", SandboxError(f"agent {agent.agent_id} was killed"))
        if self._memory is not None:
            self._memory.reclaim(agent.agent_id, agent.manifest.retention)
        self._replies.append(env.reply({"agent_id": agent.agent_id, "state": "dead"}))

    def _get(self, env: Envelope) -> HostedAgent:
        agent_id = env.body.get("agent_id")
        agent = self._agents.get(agent_id) if isinstance(agent_id, str) else None
        if agent is None:
            raise NotFound(f"no agent {agent_id!r} on worker {self.worker_id}")
        return agent

    # -- running ------------------------------------------------------------------------------------------
    def _next_message(self, agent: HostedAgent) -> None:
        if agent.sandbox.state is not State.IDLE:
            return  # busy (a message, or agent_init after a restart): the inbox waits for _started/_apply
        if agent.current is not None or not agent.inbox:
            if agent.current is None:
                self._active.pop(agent.agent_id, None)
            return
        env, payload = agent.inbox[0]
        agent.sandbox.begin_message(payload)
        agent.inbox.popleft()
        agent.current = env
        agent.usage = {"prompt_tokens": 0, "completion_tokens": 0, "tool_calls": 0}
        agent.session = _session(env.body.get("session"))
        agent.failure = None
        agent.task = None
        if agent.guard is not None:
            agent.guard.refusal = None
        agent.fuel_at_start = agent.sandbox.fuel_used
        self._active[agent.agent_id] = agent

    def _apply(self, agent: HostedAgent, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        if outcome.limit is not None and self._capabilities is not None:
            self._capabilities.record_trap(agent.agent_id, outcome.limit, phase=outcome.phase)
        elif self._security is not None and outcome.phase == "handle":
            cap = agent.manifest.sandbox.memory.max_heap_mb << 20
            used = agent.sandbox.memory_bytes()
            if used + 65536 > cap:  # memory.grow was refused at the cap (the guest coped with it)
                self._security.audit.append(
                    "sandbox.memory_cap", agent_id=agent.agent_id, memory_bytes=used, cap_bytes=cap
                )
        if outcome.phase == "init":
            if outcome.ok:
                self._active.pop(agent.agent_id, None)
                self._started(agent)
            elif outcome.refused:  # the module cannot start (its start function): no restart can help
                err = outcome.error if isinstance(outcome.error, OpenFangError) else SandboxError("refused")
                self._remove(agent, "dead", err, reason=err.message)
            else:
                self._crashed(agent, outcome.error or SandboxError("agent_init failed"))
            return
        env, agent.current = agent.current, None
        if env is not None:
            if outcome.ok:
                usage = dict(agent.usage, fuel=agent.sandbox.fuel_used - agent.fuel_at_start)
                reply = outcome.reply.decode("utf-8", "replace")
                if self._security is not None:
                    reply = self._security.redact(reply)  # layer 11
                if self._memory is not None:
                    tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
                    self._memory.record_message(agent.agent_id, agent.session, "assistant", reply, tokens)
                body = {"reply": reply, "agent_id": agent.agent_id, "usage": usage}
                if agent.task is not None:  # task_update: the A2A state and artifacts of this message
                    body["task"] = agent.task
                    agent.task = None
                self._replies.append(env.reply(body))
            else:
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
                self._replies.append(env.error(err))
        if outcome.crashed:
            self._crashed(agent, outcome.error or SandboxError("agent crashed"))
        else:
            self._next_message(agent)

    def _crashed(self, agent: HostedAgent, error: BaseException) -> None:
        """simple_one_for_one: restart this agent per its policy and window; siblings are never touched."""
        reason = str(error)
        self._bound.warning("agent_crashed", agent_id=agent.agent_id, reason=reason)
        agent.sandbox.close()
        self._active.pop(agent.agent_id, None)
        # The tree's own rules: a crash is an abnormal exit; the window is OTP's add_restart.
        restart = should_restart(Restart(agent.manifest.restart), abnormal(detail=reason))
        if not restart or not agent.window.add_restart(self.clock()):
            why = "restart_intensity" if restart else "crashed"
            self._remove(
                agent,
                "dead",
                SandboxError(f"agent {agent.agent_id} crashed: {reason}"),
                reason=reason,
                why=why,
            )
            if restart:
                self._audit_record({"kind": "agent_gave_up", "agent_id": agent.agent_id, "reason": reason})
            return
        self._event(agent, "restarting", reason=reason)
        try:
            agent.sandbox = self._new_sandbox(agent.manifest, agent.agent_id, agent.grant)
        except OpenFangError as exc:
            self._remove(agent, "dead", exc, reason=f"restart failed: {exc.message}", why="restart_failed")
            return
        agent.restarts += 1
        self._resume_conversation(agent)
        self._start(agent)

    def _remove(
        self, agent: HostedAgent, state: str, error: OpenFangError, *, reason: str = "", why: str = ""
    ) -> None:
        agent.sandbox.close()
        if self._security is not None:
            self._security.release(agent.agent_id)
        self._kv.drop(agent.agent_id)
        self._agents.pop(agent.agent_id, None)
        self._active.pop(agent.agent_id, None)
        for env in ([agent.spawn_env] if agent.spawn_env else []) + (
            [agent.current] if agent.current else []
        ):
            self._replies.append(env.error(error))
        for env, _ in agent.inbox:
            self._replies.append(env.error(error))
        agent.inbox.clear()
        agent.current = agent.spawn_env = None
        self._event(agent, state, reason=reason, **({"why": why} if why else {}))

    def _record(self, agent: HostedAgent) -> dict[str, Any]:
        info = agent.sandbox.info()
        state = (
            "starting"
            if agent.spawn_env is not None
            else ("suspended" if agent.sandbox.user_suspended else "running")
        )
        info.update(
            agent_id=agent.agent_id,
            name=agent.manifest.name,
            # The HTTP face builds MCP tools and A2A cards from these (issue 12).
            description=agent.manifest.description,
            tools=list(agent.manifest.tools),
            worker=self.worker_id,
            state=state,
            activity="suspended" if agent.sandbox.user_suspended else agent.sandbox.state.value,
            restarts=agent.restarts,
            created_at=agent.created_at,
            inbox=len(agent.inbox),
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

    def _runtime(self, stack_kb: int) -> Runtime:
        rt = self._runtimes.get(stack_kb)
        if rt is None:
            opts = EngineOptions(
                max_wasm_stack_kb=stack_kb,
                epoch_tick_ms=self._options.epoch_tick_ms,
                fuel_slice=self._options.fuel_slice,
            )
            rt = self._runtimes[stack_kb] = Runtime(HOST_SPECS, options=opts, cache_dir=self._cache_dir)
            rt.start_ticker()
        return rt


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> dict[str, Any]:
    """The manifest's TOML as data (read-only: shared by the spawns of the same text)."""
    return tomllib.loads(text)


def _session(value: Any) -> str:
    return value if isinstance(value, str) and value else "default"


def _module_digest(manifest: AgentManifest) -> str:
    """What a manifest version names (layer 16): its pinned digest, else the module's bytes."""
    if manifest.module_sha256:
        return manifest.module_sha256
    path = manifest.module_path()
    if path is None:
        from openfang.workers.sandbox.builtin_guests import builtin_digest

        return builtin_digest(manifest.module.removeprefix("builtin:"))
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"  # the sandbox's load reports the real problem


def _effective(raw: dict[str, Any], manifest: AgentManifest) -> dict[str, Any]:
    """The manifest as the capability policy reads it, with the host functions it is *effectively* granted
    (core ABI and implied imports included) as its narrowing allow list."""
    sandbox = dict(raw.get("sandbox") or {})
    perms = dict(sandbox.get("permissions") or {})
    perms["allowed_host_functions"] = sorted(manifest.granted_imports())
    sandbox["permissions"] = perms
    return {**raw, "sandbox": sandbox}


def _apply_grant(manifest: AgentManifest, raw: dict[str, Any], grant: Any) -> AgentManifest:
    """Cluster defaults (layers 5-6) for the limits a manifest leaves unset."""
    sandbox = raw.get("sandbox") or {}
    sb = manifest.sandbox
    fuel, memory = sb.fuel, sb.memory
    if "max_fuel" not in (sandbox.get("fuel") or {}):
        fuel = dataclasses.replace(fuel, max_fuel=int(grant.fuel))
    if "max_heap_mb" not in (sandbox.get("memory") or {}):
        memory = dataclasses.replace(memory, max_heap_mb=max(1, int(grant.memory_bytes) >> 20))
    for key, most in (("max_table_elements", "table_elements"), ("max_tables", "tables")):
        if key not in (sandbox.get("memory") or {}) and getattr(memory, key) > getattr(grant, most, 1 << 62):
            memory = dataclasses.replace(memory, **{key: int(getattr(grant, most))})
    if fuel is sb.fuel and memory is sb.memory:
        return manifest
    return dataclasses.replace(manifest, sandbox=dataclasses.replace(sb, fuel=fuel, memory=memory))
