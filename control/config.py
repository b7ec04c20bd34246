"""``cluster.toml``: the daemon's configuration, parsed into frozen dataclasses, every problem reported.

Tables: ``[cluster]`` (name, data_dir), ``[control]`` (endpoints and limits of the control gateway),
``[logging]``, ``[supervisor]`` (the tree; parsed by :mod:`openfang.control.tree_config`),
``[memory]`` and ``[security]`` (passed to their subsystems), ``[http]`` (the HTTP face, a child of its
own: see :mod:`openfang.control.http`). See docs/config.md for every key.

The root of the tree is the daemon itself; the control gateway is always its first child (id
``control``), so a client can reach the tree whatever the user's children are.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from openfang.control.tree_config import parse_supervisor
from openfang.protocol.errors import ConfigError, Problem
from openfang.protocol.sockets import MAX_IPC_PATH
from openfang.security.config import SecurityConfig, parse_security
from openfang.supervisor.spec import ChildSpec, ChildType, Restart, SupervisorSpec

GATEWAY_ID = "control"
GATEWAY_START = "openfang.control.gateway:main"
HTTP_ID = "http"
HTTP_START = "openfang.control.http.server:main"
# What `[http]` needs beyond the core install (the `http` extra), by import name.
HTTP_MODULES = ("starlette", "uvicorn", "mcp", "a2a", "prometheus_client")

_CLUSTER_KEYS = {"name", "data_dir"}
_CONTROL_KEYS = {
    "endpoint",
    "events",
    "workers",
    "socket_mode",
    "max_frame_bytes",
    "queue_limit",
    "hwm",
    "request_timeout_ms",
    "keys_dir",
}
_LOGGING_KEYS = {"level", "format"}
_HTTP_KEYS = {
    "enabled",
    "listen",
    "tokens",
    "tls_cert",
    "tls_key",
    "default_agent",
    "public_url",
    "key_name",
    "push_allow_hosts",
    "metrics_per_agent",
    "metrics_top_agents",
}
_TOP_KEYS = {"cluster", "control", "logging", "supervisor", "memory", "security", "http"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    """The control gateway: client endpoint (ROUTER), event stream (PUB), internal worker endpoint."""

    endpoint: str
    events: str
    workers: str
    socket_mode: int = 0o600
    max_frame_bytes: int = 1 << 20
    queue_limit: int = 1000
    hwm: int = 1000
    request_timeout_ms: int = 10_000
    keys_dir: str | None = None

    def as_args(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "events": self.events,
            "workers": self.workers,
            "socket_mode": self.socket_mode,
            "max_frame_bytes": self.max_frame_bytes,
            "queue_limit": self.queue_limit,
            "hwm": self.hwm,
            "request_timeout_ms": self.request_timeout_ms,
            "keys_dir": self.keys_dir,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto: console on a terminal, JSON otherwise


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    """[http]: the HTTP face (OpenAI-compatible API, MCP, A2A), a ZeroMQ client of the gateway.

    ``tokens`` are bearer tokens; they are required when ``listen`` is not a loopback address, and when
    given they are required from every caller. ``tls_cert``/``tls_key`` turn on HTTPS (both or neither).
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8470
    tokens: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    default_agent: str | None = None  # the agent (name or id) behind the cluster's A2A card
    public_url: str | None = None  # the base URL clients see (cards name it); default from listen
    key_name: str = "client"  # the CURVE key pair in [control] keys_dir, when the control endpoint is tcp
    push_allow_hosts: tuple[str, ...] = ()  # A2A webhook hosts allowed although private or loopback
    metrics_per_agent: bool = False  # /metrics: per-agent series (the top agents by messages) as well
    metrics_top_agents: int = 100  # /metrics: at most this many agents get per-agent series

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def as_args(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "tokens": list(self.tokens),
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "default_agent": self.default_agent,
            "base_url": self.base_url,
            "key_name": self.key_name,
            "push_allow_hosts": list(self.push_allow_hosts),
            "metrics_per_agent": self.metrics_per_agent,
            "metrics_top_agents": self.metrics_top_agents,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """The whole parsed ``cluster.toml``. ``tree`` is the root spec with the gateway already in front."""

    source: str
    name: str
    data_dir: Path
    control: ControlConfig
    logging: LoggingConfig
    tree: SupervisorSpec
    memory: Mapping[str, Any] = field(default_factory=dict)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    security_args: Mapping[str, Any] = field(default_factory=dict)  # for children to re-parse after fork
    http: HttpConfig = field(default_factory=HttpConfig)

    def child_environment(self) -> dict[str, str]:
        """Variables every child inherits (children learn the cluster's endpoints from them)."""
        return {
            "OPENFANG_CLUSTER": self.name,
            "OPENFANG_DATA_DIR": str(self.data_dir),
            "OPENFANG_CONTROL_ENDPOINT": self.control.endpoint,
            "OPENFANG_EVENTS_ENDPOINT": self.control.events,
            "OPENFANG_WORKERS_ENDPOINT": self.control.workers,
        }


def load_config(path: str | os.PathLike[str], *, data_dir: str | None = None) -> ClusterConfig:
    """Read and validate ``path``. Raises ConfigError listing every problem, each with file, table and key."""
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(source, f"cannot read the file: {exc.strerror or exc}")]) from None
    return parse_config(text, source=source, base_dir=p.absolute().parent, data_dir=data_dir)


def parse_config(text: str, *, source: str, base_dir: Path, data_dir: str | None = None) -> ClusterConfig:
    """Parse the TOML text of a cluster config (see :func:`load_config`)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(source, f"not valid TOML: {exc}")]) from None
    problems: list[Problem] = []
    for key in sorted(set(raw) - _TOP_KEYS):
        problems.append(
            Problem(f"{source}: [{key}]", f"unknown table (known: {', '.join(sorted(_TOP_KEYS))})")
        )

    cluster = _table(raw, "cluster", source, problems)
    _unknown(cluster, _CLUSTER_KEYS, f"{source}: [cluster]", problems)
    name = _str(cluster, "name", "openfang", f"{source}: [cluster]", problems)
    data_dir_s = data_dir or _str(cluster, "data_dir", ".openfang-data", f"{source}: [cluster]", problems)
    resolved_data = (base_dir / os.path.expanduser(data_dir_s)).resolve()

    control = _parse_control(
        _table(raw, "control", source, problems), resolved_data, base_dir, source, problems
    )
    logging_cfg = _parse_logging(_table(raw, "logging", source, problems), source, problems)

    tree: SupervisorSpec | None = None
    try:
        tree = parse_supervisor(_table(raw, "supervisor", source, problems), source=source)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if tree is not None and any(c.id == GATEWAY_ID for c in tree.children):
        problems.append(
            Problem(
                f"{source}: [supervisor.children]", f"id {GATEWAY_ID!r} is reserved for the control gateway"
            )
        )
    http = (
        _parse_http(_table(raw, "http", source, problems), base_dir, source, problems)
        if "http" in raw
        else HttpConfig()
    )
    if http.enabled and tree is not None and any(c.id == HTTP_ID for c in tree.children):
        problems.append(
            Problem(f"{source}: [supervisor.children]", f"id {HTTP_ID!r} is reserved for the [http] face")
        )
    security_table = _table(raw, "security", source, problems)
    security = SecurityConfig()
    try:
        security = parse_security(
            security_table, source, data_dir=resolved_data, base_dir=base_dir, check_files=True
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or tree is None or control is None:
        raise ConfigError(problems)
    sec_args = {
        "table": security_table,
        "source": source,
        "data_dir": str(resolved_data),
        "base_dir": str(base_dir),
    }
    full_tree = with_gateway(with_worker_security(tree, sec_args), control, sec_args)
    return ClusterConfig(
        source=source,
        name=name,
        data_dir=resolved_data,
        control=control,
        logging=logging_cfg,
        tree=with_http(full_tree, http, control, sec_args) if http.enabled else full_tree,
        memory=_table(raw, "memory", source, problems),
        security=security,
        security_args=sec_args,
        http=http,
    )


WORKER_START = "openfang.workers.worker:main"
SCHEDULER_START = "openfang.control.scheduler:main"
# Children that apply or need the cluster's [security] (workers enforce layers; the scheduler signs).
_SECURITY_CHILDREN = (WORKER_START, SCHEDULER_START)


def with_worker_security(tree: SupervisorSpec, security: Mapping[str, Any]) -> SupervisorSpec:
    """Give every worker (at any depth) the cluster's [security] config in its args, unless it has its own.

    Workers enforce most layers (injection, agent rate limits, permissions, exfiltration, redaction...), so
    they must see the same config the gateway sees, not the defaults.
    """
    children = []
    for child in tree.children:
        if child.supervisor is not None:
            child = replace(child, supervisor=with_worker_security(child.supervisor, security))
        elif child.start in _SECURITY_CHILDREN and "security" not in child.args:
            child = replace(child, args={**child.args, "security": dict(security)})
        children.append(child)
    return replace(tree, children=tuple(children))


def with_gateway(
    tree: SupervisorSpec, control: ControlConfig, security: Mapping[str, Any] | None = None
) -> SupervisorSpec:
    """The root spec with the control gateway as its first child."""
    gateway = ChildSpec(
        id=GATEWAY_ID,
        start=GATEWAY_START,
        args={**control.as_args(), "security": dict(security or {})},
        restart=Restart.PERMANENT,
        shutdown=2000,
        type=ChildType.WORKER,
        heartbeat_ms=5000,
    )
    return replace(tree, children=(gateway, *tree.children))


def with_http(
    tree: SupervisorSpec, http: HttpConfig, control: ControlConfig, security: Mapping[str, Any] | None = None
) -> SupervisorSpec:
    """The root spec with the HTTP face as its last child (it serves once the workers are up).

    It gets [security] like the scheduler: to sign its requests when the cluster requires signatures.
    """
    child = ChildSpec(
        id=HTTP_ID,
        start=HTTP_START,
        args={**http.as_args(), "control": control.as_args(), "security": dict(security or {})},
        restart=Restart.PERMANENT,
        shutdown=5000,
        type=ChildType.WORKER,
        heartbeat_ms=5000,
    )
    return replace(tree, children=(*tree.children, child))


def missing_http_modules() -> list[str]:
    """The modules of the ``http`` extra that cannot be imported here (empty: it is installed)."""
    import importlib.util

    missing = []
    for name in HTTP_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            missing.append(name)
    return missing


def _parse_http(table: Mapping[str, Any], base_dir: Path, source: str, problems: list[Problem]) -> HttpConfig:
    where = f"{source}: [http]"
    _unknown(table, _HTTP_KEYS, where, problems)
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(Problem(f"{where} key 'enabled'", f"must be true or false, got {enabled!r}"))
        enabled = False
    listen = _str(table, "listen", "127.0.0.1:8470", where, problems)
    host, sep, port_s = listen.rpartition(":")
    host = host.strip("[]")
    port = 8470
    if not sep or not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        problems.append(
            Problem(f"{where} key 'listen'", f"must be HOST:PORT (e.g. 127.0.0.1:8470), got {listen!r}")
        )
        host = "127.0.0.1"
    else:
        port = int(port_s)
    tokens = table.get("tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) and len(t) >= 16 for t in tokens):
        problems.append(
            Problem(f"{where} key 'tokens'", "must be a list of strings of at least 16 characters")
        )
        tokens = []
    if enabled and host not in _LOOPBACK and not tokens:
        problems.append(
            Problem(f"{where} key 'tokens'", f"required when listen is not a loopback address (got {host!r})")
        )
    paths: dict[str, str | None] = {}
    for key in ("tls_cert", "tls_key"):
        value = table.get(key)
        if value is None:
            paths[key] = None
            continue
        if not isinstance(value, str) or not value:
            problems.append(Problem(f"{where} key {key!r}", f"must be a file path, got {value!r}"))
            paths[key] = None
            continue
        path = (base_dir / os.path.expanduser(value)).resolve()
        if not path.is_file():
            problems.append(Problem(f"{where} key {key!r}", f"file not found: {path}"))
        paths[key] = str(path)
    if (paths["tls_cert"] is None) != (paths["tls_key"] is None):
        problems.append(Problem(f"{where} key 'tls_key'", "tls_cert and tls_key go together"))
    optional: dict[str, str | None] = {}
    for key in ("default_agent", "public_url"):
        value = table.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(Problem(f"{where} key {key!r}", f"must be a non-empty string, got {value!r}"))
            value = None
        optional[key] = value
    url = optional["public_url"]
    if url is not None and not url.startswith(("http://", "https://")):
        problems.append(
            Problem(f"{where} key 'public_url'", f"must start with http:// or https://, got {url!r}")
        )
    key_name = _str(table, "key_name", "client", where, problems)
    push_hosts = table.get("push_allow_hosts", [])
    if not isinstance(push_hosts, list) or not all(isinstance(h, str) and h for h in push_hosts):
        problems.append(
            Problem(f"{where} key 'push_allow_hosts'", "must be a list of host names or addresses")
        )
        push_hosts = []
    per_agent = table.get("metrics_per_agent", False)
    if not isinstance(per_agent, bool):
        problems.append(
            Problem(f"{where} key 'metrics_per_agent'", f"must be true or false, got {per_agent!r}")
        )
        per_agent = False
    top_agents = table.get("metrics_top_agents", 100)
    if isinstance(top_agents, bool) or not isinstance(top_agents, int) or not 1 <= top_agents <= 1000:
        problems.append(
            Problem(
                f"{where} key 'metrics_top_agents'", f"must be an integer from 1 to 1000, got {top_agents!r}"
            )
        )
        top_agents = 100
    if enabled and (missing := missing_http_modules()):
        problems.append(
            Problem(
                where,
                f"the HTTP face needs the 'http' extra, which is not installed (missing modules: "
                f"{', '.join(missing)}): pip install 'openfang[http]', or set enabled = false",
            )
        )
    return HttpConfig(
        enabled=enabled,
        host=host,
        port=port,
        tokens=tuple(tokens),
        tls_cert=paths["tls_cert"],
        tls_key=paths["tls_key"],
        default_agent=optional["default_agent"],
        public_url=url,
        key_name=key_name,
        push_allow_hosts=tuple(push_hosts),
        metrics_per_agent=per_agent,
        metrics_top_agents=top_agents,
    )


def _parse_control(
    table: Mapping[str, Any], data_dir: Path, base_dir: Path, source: str, problems: list[Problem]
) -> ControlConfig | None:
    where = f"{source}: [control]"
    _unknown(table, _CONTROL_KEYS, where, problems)
    run_dir = data_dir / "run"

    def endpoint(key: str, default: str) -> str:
        value = _str(table, key, default, where, problems).replace("{data_dir}", str(data_dir))
        if value.startswith("ipc://"):
            path = value[len("ipc://") :]
            if not path.startswith("/"):
                path = str((base_dir / path).resolve())
                value = "ipc://" + path
            if len(os.fsencode(path)) > MAX_IPC_PATH:
                problems.append(
                    Problem(
                        f"{where} key {key!r}",
                        f"ipc path is {len(os.fsencode(path))} bytes, the limit is {MAX_IPC_PATH}",
                    )
                )
        elif value.startswith("tcp://"):
            if not table.get("keys_dir"):
                problems.append(
                    Problem(f"{where} key {key!r}", "tcp:// endpoints require CURVE: set [control] keys_dir")
                )
        else:
            problems.append(
                Problem(f"{where} key {key!r}", f"must start with ipc:// or tcp://, got {value!r}")
            )
        return value

    ep = endpoint("endpoint", f"ipc://{run_dir}/control.sock")
    events = endpoint("events", f"ipc://{run_dir}/events.sock")
    workers = endpoint("workers", f"ipc://{run_dir}/workers.sock")
    mode_s = _str(table, "socket_mode", "0600", where, problems)
    try:
        mode = int(mode_s, 8)
        if mode not in (0o600, 0o660):
            raise ValueError
    except ValueError:
        problems.append(Problem(f"{where} key 'socket_mode'", f'must be "0600" or "0660", got {mode_s!r}'))
        mode = 0o600
    ints = {}
    for key, default, low in (
        ("max_frame_bytes", 1 << 20, 64),
        ("queue_limit", 1000, 1),
        ("hwm", 1000, 1),
        ("request_timeout_ms", 10_000, 10),
    ):
        value = table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(Problem(f"{where} key {key!r}", f"must be an integer >= {low}, got {value!r}"))
            value = default
        ints[key] = value
    keys_dir = table.get("keys_dir")
    if keys_dir is not None and not isinstance(keys_dir, str):
        problems.append(Problem(f"{where} key 'keys_dir'", f"must be a string path, got {keys_dir!r}"))
        keys_dir = None
    if isinstance(keys_dir, str):
        keys_dir = str((base_dir / os.path.expanduser(keys_dir)).resolve())
    return ControlConfig(
        endpoint=ep, events=events, workers=workers, socket_mode=mode, keys_dir=keys_dir, **ints
    )


def _parse_logging(table: Mapping[str, Any], source: str, problems: list[Problem]) -> LoggingConfig:
    where = f"{source}: [logging]"
    _unknown(table, _LOGGING_KEYS, where, problems)
    level = _str(table, "level", "info", where, problems)
    if level not in _LEVELS:
        problems.append(
            Problem(f"{where} key 'level'", f"must be one of {', '.join(_LEVELS)}, got {level!r}")
        )
        level = "info"
    fmt = _str(table, "format", "auto", where, problems)
    if fmt not in ("auto", "json", "console"):
        problems.append(Problem(f"{where} key 'format'", f"must be auto, json or console, got {fmt!r}"))
        fmt = "auto"
    return LoggingConfig(level=level, format=fmt)


def _table(raw: Mapping[str, Any], key: str, source: str, problems: list[Problem]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problems.append(Problem(f"{source}: [{key}]", f"must be a table, got {type(value).__name__}"))
        return {}
    return value


def _unknown(table: Mapping[str, Any], known: set[str], where: str, problems: list[Problem]) -> None:
    for key in sorted(set(table) - known):
        problems.append(Problem(f"{where} key {key!r}", f"unknown key (known: {', '.join(sorted(known))})"))


def _str(table: Mapping[str, Any], key: str, default: str, where: str, problems: list[Problem]) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        problems.append(Problem(f"{where} key {key!r}", f"must be a non-empty string, got {value!r}"))
        return default
    return value
