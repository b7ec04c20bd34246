"""The optional message inbox (``agent_inbox`` / ``agent_inbox_size``): one guest call per message instead of
two, the same replies and conversation as through ``alloc``, and clear refusals of a malformed inbox."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_helpers import SANDBOX_SPECS, SeenServices, initialized, send_text

from openfang.protocol.errors import SandboxError, SecurityError
from openfang.workers.manifest import AgentManifest, load_manifest
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox import instance as instance_mod
from openfang.workers.sandbox._wasmtime import Runtime, exported_i32
from openfang.workers.sandbox.builtin_guests import builtin_digest, snapshot_fits
from openfang.workers.sandbox.instance import Sandbox
from openfang.workers.sandbox.snapshot import SnapshotError, hibernate, wake

SPECS = SANDBOX_SPECS
GUESTS = Path(__file__).resolve().parent / "guests"

# Echoes the message and counts its alloc calls in an exported global; {inbox}: the inbox exports, if any.
COUNTING_WAT = """(module
  (memory (export "memory") 1)
  (global $heap (export "heap_top") (mut i32) (i32.const 8192))
  (global $allocs (export "alloc_calls") (mut i32) (i32.const 0))
  {inbox}
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (global.set $allocs (i32.add (global.get $allocs) (i32.const 1)))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "agent_handle") (param $p i32) (param $n i32) (result i64)
    (global.set $heap (i32.const 8192))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
)"""
INBOX = (
    '(global (export "agent_inbox") i32 (i32.const 1024))'
    + ' (global (export "agent_inbox_size") i32 (i32.const 64))'
)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(SPECS)
    rt.start_ticker()
    yield rt
    rt.close()


def _manifest(tmp_path: Path, wat: str | None, *, name: str = "guest", model: bool = False) -> AgentManifest:
    model_table = '[agent.model]\nprovider = "scripted"\n' if model or wat is None else ""
    if wat is None:
        return load_manifest(f'[agent]\nname = "bot"\n{model_table}')
    module = tmp_path / f"{name}.wat"
    module.write_text(wat)
    return load_manifest(f'[agent]\nname = "{name}"\nmodule = "{module}"\n{model_table}')


def _load(manifest: AgentManifest, runtime: Runtime, agent_id: str = "a-1") -> Sandbox:
    return initialized(Sandbox(manifest, runtime, agent_id=agent_id, services=SeenServices()))


def _allocs(sandbox: Sandbox) -> int:
    value = exported_i32(sandbox.native_instance(), "alloc_calls")
    assert value is not None
    return value


def test_inbox_message_that_fits_skips_alloc(runtime: Runtime, tmp_path: Path) -> None:
    """A message that fits the inbox is written there and handled by agent_handle alone; a longer one (and
    every message of a guest without an inbox) goes through alloc, with the same reply."""
    with_inbox = _load(_manifest(tmp_path, COUNTING_WAT.format(inbox=INBOX), name="in"), runtime)
    without = _load(_manifest(tmp_path, COUNTING_WAT.format(inbox=""), name="out"), runtime, "a-2")
    try:
        assert len(abi.user_message("y" * 36)) == 64
        for text, allocs in (("x" * 10, 0), ("y" * 36, 0), ("z" * 37, 1), ("w" * 500, 2), ("v", 2)):
            for sandbox in (with_inbox, without):
                outcome = send_text(sandbox, text)
                assert outcome.ok and outcome.reply == abi.user_message(text), outcome
            assert _allocs(with_inbox) == allocs
        assert _allocs(without) == 5
        assert with_inbox.counters["messages"] == without.counters["messages"] == 5
    finally:
        with_inbox.close()
        without.close()


def test_inbox_boundary_sizes_use_the_inbox_exactly_up_to_its_size(runtime: Runtime, tmp_path: Path) -> None:
    """Payloads of inbox size - 1, inbox size and inbox size + 1: only the last one calls alloc."""
    sandbox = _load(_manifest(tmp_path, COUNTING_WAT.format(inbox=INBOX)), runtime)
    try:
        base = len(abi.user_message(""))
        for extra, allocs in ((-1, 0), (0, 0), (1, 1)):
            text = "q" * (64 - base + extra)
            assert len(abi.user_message(text)) == 64 + extra
            outcome = send_text(sandbox, text)
            assert outcome.ok and outcome.reply == abi.user_message(text)
            assert _allocs(sandbox) == allocs
    finally:
        sandbox.close()


def test_inbox_outside_memory_falls_back_to_alloc(runtime: Runtime, tmp_path: Path) -> None:
    """An inbox that lies beyond the guest's memory is not written: the message goes through alloc."""
    far = INBOX.replace("1024", "65530")
    sandbox = _load(_manifest(tmp_path, COUNTING_WAT.format(inbox=far)), runtime)
    try:
        outcome = send_text(sandbox, "hello")
        assert outcome.ok and outcome.reply == abi.user_message("hello")
        assert _allocs(sandbox) == 1
    finally:
        sandbox.close()


@pytest.mark.parametrize(
    ("inbox", "message"),
    [
        (
            '(global (export "agent_inbox") i32 (i32.const 1024))',
            r"exports \['agent_inbox'\] without \['agent_inbox_size'\]: the guest ABI needs both or neither",
        ),
        (
            '(global (export "agent_inbox_size") i32 (i32.const 64))',
            r"exports \['agent_inbox_size'\] without \['agent_inbox'\]",
        ),
        (
            '(global (export "agent_inbox") (mut i32) (i32.const 1024)) '
            '(global (export "agent_inbox_size") i32 (i32.const 64))',
            "export 'agent_inbox' has type mutable i32 global, the guest ABI expects immutable i32 global",
        ),
        (
            '(global (export "agent_inbox") i32 (i32.const 1024)) '
            '(global (export "agent_inbox_size") i64 (i64.const 64))',
            "export 'agent_inbox_size' has type immutable i64 global, the guest ABI expects immutable i32 "
            "global",
        ),
        (
            '(global (export "agent_inbox") i32 (i32.const 1024)) '
            '(func (export "agent_inbox_size") (result i32) (i32.const 64))',
            r"export 'agent_inbox_size' has type \(\) -> i32, the guest ABI expects immutable i32 global",
        ),
    ],
)
def test_inbox_malformed_exports_are_refused_at_spawn(
    runtime: Runtime, tmp_path: Path, inbox: str, message: str
) -> None:
    """Half an inbox, a mutable inbox or a wrong type refuses the module, naming the export and the ABI."""
    sandbox = Sandbox(
        _manifest(tmp_path, COUNTING_WAT.format(inbox=inbox)),
        runtime,
        agent_id="a-1",
        services=SeenServices(),
    )
    with pytest.raises(SandboxError, match=message):
        sandbox.load()
    assert runtime.live_stores == 0


def test_inbox_llm_agent_conversation_equals_the_alloc_path(runtime: Runtime, tmp_path: Path) -> None:
    """The built-in agent answers the same conversation, message for message, through its inbox and through
    alloc (the inbox turned off for one of two agents), across the inbox size and past a table halving."""
    manifest = _manifest(tmp_path, None)
    digest = builtin_digest("llm-agent")
    fast = _load(manifest, runtime, "fast")
    slow = _load(manifest, runtime, "slow")
    assert instance_mod._INBOXES.get(digest) is None or instance_mod._INBOXES[digest] == (16, 1008)
    texts = [f"m{i} " + "é" * (i * 37 % 1100) for i in range(60)]
    try:
        for text in texts:
            outcome = send_text(fast, text)
            assert instance_mod._INBOXES[digest] == (16, 1008)
            instance_mod._INBOXES[digest] = None  # the slow agent goes through alloc + agent_handle
            try:
                reference = send_text(slow, text)
            finally:
                instance_mod._INBOXES[digest] = (16, 1008)
            assert outcome.ok and reference.ok
            assert outcome.reply == reference.reply
            assert outcome.reply.decode().endswith(text)
        assert any(len(abi.user_message(t)) > 1008 for t in texts)
        assert any(len(abi.user_message(t)) <= 1008 for t in texts)
        # The conversation tables are the same entries (the inbox copy lands at the same heap offsets).
        fast_mem = fast.native_instance().memory()
        slow_mem = slow.native_instance().memory()
        assert fast_mem is not None and slow_mem is not None
        assert fast_mem.read(1024, 64512) == slow_mem.read(1024, 64512)
        top = exported_i32(fast.native_instance(), "heap_top")
        assert top == exported_i32(slow.native_instance(), "heap_top")
        assert top is not None and fast_mem.read(65536, top - 65536) == slow_mem.read(65536, top - 65536)
    finally:
        fast.close()
        slow.close()


def test_inbox_echo_replies_through_its_inbox_up_to_64_kib(runtime: Runtime, tmp_path: Path) -> None:
    """builtin:echo takes messages up to 64 KiB through its inbox, longer ones through alloc: same replies."""
    sandbox = _load(load_manifest('[agent]\nname = "e"\nmodule = "builtin:echo"\n'), runtime)
    try:
        for size in (1, 1000, 65536 - 40, 70_000, 3):
            text = "e" * size
            outcome = send_text(sandbox, text)
            assert outcome.ok and outcome.reply == abi.user_message(text)
        assert instance_mod._INBOXES[builtin_digest("echo")] == (65536, 65536)
    finally:
        sandbox.close()


def test_inbox_snapshot_of_the_llm_agent_before_the_inbox_wakes_in_the_new_one(
    runtime: Runtime, tmp_path: Path
) -> None:
    """An agent hibernated by a worker whose built-in LLM agent had no inbox wakes in today's built-in with
    its conversation; a snapshot of any other module is still refused."""
    old = (GUESTS / "llm_agent_before_inbox.wat").read_text()
    old_digest = hashlib.sha256(old.encode()).hexdigest()
    assert old_digest != builtin_digest("llm-agent")
    assert snapshot_fits(old_digest, builtin_digest("llm-agent"))
    assert not snapshot_fits(old_digest, builtin_digest("echo"))
    assert not snapshot_fits(builtin_digest("llm-agent"), old_digest)  # never backwards
    agent = _load(_manifest(tmp_path, old, name="old", model=True), runtime)
    assert send_text(agent, "my name is Ada").reply == b"seen: my name is Ada"
    hibernate(agent, tmp_path / "a-1.snap")
    woken = wake(
        tmp_path / "a-1.snap", _manifest(tmp_path, None), runtime, agent_id="a-1", services=SeenServices()
    )
    try:
        assert woken.module_digest == builtin_digest("llm-agent")
        assert send_text(woken, "who am I?").reply == b"seen: my name is Ada | who am I?"
    finally:
        woken.close()
    other = _manifest(tmp_path, COUNTING_WAT.format(inbox=INBOX), name="other")
    agent = _load(other, runtime)
    send_text(agent, "x")
    hibernate(agent, tmp_path / "a-1.snap")
    with pytest.raises(SnapshotError, match="only fits the module it was taken from"):
        wake(
            tmp_path / "a-1.snap", _manifest(tmp_path, None), runtime, agent_id="a-1", services=SeenServices()
        )


def test_inbox_warm_spawn_checks_imports_from_the_per_module_cache(runtime: Runtime, tmp_path: Path) -> None:
    """A warm spawn checks the module's cached imports against its own manifest: the same module is
    refused when a later manifest denies one of its imports, and the cache equals a fresh reading."""
    first = _load(_manifest(tmp_path, None), runtime)
    first.close()
    digest = builtin_digest("llm-agent")
    pre = runtime.cached_pre(digest)
    assert pre is not None
    module = pre.module
    try:
        assert runtime.cached_imports(digest) == runtime.module_imports(module)
    finally:
        module.close()
    assert ("env", "host_result", "func") in (runtime.cached_imports(digest) or [])
    assert runtime.cached_imports("0" * 64) is None
    denied = load_manifest(
        '[agent]\nname = "bot"\n[agent.model]\nprovider = "scripted"\n'
        '[sandbox.permissions]\ndenied_host_functions = ["host_result"]\n'
    )
    sandbox = Sandbox(denied, runtime, agent_id="a-2", services=SeenServices())
    with pytest.raises(
        SecurityError, match=r"imports env.host_result \(func\): denied by \[sandbox.permissions\]"
    ):
        sandbox.load()
    assert sandbox.spawn_kind == "cold"  # refused before it counted as a warm spawn
