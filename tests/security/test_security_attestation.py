"""Layer 13: a module whose bytes differ from its manifest's pin or signature is refused at spawn."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfang.security._errors import Denied
from openfang.security.attestation import AttestationConfig, Attestor, module_digest, sign_manifest
from openfang.security.audit import AuditLog

MODULE = b"\0asm\x01\0\0\0" + b"\x01" * 64
EVIL = MODULE[:-1] + b"\x02"
PUBLISHER = Ed25519PrivateKey.generate()


def _attestor(audit: AuditLog | None = None, **kw: object) -> Attestor:
    cfg = AttestationConfig(trusted_publishers={"acme": PUBLISHER.public_key().public_bytes_raw()}, **kw)  # type: ignore[arg-type]
    return Attestor(cfg, audit=audit)


def test_attestation_swapped_module_bytes_are_refused_and_audited(audit: AuditLog) -> None:
    """A module whose bytes were swapped after pinning is refused; the genuine one still attests."""
    manifest = {"name": "calc", "version": 1, "sha256": module_digest(MODULE)}
    att = _attestor(audit)
    with pytest.raises(Denied) as err:
        att.attest("calc", EVIL, manifest)
    assert err.value.reason == "digest_mismatch" and err.value.layer == "attestation"
    assert att.attest("calc", MODULE, manifest).sha256 == module_digest(MODULE)
    (rec,) = audit.records("attestation.digest_mismatch")
    assert rec.fields["actual"] == module_digest(EVIL)


def test_attestation_unpinned_manifest_is_refused_by_default() -> None:
    """Without a sha256 or signature the module is refused (require_pin)."""
    with pytest.raises(Denied, match="pins no sha256"):
        _attestor().attest("calc", MODULE, {"name": "calc"})
    assert _attestor(require_pin=False).attest("calc", MODULE, {"name": "calc"}).publisher is None


def test_attestation_signed_manifest_verifies_and_tampering_is_caught() -> None:
    """A publisher-signed manifest attests; editing any field (the pin included) breaks the signature."""
    signed = sign_manifest({"name": "calc", "version": 2, "sha256": module_digest(MODULE)}, "acme", PUBLISHER)
    assert _attestor(require_signature=True).attest("calc", MODULE, signed).publisher == "acme"
    repinned = {**signed, "sha256": module_digest(EVIL)}
    with pytest.raises(Denied) as err:
        _attestor().attest("calc", EVIL, repinned)
    assert err.value.reason == "bad_signature"


def test_attestation_untrusted_publisher_and_unsigned_are_refused_when_required() -> None:
    """A signature by an unknown key, or no signature when one is required, is refused."""
    rogue = sign_manifest(
        {"name": "calc", "sha256": module_digest(MODULE)}, "rogue", Ed25519PrivateKey.generate()
    )
    with pytest.raises(Denied) as err:
        _attestor().attest("calc", MODULE, rogue)
    assert err.value.reason == "unknown_publisher"
    impostor = sign_manifest(
        {"name": "calc", "sha256": module_digest(MODULE)}, "acme", Ed25519PrivateKey.generate()
    )
    with pytest.raises(Denied, match="does not verify"):
        _attestor().attest("calc", MODULE, impostor)
    with pytest.raises(Denied) as err:
        _attestor(require_signature=True).attest("calc", MODULE, {"sha256": module_digest(MODULE)})
    assert err.value.reason == "unsigned"


def test_attestation_reads_the_agent_toml_pin() -> None:
    """[agent] module_sha256 of agent.toml is the pin when there is no flat sha256."""
    manifest = {"agent": {"name": "calc", "module_sha256": module_digest(MODULE)}}
    assert _attestor().attest("calc", MODULE, manifest).sha256 == module_digest(MODULE)
    with pytest.raises(Denied, match="the manifest pins"):
        _attestor().attest("calc", EVIL, manifest)
