"""Layer 13, binary attestation: a module is spawned only if its bytes are the ones its manifest pins.

Two mechanisms, usable together:

- **Pinned digest**: the manifest's ``sha256`` must equal SHA-256 of the module bytes about to be compiled.
- **Signed manifest**: ``publisher`` names a trusted Ed25519 key and ``signature`` (base64) signs
  ``b"openfang-manifest-v1\\0" + canonical_msgpack(manifest without "signature")``. Since the signed
  manifest includes ``sha256``, a valid signature pins the module bytes to what the publisher released.

With ``require_signature`` every manifest must be signed by a trusted publisher; with ``require_pin`` (the
default) an unpinned, unsigned manifest is refused. Every refusal is a
:class:`~openfang.security._errors.Denied` (layer ``attestation``) with an audit record.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openfang.security._canon import canonical_msgpack
from openfang.security._ed25519 import Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature
from openfang.security._errors import Denied
from openfang.security._hashing import compare_digest, sha256
from openfang.security.audit import AuditSink

DOMAIN = b"openfang-manifest-v1\0"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationConfig:
    """``[security.attestation]``: module pins, publisher signatures, the trusted publishers' keys."""

    enabled: bool = True
    require_pin: bool = True
    require_signature: bool = False
    trusted_publishers: Mapping[str, bytes] = field(default_factory=dict)  # key id -> raw Ed25519 public key


@dataclass(frozen=True, slots=True, kw_only=True)
class Attested:
    """A module that passed: its name, digest, and the publisher that signed it (if any)."""

    name: str
    sha256: str
    publisher: str | None


def module_digest(data: bytes) -> str:
    """Lower-case hex SHA-256 of module bytes."""
    return sha256(data).hexdigest()


def manifest_signing_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes a manifest signature covers (every key except ``signature``)."""
    return DOMAIN + canonical_msgpack({k: v for k, v in manifest.items() if k != "signature"})


def sign_manifest(manifest: Mapping[str, Any], publisher: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``manifest`` with ``publisher`` set and a ``signature`` over the rest (for release tools)."""
    out = {k: v for k, v in manifest.items() if k != "signature"}
    out["publisher"] = publisher
    out["signature"] = base64.b64encode(key.sign(manifest_signing_bytes(out))).decode("ascii")
    return out


def _pin(manifest: Mapping[str, Any]) -> Any:
    if "sha256" in manifest:
        return manifest["sha256"]
    agent = manifest.get("agent")
    return agent.get("module_sha256") if isinstance(agent, Mapping) else None


class Attestor:
    """Checks module bytes against their manifest at spawn."""

    def __init__(self, config: AttestationConfig | None = None, *, audit: AuditSink | None = None) -> None:
        self.config = config or AttestationConfig()
        self._audit = audit
        self._keys = {
            kid: Ed25519PublicKey.from_public_bytes(raw)
            for kid, raw in self.config.trusted_publishers.items()
        }

    def _deny(self, name: str, reason: str, message: str, **fields: Any) -> Denied:
        if self._audit is not None:
            self._audit.append(f"attestation.{reason}", module=name, **fields)
        return Denied(f"module {name!r}: {message}", layer="attestation", reason=reason)

    def attest(self, name: str, module_bytes: bytes, manifest: Mapping[str, Any]) -> Attested:
        """Return the attestation or raise Denied (digest mismatch, unpinned, unsigned, bad signature).

        The pin is the manifest's ``sha256`` (flat layout) or ``[agent] module_sha256`` (agent.toml).
        """
        actual = module_digest(module_bytes)
        if not self.config.enabled:
            return Attested(name=name, sha256=actual, publisher=None)
        publisher = self._check_signature(name, manifest)
        pinned = _pin(manifest)
        if pinned is None:
            if self.config.require_pin:
                raise self._deny(name, "unpinned", "manifest pins no sha256 digest", actual=actual)
        elif not isinstance(pinned, str) or not compare_digest(pinned.lower(), actual):
            raise self._deny(
                name,
                "digest_mismatch",
                f"module bytes have sha256 {actual}, the manifest pins {str(pinned)[:64]}",
                expected=str(pinned)[:64],
                actual=actual,
            )
        return Attested(name=name, sha256=actual, publisher=publisher)

    def _check_signature(self, name: str, manifest: Mapping[str, Any]) -> str | None:
        sig = manifest.get("signature")
        publisher = manifest.get("publisher")
        if sig is None:
            if self.config.require_signature:
                raise self._deny(name, "unsigned", "manifest is not signed and signatures are required")
            return None
        if not isinstance(publisher, str) or publisher not in self._keys:
            raise self._deny(name, "unknown_publisher", f"publisher {str(publisher)[:64]!r} is not trusted")
        try:
            raw = base64.b64decode(str(sig), validate=True)
            self._keys[publisher].verify(raw, manifest_signing_bytes(manifest))
        except (binascii.Error, ValueError, InvalidSignature):
            raise self._deny(
                name, "bad_signature", f"signature by {publisher!r} does not verify", publisher=publisher
            ) from None
        return publisher
