"""Agent manifests (agent.toml): parse, validate everything at once, and return frozen dataclasses.

Every problem is reported in one :class:`ConfigError`, each with its place, e.g.
``agent.toml: [sandbox.fuel] key 'max_fuel'``. Unknown keys are errors (except inside ``[agent.model]``,
whose semantics belong to the LLM providers: pass ``validate_model`` to check it deeply).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openfang.protocol.errors import ConfigError, Problem
from openfang.workers.llm.presets import BY_NAME
from openfang.workers.sandbox import guest_abi
from openfang.workers.tools.core import SearchConfig, ShellPolicy
from openfang.workers.tools.mcp import McpServerConfig, declared, parse_servers

RestartPolicy = Literal["permanent", "transient", "temporary"]
RESTART_POLICIES = ("permanent", "transient", "temporary")
PROVIDERS = tuple(BY_NAME)  # the named presets (docs/llm-and-tools.md)
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ModelValidator = Callable[[Mapping[str, Any], str], list[Problem]]
RETENTION_POLICIES = ("keep", "archive", "purge")
RestorePolicy = Literal["fresh", "snapshot"]
RESTORE_POLICIES = ("fresh", "snapshot")
MAX_IDLE_HIBERNATE_S = 30 * 86_400  # a month: longer is "never" (0)
_GRANT = re.compile(r"^!?[A-Za-z0-9_.*?\-:/\[\]@]{1,128}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """[agent.model]: kept shallow; ``raw`` is the table as written, for ``make_provider``."""

    provider: str
    name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    where: str = "[agent.model]"  # "<manifest>: [agent.model]", for the provider's problems at spawn


@dataclass(frozen=True, slots=True, kw_only=True)
class FuelConfig:
    max_fuel: int = 500_000_000  # fuel an agent may burn per refuel interval
    refuel_interval_ms: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryConfig:
    max_heap_mb: int = 64
    stack_size_kb: int = 512
    # Tables count toward the agent's memory (8 bytes an element): C and Rust guests need one table of a
    # few hundred to a few thousand function references. table.grow past the cap returns -1.
    max_table_elements: int = 10_000  # per table
    max_tables: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionsConfig:
    allowed_host_functions: tuple[str, ...] = ()
    denied_host_functions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentPermissionsConfig:
    """[agent.permissions]: what the agent may do beyond its tools (layer 9, default deny).

    Patterns are globs over agent ids (``memory_read``, ``send``; ``self`` is the agent itself) or manifest
    names (``spawn``); ``!pattern`` denies and wins.
    """

    memory_read: tuple[str, ...] = ("self",)
    memory_write: tuple[str, ...] = ("self",)
    send: tuple[str, ...] = ()
    spawn: tuple[str, ...] = ()
    max_children: int = 8  # agents this agent may have running at once through agent_spawn


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    agent_id: str | None = None
    fuel: FuelConfig = field(default_factory=FuelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    permissions: PermissionsConfig = field(default_factory=PermissionsConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentManifest:
    """One validated agent.toml."""

    name: str
    module: str = "builtin:llm-agent"
    description: str = ""
    module_sha256: str | None = None
    version: int = 1
    system_prompt: str = ""
    tools: tuple[str, ...] = ()
    restart: RestartPolicy = "permanent"
    service: str | None = None
    max_calls_per_message: int = 16
    history_messages: int = 64  # newest conversation entries sent to the model per llm_invoke
    call_timeout_ms: int = 30_000
    restart_intensity: int = 1  # OTP defaults: more than 1 restart in 5 s gives the agent up
    restart_period_ms: int = 5_000
    model: ModelConfig | None = None
    permissions: AgentPermissionsConfig = field(default_factory=AgentPermissionsConfig)
    retention: str = "keep"  # what happens to the agent's memories when it is killed: keep/archive/purge
    secret_env: tuple[str, ...] = ()  # env vars whose values are secrets for this agent (exfil, redaction)
    # Seconds idle before the host hibernates the agent (its guest state to disk, its sandbox freed); None:
    # the cluster default applies; 0: never. A hibernated agent wakes on its next message.
    idle_hibernate_s: float | None = None
    # What a restart after a crash starts from: "fresh" (a new instance, agent_init runs) or "snapshot" (the
    # agent's last snapshot, when there is one; refused at spawn for a module with non-exported state).
    restore: RestorePolicy = "fresh"
    mcp: tuple[McpServerConfig, ...] = ()  # MCP servers whose tools this agent may use (workers/tools/mcp.py)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    shell: ShellPolicy | None = None  # [agent.shell]: what shell_exec may run (absent: nothing)
    web_search: SearchConfig | None = None  # [agent.web_search]: its backend (absent: the environment's)
    source: str = "agent.toml"
    base_dir: Path | None = None

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


class _Checker:
    """Collects problems while reading typed values out of TOML tables."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def where(self, table: str, key: str | None = None) -> str:
        return f"{self.source}: [{table}]" + (f" key '{key}'" if key is not None else "")

    def add(self, table: str, key: str | None, what: str) -> None:
        self.problems.append(Problem(self.where(table, key), what))

    def table(self, parent: Mapping[str, Any], key: str, table: str) -> Mapping[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.add(table, None, f"must be a table, got {type(value).__name__}")
            return {}
        return value

    def unknown(self, data: Mapping[str, Any], table: str, known: Collection[str]) -> None:
        for key in sorted(set(data) - set(known)):
            self.add(table, key, f"unknown key (known keys: {', '.join(sorted(known))})")

    def get_str(
        self,
        data: Mapping[str, Any],
        table: str,
        key: str,
        default: str | None,
        *,
        pattern: re.Pattern[str] | None = None,
        required: bool = False,
    ) -> str | None:
        if key not in data:
            if required:
                self.add(table, key, "is required")
            return default
        value = data[key]
        if not isinstance(value, str):
            self.add(table, key, f"must be a string, got {type(value).__name__}")
            return default
        if pattern is not None and not pattern.match(value):
            self.add(table, key, f"{value!r} does not match {pattern.pattern}")
            return default
        return value

    def get_int(self, data: Mapping[str, Any], table: str, key: str, default: int, lo: int, hi: int) -> int:
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self.add(table, key, f"must be an integer, got {type(value).__name__}")
            return default
        if not lo <= value <= hi:
            self.add(table, key, f"must be between {lo} and {hi}, got {value}")
            return default
        return value

    def get_names(self, data: Mapping[str, Any], table: str, key: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.add(table, key, "must be a list of non-empty strings")
            return ()
        if len(set(value)) != len(value):
            self.add(table, key, "lists a name more than once")
        return tuple(value)


_AGENT_KEYS = (
    "name",
    "description",
    "module",
    "module_sha256",
    "version",
    "system_prompt",
    "tools",
    "restart",
    "service",
    "max_calls_per_message",
    "history_messages",
    "call_timeout_ms",
    "restart_intensity",
    "restart_period_ms",
    "model",
    "permissions",
    "retention",
    "secret_env",
    "shell",
    "web_search",
    "idle_hibernate_s",
    "restore",
    "mcp",
)
_SHELL_KEYS = ("allow", "timeout_s", "cpu_s", "memory_mb", "max_output_bytes", "max_processes")
_PERMISSION_KEYS = ("memory_read", "memory_write", "send", "spawn", "max_children")


def load_manifest(
    path_or_text: str | Path,
    *,
    source: str | None = None,
    base_dir: Path | None = None,
    validate_model: ModelValidator | None = None,
    tool_names: Collection[str] | None = None,
    shared_mcp: tuple[McpServerConfig, ...] = (),
) -> AgentManifest:
    """Parse and validate a manifest from a file (a :class:`Path`) or TOML text (a :class:`str`).

    ``source`` names the manifest in problems (default: the file name, else ``agent.toml``); relative module
    paths resolve against ``base_dir`` (default: the file's directory). ``tool_names``, when given, is the
    registry every listed tool must exist in. ``shared_mcp`` are MCP servers every agent of the worker may
    name (the worker's ``mcp`` args): those the tools name join the manifest's ``mcp``. Raises
    :class:`ConfigError` with every problem found.
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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(Problem(source, f"not valid TOML: {exc}")) from None
    c = _Checker(source)
    c.unknown(data, "<top level>", ("agent", "sandbox", "publisher", "signature"))
    # A signed manifest (layer 13): the host checks the signature with security.attestation at spawn.
    for key in ("publisher", "signature"):
        if key in data and (not isinstance(data[key], str) or not data[key]):
            c.add("<top level>", key, "must be a non-empty string")
    if ("publisher" in data) != ("signature" in data):
        c.add("<top level>", "signature", "publisher and signature go together")
    agent = c.table(data, "agent", "agent")
    if "agent" not in data:
        c.add("agent", None, "table is required")
    c.unknown(agent, "agent", _AGENT_KEYS)
    name = c.get_str(agent, "agent", "name", None, pattern=_ID, required=True) or "invalid"
    module = c.get_str(agent, "agent", "module", "builtin:llm-agent") or "builtin:llm-agent"
    sha = c.get_str(agent, "agent", "module_sha256", None, pattern=_SHA256)
    restart = c.get_str(agent, "agent", "restart", "permanent") or "permanent"
    if restart not in RESTART_POLICIES:
        c.add("agent", "restart", f"must be one of {', '.join(RESTART_POLICIES)}, got {restart!r}")
        restart = "permanent"
    tools = c.get_names(agent, "agent", "tools")
    mcp: tuple[McpServerConfig, ...] = ()
    if "mcp" in agent:
        mcp, mcp_problems = parse_servers(agent["mcp"], c.where("agent"))
        c.problems.extend(mcp_problems)
    # The worker's shared servers (cluster.toml) that this manifest's tools name and it does not redefine.
    own = {s.name for s in mcp}
    mcp += tuple(s for s in shared_mcp if s.name not in own and any(declared(t, (s,)) for t in tools))
    if tool_names is not None:
        for tool in tools:
            if tool not in tool_names and not declared(tool, mcp):  # MCP tools are checked at spawn
                c.add("agent", "tools", f"unknown tool {tool!r} (known: {', '.join(sorted(tool_names))})")
    model = _model(c, agent, validate_model)
    retention = c.get_str(agent, "agent", "retention", "keep") or "keep"
    if retention not in RETENTION_POLICIES:
        c.add("agent", "retention", f"must be one of {', '.join(RETENTION_POLICIES)}, got {retention!r}")
        retention = "keep"
    secret_env = c.get_names(agent, "agent", "secret_env")
    for var in secret_env:
        if not _ENV.match(var):
            c.add("agent", "secret_env", f"{var!r} is not an environment variable name")
    restore = c.get_str(agent, "agent", "restore", "fresh") or "fresh"
    if restore not in RESTORE_POLICIES:
        c.add("agent", "restore", f"must be one of {', '.join(RESTORE_POLICIES)}, got {restore!r}")
        restore = "fresh"
    sandbox = _sandbox(c, c.table(data, "sandbox", "sandbox"))
    manifest = AgentManifest(
        name=name,
        module=module,
        description=c.get_str(agent, "agent", "description", "") or "",
        module_sha256=sha,
        version=c.get_int(agent, "agent", "version", 1, 1, 2**31),
        system_prompt=c.get_str(agent, "agent", "system_prompt", "") or "",
        tools=tools,
        restart=restart,  # type: ignore[arg-type]  # checked against RESTART_POLICIES above
        service=c.get_str(agent, "agent", "service", None, pattern=_ID),
        max_calls_per_message=c.get_int(agent, "agent", "max_calls_per_message", 16, 1, 1000),
        history_messages=c.get_int(agent, "agent", "history_messages", 64, 1, 4000),
        call_timeout_ms=c.get_int(agent, "agent", "call_timeout_ms", 30_000, 1, 3_600_000),
        restart_intensity=c.get_int(agent, "agent", "restart_intensity", 1, 0, 1000),
        restart_period_ms=c.get_int(agent, "agent", "restart_period_ms", 5_000, 1, 86_400_000),
        model=model,
        permissions=_permissions(c, c.table(agent, "permissions", "agent.permissions")),
        retention=retention,
        secret_env=secret_env,
        idle_hibernate_s=_idle_hibernate(c, agent),
        restore=restore,  # type: ignore[arg-type]  # checked against RESTORE_POLICIES above
        mcp=mcp,
        sandbox=sandbox,
        shell=_shell(c, agent),
        web_search=_web_search(c, agent),
        source=source,
        base_dir=base_dir,
    )
    _check_module(c, manifest)
    if c.problems:
        raise ConfigError(c.problems)
    return manifest


def _model(c: _Checker, agent: Mapping[str, Any], validate: ModelValidator | None) -> ModelConfig | None:
    if "model" not in agent:
        return None
    table = c.table(agent, "model", "agent.model")
    if validate is not None:
        c.problems.extend(validate(table, c.where("agent.model")))
    provider = c.get_str(table, "agent.model", "provider", None, required=True)
    if provider is not None and validate is None and provider not in PROVIDERS:
        c.add("agent.model", "provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    name = c.get_str(table, "agent.model", "name", None)
    return ModelConfig(
        provider=provider or "invalid", name=name, raw=dict(table), where=c.where("agent.model")
    )


_SEARCH_BACKENDS = ("searxng", "brave", "tavily")


def _web_search(c: _Checker, agent: Mapping[str, Any]) -> SearchConfig | None:
    if "web_search" not in agent:
        return None
    table = c.table(agent, "web_search", "agent.web_search")
    c.unknown(table, "agent.web_search", ("backend", "base_url", "api_key_env", "max_results"))
    backend = c.get_str(table, "agent.web_search", "backend", None, required=True) or "searxng"
    if backend not in _SEARCH_BACKENDS:
        c.add("agent.web_search", "backend", f"must be one of {', '.join(_SEARCH_BACKENDS)}, got {backend!r}")
    base_url = c.get_str(table, "agent.web_search", "base_url", None)
    if base_url is not None and not re.match(r"^https?://[^/\s]+", base_url):
        c.add("agent.web_search", "base_url", f"must be an http:// or https:// URL, got {base_url!r}")
    if backend == "searxng" and base_url is None:
        c.add(
            "agent.web_search",
            "base_url",
            "is required for searxng (your instance, e.g. http://127.0.0.1:8888)",
        )
    key_env = c.get_str(table, "agent.web_search", "api_key_env", None, pattern=_ENV)
    return SearchConfig(
        backend=backend,
        base_url=base_url,
        api_key_env=key_env,
        max_results=c.get_int(table, "agent.web_search", "max_results", 10, 1, 20),
    )


def _shell(c: _Checker, agent: Mapping[str, Any]) -> ShellPolicy | None:
    if "shell" not in agent:
        return None
    table = c.table(agent, "shell", "agent.shell")
    c.unknown(table, "agent.shell", _SHELL_KEYS)
    allow = c.get_names(table, "agent.shell", "allow")
    for cmd in allow:
        if "/" in cmd or cmd.startswith("-"):
            c.add(
                "agent.shell",
                "allow",
                f"{cmd!r} must be a command name looked up on PATH, not a path or option",
            )
    d = ShellPolicy()
    return ShellPolicy(
        allow=allow,
        timeout_s=float(c.get_int(table, "agent.shell", "timeout_s", int(d.timeout_s), 1, 600)),
        cpu_s=c.get_int(table, "agent.shell", "cpu_s", d.cpu_s, 1, 600),
        memory_mb=c.get_int(table, "agent.shell", "memory_mb", d.memory_mb, 16, 16384),
        max_output_bytes=c.get_int(
            table, "agent.shell", "max_output_bytes", d.max_output_bytes, 1024, 16 << 20
        ),
        max_processes=c.get_int(table, "agent.shell", "max_processes", d.max_processes, 1, 4096),
    )


def _idle_hibernate(c: _Checker, agent: Mapping[str, Any]) -> float | None:
    """``idle_hibernate_s``: seconds (int or float) from 0 (never) to a month; absent: the cluster default."""
    if "idle_hibernate_s" not in agent:
        return None
    value = agent["idle_hibernate_s"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        c.add("agent", "idle_hibernate_s", f"must be a number of seconds, got {type(value).__name__}")
        return None
    if not 0 <= value <= MAX_IDLE_HIBERNATE_S:
        c.add(
            "agent",
            "idle_hibernate_s",
            f"must be between 0 (never) and {MAX_IDLE_HIBERNATE_S} seconds, got {value}",
        )
        return None
    return float(value)


def _permissions(c: _Checker, table: Mapping[str, Any]) -> AgentPermissionsConfig:
    c.unknown(table, "agent.permissions", _PERMISSION_KEYS)
    d = AgentPermissionsConfig()
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("memory_read", "memory_write", "send", "spawn"):
        if key not in table:
            lists[key] = getattr(d, key)
            continue
        names = c.get_names(table, "agent.permissions", key)
        for i, pattern in enumerate(names):
            if not _GRANT.match(pattern):
                c.add("agent.permissions", f"{key}[{i}]", f"not a valid name or glob pattern: {pattern!r}")
        lists[key] = names
    return AgentPermissionsConfig(
        **lists, max_children=c.get_int(table, "agent.permissions", "max_children", d.max_children, 0, 10_000)
    )


def _sandbox(c: _Checker, sandbox: Mapping[str, Any]) -> SandboxConfig:
    c.unknown(sandbox, "sandbox", ("agent_id", "fuel", "memory", "permissions"))
    fuel_t = c.table(sandbox, "fuel", "sandbox.fuel")
    c.unknown(fuel_t, "sandbox.fuel", ("max_fuel", "refuel_interval_ms"))
    mem_t = c.table(sandbox, "memory", "sandbox.memory")
    c.unknown(mem_t, "sandbox.memory", ("max_heap_mb", "stack_size_kb", "max_table_elements", "max_tables"))
    perm_t = c.table(sandbox, "permissions", "sandbox.permissions")
    c.unknown(perm_t, "sandbox.permissions", ("allowed_host_functions", "denied_host_functions"))
    allowed = c.get_names(perm_t, "sandbox.permissions", "allowed_host_functions")
    denied = c.get_names(perm_t, "sandbox.permissions", "denied_host_functions")
    for fn in allowed:
        if fn not in guest_abi.KNOWN_IMPORTS:
            known = ", ".join(sorted(guest_abi.KNOWN_IMPORTS))
            c.add(
                "sandbox.permissions",
                "allowed_host_functions",
                f"unknown host function {fn!r} (known: {known})",
            )
    both = sorted(set(allowed) & set(denied))
    if both:
        c.add("sandbox.permissions", "denied_host_functions", f"also listed as allowed: {', '.join(both)}")
    return SandboxConfig(
        agent_id=c.get_str(sandbox, "sandbox", "agent_id", None, pattern=_ID),
        fuel=FuelConfig(
            max_fuel=c.get_int(fuel_t, "sandbox.fuel", "max_fuel", 500_000_000, 10_000, 10**15),
            refuel_interval_ms=c.get_int(fuel_t, "sandbox.fuel", "refuel_interval_ms", 1000, 1, 3_600_000),
        ),
        memory=MemoryConfig(
            max_heap_mb=c.get_int(mem_t, "sandbox.memory", "max_heap_mb", 64, 1, 4096),
            stack_size_kb=c.get_int(mem_t, "sandbox.memory", "stack_size_kb", 512, 64, 65536),
            max_table_elements=c.get_int(mem_t, "sandbox.memory", "max_table_elements", 10_000, 0, 1 << 27),
            max_tables=c.get_int(mem_t, "sandbox.memory", "max_tables", 4, 0, 64),
        ),
        permissions=PermissionsConfig(allowed_host_functions=allowed, denied_host_functions=denied),
    )


def _check_module(c: _Checker, m: AgentManifest) -> None:
    if m.module.startswith("builtin:"):
        # Imported lazily: the built-in guest table is only needed to validate builtin names.
        from openfang.workers.sandbox.builtin_guests import BUILTINS

        if m.module.removeprefix("builtin:") not in BUILTINS:
            c.add(
                "agent",
                "module",
                f"unknown built-in module {m.module!r} (known: {', '.join(sorted(BUILTINS))})",
            )
        elif m.module == "builtin:llm-agent" and m.model is None:
            c.add("agent.model", None, "table is required for module 'builtin:llm-agent'")
        return
    path = m.module_path()
    assert path is not None
    if path.suffix not in (".wasm", ".wat"):
        c.add(
            "agent", "module", f"must be 'builtin:<name>' or a path ending in .wasm or .wat, got {m.module!r}"
        )
    elif not path.is_absolute():
        c.add("agent", "module", f"relative path {m.module!r} needs the manifest's file location to resolve")
    elif not path.is_file():
        c.add("agent", "module", f"file not found: {path}")
