"""Shared helpers for the sandbox tests: a tiny scripted provider, a tool registry, and a host driver.

The provider and registry implement the same names as workers/llm/providers.py and
workers/tools/registry.py (``complete``, ``get``/``names``/``call``) so the tests do not depend on those
modules' progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from openfang.protocol.envelope import Envelope
from openfang.workers.host.agent_host import AgentHost, HostParts
from openfang.workers.llm import types as t
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasmtime import HostFunctionSpec, Instance, Runtime
from openfang.workers.sandbox.instance import DoneJob, Job, Outcome, Sandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agents"


def response(content: str | None = None, tools: list[tuple[str, dict[str, Any]]] = ()) -> t.ChatResponse:  # type: ignore[assignment]
    calls = [t.ToolCall(id=f"call-{i}", name=n, arguments=a) for i, (n, a) in enumerate(tools)]
    return t.ChatResponse(
        content=content,
        tool_calls=calls,
        usage=t.Usage(prompt_tokens=5, completion_tokens=2),
        finish_reason="tool_calls" if calls else "stop",
        provider="test",
        model="test",
    )


class RuleProvider:
    """Answers from the last message: tool results are echoed back, user text goes through ``rule``."""

    name = "rules"

    def __init__(self, rule: Callable[[t.ChatRequest], t.ChatResponse], *, blocking: bool = False) -> None:
        self.rule = rule
        self.blocking = blocking
        self.requests: list[t.ChatRequest] = []

    def complete(self, req: t.ChatRequest, *, on_delta: Any = None) -> t.ChatResponse:
        self.requests.append(req)
        return self.rule(req)


def weather_rule(req: t.ChatRequest) -> t.ChatResponse:
    """'weather' -> call time_now; after a tool result, answer with it; otherwise echo the user's text."""
    last = req.messages[-1]
    if last.role == "tool":
        return response(f"tool said {last.content}")
    text = last.content or ""
    if "weather" in text:
        return response(None, [("time_now", {})])
    if "forbidden" in text:
        return response(None, [("shell_exec", {"cmd": "rm -rf /"})])
    if "forever" in text:
        return response(None, [("time_now", {})])
    return response(f"echo: {text} [{len([m for m in req.messages if m.role == 'user'])} user msgs]")


class Tool:
    def __init__(
        self, name: str, fn: Callable[[Any, dict[str, Any]], Any], *, blocking: bool = False
    ) -> None:
        self.name, self.fn, self.blocking = name, fn, blocking
        self.schema: dict[str, Any] = {"type": "object"}
        self.permission = name

    def call(self, ctx: Any, args: dict[str, Any]) -> Any:
        return self.fn(ctx, args)


class Registry:
    def __init__(self, *tools: Tool) -> None:
        self._tools = {tool.name: tool for tool in tools}

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)


def default_registry() -> Registry:
    return Registry(Tool("time_now", lambda ctx, a: "12:00 UTC"), Tool("shell_exec", lambda ctx, a: "ran"))


class Driver:
    """Runs an AgentHost like a worker loop would, and collects replies by request id."""

    def __init__(self, host: AgentHost) -> None:
        self.host = host
        self.replies: dict[str, Envelope] = {}
        self.audit: list[dict[str, Any]] = []

    def pump(self, seconds: float = 0.01) -> None:
        got = self.host.step(seconds)
        for reply in got:
            self.replies[reply.id] = reply
        if got:
            return
        deadline = self.host.next_deadline()
        wait = 0.002 if deadline is None else max(0.0, min(0.002, deadline - time.monotonic()))
        select.select([self.host.wakeup_fd()], [], [], wait)

    def submit(self, type_: str, **body: Any) -> Envelope:
        env = Envelope(type=type_, body=body)
        self.host.submit(env)
        return env

    def wait(self, env: Envelope, timeout: float = 20.0) -> Envelope:
        end = time.monotonic() + timeout
        while env.id not in self.replies:
            if time.monotonic() > end:
                state = {
                    a["agent_id"]: (a["state"], a["activity"], a["inbox"], a["messages"])
                    for a in self.host.agents()
                }
                raise AssertionError(f"no reply to {env.type} within {timeout}s; agents: {state}")
            self.pump()
        return self.replies.pop(env.id)

    def call(self, type_: str, timeout: float = 20.0, **body: Any) -> Envelope:
        return self.wait(self.submit(type_, **body), timeout)

    def ok(self, type_: str, **body: Any) -> dict[str, Any]:
        reply = self.call(type_, **body)
        assert reply.type == f"{type_}.ok", reply.body
        return reply.body


def make_host(provider: RuleProvider | None = None, registry: Registry | None = None, **kw: Any) -> Driver:
    audit: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    prov = provider or RuleProvider(weather_rule)
    llm_factory = kw.pop("llm_factory", lambda cfg: prov)
    host = AgentHost(
        "w-test",
        HostParts(
            llm_factory=llm_factory,
            tools=registry or default_registry(),
            audit=audit.append,
            events=events.append,
            **kw,
        ),
    )
    driver = Driver(host)
    driver.audit = audit
    driver.events = events  # type: ignore[attr-defined]
    return driver


def manifest(
    name: str, *, module: str = "builtin:llm-agent", agent: str = "", sandbox: str = "", model: bool = True
) -> str:
    """A manifest's TOML text; ``agent``/``sandbox`` are extra lines for those tables."""
    text = f'[agent]\nname = "{name}"\nmodule = "{module}"\n{agent}\n'
    if model:
        text += '[agent.model]\nprovider = "scripted"\n'
    return text + sandbox


class Gate:
    """A blocking provider rule: waits until released (proves an LLM call parks only its agent)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.entered = threading.Event()

    def rule(self, req: t.ChatRequest) -> t.ChatResponse:
        self.entered.set()
        self.event.wait(30)
        return response("released")


# An LLM agent (scripted) that keeps a word in its kv namespace and reads it back: kv that must survive
# hibernation, parking and moves.
KV_AGENT = """
[agent]
name = "keeper"
tools = ["kv_set", "kv_get"]
[agent.model]
provider = "scripted"
default = "no rule"
script = [
  {match = "remember (?P<v>\\\\w+)", tool = "kv_set", args = {key = "k", value = "{v}"}, then = "stored"},
  {match = "recall", tool = "kv_get", args = {key = "k"}, then = "got {result}"},
]
"""

# The Rust counter example: counts its messages in linear memory, so a snapshot, a wake or a move that
# loses its state shows in the next reply ("message N ...").
COUNTER = EXAMPLES / "rust" / "counter.wasm"


def spawn_counter(d: Driver, extra: str = "") -> str:
    """Spawn the counter example (``extra``: more [agent] lines); its id."""
    text = manifest("counter", module=str(COUNTER), model=False, agent=extra)
    return str(d.ok("agent.spawn", manifest=text)["agent_id"])


def say(d: Driver, aid: str, text: str = "hi") -> str:
    """Send ``text`` to ``aid``; the reply."""
    return str(d.ok("agent.send", agent_id=aid, text=text)["reply"])


# The host functions a Runtime binds, as the worker binds them.
SANDBOX_SPECS = tuple(HostFunctionSpec(name=n, nparams=p, is_async=a) for n, p, a in abi.HOST_FUNCTIONS)


class SeenServices:
    """Sandbox host services for the built-in LLM agent: the model's answer lists every user message it was
    sent (so a reply shows the whole conversation); a job set in ``pending`` is answered instead, later."""

    def __init__(self) -> None:
        self.pending: Job | None = None

    def start_llm(self, sandbox: Sandbox, messages: list[dict[str, Any]]) -> Job:
        users = [m["content"] for m in messages if m["role"] == "user"]
        reply = "seen: " + " | ".join(users)
        value = abi.encode_llm_result({"role": "assistant", "content": reply}, reply)
        if self.pending is not None:
            job, self.pending = self.pending, None
            job.code, job.value = len(value), value
            return job
        return DoneJob(len(value), value)

    def start_tools(self, sandbox: Sandbox, request: dict[str, Any]) -> Job:
        return DoneJob(abi.E_UNAVAILABLE)

    def start_capability(self, sandbox: Sandbox, name: str, payload: bytes) -> Job:
        return DoneJob(abi.E_UNAVAILABLE)

    def audit(self, record: dict[str, Any]) -> None:
        pass


def finish(sandbox: Sandbox) -> Outcome:
    """Run ``sandbox``'s call in progress (refreshing its clock each turn) until it ends; its outcome."""
    while True:
        sandbox.refresh(time.monotonic())
        if sandbox.runnable():
            outcome = sandbox.run_slice()
            if outcome is not None:
                return outcome


def initialized(sandbox: Sandbox) -> Sandbox:
    """``sandbox`` loaded and its ``agent_init`` run to completion (asserted ok), as a spawn leaves it."""
    sandbox.load()
    if sandbox.begin_init():
        outcome = finish(sandbox)
        assert outcome.ok, outcome.error
    return sandbox


def send_text(sandbox: Sandbox, text: str) -> Outcome:
    """One user message through ``sandbox``, run to its outcome."""
    sandbox.begin_message(abi.user_message(text))
    return finish(sandbox)


def in_child(work: Callable[[], Any], timeout: float = 60) -> Any:
    """Run ``work`` in a forked child (process-wide settings stay there) and return its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child did not finish within {timeout} s")
        time.sleep(0.01)
    status = done[1]
    with os.fdopen(read_end, "rb") as pipe:  # a few hundred bytes: they fit in the pipe meanwhile
        raw = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0 and raw, "the child failed (its traceback is above)"
    return json.loads(raw)


# A guest with one host import it never calls and a loop export: ``spin(n)`` counts to n (the module cache and
# code-pages tests compile, load and run it).
SPIN_WAT = """(module
  (import "env" "ask" (func $ask (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "spin") (param $n i32) (result i32) (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $i))
)"""
SPIN_DIGEST = hashlib.sha256(SPIN_WAT.encode()).hexdigest()
SPIN_SPECS = (HostFunctionSpec(name="ask", nparams=1),)


class SpinHost:
    """The host side of SPIN_WAT (``ask`` is never called by ``spin``)."""

    def host_sync(self, name: str, mem: Any, args: tuple[int, ...]) -> int:
        return 0

    def host_async(self, name: str, mem: Any, args: tuple[int, ...]) -> Any:
        raise AssertionError("no async host function here")


def run_spin(rt: Runtime, module: wasmtime.Module, n: int = 1000) -> int:
    """Instantiate ``module`` (SPIN_WAT) and run ``spin(n)`` to its end: the loaded code really runs."""
    inst = Instance(rt, rt.instance_pre(module, digest=SPIN_DIGEST, what="t"), max_memory_bytes=1 << 20)
    try:
        call = inst.instantiate_call()
        while not call.poll(SpinHost()):
            pass
        call.result()
        call = inst.call("spin", (n,), 1)
        while not call.poll(SpinHost()):
            pass
        return int(call.result())
    finally:
        inst.close()
