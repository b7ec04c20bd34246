"""``cluster.toml``: the daemon's configuration, parsed into frozen dataclasses, every problem reported.

Tables: ``[cluster]`` (name, data_dir), ``[control]`` (endpoints and limits of the control gateway),
``[logging]``, ``[supervisor]`` (the tree; parsed by :mod:`openfang.control.tree_config`),
``[memory]`` and ``[security]`` (passed to their subsystems), ``[http]`` (the HTTP face, a child of its
own: see :mod:`openfang.control.http`), ``[metrics]`` (a plain Prometheus endpoint, a child of its own).
See docs/config.md for every key.

Each table is a section of :mod:`openfang.protocol.config_kit`: a frozen dataclass whose fields are the
keys, with their bounds in the annotation and their one default; the kit reads them all in one pass.

The root of the tree is the daemon itself; the control gateway is always its first child (id
``control``), so a client can reach the tree whatever the user's children are.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from openfang.control.tree_config import ElasticPool, elastic_pools, parse_supervisor
from openfang.protocol.config_kit import Doc, Match, Parse, Place, Range, Table
from openfang.protocol.errors import ConfigError, Problem
from openfang.protocol.sockets import MAX_IPC_PATH
from openfang.security.config import SecurityConfig, parse_security, prepare_security_args, security_args
from openfang.supervisor.spec import ChildSpec, ChildType, Restart, SupervisorSpec

GATEWAY_ID = "control"
GATEWAY_START = "openfang.control.gateway:main"
HTTP_ID = "http"
HTTP_START = "openfang.control.http.server:main"
METRICS_ID = "metrics"
METRICS_START = "openfang.control.http.metrics_server:main"
# What `[http]` needs beyond the core install (the `http` extra), by import name.
HTTP_MODULES = ("starlette", "uvicorn", "mcp", "a2a", "prometheus_client")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RUN = "ipc://{data_dir}/run"


def _socket_mode(value: Any) -> int:
    if value not in ("0600", "0660"):
        raise ValueError(f'must be "0600" or "0660", got {value!r}')
    return int(value, 8)


def _listen(value: Any) -> str:
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT (e.g. 127.0.0.1:8470), got {value!r}")
    return str(value)


def _tokens(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(t, str) and len(t) >= 16 for t in value):
        raise ValueError("must be a list of strings of at least 16 characters")
    return tuple(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSection:
    """[cluster]: the cluster's name and where it keeps its state."""

    name: Annotated[str, Doc("shown in `openfang status`, bound to every log line as `node`")] = "openfang"
    data_dir: Annotated[str, Doc("sockets, registry, memory, logs; relative to the config file")] = (
        ".openfang-data"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    """[control]: the gateway's client endpoint (ROUTER), event stream (PUB), internal worker endpoint.

    The defaults are the one definition (docs/config.md, the gateway and the HTTP face read them from here).
    ``{data_dir}`` in an endpoint is the resolved data dir (:func:`parse_config` resolves it).
    """

    endpoint: str = f"{_RUN}/control.sock"
    events: str = f"{_RUN}/events.sock"
    workers: str = f"{_RUN}/workers.sock"
    socket_mode: Annotated[int, Parse(_socket_mode, '"0600" or "0660"')] = 0o600
    max_frame_bytes: Annotated[int, Range(64)] = 1 << 20
    queue_limit: Annotated[int, Range(1), Doc("requests in flight in the gateway; past it, busy")] = 1000
    hwm: Annotated[int, Range(1), Doc("ZeroMQ high-water marks")] = 1000
    request_timeout_ms: Annotated[int, Range(10)] = 10_000
    keys_dir: Annotated[str, Doc("CURVE keys; required when any endpoint is tcp://")] | None = None
    held_per_agent: Annotated[
        int, Range(0), Doc("messages held for one restarting or moving agent; past it, `restarting`")
    ] = 256
    held_total: Annotated[int, Range(0), Doc("messages held for all such agents together")] = 10_000
    held_ms: Annotated[
        int, Range(0), Doc("how long a held message waits for its agent before `restarting`")
    ] = 5_000


def default_control(data_dir: str | os.PathLike[str]) -> ControlConfig:
    """The [control] of a cluster that sets none, its endpoints under ``data_dir`` (how a client finds a
    daemon from its data dir alone)."""
    run = str(Path(data_dir).expanduser().resolve())
    d = ControlConfig()
    return replace(
        d,
        endpoint=d.endpoint.replace("{data_dir}", run),
        events=d.events.replace("{data_dir}", run),
        workers=d.workers.replace("{data_dir}", run),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """[logging]."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Annotated[
        Literal["auto", "json", "console"], Doc("auto: console on a terminal, JSON otherwise")
    ] = "auto"


def listen_host(listen: str) -> str:
    """The host of a checked ``HOST:PORT`` (an IPv6 host without its brackets)."""
    return listen.rpartition(":")[0].strip("[]")


def listen_port(listen: str) -> int:
    """The port of a checked ``HOST:PORT``."""
    return int(listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    """[http]: the HTTP face (OpenAI-compatible API, MCP, A2A), a ZeroMQ client of the gateway.

    ``tokens`` are bearer tokens; they are required when ``listen`` is not a loopback address, and when
    given they are required from every caller. ``tls_cert``/``tls_key`` turn on HTTPS (both or neither).
    ``enabled`` defaults to true *with the table*; without it the cluster has ``DISABLED_HTTP``.
    """

    enabled: bool = True
    listen: Annotated[str, Parse(_listen, "HOST:PORT")] = "127.0.0.1:8470"
    tokens: Annotated[tuple[str, ...], Parse(_tokens, "a list of strings of at least 16 characters")] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    default_agent: Annotated[str, Doc("the agent (name or id) behind the cluster's A2A card")] | None = None
    public_url: Annotated[str, Match(r"https?://.+", "a URL starting with http:// or https://")] | None = None
    key_name: Annotated[str, Doc("the CURVE key pair in [control] keys_dir, for a tcp control endpoint")] = (
        "client"
    )
    push_allow_hosts: Annotated[tuple[str, ...], Doc("A2A webhook hosts allowed although private")] = ()
    metrics_per_agent: Annotated[bool, Doc("/metrics: per-agent series (the top agents) as well")] = False
    metrics_top_agents: Annotated[int, Range(1, 1000), Doc("/metrics: at most this many agents")] = 100

    @property
    def host(self) -> str:
        return listen_host(self.listen)

    @property
    def port(self) -> int:
        return listen_port(self.listen)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.enabled and self.host not in _LOOPBACK and not self.tokens:
            problems.append(("tokens", f"required when listen is not a loopback address (got {self.host!r})"))
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append(("tls_key", "tls_cert and tls_key go together"))
        return problems


DISABLED_HTTP = HttpConfig(enabled=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """[metrics]: the face's ``/metrics`` collector on a plain port of its own (no tokens), for a cluster
    without the HTTP face; its child is :mod:`openfang.control.http.metrics_server`."""

    listen: Annotated[str, Parse(_listen, "HOST:PORT"), Doc("where it serves the metrics text, e.g. :9464")]
    per_agent: Annotated[bool, Doc("per-agent series (the top agents), as [http] metrics_per_agent")] = False
    top_agents: Annotated[int, Range(1, 1000), Doc("with per_agent: at most this many agents")] = 100

    @property
    def host(self) -> str:
        return listen_host(self.listen)

    @property
    def port(self) -> int:
        return listen_port(self.listen)


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
    # [security] as plain data, for the children under nested supervisors (see with_worker_security).
    security_args: Mapping[str, Any] = field(default_factory=dict)
    http: HttpConfig = DISABLED_HTTP
    metrics: MetricsConfig | None = None  # [metrics] (None: no such table)
    # The elastic worker pools (a pool's min_running < count): the root sends them to the gateway, whose
    # policy (control/elastic.py) grows and shrinks them; not part of the gateway's spec, so a reload that
    # changes them does not restart the gateway.
    pools: tuple[ElasticPool, ...] = ()

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
    top = Table(raw, Place.file(source), problems)
    cluster = top.section(ClusterSection, "cluster") or ClusterSection()
    resolved_data = (base_dir / os.path.expanduser(data_dir or cluster.data_dir)).resolve()
    control = _resolve_control(
        top.section(ControlConfig, "control"),
        resolved_data,
        base_dir,
        Place.table(source, "control"),
        problems,
    )
    logging_cfg = top.section(LoggingConfig, "logging") or LoggingConfig()

    tree: SupervisorSpec | None = None
    supervisor_table = top.sub("supervisor").raw
    try:
        tree = parse_supervisor(supervisor_table, source=source)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if tree is not None and any(c.id == GATEWAY_ID for c in tree.children):
        problems.append(
            Problem(
                f"{source}: [supervisor.children]", f"id {GATEWAY_ID!r} is reserved for the control gateway"
            )
        )
    http = DISABLED_HTTP
    if "http" in raw:
        http = _resolve_http(top.section(HttpConfig, "http"), base_dir, Place.table(source, "http"), problems)
    if http.enabled and tree is not None and any(c.id == HTTP_ID for c in tree.children):
        problems.append(
            Problem(f"{source}: [supervisor.children]", f"id {HTTP_ID!r} is reserved for the [http] face")
        )
    metrics = top.section(MetricsConfig, "metrics") if "metrics" in raw else None
    if metrics is not None and tree is not None and any(c.id == METRICS_ID for c in tree.children):
        problems.append(
            Problem(f"{source}: [supervisor.children]", f"id {METRICS_ID!r} is reserved for [metrics]")
        )
    if metrics is not None and not http.enabled and (missing := missing_http_modules()):
        problems.append(
            Problem(f"{source}: [metrics]", f"needs the 'http' extra (missing: {', '.join(missing)})")
        )
    security_table = top.sub("security").raw
    memory_table = top.sub("memory").raw
    top.unknown()
    security = SecurityConfig()
    try:
        security = parse_security(
            security_table, source, data_dir=resolved_data, base_dir=base_dir, check_files=True
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or tree is None or control is None:
        raise ConfigError(problems)
    sec_args = security_args(
        security_table, source=source, data_dir=resolved_data, base_dir=base_dir, parsed=security
    )
    full_tree = with_gateway(with_worker_security(tree, sec_args), control, security, resolved_data)
    if metrics is not None:
        full_tree = with_metrics(full_tree, metrics, control, security)
    return ClusterConfig(
        source=source,
        name=cluster.name,
        data_dir=resolved_data,
        control=control,
        logging=logging_cfg,
        tree=with_http(full_tree, http, control, security) if http.enabled else full_tree,
        memory=dict(memory_table),
        security=security,
        security_args=sec_args,
        http=http,
        metrics=metrics,
        pools=elastic_pools(supervisor_table),
    )


WORKER_START = "openfang.workers.worker:main"
SCHEDULER_START = "openfang.control.scheduler:main"
# Children that apply or need the cluster's [security] (workers enforce layers; the scheduler signs).
_SECURITY_CHILDREN = (WORKER_START, SCHEDULER_START)


def with_worker_security(tree: SupervisorSpec, security: Mapping[str, Any]) -> SupervisorSpec:
    """Give every worker (at any depth) the cluster's [security] config in its args, unless it has its own.

    Workers enforce most layers (injection, agent rate limits, permissions, exfiltration, redaction...), so
    they must see the same config the gateway sees, not the defaults. Here it stays plain data (the table,
    re-read after the fork by :func:`openfang.security.config.security_from_args`): these children may sit
    under a nested supervisor, whose spec travels as msgpack when the tree is reconfigured on reload
    (``spec_to_dict``) and when asked for (``get_childspec``); a typed object would not survive that.
    """
    children = []
    for child in tree.children:
        if child.supervisor is not None:
            child = replace(child, supervisor=with_worker_security(child.supervisor, security))
        elif child.start in _SECURITY_CHILDREN and "security" not in child.args:
            child = replace(child, args={**child.args, "security": dict(security)})
        elif child.start in _SECURITY_CHILDREN:  # its own: parsed here once, taken as is after its fork
            prepare_security_args(child.args["security"], data_dir=security.get("data_dir"))
        children.append(child)
    return replace(tree, children=tuple(children))


def with_gateway(
    tree: SupervisorSpec, control: ControlConfig, security: SecurityConfig, data_dir: Path
) -> SupervisorSpec:
    """The root spec with the control gateway as its first child.

    Its args are the typed configs themselves: the gateway is a child of the root, forked from the daemon
    with them in memory, and a root child's spec never leaves the process (a reload compares the specs by
    value, which frozen dataclasses do).

    ``preimport=False``: the gateway imports its own modules (~40 ms: the gateway, registry, placement,
    guard...) after its fork, while the root imports the workers' (the root's ordered start imports the
    later children's modules while its first child starts), so the two overlap on two cores. No other
    process uses those modules, so nothing is lost in sharing; a gateway restart pays that import again.
    """
    gateway = ChildSpec(
        id=GATEWAY_ID,
        start=GATEWAY_START,
        args={"control": control, "security": security, "data_dir": str(data_dir)},
        restart=Restart.PERMANENT,
        shutdown=2000,
        type=ChildType.WORKER,
        heartbeat_ms=5000,
        preimport=False,
    )
    return replace(tree, children=(gateway, *tree.children))


def with_http(
    tree: SupervisorSpec, http: HttpConfig, control: ControlConfig, security: SecurityConfig
) -> SupervisorSpec:
    """The root spec with the HTTP face as its last child (it serves once the workers are up).

    It gets [security] like the scheduler: to sign its requests when the cluster requires signatures. Like
    the gateway's, its args are the typed configs (a root child: forked, never serialised).
    """
    child = ChildSpec(
        id=HTTP_ID,
        start=HTTP_START,
        args={"http": http, "control": control, "security": security},
        restart=Restart.PERMANENT,
        shutdown=5000,
        type=ChildType.WORKER,
        heartbeat_ms=5000,
    )
    return replace(tree, children=(*tree.children, child))


def with_metrics(
    tree: SupervisorSpec, metrics: MetricsConfig, control: ControlConfig, security: SecurityConfig
) -> SupervisorSpec:
    """The root spec with the [metrics] endpoint as its last child (typed args, as the face's)."""
    child = ChildSpec(
        id=METRICS_ID,
        start=METRICS_START,
        args={"metrics": metrics, "control": control, "security": security},
        restart=Restart.PERMANENT,
        shutdown=3000,
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


def _resolve_http(
    http: HttpConfig | None, base_dir: Path, place: Place, problems: list[Problem]
) -> HttpConfig:
    """The read [http] with its TLS files resolved against the config's directory (they must exist)."""
    if http is None:
        return DISABLED_HTTP
    paths: dict[str, str | None] = {}
    for key in ("tls_cert", "tls_key"):
        value: str | None = getattr(http, key)
        if value is not None:
            path = (base_dir / os.path.expanduser(value)).resolve()
            if not path.is_file():
                problems.append(Problem(place.key(key), f"file not found: {path}"))
            value = str(path)
        paths[key] = value
    if http.enabled and (missing := missing_http_modules()):
        problems.append(
            Problem(
                place.where,
                f"the HTTP face needs the 'http' extra, which is not installed (missing modules: "
                f"{', '.join(missing)}): pip install 'openfang[http]', or set enabled = false",
            )
        )
    return replace(http, tls_cert=paths["tls_cert"], tls_key=paths["tls_key"])


def _resolve_control(
    control: ControlConfig | None, data_dir: Path, base_dir: Path, place: Place, problems: list[Problem]
) -> ControlConfig | None:
    """The read [control] with ``{data_dir}`` and relative ipc paths resolved, and their limits checked."""
    if control is None:
        return None

    def endpoint(key: str) -> str:
        value = str(getattr(control, key)).replace("{data_dir}", str(data_dir))
        if value.startswith("ipc://"):
            path = value[len("ipc://") :]
            if not path.startswith("/"):
                path = str((base_dir / path).resolve())
                value = "ipc://" + path
            if len(os.fsencode(path)) > MAX_IPC_PATH:
                problems.append(
                    Problem(
                        place.key(key),
                        f"ipc path is {len(os.fsencode(path))} bytes, the limit is {MAX_IPC_PATH}",
                    )
                )
        elif value.startswith("tcp://"):
            if not control.keys_dir:
                problems.append(
                    Problem(place.key(key), "tcp:// endpoints require CURVE: set [control] keys_dir")
                )
        else:
            problems.append(Problem(place.key(key), f"must start with ipc:// or tcp://, got {value!r}"))
        return value

    keys_dir = control.keys_dir
    return replace(
        control,
        endpoint=endpoint("endpoint"),
        events=endpoint("events"),
        workers=endpoint("workers"),
        keys_dir=str((base_dir / os.path.expanduser(keys_dir)).resolve()) if keys_dir else None,
    )
