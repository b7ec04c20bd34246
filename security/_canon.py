"""Canonical encodings shared by the signing, identity, audit and attestation layers.

A signature or a hash chain is only as good as the byte string it covers: two peers must turn the same
logical value into the same bytes. :func:`canonical_msgpack` packs maps with their keys sorted (recursively),
so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` encode identically; :func:`canonical_json` does the same for
the human-readable audit table.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import msgpack

from openfang.security._hashing import sha256


def _sorted(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{path}: map keys must be strings to have a canonical order, got {key!r}")
        return {k: _sorted(value[k], f"{path}.{k}") for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def canonical_msgpack(value: Any) -> bytes:
    """msgpack with every map's keys in sorted order (invariant: equal values give equal bytes)."""
    # msgpack keeps dict insertion order, so rebuilding the dicts sorted is enough.
    return bytes(msgpack.packb(_sorted(value, "$"), use_bin_type=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys; bytes become ``{"$b64": ...}``, unknown objects their ``str``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return sha256(data).hexdigest()


def fingerprint(value: str | bytes) -> str:
    """A short, non-reversible tag of a secret for audit records (first 12 hex chars of its SHA-256)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return sha256(b"openfang-fp\0" + raw).hexdigest()[:12]
