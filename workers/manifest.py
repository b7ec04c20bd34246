"""Agent manifests (agent.toml): parse, validate everything at once, and return frozen dataclasses.

Every problem is reported in one :class:`ConfigError`, each with its place, e.g.
``agent.toml: [sandbox.fuel] key 'max_fuel'``. Unknown keys are errors (except inside ``[agent.model]``,
whose semantics belong to the LLM providers: pass ``validate_model`` to check it deeply).

The tables are config-kit sections (:mod:`openfang.protocol.config_kit`): each key is a field below, with
its bounds in its annotation and its one default; :func:`load_manifest` reads them with the kit's reader.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from openfang.protocol.config_kit import Doc, Len, Match, Place, Range, Table, read
from openfang.protocol.errors import ConfigError, Problem
from openfang.workers.llm.presets import BY_NAME
from openfang.workers.sandbox import guest_abi
from openfang.workers.tools.core import SearchConfig, ShellPolicy
from openfang.workers.tools.mcp import McpServerConfig, declared, parse_servers

RestartPolicy = Literal["permanent", "transient", "temporary"]
RESTART_POLICIES = get_args(RestartPolicy)
PROVIDERS = tuple(BY_NAME)  # the named presets (docs/llm-and-tools.md)
ModelValidator = Callable[[Mapping[str, Any], str], list[Problem]]
RetentionPolicy = Literal["keep", "archive", "purge"]
RETENTION_POLICIES = get_args(RetentionPolicy)
RestorePolicy = Literal["fresh", "snapshot"]
RESTORE_POLICIES = get_args(RestorePolicy)
MAX_IDLE_HIBERNATE_S = 30 * 86_400  # a month: longer is "never" (0)
AgentId = Annotated[str, Match(r"[a-z0-9][a-z0-9._-]{0,63}", "1-64 of a-z 0-9 . _ - (starting a-z or 0-9)")]
Grant = Annotated[str, Match(r"!?[A-Za-z0-9_.*?\-:/\[\]@]{1,128}", "a name or glob pattern (! to deny)")]
EnvName = Annotated[str, Match(r"[A-Za-z_][A-Za-z0-9_]{0,127}", "an environment variable name")]
Names = tuple[str, ...]
LongText = Annotated[str, Len(1 << 20, 0)]


def _duplicates(**lists: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (key, "lists a name more than once") for key, names in lists.items() if len(set(names)) != len(names)
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """[agent.model]: kept shallow; ``raw`` is the table as written, for ``make_provider``."""

    provider: str
    name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    where: str = "[agent.model]"  # "<manifest>: [agent.model]", for the provider's problems at spawn


@dataclass(frozen=True, slots=True, kw_only=True)
class FuelConfig:
    """[sandbox.fuel]."""

    max_fuel: Annotated[int, Range(10_000, 10**15), Doc("fuel an agent may burn per refuel interval")] = (
        500_000_000
    )
    refuel_interval_ms: Annotated[int, Range(1, 3_600_000)] = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryConfig:
    """[sandbox.memory]."""

    max_heap_mb: Annotated[int, Range(1, 4096)] = 64
    stack_size_kb: Annotated[int, Range(64, 65536)] = 512
    # Tables count toward the agent's memory (8 bytes an element): C and Rust guests need one table of a
    # few hundred to a few thousand function references. table.grow past the cap returns -1.
    max_table_elements: Annotated[int, Range(0, 1 << 27), Doc("per table")] = 10_000
    max_tables: Annotated[int, Range(0, 64)] = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionsConfig:
    """[sandbox.permissions]: host functions granted beyond the core ABI, or denied."""

    allowed_host_functions: Names = ()
    denied_host_functions: Names = ()

    def check(self) -> list[tuple[str, str]]:
        problems = _duplicates(
            allowed_host_functions=self.allowed_host_functions,
            denied_host_functions=self.denied_host_functions,
        )
        known = ", ".join(sorted(guest_abi.KNOWN_IMPORTS))
        problems += [
            ("allowed_host_functions", f"unknown host function {fn!r} (known: {known})")
            for fn in self.allowed_host_functions
            if fn not in guest_abi.KNOWN_IMPORTS
        ]
        both = sorted(set(self.allowed_host_functions) & set(self.denied_host_functions))
        if both:
            problems.append(("denied_host_functions", f"also listed as allowed: {', '.join(both)}"))
        return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentPermissionsConfig:
    """[agent.permissions]: what the agent may do beyond its tools (layer 9, default deny).

    Patterns are globs over agent ids (``memory_read``, ``send``; ``self`` is the agent itself) or manifest
    names (``spawn``); ``!pattern`` denies and wins.
    """

    memory_read: tuple[Grant, ...] = ("self",)
    memory_write: tuple[Grant, ...] = ("self",)
    send: tuple[Grant, ...] = ()
    spawn: tuple[Grant, ...] = ()
    max_children: Annotated[int, Range(0, 10_000), Doc("agents running at once through agent_spawn")] = 8

    def check(self) -> list[tuple[str, str]]:
        return _duplicates(
            memory_read=self.memory_read, memory_write=self.memory_write, send=self.send, spawn=self.spawn
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    """[sandbox]."""

    agent_id: AgentId | None = None
    fuel: FuelConfig = field(default_factory=FuelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    permissions: PermissionsConfig = field(default_factory=PermissionsConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentManifest:
    """One validated agent.toml."""

    name: AgentId
    module: str = "builtin:llm-agent"
    description: LongText = ""
    module_sha256: Annotated[str, Match(r"[0-9a-f]{64}", "64 lowercase hex digits")] | None = None
    version: Annotated[int, Range(1, 2**31)] = 1
    system_prompt: LongText = ""
    tools: Names = ()
    restart: RestartPolicy = "permanent"
    service: AgentId | None = None
    max_calls_per_message: Annotated[int, Range(1, 1000)] = 16
    history_messages: Annotated[int, Range(1, 4000), Doc("newest entries sent to the model per call")] = 64
    call_timeout_ms: Annotated[int, Range(1, 3_600_000)] = 30_000
    # OTP defaults: more than 1 restart in 5 s gives the agent up.
    restart_intensity: Annotated[int, Range(0, 1000)] = 1
    restart_period_ms: Annotated[int, Range(1, 86_400_000)] = 5_000
    model: ModelConfig | None = None
    permissions: AgentPermissionsConfig = field(default_factory=AgentPermissionsConfig)
    # What happens to the agent's memories when it is killed.
    retention: RetentionPolicy = "keep"
    # Env vars whose values are secrets for this agent (exfil, redaction).
    secret_env: tuple[EnvName, ...] = ()
    # Seconds idle before the host hibernates the agent (its guest state to disk, its sandbox freed); None:
    # the cluster default applies; 0: never. A hibernated agent wakes on its next message.
    idle_hibernate_s: Annotated[float, Range(0, MAX_IDLE_HIBERNATE_S), Doc("0: never")] | None = None
    # What a restart after a crash starts from: "fresh" (a new instance, agent_init runs) or "snapshot" (the
    # agent's last snapshot, when there is one; refused at spawn for a module with non-exported state).
    restore: RestorePolicy = "fresh"
    mcp: tuple[McpServerConfig, ...] = ()  # MCP servers whose tools this agent may use (workers/tools/mcp.py)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    shell: ShellPolicy | None = None  # [agent.shell]: what shell_exec may run (absent: nothing)
    web_search: SearchConfig | None = None  # [agent.web_search]: its backend (absent: the environment's)
    source: str = "agent.toml"
    base_dir: Path | None = None

    def check(self) -> list[tuple[str, str]]:
        return _duplicates(tools=self.tools, secret_env=self.secret_env)

    def granted_imports(self) -> frozenset[str]:
        """Host functions this agent may import: core ABI + implicit grants + allowed, minus denied."""
        granted = set(guest_abi.CORE_IMPORTS) | set(self.sandbox.permissions.allowed_host_functions)
        if self.model is not None:
            granted.add(guest_abi.LLM_IMPORT)
        if self.tools or self.model is not None:
            # Each tool is still checked against agent.tools at call time (default deny).
            granted.add(guest_abi.TOOL_IMPORT)
        return frozenset(granted - set(self.sandbox.permissions.denied_host_functions))

    def module_path(self) -> Path | None:
        """The module file for a path module (None for ``builtin:``)."""
        if self.module.startswith("builtin:"):
            return None
        path = Path(self.module)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path


# [agent] keys the AgentManifest section does not read: tables of their own, or parsed by their owners.
_AGENT_OWN_TABLES = ("model", "mcp", "shell", "web_search")
_SEARCH_BACKENDS = ("searxng", "brave", "tavily")


def load_manifest(
    path_or_text: str | Path,
    *,
    source: str | None = None,
    base_dir: Path | None = None,
    validate_model: ModelValidator | None = None,
    tool_names: Collection[str] | None = None,
    shared_mcp: tuple[McpServerConfig, ...] = (),
    data: Mapping[str, Any] | None = None,
) -> AgentManifest:
    """Parse and validate a manifest from a file (a :class:`Path`) or TOML text (a :class:`str`).

    ``source`` names the manifest in problems (default: the file name, else ``agent.toml``); relative module
    paths resolve against ``base_dir`` (default: the file's directory). ``tool_names``, when given, is the
    registry every listed tool must exist in. ``shared_mcp`` are MCP servers every agent of the worker may
    name (the worker's ``mcp`` args): those the tools name join the manifest's ``mcp``. ``data``: the text's
    TOML as ``tomllib.loads`` made it, when the caller has it already (read, never changed: a worker's spawn
    shares one parse per text, ``spawner.parsed``). Raises :class:`ConfigError` with every problem found.
    """
    if isinstance(path_or_text, Path):
        source = source or path_or_text.name
        base_dir = base_dir or path_or_text.parent
        try:
            text = path_or_text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(Problem(str(path_or_text), f"cannot read manifest: {exc}")) from None
    else:
        text = path_or_text
    source = source or "agent.toml"
    if data is None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(Problem(source, f"not valid TOML: {exc}")) from None
    problems: list[Problem] = []
    top = Table(data, Place.file(source), problems)
    # A signed manifest (layer 13): the host checks the signature with security.attestation at spawn.
    top.text("publisher", None)
    top.text("signature", None)
    if ("publisher" in data) != ("signature" in data):
        top.problem("signature", "publisher and signature go together")
    if "agent" not in data:
        problems.append(Problem(Place.table(source, "agent").where, "table is required"))
    agent = top.sub("agent")
    place = agent.place
    sandbox = top.section(SandboxConfig, "sandbox") or SandboxConfig()
    top.unknown()

    raw_tools = agent.raw.get("tools")
    tools = (
        tuple(raw_tools) if isinstance(raw_tools, list) and all(isinstance(t, str) for t in raw_tools) else ()
    )
    mcp: tuple[McpServerConfig, ...] = ()
    if "mcp" in agent.raw:
        mcp, mcp_problems = parse_servers(agent.raw["mcp"], place.where)
        problems.extend(mcp_problems)
    # The worker's shared servers (cluster.toml) that this manifest's tools name and it does not redefine.
    own = {s.name for s in mcp}
    mcp += tuple(s for s in shared_mcp if s.name not in own and any(declared(t, (s,)) for t in tools))
    if tool_names is not None:
        for tool in tools:
            if tool not in tool_names and not declared(tool, mcp):  # MCP tools are checked at spawn
                agent.problem("tools", f"unknown tool {tool!r} (known: {', '.join(sorted(tool_names))})")
    manifest = read(
        AgentManifest,
        agent.raw,
        place,
        problems,
        ignore=_AGENT_OWN_TABLES,
        model=_model(agent, validate_model),
        mcp=mcp,
        shell=_shell(agent),
        web_search=_web_search(agent),
        sandbox=sandbox,
        source=source,
        base_dir=base_dir,
    )
    module = agent.raw.get("module", AgentManifest.__dataclass_fields__["module"].default)
    if isinstance(module, str) and module:
        _check_module(agent, module, "model" in agent.raw, base_dir)
    if problems or manifest is None:
        raise ConfigError(problems)
    return manifest


def _model(agent: Table, validate: ModelValidator | None) -> ModelConfig | None:
    if "model" not in agent.raw:
        return None
    t = agent.sub("model")
    if validate is not None:
        t.problems.extend(validate(t.raw, t.where))
    provider = t.text("provider", None)
    if provider is None and "provider" not in t.raw:
        t.problem("provider", "required: a non-empty string")
    if provider is not None and validate is None and provider not in PROVIDERS:
        t.problem("provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    name = t.text("name", None)
    # Its other keys belong to the providers (validate_model): none is unknown here.
    return ModelConfig(provider=provider or "invalid", name=name, raw=dict(t.raw), where=t.where)


def _web_search(agent: Table) -> SearchConfig | None:
    if "web_search" not in agent.raw:
        return None
    t = agent.sub("web_search")
    if "backend" not in t.raw:
        t.problem("backend", f"required: one of {', '.join(_SEARCH_BACKENDS)}")
    backend = t.choice("backend", "searxng", _SEARCH_BACKENDS)
    base_url = t.typed(
        "base_url", Annotated[str, Match(r"https?://[^/\s]+.*", "an http:// or https:// URL")], None
    )
    if backend == "searxng" and base_url is None and "base_url" not in t.raw:
        t.problem("base_url", "is required for searxng (your instance, e.g. http://127.0.0.1:8888)")
    d = SearchConfig(backend=backend)
    config = SearchConfig(
        backend=backend,
        base_url=base_url,
        api_key_env=t.typed("api_key_env", EnvName, d.api_key_env),
        max_results=t.integer("max_results", d.max_results, lo=1, hi=20),
    )
    t.unknown()
    return config


def _shell(agent: Table) -> ShellPolicy | None:
    if "shell" not in agent.raw:
        return None
    t = agent.sub("shell")
    d = ShellPolicy()
    allow: tuple[str, ...] = t.typed("allow", Names, d.allow)
    for cmd in allow:
        if "/" in cmd or cmd.startswith("-"):
            t.problem("allow", f"{cmd!r} must be a command name looked up on PATH, not a path or option")
    if len(set(allow)) != len(allow):
        t.problem("allow", "lists a name more than once")
    policy = ShellPolicy(
        allow=allow,
        timeout_s=float(t.integer("timeout_s", int(d.timeout_s), lo=1, hi=600)),
        cpu_s=t.integer("cpu_s", d.cpu_s, lo=1, hi=600),
        memory_mb=t.integer("memory_mb", d.memory_mb, lo=16, hi=16384),
        max_output_bytes=t.integer("max_output_bytes", d.max_output_bytes, lo=1024, hi=16 << 20),
        max_processes=t.integer("max_processes", d.max_processes, lo=1, hi=4096),
    )
    t.unknown()
    return policy


def _check_module(agent: Table, module: str, has_model: bool, base_dir: Path | None) -> None:
    """The module exists: a known built-in (the LLM agent with a model table), or a .wasm/.wat file."""
    if module.startswith("builtin:"):
        # Imported lazily: the built-in guest table is only needed to validate builtin names.
        from openfang.workers.sandbox.builtin_guests import BUILTINS

        if module.removeprefix("builtin:") not in BUILTINS:
            agent.problem(
                "module", f"unknown built-in module {module!r} (known: {', '.join(sorted(BUILTINS))})"
            )
        elif module == "builtin:llm-agent" and not has_model:
            agent.problems.append(
                Problem(agent.place.sub("model").where, "table is required for module 'builtin:llm-agent'")
            )
        return
    path = AgentManifest(name="x", module=module, base_dir=base_dir).module_path()
    assert path is not None
    if path.suffix not in (".wasm", ".wat"):
        agent.problem("module", f"must be 'builtin:<name>' or a path ending in .wasm or .wat, got {module!r}")
    elif not path.is_absolute():
        agent.problem("module", f"relative path {module!r} needs the manifest's file location to resolve")
    elif not path.is_file():
        agent.problem("module", f"file not found: {path}")
