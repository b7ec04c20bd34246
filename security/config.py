"""The ``[security]`` table of cluster.toml as one frozen dataclass tree, every problem reported at once.

Each layer has its own sub-table (all optional; the defaults are the safe ones)::

    [security.audit]        path = "{data_dir}/audit.db", key_file (HMAC chain key; default
                            {data_dir}/audit.key, made at first start), keyed, refusal_window_s,
                            refusal_writes_per_s, refusal_burst, refusal_sources
    [security.validation]   max_frame_bytes, max_text, max_bytes, max_depth, max_keys, max_list, max_nodes,
                            max_key_len
    [security.injection]    enabled, threshold, block_threshold, action, output_action
                            (actions: flag | strip | block)
    [security.ratelimit]    enabled, max_buckets, [security.ratelimit.client_requests] rate/burst, ...
                            global_requests, agent_requests, agent_tokens, agent_tool_calls
    [security.signing]      enabled, require, max_skew_s, nonce_cache,
                            keys = [{id = "ops-1", alg = "hmac-sha256" | "ed25519", file = "keys/ops-1"}]
    [security.sandbox]      fuel_default, fuel_max, memory_default_mb, memory_max_mb, table_elements_max,
                            tables_max, allow, deny
    [security.network]      allow_hosts, allow_private                  (layer 8, netguard)
    [security.permissions]  enabled                                    (grants live in agent manifests)
    [security.exfil]        enabled, block_sinks, secret_kinds, pii, detect_encoded_taint, split_window_s,
                            split_window_bytes, split_min_piece, split_share
    [security.redact]       enabled, secret_kinds, pii, redact_sensitive_keys
    [security.attestation]  enabled, require_pin, require_signature, [security.attestation.publishers]
                            <key id> = "<64 hex chars of an Ed25519 public key>"
    [security.integrity]    enabled, interval_s, packages, files
    [security.identity]     enabled, max_skew_s
    [security.rollback]     enabled, state = "{data_dir}/versions.db"

Secrets are never inline: signing and audit keys are *files* (their paths are all the config, the report
and the logs ever show). ``{data_dir}`` in paths is replaced when ``data_dir`` is given; relative paths are
resolved against ``base_dir`` (the config file's directory) when given.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, cast

from openfang.protocol.config_kit import MISSING, Doc, Place, Range, Table
from openfang.protocol.errors import ConfigError, Problem
from openfang.security._secrets import PII_KINDS, SECRET_KINDS
from openfang.security.attestation import AttestationConfig
from openfang.security.audit import AuditLog, chain_key
from openfang.security.capabilities import SandboxPolicyConfig
from openfang.security.exfil import ExfilConfig
from openfang.security.injection import ACTIONS, Action, InjectionConfig
from openfang.security.ratelimit import Limit, RateLimitConfig
from openfang.security.redact import RedactConfig
from openfang.security.refusals import RefusalAuditConfig
from openfang.security.rollback import create_state
from openfang.security.signing import ED25519_ALG, HMAC_ALG, SigningConfig
from openfang.security.validation import ValidationLimits

DEFAULT_AUDIT_PATH = "{data_dir}/audit.db"
DEFAULT_AUDIT_KEY = "{data_dir}/audit.key"
DEFAULT_VERSIONS_PATH = "{data_dir}/versions.db"
_KID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    """``key_file`` None means an unkeyed (plain SHA-256) chain, which ``security report`` flags.

    By default the key is ``{data_dir}/audit.key``, created (mode 0600) at first start (``create_key``);
    a key_file the operator names is never created: it must exist.
    """

    path: str = DEFAULT_AUDIT_PATH
    key_file: str | None = DEFAULT_AUDIT_KEY
    create_key: bool = True
    refusals: RefusalAuditConfig = field(default_factory=RefusalAuditConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """A signing key reference: id, algorithm and the file holding the material (never the material)."""

    id: str
    alg: str
    file: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    """[security.network] (layer 8, netguard)."""

    allow_hosts: Annotated[tuple[str, ...], Doc("hosts allowed although private or loopback")] = ()
    allow_private: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionsConfig:
    """[security.permissions] (layer 9; the grants live in agent manifests)."""

    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrityConfig:
    """[security.integrity] (layer 14): the package files and extra files re-checked every interval."""

    enabled: bool = True
    interval_s: Annotated[float, Range(1.0, 86400.0)] = 60.0
    packages: tuple[str, ...] = ("openfang",)
    files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityConfig:
    """[security.identity] (layer 15)."""

    enabled: bool = True
    max_skew_s: Annotated[float, Range(1, 3600)] = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackConfig:
    """[security.rollback] (layer 16)."""

    enabled: bool = True
    state: str = DEFAULT_VERSIONS_PATH


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """The whole parsed ``[security]`` table (defaults throughout when the table is empty)."""

    source: str = "<defaults>"
    audit: AuditConfig = field(default_factory=AuditConfig)
    validation: ValidationLimits = field(default_factory=ValidationLimits)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
    signing_keys: tuple[KeySpec, ...] = ()
    sandbox: SandboxPolicyConfig = field(default_factory=SandboxPolicyConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    permissions: PermissionsConfig = field(default_factory=PermissionsConfig)
    exfil: ExfilConfig = field(default_factory=ExfilConfig)
    redact: RedactConfig = field(default_factory=RedactConfig)
    attestation: AttestationConfig = field(default_factory=AttestationConfig)
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)


def _path(value: str, data_dir: Path | None, base_dir: Path | None) -> str:
    if data_dir is not None:
        value = value.replace("{data_dir}", str(data_dir))
    if base_dir is not None and "{data_dir}" not in value and not Path(value).is_absolute():
        value = str((base_dir / value).resolve())
    return value


def parse_security(
    table: Mapping[str, Any] | None,
    source: str,
    *,
    data_dir: Path | None = None,
    base_dir: Path | None = None,
    check_files: bool = False,
) -> SecurityConfig:
    """Validate ``[security]``; ConfigError lists every problem with ``file: [security.x] key 'k'``."""
    problems: list[Problem] = []
    top = Table(table, Place.table(source, "security"), problems)

    t = top.sub("audit")
    key_file = t.text("key_file", None)
    keyed = t.boolean("keyed", AuditConfig().create_key)  # keyed unless told not to
    if key_file and not keyed:
        t.problem("keyed", "false contradicts key_file (leave key_file out for an unkeyed chain)")
    dq = RefusalAuditConfig()
    audit = AuditConfig(
        path=_path(t.text("path", DEFAULT_AUDIT_PATH) or DEFAULT_AUDIT_PATH, data_dir, base_dir),
        key_file=_path(key_file or DEFAULT_AUDIT_KEY, data_dir, base_dir) if keyed else None,
        create_key=keyed and not key_file,
        refusals=RefusalAuditConfig(
            window_s=t.number("refusal_window_s", dq.window_s, lo=0.1, hi=86400.0),
            max_writes_per_s=t.number("refusal_writes_per_s", dq.max_writes_per_s, lo=0.01, hi=1e6),
            burst=t.integer("refusal_burst", dq.burst, lo=1, hi=1_000_000),
            max_sources=t.integer("refusal_sources", dq.max_sources, lo=1, hi=10_000_000),
        ),
    )
    t.unknown()

    t = top.sub("validation")
    d = ValidationLimits()
    validation = ValidationLimits(
        max_frame_bytes=t.integer("max_frame_bytes", d.max_frame_bytes, lo=1024, hi=1 << 30),
        max_text=t.integer("max_text", d.max_text, lo=1),
        max_bytes=t.integer("max_bytes", d.max_bytes, lo=1),
        max_depth=t.integer("max_depth", d.max_depth, lo=1, hi=1000),
        max_keys=t.integer("max_keys", d.max_keys, lo=1),
        max_list=t.integer("max_list", d.max_list, lo=1),
        max_nodes=t.integer("max_nodes", d.max_nodes, lo=1),
        max_key_len=t.integer("max_key_len", d.max_key_len, lo=1),
    )
    t.unknown()

    t = top.sub("injection")
    di = InjectionConfig()
    injection = InjectionConfig(
        enabled=t.boolean("enabled", di.enabled),
        threshold=t.number("threshold", di.threshold, lo=0.01, hi=1.0),
        block_threshold=t.number("block_threshold", di.block_threshold, lo=0.01, hi=1.0),
        action=cast(Action, t.choice("action", di.action, ACTIONS)),
        output_action=cast(Action, t.choice("output_action", di.output_action, ACTIONS)),
    )
    if injection.block_threshold < injection.threshold:
        t.problem(
            "block_threshold",
            f"must be >= threshold ({injection.threshold}), got {injection.block_threshold}",
        )
    t.unknown()

    t = top.sub("ratelimit")
    dr = RateLimitConfig()

    def limit(name: str, default: Limit) -> Limit:
        s = t.sub(name)
        lim = Limit(
            rate=s.number("rate", default.rate, hi=1e9), burst=s.number("burst", default.burst, hi=1e12)
        )
        if lim.rate > 0 and lim.burst < 1:
            s.problem("burst", "must be at least 1 when rate is set")
        s.unknown()
        return lim

    ratelimit = RateLimitConfig(
        enabled=t.boolean("enabled", dr.enabled),
        max_buckets=t.integer("max_buckets", dr.max_buckets, lo=1),
        client_requests=limit("client_requests", dr.client_requests),
        global_requests=limit("global_requests", dr.global_requests),
        agent_requests=limit("agent_requests", dr.agent_requests),
        agent_tokens=limit("agent_tokens", dr.agent_tokens),
        agent_tool_calls=limit("agent_tool_calls", dr.agent_tool_calls),
    )
    t.unknown()

    t = top.sub("signing")
    ds = SigningConfig()
    signing = SigningConfig(
        enabled=t.boolean("enabled", ds.enabled),
        require=t.boolean("require", ds.require),
        max_skew=t.number("max_skew_s", ds.max_skew, lo=1, hi=3600),
        nonce_cache=t.integer("nonce_cache", ds.nonce_cache, lo=1000),
    )
    keys = _keys(t, data_dir, base_dir, check_files)
    if signing.require and not keys:
        t.problem("require", "signatures are required but no keys are configured")
    t.unknown()

    t = top.sub("sandbox")
    dp = SandboxPolicyConfig()
    sandbox = SandboxPolicyConfig(
        fuel_default=t.integer("fuel_default", dp.fuel_default, lo=1),
        fuel_max=t.integer("fuel_max", dp.fuel_max, lo=1),
        memory_default_mb=t.integer("memory_default_mb", dp.memory_default_mb, lo=1, hi=4096),
        memory_max_mb=t.integer("memory_max_mb", dp.memory_max_mb, lo=1, hi=4096),
        table_elements_max=t.integer("table_elements_max", dp.table_elements_max, lo=0, hi=1 << 27),
        tables_max=t.integer("tables_max", dp.tables_max, lo=0, hi=64),
        allow=t.strset("allow", dp.allow) or frozenset(),
        deny=t.strset("deny", dp.deny) or frozenset(),
    )
    if sandbox.fuel_default > sandbox.fuel_max:
        t.problem("fuel_default", f"{sandbox.fuel_default} is above fuel_max {sandbox.fuel_max}")
    if sandbox.memory_default_mb > sandbox.memory_max_mb:
        t.problem(
            "memory_default_mb", f"{sandbox.memory_default_mb} is above memory_max_mb {sandbox.memory_max_mb}"
        )
    t.unknown()

    network = top.section(NetworkConfig, "network") or NetworkConfig()
    network = replace(network, allow_hosts=tuple(sorted(set(network.allow_hosts))))
    permissions = top.section(PermissionsConfig, "permissions") or PermissionsConfig()

    t = top.sub("exfil")
    de = ExfilConfig()
    exfil = ExfilConfig(
        enabled=t.boolean("enabled", de.enabled),
        block_sinks=t.strset("block_sinks", de.block_sinks) or frozenset(),
        secret_kinds=t.strset("secret_kinds", None, allowed=SECRET_KINDS),
        pii=t.strset("pii", de.pii, allowed=PII_KINDS) or frozenset(),
        detect_encoded_taint=t.boolean("detect_encoded_taint", de.detect_encoded_taint),
        split_window_s=t.number("split_window_s", de.split_window_s, lo=0.0, hi=7 * 86400.0),
        split_window_bytes=t.integer("split_window_bytes", de.split_window_bytes, lo=0, hi=1 << 34),
        split_min_piece=t.integer("split_min_piece", de.split_min_piece, lo=3, hi=64),
        split_share=t.number("split_share", de.split_share, lo=0.05, hi=1.0),
    )
    t.unknown()

    t = top.sub("redact")
    dd = RedactConfig()
    redact = RedactConfig(
        enabled=t.boolean("enabled", dd.enabled),
        secret_kinds=t.strset("secret_kinds", None, allowed=SECRET_KINDS),
        pii=t.strset("pii", dd.pii, allowed=PII_KINDS) or frozenset(),
        redact_sensitive_keys=t.boolean("redact_sensitive_keys", dd.redact_sensitive_keys),
    )
    t.unknown()

    t = top.sub("attestation")
    pubs_t = t.sub("publishers")
    publishers: dict[str, bytes] = {}
    for kid in list(pubs_t.raw):
        value = pubs_t.get(kid)
        if not _KID.match(str(kid)):
            pubs_t.problem(kid, "publisher ids are 1-64 letters, digits, '_', '.', ':' or '-'")
        elif not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            pubs_t.problem(kid, "must be the 64 hex characters of a raw Ed25519 public key")
        else:
            publishers[str(kid)] = bytes.fromhex(value)
    da = AttestationConfig()
    attestation = AttestationConfig(
        enabled=t.boolean("enabled", da.enabled),
        require_pin=t.boolean("require_pin", da.require_pin),
        require_signature=t.boolean("require_signature", da.require_signature),
        trusted_publishers=publishers,
    )
    if attestation.require_signature and not publishers:
        t.problem(
            "require_signature", "signatures are required but [security.attestation.publishers] is empty"
        )
    t.unknown()

    integrity = top.section(IntegrityConfig, "integrity") or IntegrityConfig()
    integrity = replace(
        integrity,
        packages=tuple(sorted(set(integrity.packages))),
        files=tuple(_path(f, data_dir, base_dir) for f in sorted(set(integrity.files))),
    )
    identity = top.section(IdentityConfig, "identity") or IdentityConfig()
    rollback = top.section(RollbackConfig, "rollback") or RollbackConfig()
    rollback = replace(rollback, state=_path(rollback.state, data_dir, base_dir))
    top.unknown()
    if problems:
        raise ConfigError(problems)
    return SecurityConfig(
        source=source,
        audit=audit,
        validation=validation,
        injection=injection,
        ratelimit=ratelimit,
        signing=signing,
        signing_keys=keys,
        sandbox=sandbox,
        network=network,
        permissions=permissions,
        exfil=exfil,
        redact=redact,
        attestation=attestation,
        integrity=integrity,
        identity=identity,
        rollback=rollback,
    )


def _keys(t: Table, data_dir: Path | None, base_dir: Path | None, check_files: bool) -> tuple[KeySpec, ...]:
    raw = t.get("keys")
    if raw is MISSING:
        return ()
    if not isinstance(raw, list):
        t.problem("keys", "must be an array of tables {id, alg, file}")
        return ()
    specs: list[KeySpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"keys[{i}]"
        if not isinstance(entry, Mapping):
            t.problem(where, "must be a table {id, alg, file}")
            continue
        kid, alg, file = entry.get("id"), entry.get("alg"), entry.get("file")
        extra = sorted(set(entry) - {"id", "alg", "file"})
        if extra:
            t.problem(where, f"unknown keys: {', '.join(map(str, extra))}")
        if not isinstance(kid, str) or not _KID.match(kid):
            t.problem(where, "id must be 1-64 letters, digits, '_', '.', ':' or '-'")
            continue
        if kid in seen:
            t.problem(where, f"duplicate key id {kid!r}")
        seen.add(kid)
        if alg not in (HMAC_ALG, ED25519_ALG):
            t.problem(where, f"alg must be {HMAC_ALG} or {ED25519_ALG}, got {alg!r}")
            continue
        if not isinstance(file, str) or not file:
            t.problem(where, "file must name the key file")
            continue
        path = _path(file, data_dir, base_dir)
        if check_files and not Path(path).is_file():
            t.problem(where, f"key file {path} does not exist")
        specs.append(KeySpec(id=kid, alg=str(alg), file=path))
    return tuple(specs)


# The configs this process parsed, by the plain data they were parsed from (its table object's id, with what
# resolved its paths): a child forked from here with that very data (the same objects, as a forked child's
# args are: supervisor/_proc.py) takes the parsed config instead of parsing it again after its fork (~1.1-1.8
# ms of a worker's start before its ready, cold start: mostly first touches of pages shared with the root).
# Recorded by :func:`security_args` (the cluster's table) and :func:`prepare_security_args` (a worker's own).
# A copy, the same data from msgpack (a nested supervisor's spec) or anything else is parsed as before.
_PARSED: dict[int, tuple[Mapping[str, Any], tuple[str, str, str], SecurityConfig]] = {}
_PARSED_KEPT = 8  # the latest loads (the first and each reload's); older ones are parsed again if met


def _remember(table: Mapping[str, Any], where: tuple[str, str, str], parsed: SecurityConfig) -> None:
    while len(_PARSED) >= _PARSED_KEPT:
        del _PARSED[next(iter(_PARSED))]
    _PARSED[id(table)] = (table, where, parsed)


def security_args(
    table: Mapping[str, Any],
    *,
    source: str,
    data_dir: Path | str,
    base_dir: Path | str,
    parsed: SecurityConfig | None = None,
) -> dict[str, Any]:
    """``[security]`` as plain data, for a child that gets it through a spec that may travel as msgpack
    (a worker under a nested supervisor): the table and what resolves its paths. :func:`security_from_args`
    reads it back. ``parsed`` is what :func:`parse_security` made of the same table with the same paths:
    a child forked with this very data then takes it as it is."""
    own = dict(table)
    args: dict[str, Any] = {
        "table": own,
        "source": source,
        "data_dir": str(data_dir),
        "base_dir": str(base_dir),
    }
    if parsed is not None:
        _remember(own, _where(args, None), parsed)
    return args


def _where(args: Mapping[str, Any], data_dir: str | None) -> tuple[str, str, str]:
    """(source, data dir, base dir) as :func:`security_from_args` resolves them for ``args``."""
    dd = str(args.get("data_dir") or data_dir or "")
    return str(args.get("source", "cluster.toml")), dd, str(args.get("base_dir") or dd)


def _parsed_before(args: Mapping[str, Any], where: tuple[str, str, str]) -> SecurityConfig | None:
    """The config parsed in this process (or the one it was forked from) for ``args``, if ``args`` holds the
    very table object recorded, resolved with the same source and paths."""
    table = args.get("table")
    entry = _PARSED.get(id(table))
    if entry is None:
        return None
    recorded, recorded_where, parsed = entry
    if recorded is not table or recorded_where != where or not where[1]:
        return None
    return parsed


def prepare_security_args(args: Any, *, data_dir: str | None) -> None:
    """Parse a child's own ``[security]`` data (its spec's ``args.security``, as :func:`security_from_args`
    will read it with ``data_dir``) here, before its fork, and record it for that very table object: the
    forked child then takes it as it is instead of parsing it again on its start's path (a worker with its
    own table: the bench tree's pool). Data that does not parse is not recorded: the child parses it again
    and fails its start naming the problem, as it would without this. Parsed once per table object."""
    if isinstance(args, Mapping) and isinstance(args.get("table"), Mapping):
        where = _where(args, data_dir)
        if where[1] and _parsed_before(args, where) is None:
            with contextlib.suppress(ConfigError):
                _remember(args["table"], where, security_from_args(args, data_dir=data_dir))


def security_from_args(
    args: SecurityConfig | Mapping[str, Any] | None, *, data_dir: str | None = None
) -> SecurityConfig:
    """A child's security config: the typed config itself (a child forked with it in memory), or the plain
    data of :func:`security_args` read again; defaults (paths under ``data_dir``) when there is none."""
    if isinstance(args, SecurityConfig):
        return args
    if not args:
        return parse_security({}, "<defaults>", data_dir=Path(data_dir) if data_dir else None)
    where = _where(args, data_dir)
    parsed = _parsed_before(args, where)
    if parsed is not None:
        return parsed
    source, dd, base = where
    return parse_security(
        args.get("table") or {},
        source,
        data_dir=Path(dd) if dd else None,
        base_dir=Path(base) if base else None,
    )


def open_audit(config: SecurityConfig) -> AuditLog | None:
    """This process's handle on the audit chain (layer 12), opened after the fork, one per process.

    The one opener for every process (the daemon, the gateway, the workers): the key is read from its file,
    the log's directory is created if missing. None when the path still holds ``{data_dir}`` (a process
    started with no data dir keeps no audit file; its refusals still reach its other sinks).
    """
    if "{data_dir}" in config.audit.path:
        return None
    return AuditLog(config.audit.path, key=audit_key(config))


def prepare_version_state(config: SecurityConfig) -> bool:
    """Make layer 16's state file ahead of the workers (the daemon, while its first worker starts: that
    worker then only opens it); True when made here. A no-op when layer 16 is off, its path still holds
    ``{data_dir}`` or the file exists. A file that cannot be made is left to the workers, whose open
    reports the problem (naming the file) at every spawn, as it always did."""
    state = config.rollback.state
    if not config.rollback.enabled or "{data_dir}" in state:
        return False
    try:
        Path(state).parent.mkdir(parents=True, exist_ok=True)
        return create_state(state)
    except (OSError, sqlite3.Error):
        return False


def audit_key(config: SecurityConfig) -> bytes | None:
    """The audit chain's key as :func:`open_audit` reads it (None: unkeyed, or no data dir), the log's
    directory created if missing. The daemon calls it before its first fork: it creates the default chain
    key ({data_dir}/audit.key, mode 0600) when the config asks for it, and every other process reads it."""
    if "{data_dir}" in config.audit.path:
        return None
    Path(config.audit.path).parent.mkdir(parents=True, exist_ok=True)
    return chain_key(config.audit.key_file, create=config.audit.create_key, log_path=config.audit.path)
