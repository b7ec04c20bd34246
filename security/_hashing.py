"""SHA-256 and HMAC-SHA256 without mapping OpenSSL's libcrypto into a process that hashes little.

``import hashlib`` (and ``import hmac``, which imports ``_hashlib`` itself) maps libcrypto and initialises
OpenSSL: ~2.4 ms of CPU in every process, before anything is hashed. The daemon's root paid it on the cold
start's path (its imports and the workers' modules, preimported before READY), although what it and the
workers hash before a first reply is small: a text's digest, a manifest, a 15-20 KB module. CPython's own
SHA-256 (``_sha256``, built into the interpreter) gives the same digest, as fast for small inputs (~0.5 us
for 100 bytes, OpenSSL ~0.4) but ~5x slower in bulk (3.3 against 0.6 ms a MB where the CPU has SHA
instructions). So:

- :func:`sha256` is the builtin below :data:`BULK` bytes (of ``data``, or of ``size`` when the caller
  streams a known amount) and OpenSSL's at or above it, libcrypto mapped on that first use;
- :func:`sha256_stream` is OpenSSL's, for ``update()`` loops over an unknown amount (files);
- :func:`hmac_sha256` imports :mod:`hmac` on first use (the gateway's keyed audit chain, signed envelopes);
- :func:`compare_digest` is ``_operator``'s constant-time comparison: what ``hmac.compare_digest`` is without
  OpenSSL (with it, ``_hashlib``'s; both answer alike, a test compares them).

An interpreter built without ``_sha256`` gets OpenSSL's everywhere. A test fails when a module of the
daemon's or the workers' start imports ``hashlib`` or ``hmac`` again.
"""

from __future__ import annotations

import importlib
from _operator import _compare_digest as compare_digest  # hmac's own, when _hashlib is missing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from hashlib import _Hash

BULK = 1 << 16  # bytes: from here on OpenSSL's (the builtin costs ~40 us more at 64 KB, ~2.7 ms more a MB)

_Constructor = Callable[..., "_Hash"]

try:
    _builtin: _Constructor | None = cast(_Constructor, importlib.import_module("_sha256").sha256)
except ImportError:  # pragma: no cover - CPython builds it in by default
    _builtin = None


def _openssl() -> _Constructor:
    return cast(_Constructor, importlib.import_module("hashlib").sha256)


def sha256(data: bytes | bytearray | memoryview = b"", *, size: int | None = None) -> _Hash:
    """A SHA-256 hash object over ``data``: the interpreter's own below :data:`BULK` bytes (``size``: the
    whole amount the caller will ``update()`` it with, when it streams), OpenSSL's otherwise."""
    amount = len(data) if size is None else size
    if _builtin is not None and amount < BULK:
        return _builtin(data)
    return _openssl()(data)


def sha256_stream() -> _Hash:
    """OpenSSL's SHA-256 object, for ``update()`` loops over an amount not known in advance."""
    return _openssl()()


_hmac: Any = None


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key`` (:mod:`hmac`, imported on the first call)."""
    global _hmac
    if _hmac is None:
        _hmac = importlib.import_module("hmac")
    digest: bytes = _hmac.digest(key, data, "sha256")
    return digest


__all__ = ["BULK", "compare_digest", "hmac_sha256", "sha256", "sha256_stream"]
