"""Layer 4, request signing: HMAC-SHA-256 or Ed25519 over a canonical encoding of the envelope.

Where the signature lives: the envelope has exactly four fields (``v``, ``id``, ``type``, ``body``) and peers
reject unknown ones, so the signature travels in the body under the reserved key ``_auth``::

    body["_auth"] = {"alg": "hmac-sha256" | "ed25519", "kid": str, "ts": int (ms since epoch),
                     "nonce": str (32 hex chars), "sig": bytes}

The signed bytes are ``b"openfang-req-v1\\0"`` followed by the canonical msgpack (maps with sorted keys) of
``{"v", "id", "type", "body" (without _auth), "alg", "kid", "ts", "nonce"}``. Signing the id and type stops a
signature being moved to another request or message kind; the prefix separates request signatures from
every other signature we make (agent identity uses another one).

:class:`Verifier` refuses, each with its own ``reason`` and an audit record: ``unsigned`` (when signatures are
required), ``malformed``, ``unknown_key``, ``forged`` (signature does not verify), ``stale`` (timestamp
outside ``max_skew``) and ``replayed`` (nonce seen within its TTL).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from openfang.protocol.envelope import DEFAULT_MAX_FRAME, Envelope, decode
from openfang.protocol.errors import ConfigError, Problem
from openfang.security._canon import canonical_msgpack
from openfang.security._ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    InvalidKey,
    InvalidSignature,
    NotEd25519Key,
)
from openfang.security._errors import Denied
from openfang.security._hashing import compare_digest, hmac_sha256
from openfang.security._keys import read_key_material
from openfang.security._replay import ReplayCache
from openfang.security.audit import AuditSink

AUTH_KEY = "_auth"
DOMAIN = b"openfang-req-v1\0"
HMAC_ALG = "hmac-sha256"
ED25519_ALG = "ed25519"


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """A key that signs. ``secret`` (HMAC) or ``private`` (Ed25519); never shown in repr."""

    kid: str
    alg: str
    secret: bytes | None = field(default=None, repr=False)
    private: Ed25519PrivateKey | None = field(default=None, repr=False)

    @classmethod
    def hmac(cls, kid: str, secret: bytes) -> SigningKey:
        if len(secret) < 32:
            raise ValueError(f"key {kid!r}: an HMAC secret must be at least 32 bytes")
        return cls(kid=kid, alg=HMAC_ALG, secret=bytes(secret))

    @classmethod
    def ed25519(cls, kid: str, private: Ed25519PrivateKey | None = None) -> SigningKey:
        return cls(kid=kid, alg=ED25519_ALG, private=private or Ed25519PrivateKey.generate())

    def public_bytes(self) -> bytes:
        """Raw 32-byte Ed25519 public key (for the verifier's key ring)."""
        if self.private is None:
            raise ValueError(f"key {self.kid!r} is not an Ed25519 key")
        return self.private.public_key().public_bytes_raw()

    def sign_bytes(self, data: bytes) -> bytes:
        if self.alg == HMAC_ALG and self.secret is not None:
            return hmac_sha256(self.secret, data)
        if self.alg == ED25519_ALG and self.private is not None:
            return self.private.sign(data)
        raise ValueError(f"key {self.kid!r} cannot sign with {self.alg!r}")


class KeyRing:
    """Verification keys by key id: HMAC secrets and Ed25519 public keys."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, bytes | Ed25519PublicKey]] = {}

    def add_hmac(self, kid: str, secret: bytes) -> None:
        self._keys[kid] = (HMAC_ALG, bytes(secret))

    def add_ed25519(self, kid: str, public: bytes | Ed25519PublicKey) -> None:
        key = public if isinstance(public, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(public)
        self._keys[kid] = (ED25519_ALG, key)

    def add(self, key: SigningKey) -> None:
        """Trust the verifying half of ``key``."""
        if key.alg == HMAC_ALG and key.secret is not None:
            self.add_hmac(key.kid, key.secret)
        elif key.private is not None:
            self.add_ed25519(key.kid, key.private.public_key())

    def get(self, kid: str) -> tuple[str, bytes | Ed25519PublicKey] | None:
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return sorted(self._keys)


def signed_bytes(env: Envelope, auth: Mapping[str, Any]) -> bytes:
    """The exact bytes a request signature covers (see the module docstring)."""
    body = {k: v for k, v in env.body.items() if k != AUTH_KEY}
    payload = {"v": env.v, "id": env.id, "type": env.type, "body": body}
    payload.update({k: auth[k] for k in ("alg", "kid", "ts", "nonce")})
    return DOMAIN + canonical_msgpack(payload)


def sign(env: Envelope, key: SigningKey, *, now: float | None = None, nonce: str | None = None) -> Envelope:
    """A copy of ``env`` with ``body["_auth"]`` holding a fresh signature."""
    ts = int((time.time() if now is None else now) * 1000)
    auth: dict[str, Any] = {"alg": key.alg, "kid": key.kid, "ts": ts, "nonce": nonce or os.urandom(16).hex()}
    auth["sig"] = key.sign_bytes(signed_bytes(env, auth))
    body = {k: v for k, v in env.body.items() if k != AUTH_KEY}
    body[AUTH_KEY] = auth
    return Envelope(v=env.v, id=env.id, type=env.type, body=body)


def request_signer(key: SigningKey) -> Callable[[Envelope], Envelope]:
    """A ``signer`` for :class:`openfang.protocol.client.Client`: signs each request with ``key``, now."""
    return lambda env: sign(env, key)


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningConfig:
    """``[security.signing]``: request signatures, the clock skew allowed, the replay cache."""

    enabled: bool = True
    require: bool = False  # True: unsigned requests are refused
    max_skew: float = 30.0  # seconds either side of our clock
    nonce_cache: int = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """A verified request: the envelope without ``_auth`` and the key id that signed it (None if unsigned)."""

    env: Envelope
    kid: str | None


class Verifier:
    """Checks request signatures; one per process loop (the nonce cache is not shared)."""

    def __init__(
        self,
        keys: KeyRing,
        config: SigningConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        audit: AuditSink | None = None,
    ) -> None:
        self.keys = keys
        self.config = config or SigningConfig()
        self._clock = clock
        self._audit = audit
        self._nonces = ReplayCache(ttl=2 * self.config.max_skew + 1, max_entries=self.config.nonce_cache)

    def _deny(self, env: Envelope, reason: str, message: str, kid: str | None = None) -> Denied:
        if self._audit is not None:
            self._audit.append("signing." + reason, id=env.id[:128], type=env.type[:128], kid=kid)
        return Denied(f"request {env.id[:64]!r}: {message}", layer="signing", reason=reason)

    def verify_frame(
        self, data: bytes, *, max_size: int = DEFAULT_MAX_FRAME, types: Container[str] | None = None
    ) -> Verified:
        """Verify a raw frame, then decode it; use this where request bodies are closed schemas.

        The body schemas of :mod:`openfang.protocol.messages` refuse unknown fields, ``_auth`` included, so
        the signature is split off the raw map first and the rest goes through :func:`decode` unchanged.
        """
        if len(data) > max_size:
            decode(data, max_size=max_size)  # raises FrameTooLarge with the protocol's own message
        try:
            raw = msgpack.unpackb(
                data, raw=False, strict_map_key=True, max_bin_len=max_size, max_str_len=max_size
            )
        except Exception:  # msgpack raises several unrelated types; decode() reports it properly
            raw = None
        auth: Any = None
        if isinstance(raw, dict) and isinstance(raw.get("body"), dict) and AUTH_KEY in raw["body"]:
            body = dict(raw["body"])
            auth = body.pop(AUTH_KEY)
            data = msgpack.packb({**raw, "body": body}, use_bin_type=True)
        return self._check(decode(data, max_size=max_size, types=types), auth)

    def verify(self, env: Envelope) -> Verified:
        """Return the verified request or raise :class:`Denied` saying why it was refused."""
        stripped = Envelope(
            v=env.v, id=env.id, type=env.type, body={k: v for k, v in env.body.items() if k != AUTH_KEY}
        )
        return self._check(stripped, env.body.get(AUTH_KEY))

    def _check(self, env: Envelope, auth: Any) -> Verified:
        stripped = env
        if not self.config.enabled:
            return Verified(env=stripped, kid=None)
        if auth is None:
            if self.config.require:
                raise self._deny(env, "unsigned", "unsigned request (signatures are required)")
            return Verified(env=stripped, kid=None)
        if (
            not isinstance(auth, Mapping)
            or not isinstance(auth.get("kid"), str)
            or auth.get("alg") not in (HMAC_ALG, ED25519_ALG)
            or not isinstance(auth.get("ts"), int)
            or not isinstance(auth.get("nonce"), str)
            or not 16 <= len(auth["nonce"]) <= 64
            or not isinstance(auth.get("sig"), bytes)
        ):
            raise self._deny(
                env, "malformed", "_auth must hold alg, kid, ts (int ms), nonce (16-64 chars), sig"
            )
        kid = auth["kid"][:128]
        entry = self.keys.get(kid)
        if entry is None or entry[0] != auth["alg"]:
            raise self._deny(env, "unknown_key", f"unknown key id {kid!r} for {auth['alg']}", kid)
        data = signed_bytes(env, auth)
        alg, material = entry
        if alg == HMAC_ALG:
            assert isinstance(material, bytes)
            good = compare_digest(hmac_sha256(material, data), auth["sig"])
        else:
            assert isinstance(material, Ed25519PublicKey)
            try:
                material.verify(auth["sig"], data)
                good = True
            except InvalidSignature:
                good = False
        if not good:
            raise self._deny(env, "forged", "signature does not verify", kid)
        # Checked after the signature so an attacker cannot probe our clock or cache with junk.
        now = self._clock()
        skew = abs(now - auth["ts"] / 1000)
        if skew > self.config.max_skew:
            raise self._deny(
                env, "stale", f"timestamp is {skew:.0f}s from ours (limit {self.config.max_skew:.0f}s)", kid
            )
        nonce = f"{kid}\0{auth['nonce']}"
        if self._nonces.seen(nonce, now):
            raise self._deny(env, "replayed", "nonce already used (replayed request)", kid)
        if self._nonces.full(now):
            raise self._deny(env, "nonce_cache_full", "too many signed requests in the replay window", kid)
        self._nonces.record(nonce, now)
        return Verified(env=stripped, kid=kid)


class _KeyRef(Protocol):
    # Read-only members, so frozen dataclasses (config.KeySpec) satisfy the protocol.
    @property
    def id(self) -> str: ...
    @property
    def alg(self) -> str: ...
    @property
    def file(self) -> str: ...


def load_signing_key(path: str, kid: str, alg: str = HMAC_ALG) -> SigningKey:
    """The key a client signs with, from a file: an HMAC secret (the same file the daemon's key ring
    reads: 32+ raw bytes or 64+ hex characters) or an Ed25519 private key (a 32-byte seed, raw or as 64
    hex characters, or a PEM PKCS#8 file). Raises ConfigError naming the file, never its content."""
    where = f"signing key {kid!r} ({path})"
    try:
        material = read_key_material(path)
    except OSError as exc:
        raise ConfigError([Problem(where, f"cannot read the key file: {exc.strerror or exc}")]) from None
    if alg == HMAC_ALG:
        if len(material) < 32:
            raise ConfigError([Problem(where, "an HMAC secret must be at least 32 bytes")])
        return SigningKey.hmac(kid, material)
    if alg != ED25519_ALG:
        raise ConfigError([Problem(where, f"alg must be {HMAC_ALG} or {ED25519_ALG}, got {alg!r}")])
    if material.lstrip().startswith(b"-----BEGIN"):
        try:
            private = Ed25519PrivateKey.from_pem(material)
        except NotEd25519Key:
            raise ConfigError([Problem(where, "the PEM key is not an Ed25519 key")]) from None
        except InvalidKey:
            raise ConfigError([Problem(where, "not a PEM private key without a password")]) from None
        return SigningKey.ed25519(kid, private)
    if len(material) != 32:
        raise ConfigError([Problem(where, "an Ed25519 private key file holds a 32-byte seed (or 64 hex)")])
    return SigningKey.ed25519(kid, Ed25519PrivateKey.from_private_bytes(material))


def keyring_from_files(specs: Iterable[_KeyRef]) -> KeyRing:
    """A KeyRing from ``[security.signing] keys`` (HMAC secret files, Ed25519 public key files).

    Raises ConfigError listing every key that could not be loaded (by id and path, never content).
    """
    ring = KeyRing()
    problems: list[Problem] = []
    for spec in specs:
        where = f"[security.signing] key {spec.id!r} ({spec.file})"
        try:
            material = read_key_material(spec.file)
        except OSError as exc:
            problems.append(Problem(where, f"cannot read the key file: {exc.strerror or exc}"))
            continue
        if spec.alg == HMAC_ALG:
            if len(material) < 32:
                problems.append(Problem(where, "an HMAC secret must be at least 32 bytes"))
                continue
            ring.add_hmac(spec.id, material)
        else:
            if len(material) != 32:
                problems.append(
                    Problem(where, "an Ed25519 public key file holds 32 bytes (or 64 hex characters)")
                )
                continue
            ring.add_ed25519(spec.id, material)
    if problems:
        raise ConfigError(problems)
    return ring
