"""Turning an ``agent.spawn`` into a loaded sandbox: manifest, provider, security layers, grant, sandbox.

:class:`Spawner` holds what a spawn needs (the parsed-manifest cache, the engines per stack size, the
security layers, the capability policy) and builds a :class:`~openfang.workers.host.record.HostedAgent`
whose sandbox is loaded and whose imports were checked; the host registers and starts it. A refused spawn
frees everything it made: nothing half-built is left behind.

Agents of one manifest text (a pool) share what depends on the text alone, worked out by the first spawn
and kept beside the parsed manifest (:class:`_Shape`): the manifest with the cluster's default limits
applied (one immutable object for all of them), their capability grant (each agent gets a copy naming it)
and the module digest of a builtin or pinned module. What can change between two spawns of the same text
is checked again on every spawn: the version rule (layer 16, other workers accept versions too), the
signature, the module imports (against the grant: a pure function of both, memoised by the policy), the
permissions and the agent's own state (identity, taint, rate buckets). A refused manifest is never kept.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import structlog

from openfang.protocol.bodies import AgentSpawn
from openfang.security._hashing import sha256
from openfang.supervisor.restart import RestartWindow
from openfang.workers.host.record import HostedAgent
from openfang.workers.host.security import HostSecurity
from openfang.workers.llm import providers as _llm
from openfang.workers.manifest import AgentManifest, ModelConfig, load_manifest
from openfang.workers.sandbox import guest_abi as abi
from openfang.workers.sandbox._wasmtime import EngineOptions, HostFunctionSpec, Instance, Runtime, StoreLimits
from openfang.workers.sandbox.instance import (
    HostServices,
    Sandbox,
    prepare_module,
    prepare_spare,
    store_limits,
)
from openfang.workers.tools.mcp import McpServerConfig

log = structlog.get_logger("openfang.workers.host.spawner")

MANIFEST_CACHE = 256  # distinct manifest texts kept parsed
HOST_SPECS = tuple(HostFunctionSpec(name=n, nparams=p, is_async=a) for n, p, a in abi.HOST_FUNCTIONS)
# What a worker prepares while it waits for its first request (Spawner.warm_up): a manifest of the built-in
# guest most agents run, with every table a manifest's readers are built for on first use (its values are
# the defaults: only the readers and the module are kept, never this manifest).
WARM_UP_MANIFEST = """
[agent]
name = "warm-up"
module = "builtin:llm-agent"
[agent.model]
provider = "scripted"
[sandbox.fuel]
[sandbox.memory]
[sandbox.permissions]
"""


@dataclass(frozen=True, slots=True)
class _Shape:
    """What every agent of one manifest text shares (see the module docstring)."""

    parsed: AgentManifest  # the cached parse it was worked out from (a manifest changed since is not this)
    manifest: AgentManifest  # ``parsed`` with the cluster's default limits the grant filled in (layers 5-6)
    grant: Any  # the capability grant as made for the first agent; None without a capability policy
    digest: str | None  # the module digest when only the manifest decides it (builtin, pinned); else None


class Spawner:
    """Builds agents for one host (see the module docstring). Loop thread only."""

    def __init__(
        self,
        *,
        services: HostServices,
        clock: Callable[[], float],
        tools: Any = None,
        llm_factory: Callable[[ModelConfig], Any] | None = None,
        engine_options: EngineOptions | None = None,
        module_cache_dir: Path | None = None,
        shipped_module_dir: Path | None = None,
        security: HostSecurity | None = None,
        capabilities: Any = None,
        mcp_servers: tuple[McpServerConfig, ...] = (),
    ) -> None:
        self._services = services
        self._mcp_servers = mcp_servers  # MCP servers any agent of this host may name (worker args)
        self._clock = clock
        self._tools = tools
        self._llm_factory = llm_factory
        # Deep model validation when the providers module is present (it owns provider semantics).
        self._validate_model = _llm.validate_model_config if llm_factory is None else None
        self._options = engine_options or EngineOptions()
        # Compiled modules persist here (by sha256 + engine settings): a restarted worker skips compiling.
        self._cache_dir = module_cache_dir
        self._shipped_dir = shipped_module_dir  # the built-in guests compiled at install time (shipped.py)
        self._security = security
        # security.capabilities.CapabilityPolicy (duck-typed): cluster limits and import allow/deny patterns.
        self.capabilities: Any = capabilities
        if capabilities is None and security is not None:
            self.capabilities = security.capabilities
        self._runtimes: dict[int, Runtime] = {}
        self._manifests: OrderedDict[tuple[str, str], AgentManifest] = OrderedDict()
        self._shapes: dict[tuple[str, str], _Shape] = {}  # by the same key, dropped with the manifest
        # One spare instance at most (see prepare_spare): the one ready, and what the last spawn would want
        # next (its manifest, runtime and module digest). Both go with release_spare (the quiet trim).
        self._spare: tuple[Runtime, str, StoreLimits, Instance] | None = None
        self._spare_for: tuple[AgentManifest, Runtime, str] | None = None
        self._spare_failed: set[str] = set()  # module digests whose spare could not be made (logged once)

    def manifest(self, text: str, path: Path | None) -> AgentManifest:
        """The validated manifest for ``text``; identical texts (a pool of one manifest) are parsed once.

        Parsing and validating is most of a warm spawn's CPU. The result is a frozen value, so sharing it
        between agents is safe; only successful parses are kept, so a bad manifest is reported every time.
        """
        key = (text, str(path) if path else "")
        manifest = self._manifests.get(key)
        if manifest is not None:
            self._manifests.move_to_end(key)
            return manifest
        names = self._tools.names() if self._tools is not None and hasattr(self._tools, "names") else None
        try:
            data = parsed(text)  # the one parse of this text that its spawns' later steps read too
        except tomllib.TOMLDecodeError:
            data = None  # load_manifest reports it, as a ConfigError naming the manifest
        manifest = load_manifest(
            text,
            source=path.name if path else "agent.toml",
            base_dir=path.parent if path else None,
            tool_names=set(names) if names is not None else None,
            shared_mcp=self._mcp_servers,
            validate_model=self._validate_model,
            data=data,
        )
        self._manifests[key] = manifest
        if len(self._manifests) > MANIFEST_CACHE:
            old, _ = self._manifests.popitem(last=False)
            self._shapes.pop(old, None)
        return manifest

    def build(
        self, body: AgentSpawn, manifest: AgentManifest, agent_id: str, parent: str | None
    ) -> HostedAgent:
        """A new agent for ``body``: checked by the security layers, its sandbox loaded (not started)."""
        text = body.manifest
        provider = None
        if manifest.model is not None and self._llm_factory is not None:
            provider = self._llm_factory(manifest.model)
        elif manifest.model is not None:
            provider = _llm.make_provider(manifest.model.raw, where=f"{manifest.source}: [agent.model]")
        sec = self._security
        key = (text, body.manifest_path or "")
        shape = self._shapes.get(key)
        if shape is not None and shape.parsed is not manifest:
            shape = None  # another parse of the text (the MCP tools attached): worked out for this one only
        digest = (shape.digest if shape is not None else None) or module_digest(manifest)
        accepted = False
        if sec is not None:
            accepted = sec.check_version(manifest, digest)  # layer 16, before any work on an old manifest
            sec.attest(manifest, parsed(text))  # layer 13: signed manifests
        if shape is None:
            shape = self._shape(text, manifest, agent_id)
            if self._manifests.get(key) is manifest:  # the parse every spawn of this text gets
                self._shapes[key] = shape
        grant = shape.grant
        if grant is not None and grant.agent_id != agent_id:
            grant = dataclasses.replace(grant, agent_id=agent_id)
        manifest = shape.manifest
        sandbox = self.sandbox(manifest, agent_id, grant)
        if sandbox.module_digest not in self._spare_failed:
            self._spare_for = (manifest, sandbox.runtime, sandbox.module_digest)
        agent = HostedAgent(
            agent_id=agent_id,
            manifest=manifest,
            manifest_text=text,
            sandbox=sandbox,
            provider=provider,
            window=RestartWindow(manifest.restart_intensity, manifest.restart_period_ms / 1000),
            grant=grant,
        )
        if sec is not None:
            try:
                agent.guard = sec.admit(manifest, agent_id, parent=parent)
                sec.accept_version(manifest, digest, accepted=accepted)
            except BaseException:
                sandbox.close()
                sec.release(agent_id)
                raise
        return agent

    def _shape(self, text: str, manifest: AgentManifest, agent_id: str) -> _Shape:
        """Work out what the agents of ``text`` share (the grant raises, and audits, a refusal)."""
        grant = None
        applied = manifest
        if self.capabilities is not None:
            raw = parsed(text)
            grant = self.capabilities.grant(agent_id, _effective(raw, manifest), source=manifest.source)
            applied = _apply_grant(manifest, raw, grant)
        fixed = manifest.module_sha256 is not None or manifest.module_path() is None
        return _Shape(manifest, applied, grant, module_digest(manifest) if fixed else None)

    def sandbox(self, manifest: AgentManifest, agent_id: str, grant: Any = None) -> Sandbox:
        """A loaded sandbox (imports checked, instantiated lazily by ``begin_init``); raises on refusal."""
        check = None
        if self.capabilities is not None and grant is not None:
            caps = self.capabilities

            def check(imports: list[tuple[str, str, str]]) -> None:
                caps.check_imports(grant, [(module, name) for module, name, _ in imports])

        sandbox = Sandbox(
            manifest,
            self._runtime(manifest.sandbox.memory.stack_size_kb),
            agent_id=agent_id,
            services=self._services,
            clock=self._clock,
            import_check=check,
        )
        # Raises (and frees) on refusal: nothing is registered for a failed spawn.
        sandbox.load(self._take_spare)
        return sandbox

    # -- the spare instance ------------------------------------------------------------------------------
    def _take_spare(self, runtime: Runtime, digest: str, limits: StoreLimits) -> Instance | None:
        """The spare, if it was made for exactly this runtime, module and store limits (it is used once)."""
        spare = self._spare
        if spare is None:
            return None
        self._spare = None
        rt, made_for, made_limits, inst = spare
        if rt is runtime and made_for == digest and made_limits == limits and not inst.closed:
            return inst
        inst.close()  # made for another module or setting: never used for this one
        return None

    def spare_wanted(self) -> bool:
        """A spawn left a module a spare could be made for, and none is ready (cheap: every idle turn)."""
        return self._spare is None and self._spare_for is not None

    def prepare_spare(self) -> None:
        """Instantiate one spare for the module of the last spawn (call when idle: never on a spawn's path).

        A module that cannot have one (a start function) or a failure is logged once per module and never
        tried again for it; spawns of it instantiate as always."""
        wanted, self._spare_for = self._spare_for, None
        if wanted is None or self._spare is not None:
            return
        manifest, runtime, digest = wanted
        if runtime not in self._runtimes.values():
            return  # closed since
        try:
            inst = prepare_spare(runtime, manifest, digest)
        except Exception as exc:  # a spare is an optimisation: the spawn instantiates instead
            if len(self._spare_failed) >= MANIFEST_CACHE:
                self._spare_failed.clear()
            self._spare_failed.add(digest)
            log.info("spare_instance_not_made", module=manifest.module, digest=digest[:12], reason=str(exc))
            return
        self._spare = (runtime, digest, store_limits(manifest), inst)

    def release_spare(self) -> None:
        """Free the spare (when quiet: an idle worker holds no spare) until the next spawn wants one."""
        spare, self._spare = self._spare, None
        self._spare_for = None
        if spare is not None:
            spare[3].close()

    # -- the first spawn's work, done ahead -------------------------------------------------------------
    def warm_up(self) -> list[Callable[[], None]]:
        """The steps that make the first spawn of a built-in agent cheaper, for a worker to run one at a
        time while it waits for its first request (after its ready): build the manifest readers, make the
        runtime of the default stack size, compile and check the built-in guest in it (through the disk
        cache), then fill the caches a first spawn fills (the runtime's per-module ones: the module's
        imports, which each spawn checks against its own grant, and its table exports; fnmatch's compiled
        cluster patterns). Each step is what that spawn would otherwise do on its own path, so running one
        never delays it by work it does not need; a step left undone is done by the spawn, as before. Steps
        are short (~0.3-2.5 ms each): a request that comes in during one waits for its end. A step may raise:
        the caller logs it, and the spawn then meets (and reports) the problem itself."""
        held: list[AgentManifest] = []

        def warm_manifest() -> AgentManifest:
            return held[0] if held else load_manifest(WARM_UP_MANIFEST, source="warm-up")

        def readers() -> None:
            held.append(load_manifest(WARM_UP_MANIFEST, source="warm-up"))

        def runtime() -> None:
            self._runtime(warm_manifest().sandbox.memory.stack_size_kb, ticking=False)

        def module() -> None:
            manifest = warm_manifest()
            prepare_module(self._runtime(manifest.sandbox.memory.stack_size_kb, ticking=False), manifest)

        def module_caches() -> None:
            manifest = warm_manifest()
            rt = self._runtime(manifest.sandbox.memory.stack_size_kb, ticking=False)
            digest = module_digest(manifest)
            pre = rt.cached_pre(digest)
            if pre is not None:
                rt.cached_imports(digest)
                rt.table_exports(pre)
            # The cluster's host-function patterns, which every spawn's import check matches against:
            # fnmatch compiles (and keeps) a pattern's regex on its first use (~0.3 ms for "env.*").
            config = getattr(self.capabilities, "config", None)
            for pattern in (*getattr(config, "allow", ()), *getattr(config, "deny", ())):
                fnmatchcase("", pattern)

        return [readers, runtime, module, module_caches]

    def _runtime(self, stack_kb: int, *, ticking: bool = True) -> Runtime:
        """The runtime of ``stack_kb`` (made on first use); its epoch ticker runs once an agent may use it
        (``ticking``), not for a runtime made ahead (:meth:`warm_up`)."""
        rt = self._runtimes.get(stack_kb)
        if rt is None:
            opts = EngineOptions(
                max_wasm_stack_kb=stack_kb,
                epoch_tick_ms=self._options.epoch_tick_ms,
                fuel_slice=self._options.fuel_slice,
            )
            rt = self._runtimes[stack_kb] = Runtime(
                HOST_SPECS, options=opts, cache_dir=self._cache_dir, shipped_dir=self._shipped_dir
            )
            if rt.cache_refused:  # compiled code is never run from a folder others may write
                log.warning("module_cache_refused", reason=rt.cache_refused)
            if rt.shipped_refused:  # the install's (owned by another user than root or ours): compiled here
                log.info("module_cache_shipped_refused", reason=rt.shipped_refused)
        if ticking:
            rt.start_ticker()  # a no-op once it runs
        return rt

    def live_stores(self) -> int:
        """The agents' stores (a spare is not an agent's)."""
        return sum(rt.live_stores for rt in self._runtimes.values()) - (self._spare is not None)

    def close(self) -> None:
        self.release_spare()
        for rt in self._runtimes.values():
            rt.close()
        self._runtimes.clear()


@functools.lru_cache(maxsize=64)
def parsed(text: str) -> dict[str, Any]:
    """The manifest's TOML as data (read-only: shared by the spawns of the same text)."""
    return tomllib.loads(text)


def module_digest(manifest: AgentManifest) -> str:
    """What a manifest version names (layer 16): its pinned digest, else the module's bytes."""
    if manifest.module_sha256:
        return manifest.module_sha256
    path = manifest.module_path()
    if path is None:
        from openfang.workers.sandbox.builtin_guests import builtin_digest

        return builtin_digest(manifest.module.removeprefix("builtin:"))
    try:
        return sha256(path.read_bytes()).hexdigest()
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
