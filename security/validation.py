"""Layer 1, input validation: size and shape limits on external messages and manifests.

The envelope codec (:mod:`openfang.protocol.envelope`) checks the envelope fields and the registered body
schema; this layer bounds everything a hostile client could use to exhaust a process: frame size, string
length, nesting depth, keys per map, list length, total number of nodes, and key length. The walk is
iterative (a deeply nested frame cannot blow the Python stack) and stops at the first violation, naming the
field by its path (``body.messages[3].content``).

Manifests get the same limits plus a small schema for the keys the security layers read
(:func:`check_manifest`), reporting every problem at once as a :class:`ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openfang.protocol._schema import Shape
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import ConfigError, FrameTooLarge, Problem, ProtocolError
from openfang.security.audit import AuditSink

NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationLimits:
    """Limits for one external message (defaults suit the control gateway)."""

    max_frame_bytes: int = 1 << 20
    max_text: int = 256 * 1024  # characters in one string value
    max_bytes: int = 512 * 1024  # length of one binary value
    max_depth: int = 32
    max_keys: int = 256  # keys in one map
    max_list: int = 4096  # items in one list
    max_nodes: int = 100_000  # values in the whole body
    max_key_len: int = 128


class TooDeep(ProtocolError):
    """Nesting deeper than the limit (a resource attack on recursive handlers)."""


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if isinstance(key, str) and key.isidentifier() else f"{parent}[{key!r}]"


def check_value(value: Any, limits: ValidationLimits, *, root: str = "body") -> None:
    """Walk ``value`` iteratively; raise a ProtocolError naming the first field over a limit."""
    stack: list[tuple[str, Any, int]] = [(root, value, 0)]
    nodes = 0
    while stack:
        path, v, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise FrameTooLarge(f"{root}: more than {limits.max_nodes} values in total")
        if depth > limits.max_depth:
            raise TooDeep(f"{path}: nested {depth} levels deep, the limit is {limits.max_depth}")
        if isinstance(v, str):
            if len(v) > limits.max_text:
                raise FrameTooLarge(f"{path}: text is {len(v)} characters, the limit is {limits.max_text}")
        elif isinstance(v, bytes | bytearray):
            if len(v) > limits.max_bytes:
                raise FrameTooLarge(
                    f"{path}: binary value is {len(v)} bytes, the limit is {limits.max_bytes}"
                )
        elif isinstance(v, Mapping):
            if len(v) > limits.max_keys:
                raise FrameTooLarge(f"{path}: map has {len(v)} keys, the limit is {limits.max_keys}")
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ProtocolError(f"{path}: map keys must be strings, got {type(k).__name__}")
                if len(k) > limits.max_key_len:
                    raise ProtocolError(
                        f"{path}: a key is {len(k)} characters, the limit is {limits.max_key_len}"
                    )
                stack.append((_path(path, k), item, depth + 1))
        elif isinstance(v, list | tuple):
            if len(v) > limits.max_list:
                raise FrameTooLarge(f"{path}: list has {len(v)} items, the limit is {limits.max_list}")
            stack.extend((_path(path, i), item, depth + 1) for i, item in enumerate(v))
        elif v is None or isinstance(v, bool | int | float):
            if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
                raise ProtocolError(f"{path}: integer out of the 64-bit range")
        else:
            raise ProtocolError(f"{path}: values of type {type(v).__name__} are not allowed")


def check_frame(data: bytes, limits: ValidationLimits) -> None:
    """Refuse a raw frame over ``max_frame_bytes`` before anything decodes it."""
    if len(data) > limits.max_frame_bytes:
        raise FrameTooLarge(f"frame is {len(data)} bytes, the limit is {limits.max_frame_bytes}")


def within(shape: Shape | None, limits: ValidationLimits) -> bool:
    """Whether every value a schema of ``shape`` admits is within ``limits`` (so :func:`check_value` cannot
    refuse a body that passed that schema). False for an unbounded shape (None)."""
    return (
        shape is not None
        and shape.text <= limits.max_text
        and shape.binary <= limits.max_bytes
        and shape.items <= limits.max_list
        and shape.keys <= limits.max_keys
        and shape.key_len <= limits.max_key_len
        and shape.depth <= limits.max_depth
        and shape.nodes <= limits.max_nodes
    )


class MessageValidator:
    """:func:`check_message` with an audit record for every refusal (``validation.rejected``)."""

    def __init__(self, limits: ValidationLimits | None = None, *, audit: AuditSink | None = None) -> None:
        self.limits = limits or ValidationLimits()
        self._audit = audit

    def check(self, env: Envelope, *, client: str = "", shape: Shape | None = None) -> None:
        """Refuse ``env`` if it breaks a limit (audited). ``shape``: the shape of the schema ``env.body``
        has passed (the envelope decoder validated it); when it is :func:`within` the limits the body
        cannot break them and is not walked again (the type's length is still checked)."""
        if within(shape, self.limits) and len(env.type) <= self.limits.max_key_len:
            return
        try:
            check_message(env, self.limits)
        except ProtocolError as exc:
            if self._audit is not None:
                self._audit.append(
                    "validation.rejected",
                    client=client,
                    type=env.type[:128],
                    code=exc.code,
                    reason=exc.message,
                )
            raise


def check_message(env: Envelope, limits: ValidationLimits) -> None:
    """Raise a ProtocolError-family error naming the field if ``env`` breaks any limit."""
    if len(env.type) > limits.max_key_len:
        raise ProtocolError(f"type: {len(env.type)} characters, the limit is {limits.max_key_len}")
    check_value(env.body, limits, root="body")


_MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "version": (int, str),
    "module": str,
    "sha256": str,
    "signature": str,
    "publisher": str,
    "permissions": Mapping,
    "secrets": list,
    "host_functions": Mapping,
    "limits": Mapping,
}


def check_manifest(manifest: Mapping[str, Any], limits: ValidationLimits, *, source: str) -> None:
    """Check a manifest's size and shape; ConfigError lists every problem.

    For the flat layout (no ``[agent]`` table) the keys the security layers read are checked too; an
    agent.toml (with ``[agent]``) is schema-checked by ``openfang.workers.manifest``: only the limits here.
    """
    problems: list[Problem] = []
    try:
        check_value(manifest, limits, root="manifest")
    except ProtocolError as exc:
        problems.append(Problem(source, exc.message))
    if "agent" in manifest:
        # agent.toml layout: its schema belongs to openfang.workers.manifest; only the limits apply here.
        if problems:
            raise ConfigError(problems)
        return
    for key, kind in _MANIFEST_KEYS.items():
        if key in manifest and not isinstance(manifest[key], kind):
            problems.append(
                Problem(f"{source}: key {key!r}", f"has the wrong type {type(manifest[key]).__name__}")
            )
    name = manifest.get("name")
    if name is None:
        problems.append(Problem(f"{source}: key 'name'", "is required"))
    elif isinstance(name, str) and not NAME_RE.match(name):
        problems.append(Problem(f"{source}: key 'name'", f"{name[:80]!r} must match {NAME_RE.pattern}"))
    digest = manifest.get("sha256")
    if isinstance(digest, str) and not SHA256_RE.match(digest):
        problems.append(Problem(f"{source}: key 'sha256'", "must be 64 lower-case hex characters"))
    secrets = manifest.get("secrets")
    if isinstance(secrets, list):
        for i, s in enumerate(secrets):
            if not isinstance(s, str) or not re.fullmatch(r"[A-Z_][A-Z0-9_]{0,127}", s):
                problems.append(
                    Problem(f"{source}: key 'secrets'[{i}]", "must be an environment variable name")
                )
    if problems:
        raise ConfigError(problems)
