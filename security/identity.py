"""Layer 15, agent identity: an Ed25519 key per agent; inter-agent messages are signed by their sender.

The worker hosting an agent generates its key at spawn (:meth:`AgentIdentity.generate`); the private key
never leaves the host process (the guest never sees it, so a compromised guest cannot sign as anyone,
including itself, except through the host's send path). The public key is registered in an
:class:`IdentityRegistry`, which refuses to bind an agent id that is already bound to another key.

A message from agent A carries ``body["_from"] = {"agent": A, "ts": ms, "nonce": str, "sig": bytes}``; the
signature covers ``b"openfang-agent-v1\\0"`` + canonical msgpack of ``{"v", "id", "type", "body" (without
_from), "agent", "ts", "nonce"}`` (another domain than request signing, so one cannot stand in for the
other). :class:`AgentMessageVerifier` refuses unsigned messages, unknown senders, signatures that do not
verify under the *claimed* sender's key (impersonation), a claimed sender that differs from the sandbox the
host actually received it from, stale timestamps and replays — each audited as ``identity.<reason>``.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openfang.protocol.envelope import Envelope
from openfang.security._canon import canonical_msgpack
from openfang.security._ed25519 import Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature
from openfang.security._errors import Denied
from openfang.security._replay import ReplayCache
from openfang.security.audit import AuditSink

FROM_KEY = "_from"
DOMAIN = b"openfang-agent-v1\0"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentIdentity:
    """An agent's key pair, held by its host. ``repr`` shows the id and public key only."""

    agent_id: str
    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, agent_id: str) -> AgentIdentity:
        return cls(agent_id=agent_id, private=Ed25519PrivateKey.generate())

    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes_raw()


def _signed_bytes(env: Envelope, meta: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in env.body.items() if k != FROM_KEY}
    payload = {"v": env.v, "id": env.id, "type": env.type, "body": body}
    payload.update({k: meta[k] for k in ("agent", "ts", "nonce")})
    return DOMAIN + canonical_msgpack(payload)


def sign_agent_message(env: Envelope, identity: AgentIdentity, *, now: float | None = None) -> Envelope:
    """A copy of ``env`` signed as coming from ``identity.agent_id``."""
    meta: dict[str, Any] = {
        "agent": identity.agent_id,
        "ts": int((time.time() if now is None else now) * 1000),
        "nonce": os.urandom(16).hex(),
    }
    meta["sig"] = identity.private.sign(_signed_bytes(env, meta))
    body = {k: v for k, v in env.body.items() if k != FROM_KEY}
    body[FROM_KEY] = meta
    return Envelope(v=env.v, id=env.id, type=env.type, body=body)


class IdentityRegistry:
    """Agent id -> public key. An id bound to one key cannot be re-bound to another until unregistered.

    The 32 raw bytes of each key are kept; a key object (an OpenSSL key, ~0.3 KiB) only for the
    ``KEYS_KEPT`` agents that sent most recently, made again from the bytes when another one sends.
    """

    KEYS_KEPT = 1024

    def __init__(self, *, audit: AuditSink | None = None) -> None:
        self._keys: OrderedDict[str, Ed25519PublicKey] = OrderedDict()  # recently used, oldest first
        self._raw: dict[str, bytes] = {}
        self._audit = audit

    def register(self, agent_id: str, public: bytes) -> None:
        old = self._raw.get(agent_id)
        if old is not None and old != public:
            if self._audit is not None:
                self._audit.append("identity.conflict", agent_id=agent_id)
            raise Denied(
                f"agent id {agent_id!r} is already bound to another key",
                layer="identity",
                reason="identity_conflict",
            )
        key = Ed25519PublicKey.from_public_bytes(public)  # refuses bytes that are not a key, at once
        self._raw[agent_id] = bytes(public)
        self._keep(agent_id, key)

    def unregister(self, agent_id: str) -> None:
        self._keys.pop(agent_id, None)
        self._raw.pop(agent_id, None)

    def key(self, agent_id: str) -> Ed25519PublicKey | None:
        key = self._keys.get(agent_id)
        if key is not None:
            self._keys.move_to_end(agent_id)
            return key
        raw = self._raw.get(agent_id)
        if raw is None:
            return None
        key = Ed25519PublicKey.from_public_bytes(raw)
        self._keep(agent_id, key)
        return key

    def _keep(self, agent_id: str, key: Ed25519PublicKey) -> None:
        self._keys[agent_id] = key
        self._keys.move_to_end(agent_id)
        while len(self._keys) > self.KEYS_KEPT:
            self._keys.popitem(last=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FromAgent:
    """A verified inter-agent message: the envelope without ``_from``, and the proven sender."""

    env: Envelope
    sender: str


class AgentMessageVerifier:
    def __init__(
        self,
        registry: IdentityRegistry,
        *,
        max_skew: float = 30.0,
        clock: Callable[[], float] = time.time,
        audit: AuditSink | None = None,
    ) -> None:
        self.registry = registry
        self.max_skew = max_skew
        self._clock = clock
        self._audit = audit
        self._nonces = ReplayCache(ttl=2 * max_skew + 1)

    def _deny(self, env: Envelope, reason: str, message: str, **fields: Any) -> Denied:
        if self._audit is not None:
            self._audit.append("identity." + reason, id=env.id[:128], type=env.type[:128], **fields)
        return Denied(f"message {env.id[:64]!r}: {message}", layer="identity", reason=reason)

    def verify(self, env: Envelope, *, transport_sender: str | None = None) -> FromAgent:
        """Prove who sent ``env``. ``transport_sender`` is the agent the host received it from, if known."""
        meta = env.body.get(FROM_KEY)
        if not isinstance(meta, Mapping):
            raise self._deny(env, "unsigned", "inter-agent message is not signed by its sender")
        claimed, sig = meta.get("agent"), meta.get("sig")
        ts, nonce = meta.get("ts"), meta.get("nonce")
        if not (
            isinstance(claimed, str)
            and isinstance(sig, bytes)
            and isinstance(ts, int)
            and isinstance(nonce, str)
            and 16 <= len(nonce) <= 64
        ):
            raise self._deny(env, "malformed", "_from must hold agent, ts (int ms), nonce and sig")
        claimed = claimed[:128]
        if transport_sender is not None and transport_sender != claimed:
            raise self._deny(
                env,
                "impersonation",
                f"sent by {transport_sender!r} but claims to be {claimed!r}",
                claimed=claimed,
                actual=transport_sender,
            )
        key = self.registry.key(claimed)
        if key is None:
            raise self._deny(
                env, "unknown_sender", f"no identity registered for {claimed!r}", claimed=claimed
            )
        try:
            key.verify(sig, _signed_bytes(env, meta))
        except InvalidSignature:
            raise self._deny(
                env, "impersonation", f"signature is not {claimed!r}'s", claimed=claimed
            ) from None
        now = self._clock()
        if abs(now - ts / 1000) > self.max_skew:
            raise self._deny(env, "stale", "timestamp outside the allowed skew", claimed=claimed)
        tag = f"{claimed}\0{nonce}"
        if self._nonces.seen(tag, now):
            raise self._deny(env, "replayed", "message was already delivered (replay)", claimed=claimed)
        self._nonces.record(tag, now)
        body = {k: v for k, v in env.body.items() if k != FROM_KEY}
        return FromAgent(env=Envelope(v=env.v, id=env.id, type=env.type, body=body), sender=claimed)
