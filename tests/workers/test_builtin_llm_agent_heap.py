"""The built-in LLM agent reclaims its heap: when memory cannot grow (max_heap_mb) it keeps the newest
entries of its conversation, moves them down and goes on, so a long-lived agent never fails a message for
having been busy; the model's view, a failed message's rollback, hibernation and older snapshots stay right.

Real wasmtime instances throughout; a recording model service checks what the model is sent on every call
against a Python model of the conversation (the newest ``history_messages`` entries)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import SANDBOX_SPECS, RuleProvider, finish, initialized, make_host, manifest, response

from openfang.workers.llm import types as t
from openfang.workers.manifest import AgentManifest, load_manifest
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasmtime import Runtime, exported_i32
from openfang.workers.sandbox.builtin_guests import builtin_digest, snapshot_fits
from openfang.workers.sandbox.instance import DoneJob, Job, Outcome, Sandbox
from openfang.workers.sandbox.snapshot import hibernate, wake

GUESTS = Path(__file__).resolve().parent / "guests"
HISTORY = 16
HEAP = (1 << 20) - 65536  # max_heap_mb = 1, less page 0 (the inbox and the conversation table)
Entry = tuple[str, str]  # (role, content) as the model sees an entry


class Recorder:
    """Model and tool services: the reply names the user's message; "tool" in a message makes the model call
    the tool ``blob`` (``tool_bytes`` of result) first; "fail" makes the model fail after the tool result.
    Every model call's view is checked against ``conversation`` (the successful turns) plus this turn's."""

    def __init__(self, *, reply_pad: int = 0, tool_bytes: int = 0, check: bool = True) -> None:
        self.reply_pad, self.tool_bytes, self.check = reply_pad, tool_bytes, check
        self.views: list[list[Entry]] = []
        self.conversation: list[Entry] = []
        self.turn: list[Entry] = []
        self.calls = 0
        self.allocated = 0  # the heap bytes a bump allocator that never frees would have used by now
        self.problems: list[str] = []

    def _check(self, messages: list[dict[str, Any]]) -> None:
        view = [(m["role"], m.get("content") or "") for m in messages]
        self.views.append(view)
        expected = (self.conversation + self.turn)[-HISTORY:]
        if self.check and view != expected:  # raising here would only fail the host call (E_INVALID)
            self.problems.append(f"model call {self.calls}: {len(view)} entries, not the newest {HISTORY}")
        self.calls += 1

    def start_llm(self, sandbox: Sandbox, messages: list[dict[str, Any]]) -> Job:
        if messages[-1]["role"] == "user":
            self.turn = [("user", messages[-1]["content"])]
        self._check(messages)
        last, text = messages[-1], self.turn[0][1]
        if last["role"] == "user" and "tool" in text:
            call = {"id": "c1", "name": "blob", "arguments": {}}
            value = abi.encode_llm_result({"role": "assistant", "content": None, "tool_calls": [call]}, None)
            self.turn.append(("assistant", ""))
            return self._result(value)
        if "fail" in text:
            return DoneJob(abi.E_FAILED)
        answer = "re " + text.split(" ", 1)[0] + " " + "r" * self.reply_pad
        value = abi.encode_llm_result({"role": "assistant", "content": answer}, answer)
        self.turn.append(("assistant", answer))
        return self._result(value)

    def _result(self, value: bytes) -> Job:
        self.allocated += -(-len(value) // 8) * 8
        return DoneJob(len(value), value)

    def start_tools(self, sandbox: Sandbox, request: dict[str, Any]) -> Job:
        content = "t" * self.tool_bytes
        value = json.dumps({"role": "tool", "tool_call_id": "c1", "content": content}).encode()
        self.turn.append(("tool", content))
        return self._result(value)

    def start_capability(self, sandbox: Sandbox, name: str, payload: bytes) -> Job:
        return DoneJob(abi.E_UNAVAILABLE)

    def audit(self, record: dict[str, Any]) -> None:
        pass

    def send(self, sandbox: Sandbox, text: str) -> Outcome:
        """One user message, run to its outcome; a successful turn joins the conversation."""
        self.turn = []
        message = abi.user_message(text)
        self.allocated += -(-len(message) // 8) * 8
        sandbox.begin_message(message)
        outcome = finish(sandbox)
        assert not self.problems, self.problems
        if outcome.ok:
            assert outcome.reply == self.turn[-1][1].encode()
            self.conversation += self.turn
        return outcome


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(SANDBOX_SPECS)
    rt.start_ticker()
    yield rt
    rt.close()


def _manifest(module: str = "builtin:llm-agent") -> AgentManifest:
    return load_manifest(
        f'[agent]\nname = "bot"\nmodule = "{module}"\nhistory_messages = {HISTORY}\n'
        '[agent.model]\nprovider = "scripted"\n[sandbox.memory]\nmax_heap_mb = 1\n'
    )


def _global(sandbox: Sandbox, name: str) -> int:
    value = exported_i32(sandbox.native_instance(), name)
    assert value is not None, f"the module exports no i32 global {name!r}"
    return value


def _message(i: int, pad: int) -> str:
    return f"m{i} " + "u" * pad


def _run(recorder: Recorder, sandbox: Sandbox, texts: Callable[[int], str], first: int, n: int) -> None:
    for i in range(first, first + n):
        outcome = recorder.send(sandbox, texts(i))
        assert outcome.ok, f"message {i}: {outcome.error}"


@pytest.mark.parametrize(
    ("user_pad", "reply_pad", "messages"),
    [(600, 300, 4000), (0, 0, 36_000)],  # ~1.3 KB a message: 5 heaps' worth; ~100 B (a router): 3.5 heaps
)
def test_llm_agent_heap_long_conversation_outlives_the_heap_cap(
    runtime: Runtime, user_pad: int, reply_pad: int, messages: int
) -> None:
    """An agent with max_heap_mb = 1 answers several heaps' worth of messages with no failure, and every
    model call is sent the newest history_messages entries exactly as if nothing had been reclaimed."""
    recorder = Recorder(reply_pad=reply_pad)
    sandbox = initialized(Sandbox(_manifest(), runtime, agent_id="a-1", services=recorder))
    try:
        _run(recorder, sandbox, lambda i: _message(i, user_pad), 0, messages)
        assert recorder.calls == messages
        assert recorder.allocated > 3 * HEAP  # several times what the heap holds without reclaiming
        assert _global(sandbox, "conversation_forgotten") > 0
        assert _global(sandbox, "heap_top") <= 1 << 20
        assert sandbox.counters["messages"] == messages
    finally:
        sandbox.close()


def test_llm_agent_heap_failed_message_during_compaction_leaves_no_half_turn(runtime: Runtime) -> None:
    """Messages whose 60 KB tool result makes the agent compact its heap mid-message, every other one then
    failing at the model: each failure is taken back out (the next call's view has no trace of it), and
    the agent is never restarted."""
    recorder = Recorder(tool_bytes=60_000)
    sandbox = initialized(Sandbox(_manifest(), runtime, agent_id="a-1", services=recorder))
    compacted_in_failure = 0
    try:
        for i in range(60):
            forgotten = exported_i32(sandbox.native_instance(), "conversation_forgotten")
            text = f"m{i} tool" + (" fail" if i % 2 else "")
            outcome = recorder.send(sandbox, text)
            if i % 2:
                assert not outcome.ok and not outcome.crashed and "error -3" in str(outcome.error)
                after = exported_i32(sandbox.native_instance(), "conversation_forgotten")
                compacted_in_failure += after is not None and after != forgotten
            else:
                assert outcome.ok, f"message {i}: {outcome.error}"
        _run(recorder, sandbox, lambda i: _message(i, 0), 60, 3)  # the views are checked in each call
        assert compacted_in_failure >= 3
        assert not any("fail" in c for _, c in recorder.conversation)
    finally:
        sandbox.close()


def test_llm_agent_heap_compaction_that_drops_the_message_itself_then_fails_leaves_nothing(
    runtime: Runtime,
) -> None:
    """A tool result nearly as large as the heap: the compaction keeps nothing, not even this message's own
    entries, then the model fails; the rollback empties the table (no dangling tool result), and the next
    message's model call is sent that message alone."""
    recorder = Recorder(tool_bytes=700_000, check=False)
    sandbox = initialized(Sandbox(_manifest(), runtime, agent_id="a-1", services=recorder))
    try:
        assert recorder.send(sandbox, "m0 hello").ok
        assert recorder.send(sandbox, "m1 tool").ok  # the heap is mostly this tool result now
        failed = recorder.send(sandbox, "m2 tool fail")
        assert not failed.ok and not failed.crashed and "error -3" in str(failed.error)
        assert recorder.views[-1] == [("tool", "t" * 700_000)]  # what the compaction left of m2: its result
        assert _global(sandbox, "conversation_entries") == 0
        assert recorder.send(sandbox, "m3 hello").ok
        assert recorder.views[-1] == [("user", "m3 hello")]
    finally:
        sandbox.close()


def test_llm_agent_heap_hibernate_after_compaction_keeps_the_conversation(
    runtime: Runtime, tmp_path: Path
) -> None:
    """An agent hibernated after it compacted its heap wakes with the same conversation (and its forgotten
    bytes are zeros, not in the file), and goes on reclaiming."""
    recorder = Recorder(reply_pad=300)
    sandbox = initialized(Sandbox(_manifest(), runtime, agent_id="a-1", services=recorder))
    _run(recorder, sandbox, lambda i: _message(i, 600), 0, 1200)
    assert _global(sandbox, "conversation_forgotten") > 0
    entries, top = _global(sandbox, "conversation_entries"), _global(sandbox, "heap_top")
    info = hibernate(sandbox, tmp_path / "a-1.snap")
    assert info.stored_bytes < top + 4096  # nothing above the heap top is stored
    woken = wake(tmp_path / "a-1.snap", _manifest(), runtime, agent_id="a-1", services=recorder)
    try:
        assert _global(woken, "conversation_entries") == entries and _global(woken, "heap_top") == top
        _run(recorder, woken, lambda i: _message(i, 600), 1200, 1500)
    finally:
        woken.close()


def test_llm_agent_heap_snapshot_of_the_version_before_compaction_wakes_and_reclaims(
    runtime: Runtime, tmp_path: Path
) -> None:
    """An agent hibernated by a worker whose built-in LLM agent never reclaimed its heap wakes in today's
    (the running module is the new text), keeps its conversation, and outlives the heap cap."""
    old = GUESTS / "llm_agent_before_compaction.wat"
    old_digest = hashlib.sha256(old.read_bytes()).hexdigest()
    assert old_digest != builtin_digest("llm-agent")
    assert snapshot_fits(old_digest, builtin_digest("llm-agent"))
    recorder = Recorder(reply_pad=300)
    agent = initialized(Sandbox(_manifest(str(old)), runtime, agent_id="a-1", services=recorder))
    assert exported_i32(agent.native_instance(), "conversation_forgotten") is None
    _run(recorder, agent, lambda i: _message(i, 600), 0, 600)  # most of its heap: it never frees
    hibernate(agent, tmp_path / "a-1.snap")
    woken = wake(tmp_path / "a-1.snap", _manifest(), runtime, agent_id="a-1", services=recorder)
    try:
        assert woken.module_digest == builtin_digest("llm-agent")
        assert _global(woken, "conversation_forgotten") == 0
        _run(recorder, woken, lambda i: _message(i, 600), 600, 2000)
        assert _global(woken, "conversation_forgotten") > 0
    finally:
        woken.close()


def test_llm_agent_heap_message_larger_than_the_heap_fails_alone(tmp_path: Path) -> None:
    """In the real host: an agent with max_heap_mb = 1 answers past its heap cap without a restart; a model
    answer larger than its whole heap fails that message with E_NOMEM (the agent restarts per its policy),
    and another agent's conversation is untouched."""

    def rule(req: t.ChatRequest) -> t.ChatResponse:
        text = req.messages[-1].content or ""
        if text == "huge":
            return response("h" * 600_000)  # its JSON and its text: 1.2 MB, more than the heap
        users = len([m for m in req.messages if m.role == "user"])
        return response(f"{text.split()[0]} {users} " + "r" * 400)

    d = make_host(RuleProvider(rule))
    try:
        small = manifest(
            "small",
            agent=f'restart = "transient"\nhistory_messages = {HISTORY}',
            sandbox="[sandbox.memory]\nmax_heap_mb = 1\n",
        )
        aid = d.ok("agent.spawn", manifest=small)["agent_id"]
        other = d.ok("agent.spawn", manifest=manifest("other"))["agent_id"]
        assert d.ok("agent.send", agent_id=other, text="first")["reply"].startswith("first 1 ")
        for i in range(1000):  # ~1.8 KB a message: about twice the heap
            reply = d.ok("agent.send", agent_id=aid, text=f"m{i:04} " + "u" * 400)["reply"]
            assert reply.startswith(f"m{i:04} {min(i + 1, HISTORY // 2)} ")
        assert d.ok("agent.info", agent_id=aid)["restarts"] == 0
        failed = d.call("agent.send", agent_id=aid, text="huge")
        assert failed.type == "error" and "ran out of memory (max_heap_mb=1)" in failed.body["message"]
        assert d.ok("agent.send", agent_id=aid, text="after")["reply"].startswith("after ")
        assert d.ok("agent.info", agent_id=aid)["restarts"] == 1
        assert d.ok("agent.send", agent_id=other, text="second")["reply"].startswith("second 2 ")
        assert d.ok("agent.info", agent_id=other)["restarts"] == 0
    finally:
        d.host.close()


def test_llm_agent_heap_running_module_is_this_text_with_or_without_compiled_guests(tmp_path: Path) -> None:
    """The llm-agent a host spawns is compiled from today's text: mapped from an install's compiled guests
    when they are of this text, compiled afresh when the folder holds only the version before compaction
    (its digest names another file); either way it exports conversation_forgotten."""
    from openfang.workers.sandbox import shipped
    from openfang.workers.sandbox._module_cache import write_artifact
    from openfang.workers.sandbox.builtin_guests import LLM_AGENT_WAT

    current, stale = tmp_path / "current", tmp_path / "stale"
    shipped.ship(current)
    stale.mkdir(mode=0o755)
    old = (GUESTS / "llm_agent_before_compaction.wat").read_bytes()
    old_digest = hashlib.sha256(old).hexdigest()
    rt = Runtime(())  # as shipped.ship compiles
    try:
        module, _ = rt.compile(old, digest=old_digest, what="old")
        path = stale / f"{old_digest}-{rt.fingerprint()}.cwasm"
        assert write_artifact(path, bytes(module.serialize()), mode=0o644)
        path.chmod(0o644)
        module.close()
    finally:
        rt.close()
    for folder, kind in ((current, "warm"), (stale, "cold")):
        d = make_host(module_cache_dir=tmp_path / f"cache-{folder.name}", shipped_module_dir=folder)
        try:
            aid = d.ok("agent.spawn", manifest=manifest("bot"))["agent_id"]
            sandbox = d.host._agents[aid].sandbox
            assert sandbox.spawn_kind == kind
            assert sandbox.module_digest == hashlib.sha256(LLM_AGENT_WAT.encode()).hexdigest()
            assert _global(sandbox, "conversation_forgotten") == 0
            assert d.ok("agent.send", agent_id=aid, text="hello")["reply"].startswith("echo: hello")
        finally:
            d.host.close()
