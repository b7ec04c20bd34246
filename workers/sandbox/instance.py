"""One agent instance in a wasmtime sandbox: load, resumable calls in fuel slices, suspend/resume, reclaim.

A :class:`Sandbox` is driven by its host (one thread, many sandboxes): the host starts a message with
:meth:`Sandbox.begin_message` and calls :meth:`Sandbox.run_slice` while :meth:`Sandbox.runnable` is true.
Each slice polls the guest's async call once: the guest runs until it finishes, spends one fuel slice (it
yields and is *resumed* by the next poll, not killed), or parks on a host call (LLM, tool) whose job runs
elsewhere. An agent that spent ``max_fuel`` in the current refuel interval is throttled until the next one.

Limits: memory and tables via store limits (``memory.grow`` and ``table.grow`` return -1 past the cap, the
guest's alloc fails: no crash; a module whose initial memory, tables or counts exceed them is refused); one
instance and one linear memory per store; stack via the engine's max_wasm_stack (overflow traps this agent
only); wall clock per call checked between slices, which end at the next epoch tick even when the guest burns
time without fuel.
Instantiation is a call like any other: a module's ``start`` function runs in fuel slices between the other
agents' slices (phase ``start``). It must finish within one refuel interval's fuel (``max_fuel``) and
``call_timeout_ms``, else the spawn is refused (and audited): it is never throttled or restarted.
Permissions: imports are checked against the manifest before instantiation (the error names the import),
exports against the guest ABI's types; every host call is checked again at call time (a denial is an error
code to the guest plus an audit record).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any, Protocol

import structlog

from openfang.protocol.errors import SandboxError, SecurityError, Timeout
from openfang.protocol.twin import construction_twin
from openfang.security._hashing import sha256
from openfang.workers.manifest import AgentManifest
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasm_layout import WasmFormatError, cached_layout, layout_of
from openfang.workers.sandbox._wasmtime import (
    AsyncCall,
    AsyncPoller,
    GuestMemory,
    GuestTrap,
    Instance,
    Runtime,
    StoreLimits,
    call_in_flight,
    exported_i32,
    start_section,
    wasm_binary,
)
from openfang.workers.sandbox.builtin_guests import BUILTINS, builtin_digest, builtin_source

log = structlog.get_logger("openfang.workers.sandbox.instance")


class State(Enum):
    IDLE = "idle"  # no call in progress
    RUNNING = "running"  # a call is in progress and may be polled
    WAITING = "waiting"  # parked on a host call (LLM/tool job) until the job completes
    THROTTLED = "throttled"  # fuel budget of this refuel interval spent; resumes at the next interval
    CLOSED = "closed"


# The states as plain module names for the per-message paths: ``State.RUNNING`` is a lookup through the enum
# class (~90 ns measured here, ~10 for a global), several times per message.
_IDLE, _RUNNING = State.IDLE, State.RUNNING


class Job(Protocol):
    """A host-side operation started by a parking host call; ``done`` flips once (from any thread)."""

    done: bool
    code: int  # >= 0: result length (``value`` holds the bytes); < 0: an abi error code
    value: bytes


@dataclass(slots=True)
class DoneJob:
    """A job that completed synchronously (cheap host work, errors)."""

    code: int
    value: bytes = b""
    done: bool = True


class HostServices(Protocol):
    """What the host gives its sandboxes: jobs for parking host calls, audit, logging."""

    def start_llm(self, sandbox: Sandbox, messages: list[dict[str, Any]]) -> Job: ...

    def start_tools(self, sandbox: Sandbox, request: dict[str, Any]) -> Job: ...

    def start_capability(self, sandbox: Sandbox, name: str, payload: bytes) -> Job: ...

    def audit(self, record: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a call ended: ``ok`` with reply bytes, or ``error``; ``crashed`` means the instance is unusable."""

    phase: str
    ok: bool
    reply: bytes = b""
    error: Exception | None = None
    crashed: bool = False
    limit: str | None = None  # the sandbox limit that ended the call: "deadline" or "memory_cap"
    refused: bool = False  # the module itself is unfit (its start function failed): restarting cannot help


# A successful outcome is built on a construction twin (protocol/twin.py): ~0.2 us, against ~0.5 through
# the slot descriptors' ``__set__`` and ~1.3 through the frozen dataclass's __init__ (a setattr per field).
_OutcomeTwin = construction_twin(Outcome, ("phase", "ok", "reply", "error", "crashed", "limit", "refused"))


def _succeeded(phase: str, reply: bytes) -> Outcome:
    """``Outcome(phase=phase, ok=True, reply=reply)`` built without __init__ (on the twin): the same value,
    frozen like it. Once per call: a new one each time (a table of shared short replies paid a key tuple
    and a lookup for every reply and was cleared by the route agents' unique answers)."""
    out = _OutcomeTwin()
    out.phase = phase
    out.ok = True
    out.reply = reply
    out.error = out.limit = None
    out.crashed = out.refused = False
    out.__class__ = Outcome
    return out  # type: ignore[no-any-return]


def load_code(manifest: AgentManifest) -> tuple[bytes, str]:
    """(module bytes, sha256 hex) of the manifest's module; checks the digest pin (SecurityError if wrong)."""
    path = manifest.module_path()
    if path is None:
        name = manifest.module.removeprefix("builtin:")
        if name not in BUILTINS:
            raise SandboxError(f"{manifest.source}: unknown built-in module {manifest.module!r}")
        code, digest = builtin_source(name), builtin_digest(name)  # both made once per process
    else:
        try:
            code = path.read_bytes()
        except OSError as exc:
            raise SandboxError(f"{manifest.source}: cannot read module {path}: {exc.strerror}") from None
        digest = sha256(code).hexdigest()
    if manifest.module_sha256 is not None and manifest.module_sha256 != digest:
        raise SecurityError(
            f"{manifest.source}: module {manifest.module} has sha256 {digest}, "
            f"the manifest pins {manifest.module_sha256}"
        )
    return code, digest


@dataclass(slots=True, kw_only=True)
class _Starting:
    """A module being instantiated: when it started, and whether agent_init is to follow (begin_init)."""

    t0: float
    init_after: bool = False


_NOTHING_PARSED: Mapping[bytes, list[dict[str, Any]]] = MappingProxyType({})
# Per module digest: the guest's message inbox (address, size), or None when it has none. The globals are
# immutable and initialised by constant expressions (a guest imports no globals), so every instance of a
# module has the same inbox: read from the first instance, kept for all (bounded: cleared when full).
_INBOXES: dict[str, tuple[int, int] | None] = {}
_INBOXES_LIMIT = 1024
# The same for the guest's result area (agent_result_area), read with the inbox: its address, or None.
_RESULT_AREAS: dict[str, int | None] = {}
_GRANTS: dict[frozenset[str], frozenset[str]] = {}


def _shared_grants(grants: frozenset[str]) -> frozenset[str]:
    """One frozenset per distinct grant (a few dozen host functions make few distinct sets): agents of one
    manifest share theirs instead of holding ~0.5 KiB each."""
    return _GRANTS.setdefault(grants, grants)


@functools.lru_cache(maxsize=64)
def _store_limits(max_heap_mb: int, table_elements: int, tables: int) -> StoreLimits:
    """One shared (frozen) limits value per distinct manifest setting, not one per agent."""
    return StoreLimits(memory_bytes=max_heap_mb << 20, table_elements=table_elements, tables=tables)


def check_exports(runtime: Runtime, module: Any, where: str) -> None:
    """Refuse a compiled module whose exports the guest ABI cannot use (``where`` names it in the error).

    Checked once per module, before it is kept in its runtime (:meth:`Runtime.instance_pre`): a spawn that
    finds the module kept there checks only its imports (against its own manifest)."""
    types = runtime.module_export_types(module)
    missing = [e for e in abi.REQUIRED_EXPORTS if e not in types]
    if missing:
        raise SandboxError(f"{where} lacks exports {missing}")
    for pair in abi.PAIRED_EXPORTS:
        have = [e for e in pair if e in types]
        if have and len(have) != len(pair):
            lacking = [e for e in pair if e not in types]
            raise SandboxError(
                f"{where} exports {have} without {lacking}: the guest ABI needs both or neither "
                "(docs/guest-abi.md)"
            )
    for name, expected in abi.EXPORT_TYPES.items():
        found = types.get(name)
        if found is not None and found != expected:
            raise SandboxError(
                f"{where}: export {name!r} has type {abi.describe_type(found)}, the guest ABI expects "
                f"{abi.describe_type(expected)} (docs/guest-abi.md)"
            )


def prepare_module(runtime: Runtime, manifest: AgentManifest) -> bool:
    """Compile ``manifest``'s module into ``runtime`` and keep it there, checked, as the first spawn of it
    would (the disk cache, the export checks, :meth:`Runtime.instance_pre`), without an agent: a worker
    does this for the built-in guest while it waits for its first request. False when it was there already.

    Only what does not depend on an agent is done: each spawn still checks the module's imports against its
    own manifest and grant, and instantiates (or adopts a spare)."""
    code, digest = load_code(manifest)
    if runtime.cached_pre(digest) is not None:
        return False
    what = f"{manifest.source}: module {manifest.module}"
    module, _cached = runtime.compile(code, digest=digest, what=what)
    check_exports(runtime, module, what)
    runtime.instance_pre(module, digest=digest, what=what)
    return True


def store_limits(manifest: AgentManifest) -> StoreLimits:
    """The store limits an agent of ``manifest`` gets (one shared value per distinct setting)."""
    mem = manifest.sandbox.memory
    return _store_limits(mem.max_heap_mb, mem.max_table_elements, mem.max_tables)


# Hands Sandbox.load a prepared spare for (runtime, module digest, store limits), or None.
TakeSpare = Callable[[Runtime, str, StoreLimits], "Instance | None"]
_STARTS: dict[str, bool] = {}  # module digest -> whether the module has a start function (bounded)


class _NoHost:
    """The host-call target while a spare instantiates: no agent exists yet, so nothing is served (a module
    without a start function makes no host call while it instantiates; one with a start never gets here)."""

    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        return abi.E_UNAVAILABLE

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller | int:
        return abi.E_UNAVAILABLE


def prepare_spare(runtime: Runtime, manifest: AgentManifest, digest: str) -> Instance:
    """An instance of ``digest`` instantiated ahead for the next agent of ``manifest``: raises SandboxError
    when the module cannot have one.

    Only a module without a start function has a spare: its instantiation runs no guest code (the engine
    lays out its memory, tables and data), so the spare has never run guest code, and it consumed no fuel
    (checked). Nothing in the store is an agent's own: the store limits are the manifest's (the key a spare
    is taken by, with the runtime and the digest); the agent's id, grants, fuel budget, deadlines and host
    context live in the :class:`Sandbox`, set when it adopts the spare, and host calls reach the sandbox
    being polled (``Runtime.current``), never the store. The module must be compiled and checked already
    (an agent of it was loaded in this runtime).
    """
    pre = runtime.cached_pre(digest)
    if pre is None:
        raise SandboxError(f"module {digest[:12]} is not loaded in this runtime")
    has_start = _STARTS.get(digest)
    if has_start is None:
        code, found = load_code(manifest)
        if found != digest:
            raise SandboxError(f"{manifest.source}: module {manifest.module} changed since it was loaded")
        has_start = start_section(wasm_binary(code, what=f"{manifest.source}: module {manifest.module}"))
        if len(_STARTS) >= _INBOXES_LIMIT:
            _STARTS.clear()
        _STARTS[digest] = has_start
    if has_start:
        raise SandboxError(f"{manifest.source}: module {manifest.module} has a start function (guest code)")
    inst = Instance(runtime, pre, limits=store_limits(manifest))
    try:
        call = inst.instantiate_call()
        inst.set_deadline(manifest.call_timeout_ms / 1000)
        if not call.poll(_NO_HOST):
            raise SandboxError("the instantiation did not finish in one slice")
        call.result()
        inst.release_call()
        if inst.last_poll_fuel:
            raise SandboxError(f"the instantiation consumed {inst.last_poll_fuel} fuel")
    except BaseException:
        inst.close()
        raise
    return inst


_NO_HOST = _NoHost()


class Sandbox:
    """One agent: a store + instance, its current call, its fuel budget and its permissions."""

    def __init__(
        self,
        manifest: AgentManifest,
        runtime: Runtime,
        *,
        agent_id: str,
        services: HostServices,
        clock: Callable[[], float] = time.monotonic,
        import_check: Callable[[list[tuple[str, str, str]]], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self._import_check = import_check  # an extra policy (security.capabilities), after our own checks
        self.agent_id = agent_id
        self.runtime = runtime
        self.services = services
        self.clock = clock
        # Revocable at run time (revoke makes this sandbox its own set); until then, shared by every
        # sandbox with the same grants.
        self.granted: frozenset[str] = _shared_grants(manifest.granted_imports())
        self.state = State.IDLE
        self.user_suspended = False
        self.fuel_used = 0
        self.spawn_kind = "cold"
        self.spawn_seconds = 0.0
        self.calls_this_message = 0
        self.counters = {"llm_calls": 0, "tool_calls": 0, "denied": 0, "messages": 0, "yields": 0}
        self._inst: Instance | None = None
        self._call: AsyncCall | None = None
        self._phase = ""
        self._payload = b""
        self._pending_result: bytes | None = None
        self._parsed: Mapping[bytes, list[dict[str, Any]]] = _NOTHING_PARSED
        # Conversation entries of the message in progress that the host wrote itself, with the messages it
        # wrote them from (see seed); None between messages.
        self._seeds: dict[bytes, list[dict[str, Any]]] | None = None
        self._job: Job | None = None
        self._interval_end = 0.0
        self._budget = manifest.sandbox.fuel.max_fuel
        self._deadline = 0.0
        self._suspended_at = 0.0
        self.module_digest = ""  # sha256 of the loaded module's bytes (what a snapshot is bound to)
        # Set while the module instantiates (phase "start"); None once it is ready (or before load()).
        # Few attributes on purpose: past 30, instance dicts stop sharing keys (+1.5 KiB an agent).
        self._starting: _Starting | None = None
        self._table_cap_audited = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def load(self, spare: TakeSpare | None = None) -> None:
        """Check, compile (cold) or reuse (warm), and start instantiating the module. Raises on any refusal.

        The first slice of the instantiation runs here: a module without a long ``start`` function is ready
        when this returns (:meth:`begin_init` then runs ``agent_init``). Otherwise the sandbox stays in phase
        ``start`` and the host polls it like any running call, one slice per turn.

        ``spare`` may hand over an instance :func:`prepare_spare` instantiated ahead for this runtime, module
        digest and store limits (after every check here passed): the sandbox then starts from exactly the
        state a fresh instantiation leaves (see :func:`prepare_spare`), without instantiating.
        """
        t0 = time.perf_counter()
        m = self.manifest
        code, digest = load_code(m)
        what = f"{m.source}: module {m.module}"
        self.module_digest = sys.intern(digest)  # one string per module, whatever the agents
        pre = self.runtime.cached_pre(digest)
        if pre is None:
            module, cached = self.runtime.compile(code, digest=digest, what=what)
            self._check_module(module)
            pre = self.runtime.instance_pre(module, digest=digest, what=what)
            self.spawn_kind = "warm" if cached else "cold"
        else:
            imports = self.runtime.cached_imports(digest)
            assert imports is not None  # compiled here: cached_pre found it
            self._check_imports(imports)
            self.spawn_kind = "warm"
        self._import_check = None  # imports are checked once, here: an idle agent holds no checker
        self._check_restore_policy(code, digest, what)
        limits = store_limits(m)
        ready = spare(self.runtime, digest, limits) if spare is not None else None
        if ready is not None:
            self._adopt(ready, t0)
            return
        self._inst = Instance(self.runtime, pre, limits=limits)
        self._starting = _Starting(t0=t0)
        try:
            # Start functions may not park on host calls (those fail with E_UNAVAILABLE outside a message).
            self._phase = "start"
            self._call = self._inst.instantiate_call()
            self._deadline = self.clock() + m.call_timeout_ms / 1000
            self.state = State.RUNNING
            outcome = self.run_slice()
        except Exception:
            self.close()
            raise
        if outcome is not None and not outcome.ok:  # instantiation failed at once
            self.close()
            raise outcome.error or SandboxError(f"{what}: instantiation failed")
        self.spawn_seconds = time.perf_counter() - t0

    def _adopt(self, inst: Instance, t0: float) -> None:
        """Take a prepared, instantiated spare as this sandbox's instance: the state a first slice of a
        fresh instantiation that finished at once leaves (run_slice, _instantiated, _end_call)."""
        now = self.clock()
        fuel = self.manifest.sandbox.fuel
        self._inst = inst
        self._phase = "start"
        self._deadline = now + self.manifest.call_timeout_ms / 1000
        self._interval_end = now + fuel.refuel_interval_ms / 1000
        used = inst.last_poll_fuel  # what the instantiation's poll consumed (0: no guest code ran)
        self.fuel_used += used
        self._budget = fuel.max_fuel - used
        self.state = State.IDLE
        self.spawn_seconds = time.perf_counter() - t0

    def _check_module(self, module: Any) -> None:
        self._check_imports(self.runtime.module_imports(module))
        check_exports(self.runtime, module, f"{self.manifest.source}: module {self.manifest.module}")

    def _check_imports(self, imports: list[tuple[str, str, str]]) -> None:
        denied = set(self.manifest.sandbox.permissions.denied_host_functions)
        for module, name, kind in imports:
            where = f"{self.manifest.source}: module {self.manifest.module} imports {module}.{name} ({kind})"
            if module != "env" or kind != "func":
                raise SecurityError(f"{where}: only functions from 'env' may be imported")
            if name in denied:
                raise SecurityError(f"{where}: denied by [sandbox.permissions] denied_host_functions")
            if name not in abi.KNOWN_IMPORTS:
                raise SecurityError(f"{where}: no such host function in OpenFANG")
            if name not in self.granted:
                raise SecurityError(f"{where}: not granted by the manifest (see allowed_host_functions)")
        if self._import_check is not None:
            self._import_check(imports)

    def _check_restore_policy(self, code: bytes, digest: str, what: str) -> None:
        """``restore = "snapshot"`` needs a module whose whole state a snapshot can read back."""
        if self.manifest.restore != "snapshot":
            return
        try:
            layout = cached_layout(digest) or layout_of(wasm_binary(code, what=what), digest=digest)
        except WasmFormatError as exc:  # wasmtime accepted the module, our section reader did not
            raise SandboxError(
                f'{what}: restore = "snapshot" is refused: cannot tell where the module keeps its state '
                f"({exc.message})"
            ) from None
        if layout.hidden:
            raise SandboxError(
                f'{what}: restore = "snapshot" is refused: the module keeps state a snapshot cannot read '
                f"back ({'; '.join(layout.hidden)}). Export that state from the module, or use "
                f'restore = "fresh" (see docs/guest-abi.md, "Snapshots")'
            )

    def begin_init(self) -> bool:
        """Start ``agent_init`` if the guest exports it; False when there is nothing to run.

        True too while the module is still instantiating (phase ``start``): ``agent_init`` then follows it,
        and the host learns how the start went from the ``init`` outcome. (Without this call nothing follows
        the instantiation: a woken snapshot must not run ``agent_init``.)
        """
        assert self._inst is not None
        if self._starting is not None and self.state is State.RUNNING:
            self._starting.init_after = True
            return True
        if not self._inst.has_export(abi.EXPORT_INIT):
            return False
        self._start_call("init", abi.EXPORT_INIT, (), 1)
        return True

    def begin_message(self, payload: bytes, message: dict[str, Any] | None = None) -> None:
        """Start handling one message: written to the guest's inbox if it has one and the message fits, then
        ``agent_handle`` (one call); otherwise ``alloc`` for the payload, then ``agent_handle``.

        ``message``, when given, is the chat message ``payload`` is the JSON of (see :meth:`seed`)."""
        if self.state is not _IDLE:
            raise SandboxError(f"agent {self.agent_id} is busy ({self.state.value})")
        if message is not None:
            self.seed(payload, [message])
        self.calls_this_message = 0
        self.counters["messages"] += 1
        inst = self._inst
        assert inst is not None
        if inst._refs is None:  # an agent's messages take the prebuilt call words (see Instance._call_words)
            inst._call_words()
        digest = self.module_digest
        inbox = _INBOXES[digest] if digest in _INBOXES else self._read_inbox(inst)
        if inbox is not None and len(payload) <= inbox[1]:
            mem = inst._mem if inst._mem_looked_up else inst.memory()
            # An inbox outside the guest's memory (a guest bug) is not used: the message goes through alloc.
            if mem is not None and mem.write(inbox[0], payload):
                # _start_call("handle", ...), inlined
                self._phase = "handle"
                self._call = inst.call(abi.EXPORT_HANDLE, (inbox[0], len(payload)), 1)
                self._deadline = self.clock() + self.manifest.call_timeout_ms / 1000
                self.state = _RUNNING
                return
        self._payload = payload
        self._start_call("alloc", abi.EXPORT_ALLOC, (len(payload),), 1)

    def seed(self, entry: bytes, messages: list[dict[str, Any]]) -> None:
        """For the message in progress: a conversation entry of exactly these bytes holds ``messages``.

        The host made ``entry`` as the JSON of ``messages`` (the user's message, the model's answer, the tool
        results), so the guest's copy of it, handed back in ``llm_invoke``, is not parsed again. Only for
        values whose JSON round trip is exact (``guest_abi.json_exact``): the entry then parses to them.
        """
        if self._seeds is None:
            self._seeds = {}
        self._seeds[entry] = messages

    def _read_inbox(self, inst: Instance) -> tuple[int, int] | None:
        """The module's inbox (address, size) from its exports (checked at spawn: both or neither, i32);
        its result area is read and kept at the same time."""
        addr, size = exported_i32(inst, abi.EXPORT_INBOX), exported_i32(inst, abi.EXPORT_INBOX_SIZE)
        inbox = (addr, size) if addr is not None and size is not None else None
        if self.module_digest:
            if len(_INBOXES) >= _INBOXES_LIMIT or len(_RESULT_AREAS) >= _INBOXES_LIMIT:
                _INBOXES.clear()
                _RESULT_AREAS.clear()
            _INBOXES[self.module_digest] = inbox
            _RESULT_AREAS[self.module_digest] = exported_i32(inst, abi.EXPORT_RESULT_AREA)
        return inbox

    def _result_area(self) -> int | None:
        """The address of the module's result area (agent_result_area), or None when it has none."""
        digest = self.module_digest
        if digest in _RESULT_AREAS:
            return _RESULT_AREAS[digest]
        if self._inst is None:
            return None
        self._read_inbox(self._inst)
        return _RESULT_AREAS.get(digest)

    def _deliver(self, mem: GuestMemory | None, code: int, value: bytes) -> int:
        """A parking host call's result of ``code`` >= 0 bytes: written into the guest's offered result area
        when it fits there, else pending for host_result. The call's return value."""
        digest = self.module_digest
        area = _RESULT_AREAS[digest] if digest in _RESULT_AREAS else self._result_area()
        if area is not None:
            offer = mem.unpack(abi.RESULT_AREA, area) if mem is not None else None
            if offer is None:
                return abi.E_INVALID  # a result area outside the guest's memory: a guest bug
            ptr, cap = offer
            if code <= cap:
                # The guest expects the result there when the call returns: it is, whole, or the call fails.
                if len(value) != code or not mem.write(ptr, value):  # type: ignore[union-attr]
                    return abi.E_INVALID
                return code
        self._pending_result = value
        return code

    def _start_call(self, phase: str, name: str, args: tuple[int, ...], nresults: int) -> None:
        assert self._inst is not None
        self._phase = phase
        self._call = self._inst.call(name, args, nresults)
        self._deadline = self.clock() + self.manifest.call_timeout_ms / 1000
        self.state = _RUNNING

    # -- scheduling -------------------------------------------------------------------------------------
    def runnable(self) -> bool:
        return self.state is _RUNNING and not self.user_suspended

    def wake_time(self) -> float | None:
        """When this sandbox next needs attention without outside input: refuel or call deadline."""
        if self.state is State.THROTTLED:
            return min(self._interval_end, self._deadline)
        if self.state in (State.RUNNING, State.WAITING) and not self.user_suspended:
            return self._deadline
        return None

    def refresh(self, now: float) -> Outcome | None:
        """Apply time: refuel a throttled agent, fail a call past its deadline, wake a finished job."""
        state = self.state
        if state is _RUNNING and now < self._deadline:
            return None  # the common case, decided as below in fewer steps
        if state in (State.IDLE, State.CLOSED) or self.user_suspended:
            return None
        if now >= self._deadline:
            if self._phase == "start":
                return self._refuse_start(
                    f"did not finish within call_timeout_ms={self.manifest.call_timeout_ms}"
                )
            parked = self.state is State.WAITING
            phase = self._phase
            self._end_call()
            err = Timeout(
                f"agent {self.agent_id}: call exceeded call_timeout_ms={self.manifest.call_timeout_ms}"
            )
            # Parked on a host call the guest stopped at a call boundary and stays usable; otherwise restart.
            return Outcome(phase=phase, ok=False, error=err, crashed=not parked, limit="deadline")
        if self.state is State.THROTTLED and now >= self._interval_end:
            self.state = State.RUNNING
        if self.state is State.WAITING and self._job is not None and self._job.done:
            self.state = State.RUNNING
        return None

    def run_slice(self) -> Outcome | None:
        """Poll the current call once. Returns an Outcome when the call has ended, else None."""
        inst = self._inst
        assert inst is not None and self._call is not None
        now = self.clock()
        if now >= self._interval_end:
            self._interval_end = now + self.manifest.sandbox.fuel.refuel_interval_ms / 1000
            self._budget = self.manifest.sandbox.fuel.max_fuel
        # Instance.set_deadline, skipped where it would do nothing: a sliced store whose deadline was set
        # at the current epoch tick still has it ahead.
        if not inst.sliced or inst._deadline_tick != inst.runtime.ticks:
            inst.set_deadline(self._deadline - now)  # past it: deadline_ticks gives one tick, as for 0
        done = self._call.poll(self)
        used = inst.last_poll_fuel
        self.fuel_used += used
        self._budget -= used
        if not done:
            self.counters["yields"] += 1
            if self._phase == "start":
                # A start function gets one interval's fuel, once: it is refused, never throttled.
                if self.fuel_used > self.manifest.sandbox.fuel.max_fuel:
                    max_fuel = self.manifest.sandbox.fuel.max_fuel
                    return self._refuse_start(f"used more than max_fuel={max_fuel} without finishing")
                return None
            if self._job is not None and not self._job.done:
                self.state = State.WAITING
            elif self._budget <= 0:
                self.state = State.THROTTLED
            return None
        call, self._call = self._call, None
        if self._phase == "start":
            return self._instantiated(call)
        try:
            value = call.result()
        except GuestTrap as exc:
            self._end_call()
            if exc.trap_code == "interrupt":
                err: Exception = Timeout(f"agent {self.agent_id}: call exceeded its wall-clock deadline")
                return Outcome(phase=self._phase, ok=False, error=err, crashed=True, limit="deadline")
            return Outcome(phase=self._phase, ok=False, error=exc, crashed=True)
        except SandboxError as exc:
            self._end_call()
            return Outcome(phase=self._phase, ok=False, error=exc, crashed=True)
        return self._after_call(value)

    def _instantiated(self, call: AsyncCall) -> Outcome | None:
        """The instantiation ended: go on to ``agent_init`` (or be ready), or refuse the module."""
        what = f"{self.manifest.source}: module {self.manifest.module}"
        try:
            call.result()
        except SandboxError as exc:
            detail = exc.message.removeprefix("instantiation failed: ")
            self._audit_refusal("instantiate_refused", detail)
            self._end_call()
            err = SandboxError(f"{what}: instantiation failed: {detail}")
            return Outcome(phase="init", ok=False, error=err, crashed=True, refused=True)
        starting = self._starting
        assert starting is not None
        self.spawn_seconds = time.perf_counter() - starting.t0
        self._end_call()
        self._starting = None  # ready: its exports (tables) can be read from now on
        if not starting.init_after:
            return None  # loaded: begin_init (or a snapshot restore) comes next
        if self._inst is not None and self._inst.has_export(abi.EXPORT_INIT):
            self._start_call("init", abi.EXPORT_INIT, (), 1)
            return None
        return Outcome(phase="init", ok=True)

    def _refuse_start(self, why: str) -> Outcome:
        """A start function over its budget: cancel it and refuse the module (never a restart)."""
        self._audit_refusal("start_refused", why, fuel_used=self.fuel_used)
        self._end_call()
        what = f"{self.manifest.source}: module {self.manifest.module}"
        err = SandboxError(f"{what}: refused: its start function {why}")
        return Outcome(phase="init", ok=False, error=err, crashed=True, refused=True)

    def _audit_refusal(self, kind: str, detail: str, **extra: Any) -> None:
        m = self.manifest
        self.services.audit(
            {"kind": kind, "agent_id": self.agent_id, "module": m.module, "detail": detail, **extra}
        )

    def _after_call(self, value: int) -> Outcome | None:
        phase = self._phase
        if phase == "alloc":
            mem = self._inst.memory() if self._inst else None
            if value == 0 or mem is None or not mem.write(value, self._payload):
                self._end_call()
                return Outcome(
                    phase="handle", ok=False, error=SandboxError("guest could not allocate the message")
                )
            self._start_call("handle", abi.EXPORT_HANDLE, (value, len(self._payload)), 1)
            return None
        self._end_call()
        if phase == "init":
            if value != 0:
                return Outcome(
                    phase=phase, ok=False, error=SandboxError(f"agent_init returned {value}"), crashed=True
                )
            return _succeeded(phase, b"")
        if value == abi.E_NOMEM:
            # Out of memory the guest cannot make progress; a restart (per policy) gives it a fresh memory.
            cap = self.manifest.sandbox.memory.max_heap_mb
            err = SandboxError(f"agent {self.agent_id} ran out of memory (max_heap_mb={cap})")
            return Outcome(phase=phase, ok=False, error=err, crashed=True, limit="memory_cap")
        if value < 0:
            name = abi.ERROR_NAMES.get(int(value), str(value))
            return Outcome(
                phase=phase, ok=False, error=SandboxError(f"agent returned error {value} ({name})")
            )
        ptr, length = (value >> 32) & 0xFFFFFFFF, value & 0xFFFFFFFF  # abi.split_reply, inlined
        if length > abi.MAX_REPLY:
            err = SandboxError(f"agent reply of {length} bytes exceeds the {abi.MAX_REPLY}-byte limit")
            return Outcome(phase=phase, ok=False, error=err)
        inst = self._inst
        mem = None if inst is None else inst._mem if inst._mem_looked_up else inst.memory()
        reply = mem.read(ptr, length) if mem else None
        if reply is None:
            return Outcome(phase=phase, ok=False, error=SandboxError("agent reply points outside its memory"))
        return _succeeded(phase, reply)

    def _ready(self) -> bool:
        """Instantiated: the instance's exports (its tables) can be read. A failed start never gets here."""
        return self._inst is not None and self._starting is None

    def _check_tables(self) -> None:
        """Audit (once per instance) a table that ended a call above 3/4 of its element cap.

        A refused ``table.grow`` is invisible to the host (the guest just gets -1; wasmtime's C API has no
        limiter callback), so a table this close to the cap is the sign we can see of it.
        """
        if self._table_cap_audited or self._inst is None:
            return
        sizes = self._inst.table_elements()
        if not sizes:  # most guests have no table
            return
        cap = self.manifest.sandbox.memory.max_table_elements
        if any(4 * n > 3 * cap for n in sizes):
            self._table_cap_audited = True
            self._audit_refusal(
                "table_cap", f"a table holds {max(sizes)} of max_table_elements={cap}", table_elements=sizes
            )

    def _end_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        inst = self._inst
        if inst is not None:
            # _ready(); after the cancel: the store is not borrowed any more. An instance whose tables were
            # looked up and found none (most) has nothing for _check_tables to audit.
            if self._starting is None and inst._tables != () and not self._table_cap_audited:
                self._check_tables()
            call = inst._call  # inst.release_call(), inlined: forget a finished call
            if call is not None and call.finished:
                inst._call = None
        self._job = None
        self._pending_result = None
        self._payload = b""
        self._seeds = None
        self.state = _IDLE if self._inst is not None else State.CLOSED

    def suspend(self) -> None:
        """Stop polling this agent (mid-call too); its call stays parked until resume()."""
        if not self.user_suspended:
            self.user_suspended = True
            self._suspended_at = self.clock()

    def resume(self) -> None:
        if self.user_suspended:
            self.user_suspended = False
            self._deadline += self.clock() - self._suspended_at  # a suspended call does not age

    def close(self) -> None:
        """Free the store, its memory and any call in flight, now (no reliance on garbage collection)."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._inst is not None:
            self._inst.close()
            self._inst = None
        self._job = None
        self.state = State.CLOSED

    # -- snapshots (workers/sandbox/snapshot.py) ----------------------------------------------------------
    def quiescence_problem(self) -> str | None:
        """Why this sandbox cannot be snapshotted right now, or None when it is quiescent.

        Quiescent = loaded, no call in flight (the async fiber's native stack cannot be captured), no host
        job pending and no host result waiting to be fetched.
        """
        if self._inst is None or self.state is State.CLOSED:
            return "it is closed"
        if self.state is not State.IDLE or self._call is not None:
            return f"a call is in progress ({self._phase or 'init'}, {self.state.value})"
        if self._job is not None or self._pending_result is not None:
            return "a host job is pending"
        if call_in_flight(self._inst):
            return "a call is in progress inside wasmtime"
        return None

    def native_instance(self) -> Instance:
        """The loaded instance (for snapshot capture and restore); SandboxError when closed."""
        if self._inst is None:
            raise SandboxError(f"agent {self.agent_id}: the sandbox is closed")
        return self._inst

    def memory_bytes(self) -> int:
        """The agent's memory meter: its linear memory plus its tables (8 bytes an element)."""
        inst = self._inst
        if inst is None or self._starting is not None:
            return 0  # nothing to measure until the instance exists
        mem = inst._mem
        if mem is not None and inst._tables == ():  # inst.footprint()'s common case, inlined (every message)
            return mem.size()
        return inst.footprint()

    def revoke(self, name: str) -> None:
        """Withdraw a host function at run time: later calls get E_DENIED (and an audit record)."""
        self.granted = self.granted - {name}

    # -- host calls (HostDispatch) -----------------------------------------------------------------------
    def _deny(self, name: str, detail: str = "") -> int:
        self.counters["denied"] += 1
        self.services.audit(
            {"kind": "host_call_denied", "agent_id": self.agent_id, "function": name, "detail": detail}
        )
        return abi.E_DENIED

    def host_sync(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> int:
        if name not in self.granted:
            return self._deny(name)
        if name == "host_result":
            if self._pending_result is None:
                return abi.E_NO_RESULT
            data = self._pending_result
            if args[1] < len(data):
                return abi.E_RANGE
            if mem is None or not mem.write(args[0], data):
                return abi.E_INVALID
            self._pending_result = None
            return len(data)
        if name == "log":
            raw = mem.read(args[0], min(args[1], 4096)) if mem else None
            if raw is None:
                return abi.E_INVALID
            log.info("guest_log", agent_id=self.agent_id, text=raw.decode("utf-8", "replace"))
            return 0
        if name == "time_now_ms":
            return int(time.time() * 1000) & 0x7FFFFFFF
        return abi.E_INVALID

    def host_async(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> AsyncPoller | int:
        """The host call's job started; its result (an i32) when the job is done already (the scripted
        model's, every refusal), else a poller the runtime polls until it is."""
        job = self._host_job(name, mem, args)
        if job.done:
            return self._job_result(job, mem)
        self._job = job

        def poll() -> int | None:
            if not job.done:
                return None
            self._job = None
            return self._job_result(job, mem)

        return poll

    def _job_result(self, job: Job, mem: GuestMemory | None) -> int:
        """What the guest's parking host call returns for the finished ``job``."""
        entry = getattr(job, "entry", None)  # what the job's result holds, parsed (see seed)
        if entry is not None:
            self.seed(*entry)
        code = job.code
        if code >= 0:
            return self._deliver(mem, code, job.value)
        if job.value:
            self._pending_result = job.value  # error details for the guest, via host_result
        return code

    def _host_job(self, name: str, mem: GuestMemory | None, args: tuple[int, ...]) -> Job:
        if name not in self.granted:
            return DoneJob(self._deny(name))
        if self._phase != "handle":
            return DoneJob(abi.E_UNAVAILABLE)
        self.calls_this_message += 1
        if self.calls_this_message > self.manifest.max_calls_per_message:
            return DoneJob(abi.E_LIMIT)
        ptr, length = args
        window = 8 * self.manifest.history_messages
        if name == abi.LLM_IMPORT and length % 8 == 0 and length > window:
            # Only the newest history_messages entries reach the model: read just the tail of the iovecs.
            ptr, length = ptr + length - window, window
        if mem is None or length > abi.MAX_HOST_PAYLOAD:
            return DoneJob(abi.E_INVALID)
        if name == abi.LLM_IMPORT:
            # The iovecs (ptr, len pairs) of the conversation entries, read where they lie.
            segments = mem.read_gather(ptr, length, max_total=4 * abi.MAX_HOST_PAYLOAD)
            if segments is None:
                return DoneJob(abi.E_INVALID)
            self.counters["llm_calls"] += 1
            try:
                return self.services.start_llm(self, self._messages(segments))
            except ValueError:  # bad JSON from the guest
                return DoneJob(abi.E_INVALID)
        raw = mem.read(ptr, length)
        if raw is None:
            return DoneJob(abi.E_INVALID)
        try:
            if name == abi.TOOL_IMPORT:
                # The guest hands tool_call the assistant message the model job just returned, byte for byte:
                # the message it was made from stands in for parsing it again (see guest_abi.flat_request).
                seeds = self._seeds
                seeded = seeds.get(raw) if seeds is not None else None
                request = seeded[0] if seeded is not None and abi.flat_request(seeded) else abi.loads(raw)
                if not isinstance(request, dict):
                    return DoneJob(abi.E_INVALID)
                self.counters["tool_calls"] += 1
                return self.services.start_tools(self, request)
            return self.services.start_capability(self, name, raw)
        except ValueError:  # bad JSON / iovecs from the guest
            return DoneJob(abi.E_INVALID)

    def _messages(self, segments: list[bytes]) -> list[dict[str, Any]]:
        """Parse conversation entries, reusing the parse of entries seen before (keyed by their bytes)."""
        cache: dict[bytes, list[dict[str, Any]]] = {}
        out: list[dict[str, Any]] = []
        seeds = self._seeds
        for seg in segments:
            parsed = self._parsed.get(seg)
            if parsed is None and seeds is not None:
                parsed = seeds.get(seg)
            if parsed is None:
                parsed = abi.parse_messages([seg])
            cache[seg] = parsed
            out.extend(parsed)
        self._parsed = cache  # keep only the current window
        return out

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "agent_id": self.agent_id,
            "name": m.name,
            "version": m.version,
            "service": m.service,
            "state": "suspended" if self.user_suspended else self.state.value,
            "module": m.module,
            "restart": m.restart,
            "fuel_used": self.fuel_used,
            "memory_bytes": self.memory_bytes(),
            "spawn": self.spawn_kind,
            "spawn_ms": round(self.spawn_seconds * 1000, 3),
            **self.counters,
        }
