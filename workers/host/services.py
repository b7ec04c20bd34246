"""The services an agent's sandbox calls into: LLM completions and tool calls as jobs, and tool contexts.

``Services`` turns a sandbox's parking host calls into jobs on the host's job runner, with the agent's
provider, tools and ToolContext; ``ToolContexts`` builds each agent's ToolContext. Both get every
collaborator they use passed in (tools, security layers, memory, the job runner, the agent table, the
agent-to-agent traffic): nothing here reaches into the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import OpenFangError
from openfang.workers.host import jobs
from openfang.workers.host.agents import AgentTraffic
from openfang.workers.host.memory import HostMemory
from openfang.workers.host.record import HostedAgent
from openfang.workers.host.security import HostSecurity
from openfang.workers.host.stats import HostStats, count_answer_totals, llm_error_kind
from openfang.workers.llm.presets import cost_usd, price_for
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox.instance import DoneJob, Job, Sandbox
from openfang.workers.tools import kv as _tools_kv
from openfang.workers.tools import registry as _tools

_TOTALS_LOCK = threading.Lock()
_NOBODY: Any = object()  # the usage recorder's "no answer yet" provider and model


class Services:
    """The HostServices a sandbox sees: jobs for its parking host calls, audit."""

    def __init__(
        self,
        *,
        agents: Mapping[str, HostedAgent],
        tools: Any,
        runner: jobs.JobRunner,
        contexts: ToolContexts,
        audit: Callable[[dict[str, Any]], None],
        emit_chunk: Callable[[Envelope, dict[str, Any]], None],
        security: HostSecurity | None = None,
        memory: HostMemory | None = None,
        stats: HostStats | None = None,
    ) -> None:
        self._agents = agents  # the host's table, read only
        self._emit_chunk = emit_chunk  # a part of a streamed reply (any thread)
        self.tools = tools
        self._runner = runner
        self._contexts = contexts
        self._audit = audit
        self._security = security
        self._memory = memory
        self.stats = stats or HostStats("-")  # the worker's figures: LLM calls and tool calls counted here

    def _agent(self, sandbox: Sandbox) -> HostedAgent | None:
        agent = self._agents.get(sandbox.agent_id)
        return agent if agent is not None and agent.sandbox is sandbox else None

    def audit(self, record: dict[str, Any]) -> None:
        self._audit(record)

    def start_llm(self, sandbox: Sandbox, messages: list[dict[str, Any]]) -> Job:
        agent = self._agent(sandbox)
        if agent is None or agent.provider is None:
            return DoneJob(abi.E_UNAVAILABLE, b"no LLM provider in this host")
        plan = agent.model_plan
        if plan is None or not plan.fits(agent):
            plan = agent.model_plan = self._model_plan(agent)
        if self._security is not None:
            refused = self._charge(agent, tokens=agent.unbilled_tokens)
            if refused is not None:
                return refused
            agent.unbilled_tokens = 0
        job = UsageJob(agent)
        if agent.resumed:
            # The conversation before the re-spawn, then this instance's own: the newest history_messages.
            room = agent.manifest.history_messages - len(messages)
            messages = (agent.resumed[-room:] if room > 0 else []) + messages
        chat = agent.chat_cache.convert(messages)
        # The call's job body: the plan's model call (provider, system message, tools, content filter,
        # sinks: bound once per agent) with this call's messages, stream sink and entry sink.
        send = agent.current_send  # most messages ask for no stream: no sink to make (_delta_sink's None)
        sink = self._delta_sink(agent) if send is not None and send.stream else None
        work = functools.partial(plan.call.run, chat, sink, job.set_entry)
        self._runner.run(job, work, inline=plan.inline)
        return job

    def _model_plan(self, agent: HostedAgent) -> ModelPlan:
        """What every model call of ``agent`` shares until its provider, manifest or session changes: the
        tools offered, the content filter, the usage and error sinks, streaming, inline or on a thread."""
        if agent.tool_specs is None:  # what the model is offered: fixed for the agent's life
            registry = self.tools
            agent.tool_specs = ()
            if agent.manifest.tools and registry is not None and hasattr(registry, "specs_for"):
                agent.tool_specs = tuple(registry.specs_for(frozenset(agent.manifest.tools)))
        sec = self._security
        content_filter = None
        if sec is not None:
            agent_id = agent.agent_id

            def content_filter(text: str) -> str:
                try:
                    return sec.check_model_text(agent_id, text)  # check_output, then redact
                except OpenFangError as exc:  # output_action = block: the message fails with this error
                    if agent.guard is not None:
                        agent.guard.refusal = exc
                    raise

        model = agent.manifest.model
        return ModelPlan(
            agent,
            specs=agent.tool_specs,
            content_filter=content_filter,
            on_usage=usage_recorder(agent, self._memory, self.stats),
            on_error=self._llm_error_sink(agent),
            stream=bool(model is not None and model.raw.get("stream")),
            inline=getattr(agent.provider, "blocking", True) is False,
        )

    def _llm_error_sink(self, agent: HostedAgent) -> Callable[[OpenFangError, float], None]:
        """Counts a failed model call for the provider it names (else the agent's provider)."""
        stats, name = self.stats, str(getattr(agent.provider, "name", "?"))
        model = str(getattr(agent.provider, "model", "") or "")

        def sink(error: OpenFangError, seconds: float) -> None:
            stats.llm_error(error, seconds, provider=name, model=model)

        return sink

    def _delta_sink(self, agent: HostedAgent) -> Callable[[str], None] | None:
        """Where the model's text pieces go when the message in progress asked for a stream (else None).

        Each piece is redacted on its own (a secret split across two pieces is not caught: the final
        reply, checked whole, is the authoritative text).
        """
        request, send = agent.current, agent.current_send
        if request is None or send is None or not send.stream:
            return None
        sec, emit, agent_id = self._security, self._emit_chunk, agent.agent_id

        def sink(piece: str) -> None:
            text = sec.redact(piece) if sec is not None else piece
            emit(request, {"agent_id": agent_id, "kind": "text", "text": text})

        return sink

    def start_tools(self, sandbox: Sandbox, request: dict[str, Any]) -> Job:
        agent = self._agent(sandbox)
        if agent is None or self.tools is None:
            return DoneJob(abi.E_UNAVAILABLE, b"no tool registry in this host")
        single = "tool_calls" not in request
        calls = [request] if single else list(request.get("tool_calls") or [])
        if not all(isinstance(c, dict) for c in calls) or not calls:
            return DoneJob(abi.E_INVALID)
        if self._security is not None:
            refused = self._charge(agent, tool_calls=len(calls))
            if refused is not None:
                return refused
        return self._run_tools(agent, sandbox, calls, single)

    def _charge(self, agent: HostedAgent, *, tokens: int = 0, tool_calls: int = 0) -> Job | None:
        """Layer 3 before an LLM or tool call: None when within the agent's budget, else the refusal."""
        sec = self._security
        assert sec is not None
        try:
            sec.charge(agent.agent_id, tokens=tokens, tool_calls=tool_calls)
        except OpenFangError as exc:
            if agent.guard is not None:
                agent.guard.refusal = exc  # the message's error reply says rate_limited, not "denied"
            return DoneJob(abi.E_DENIED, exc.message.encode())
        return None

    def _invoke(self, agent: HostedAgent, ctx: Any, name: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """One tool call through the registry, then the host's layers on its result (any thread)."""
        registry: Any = self.tools
        sec, mem = self._security, self._memory
        t0 = time.perf_counter()
        code: str | None = None
        if hasattr(registry, "invoke"):
            res = registry.invoke(ctx, name, args)
            ok, value, code = bool(res.ok), (res.as_text() if res.ok else res.error), res.code
            if sec is None and mem is None and res.ok:
                value = res.value  # as jobs.invoke_tool gives it: the tool's own value
        else:
            ok, value = jobs.invoke_tool(registry, ctx, name, args)
        self._count_tool(name, "ok" if ok else "denied" if code == "denied" else "error")
        if sec is None and mem is None:
            return ok, value
        if sec is not None:
            if not ok and code == "denied":
                sec.audit.append("tools.denied", agent_id=agent.agent_id, tool=name, error=str(value))
            if ok:
                try:
                    value = sec.check_output(agent.agent_id, str(value), source="tool")
                except OpenFangError as exc:  # output_action = block: the model gets the refusal instead
                    ok, value, code = False, exc.message, exc.code
            value = sec.redact(str(value)) if isinstance(value, str) else value
        if mem is not None:
            safe_args = sec.redactor.redact_value(args) if sec is not None and sec.redactor else args
            mem.note_tool_call(
                {
                    "agent_id": agent.agent_id,
                    "tool": name,
                    "status": "ok" if ok else (code or "error"),
                    "args": safe_args,
                    "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
                    "error": None if ok else str(value)[:1000],
                    "session": agent.session,
                }
            )
        return ok, value

    def _run_tools(
        self, agent: HostedAgent, sandbox: Sandbox, calls: list[dict[str, Any]], single: bool
    ) -> Job:
        registry = self.tools
        ctx = self._context(agent, sandbox)
        request = agent.current
        streaming = request is not None and agent.current_send is not None and bool(agent.current_send.stream)
        invoke: jobs.ToolInvoke
        if streaming and request is not None:

            def invoke(name: str, args: dict[str, Any]) -> tuple[bool, Any]:
                # The progress of a streamed reply.
                part = {"agent_id": agent.agent_id, "kind": "tool", "tool": name}
                self._emit_chunk(request, {**part, "state": "start"})
                ok, value = self._invoke(agent, ctx, name, args)
                self._emit_chunk(request, {**part, "state": "done", "ok": bool(ok)})
                return ok, value

        else:
            invoke = functools.partial(self._invoke, agent, ctx)  # no Python frame of its own per call
        job = UsageJob(agent)
        denied = functools.partial(self._denied, sandbox)
        work = jobs.tools_work(calls, _allowed(agent.manifest.tools), invoke, denied, single, job.set_entry)
        self._runner.run(job, work, inline=_inline_tools(registry, calls))
        return job

    def _denied(self, sandbox: Sandbox, name: str) -> None:
        """A call of a tool the agent's manifest does not list: counted, and audited (layer 9)."""
        self._count_tool(name, "denied")
        sandbox.counters["denied"] += 1
        self.audit({"kind": "tool_denied", "agent_id": sandbox.agent_id, "tool": name})

    def _count_tool(self, name: str, outcome: str) -> None:
        """One tool call in the worker's figures, named only if the registry knows the tool."""
        registry = self.tools
        # ``in`` asks a ToolRegistry without importing a lazily registered tool (a denied one stays unloaded).
        known = name in registry if hasattr(registry, "__contains__") else _tool(registry, name) is not None
        self.stats.tool_called(name, outcome, known=known)

    def _context(self, agent: HostedAgent, sandbox: Sandbox, extra: frozenset[str] = frozenset()) -> Any:
        """The agent's ToolContext (one per agent instance); ``extra`` widens ``allowed`` for one call."""
        if agent.tool_ctx is None or agent.tool_ctx_for is not sandbox:
            agent.tool_ctx = self._contexts.build(agent, sandbox)
            agent.tool_ctx_for = sandbox
        ctx = agent.tool_ctx
        if extra and dataclasses.is_dataclass(ctx) and hasattr(ctx, "allowed"):
            ctx = dataclasses.replace(ctx, allowed=frozenset(ctx.allowed) | extra)  # type: ignore[type-var]
        return ctx

    def start_capability(self, sandbox: Sandbox, name: str, payload: bytes) -> Job:
        agent = self._agent(sandbox)
        tool = abi.CAPABILITY_IMPORTS.get(name)
        if agent is None or tool is None or self.tools is None:
            return DoneJob(abi.E_UNAVAILABLE, f"host function {name} is not available in this host".encode())
        try:
            args = json.loads(payload)
        except ValueError:
            return DoneJob(abi.E_INVALID)
        # The import was granted by allowed_host_functions: the capability's backing tool is implied.
        return self._run_tools_as(agent, sandbox, tool, args)

    def _run_tools_as(self, agent: HostedAgent, sandbox: Sandbox, tool: str, args: Any) -> Job:
        ctx = self._context(agent, sandbox, extra=frozenset({tool}))
        work = jobs.tools_work(
            [{"name": tool, "arguments": args}],
            frozenset({tool}),
            lambda n, a: self._invoke(agent, ctx, n, a),
            lambda n: None,
            True,
        )
        job = UsageJob(agent)
        self._runner.run(job, work, inline=False)
        return job


def usage_recorder(
    agent: HostedAgent, memory: HostMemory | None, stats: HostStats | None = None
) -> Callable[[Any, float], None]:
    """What each LLM answer costs: added to the agent's running totals (``agent info``) and, where the
    provider reported usage, recorded in procedural memory as a tool call named ``llm`` whose args are
    the provider, model, tokens and cost (null for a model without a price: workers/llm/presets.py)."""
    session = agent.session
    # The last answer's provider and model, whether the model is priced and the stats entry the pair counts
    # into (HostStats.llm_entry: it stays the pair's): an agent's answers mostly come from one provider and
    # model. One tuple, replaced whole, so a job thread never reads half of another's. The first answer
    # never matches the starting one (_NOBODY is no string).
    last: list[tuple[Any, Any, bool, Any]] = [(_NOBODY, _NOBODY, False, None)]

    def record(resp: Any, duration_ms: float) -> None:
        usage = resp.usage
        prompt, completion = int(usage.prompt_tokens), int(usage.completion_tokens)
        provider, model = resp.provider, resp.model
        seen = last[0]
        if provider is not seen[0] or model is not seen[1]:  # the very strings of the last answer: its pair
            if type(provider) is not str or type(model) is not str:
                provider, model = str(provider), str(model)
            if seen[0] != provider or seen[1] != model:
                entry = stats.llm_entry(provider, model) if stats is not None else None
                seen = last[0] = (provider, model, _priced(model), entry)
        cost = cost_usd(model, prompt, completion) if seen[2] else None
        totals = agent.llm_usage
        if stats is not None:
            failed = getattr(resp, "failed", ())
            if failed:  # fallback attempts that failed before this answer
                for attempt in failed:
                    stats.llm_failed(str(attempt.provider), str(attempt.model or ""), llm_error_kind(attempt))
            # The pair's figures and the agent's totals (agent info) in one hold of the stats' lock.
            stats.llm_answer(seen[3], prompt, completion, duration_ms / 1000, totals, cost)
        else:
            with _TOTALS_LOCK:  # LLM jobs of one agent may finish on different threads
                count_answer_totals(totals, prompt, completion, cost)
        if memory is None or prompt + completion == 0:  # the provider did not report usage
            return
        from openfang.memory.procedural import USAGE_TOOL  # only with memory: not in a memoryless start

        args = {
            "provider": str(resp.provider),
            "model": model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": cost,
        }
        memory.note_tool_call(
            {
                "agent_id": agent.agent_id,
                "tool": USAGE_TOOL,
                "status": "ok",
                "session": session,
                "args": args,
                "duration_ms": round(duration_ms, 3),
            }
        )

    return record


@functools.lru_cache(maxsize=256)
def _priced(model: str) -> bool:
    """Whether ``cost_usd`` can price ``model`` (the PRICES table is fixed): an unpriced model (a local
    or scripted one) skips its name's normalising and regex on every answer."""
    return price_for(model) is not None


class ModelPlan:
    """The parts of an agent's model calls that stay the same from call to call (``Services._model_plan``),
    made once instead of per call; it fits the agent while its sandbox, provider, manifest and session are
    the ones it was made for (the usage recorder names the session of the message in progress)."""

    __slots__ = (
        "call",
        "content_filter",
        "inline",
        "manifest",
        "on_error",
        "on_usage",
        "provider",
        "sandbox",
        "session",
        "specs",
        "stream",
    )

    def __init__(
        self,
        agent: HostedAgent,
        *,
        specs: tuple[Any, ...],
        content_filter: Callable[[str], str] | None,
        on_usage: Callable[[Any, float], None],
        on_error: Callable[[OpenFangError, float], None],
        stream: bool,
        inline: bool,
    ) -> None:
        self.sandbox, self.provider = agent.sandbox, agent.provider
        self.manifest, self.session = agent.manifest, agent.session
        self.specs = specs
        self.content_filter = content_filter
        self.on_usage = on_usage
        self.on_error = on_error
        self.stream = stream
        self.inline = inline
        # The job body of the agent's model calls, these parts bound (the system prompt is the manifest's).
        self.call = jobs.ModelCall(
            agent.provider,
            agent.manifest.system_prompt,
            specs,
            content_filter,
            stream=stream,
            on_usage=on_usage,
            on_error=on_error,
        )

    def fits(self, agent: HostedAgent) -> bool:
        return (
            self.sandbox is agent.sandbox
            and self.provider is agent.provider
            and self.manifest is agent.manifest
            and self.session == agent.session
        )


class UsageJob(jobs.ThreadJob):
    """A job that adds its usage (tokens, tool calls) to the agent's current message when it finishes."""

    __slots__ = ("_agent",)

    def __init__(self, agent: HostedAgent) -> None:
        # ThreadJob.__init__'s fields, set here without the super() call (one per model and tool call).
        self.agent_id = agent.agent_id
        self.done = False
        self.code = abi.E_FAILED
        self.value = b""
        self.usage = {}
        self.error = None
        self.entry = None
        self._agent = agent

    def finish(
        self,
        code: int,
        value: bytes,
        usage: dict[str, int] | None = None,
        error: OpenFangError | None = None,
    ) -> None:
        agent = self._agent
        if usage:
            totals = agent.usage
            for key, n in usage.items():
                totals[key] = totals.get(key, 0) + n
                if key == "prompt_tokens" or key == "completion_tokens":
                    agent.unbilled_tokens += n
            self.usage = usage
        # The latest host job decides: an LLM failure the guest then recovered from is not reported.
        agent.failure = error if error is not None and error.code == "llm_error" else None
        self.code, self.value, self.error = code, value, error  # ThreadJob.finish, without a super() call
        self.done = True


@functools.lru_cache(maxsize=1024)
def _allowed(tools: tuple[str, ...]) -> frozenset[str]:
    """The manifest's tools as the tool job's allow list (manifests of one kind share their tuple)."""
    return frozenset(tools)


def _inline_tools(registry: Any, calls: list[dict[str, Any]]) -> bool:
    """Whether every call names a tool that says it cannot block (``blocking = False``): the job may then
    run on the host's thread; anything else (an unknown tool, a blocking one) goes to a job thread."""
    return all(getattr(_tool(registry, str(c.get("name"))), "blocking", True) is False for c in calls)


def _tool(registry: Any, name: str) -> Any:
    try:
        return registry.get(name)
    except (KeyError, LookupError, OpenFangError):
        return None


class ToolContexts:
    """Builds each agent's ToolContext: its tools as the allow list, its KV namespace and, with the security
    layers and memory wired, its scoped files, network policy, egress check and host callbacks."""

    def __init__(
        self,
        *,
        kv: _tools_kv.KVStore,
        traffic: AgentTraffic,
        security: HostSecurity | None = None,
        memory: HostMemory | None = None,
        custom: Callable[[Sandbox], Any] | None = None,
    ) -> None:
        self.kv = kv
        self._traffic = traffic
        self._security = security
        self._memory = memory
        self.custom = custom  # a caller's own factory (tests) replaces the default context

    def build(self, agent: HostedAgent, sandbox: Sandbox) -> Any:
        if self.custom is not None:
            return self.custom(sandbox)
        allowed = frozenset(agent.manifest.tools)
        kv = self.kv.namespace(agent.agent_id)
        sec, mem = self._security, self._memory

        def task_update(_agent_id: str, args: dict[str, Any]) -> Any:
            # The last state and message win; artifacts add up over the message (any tool thread).
            task = agent.task or {"artifacts": []}
            for key in ("state", "message"):
                if key in args:
                    task[key] = args[key]
            task["artifacts"] = [*task["artifacts"], *(args.get("artifacts") or [])]
            agent.task = task
            return {
                "recorded": True,
                "state": task.get("state", "completed"),
                "artifacts": len(task["artifacts"]),
            }

        if sec is None and mem is None:
            return _tools.ToolContext(
                agent_id=agent.agent_id, allowed=allowed, kv=kv, task_update=task_update
            )
        extra: dict[str, Any] = {"task_update": task_update}
        if sec is not None:
            guard = agent.guard
            extra.update(
                fs_root=sec.ensure_fs_root(guard.fs_root) if guard is not None else None,
                net_allow_hosts=tuple(sec.config.network.allow_hosts),
                net_allow_private=sec.config.network.allow_private,
                egress_check=sec.egress_check(agent.agent_id),
                shell=agent.manifest.shell,
                web_search=agent.manifest.web_search,
            )
        if mem is not None:
            extra.update(_memory_callbacks(mem, sec))
        traffic, handoff = self._traffic, self._traffic.handoff
        return _tools.ToolContext(
            agent_id=agent.agent_id,
            allowed=allowed,
            kv=kv,
            send=lambda agent_id, args: handoff.call(lambda: traffic.send(agent_id, args)),
            spawn=lambda agent_id, args: handoff.call(lambda: traffic.spawn(agent_id, args)),
            list_agents=lambda agent_id, args: handoff.call(lambda: traffic.listing(agent_id)),
            broadcast=lambda agent_id, args: handoff.call(lambda: traffic.broadcast(agent_id, args)),
            topic=lambda agent_id, args: handoff.call(lambda: traffic.topic(agent_id, str(args["op"]), args)),
            schedule=lambda agent_id, args: handoff.call(
                lambda: traffic.schedule(agent_id, str(args["op"]), args)
            ),
            **extra,
        )


def _memory_callbacks(mem: HostMemory, sec: HostSecurity | None) -> dict[str, Any]:
    def recall(agent_id: str, args: dict[str, Any]) -> Any:
        owners = [str(a) for a in args.get("agents") or []]
        if sec is not None and owners:
            sec.memory_scope(agent_id, owners)  # layer 9: raises Denied (audited) for another's memory
        return mem.recall(agent_id, args, owners)

    def store(agent_id: str, args: dict[str, Any]) -> Any:
        if sec is not None and sec.permissions is not None:
            sec.permissions.check_memory_write(agent_id, agent_id)  # memory_write = [] makes it read-only
        return mem.store(agent_id, args)

    def forget(agent_id: str, args: dict[str, Any]) -> Any:
        if sec is not None and sec.permissions is not None:
            sec.permissions.check_memory_write(agent_id, agent_id)  # a read-only agent cannot forget either
        return mem.forget(agent_id, args)

    return {
        "memory_store": store,
        "memory_recall": recall,
        "memory_history": lambda agent_id, args: mem.history(agent_id, args),
        "memory_forget": forget,
    }
