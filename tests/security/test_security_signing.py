"""Layer 4: signed requests; unsigned, forged, stale and replayed requests are refused and audited."""

from __future__ import annotations

import msgpack
import pytest
from _security_clock import FakeClock

from openfang.protocol.envelope import Envelope, encode
from openfang.security._errors import Denied
from openfang.security.audit import AuditLog
from openfang.security.signing import AUTH_KEY, KeyRing, SigningConfig, SigningKey, Verifier, sign

HKEY = SigningKey.hmac("ops-1", b"s" * 32)
EKEY = SigningKey.ed25519("ci-bot")


def _verifier(clock: FakeClock, audit: AuditLog | None = None, require: bool = True) -> Verifier:
    ring = KeyRing()
    ring.add(HKEY)
    ring.add_ed25519("ci-bot", EKEY.public_bytes())
    return Verifier(ring, SigningConfig(require=require, max_skew=30), clock=clock, audit=audit)


def _req(**body: object) -> Envelope:
    return Envelope(type="agent.send", body={"agent_id": "a1", "text": "hi", **body})


@pytest.mark.parametrize("key", [HKEY, EKEY], ids=["hmac", "ed25519"])
def test_signing_valid_request_survives_the_wire_and_verifies(key: SigningKey, clock: FakeClock) -> None:
    """A signed request, encoded and decoded, verifies and comes back without _auth."""
    signed = sign(_req(), key, now=clock())
    got = _verifier(clock).verify_frame(encode(signed))
    assert got.kid == key.kid and AUTH_KEY not in got.env.body and got.env.body["text"] == "hi"


def test_signing_unsigned_request_is_refused_when_required(clock: FakeClock, audit: AuditLog) -> None:
    """With require=true, an unsigned request is denied (reason unsigned) and audited."""
    with pytest.raises(Denied) as err:
        _verifier(clock, audit).verify(_req())
    assert err.value.reason == "unsigned" and err.value.code == "denied"
    assert audit.records("signing.unsigned")
    assert _verifier(clock, require=False).verify(_req()).kid is None


def test_signing_forged_body_is_refused_and_service_continues(clock: FakeClock, audit: AuditLog) -> None:
    """Changing any signed field after signing is caught; a genuine request right after is accepted."""
    v = _verifier(clock, audit)
    signed = sign(_req(), HKEY, now=clock())
    tampered = Envelope(id=signed.id, type=signed.type, body={**signed.body, "text": "rm -rf /"})
    with pytest.raises(Denied) as err:
        v.verify(tampered)
    assert err.value.reason == "forged"
    retyped = Envelope(id=signed.id, type="agent.spawn", body=signed.body)
    with pytest.raises(Denied, match="does not verify"):
        v.verify(retyped)
    assert v.verify(sign(_req(), HKEY, now=clock())).kid == "ops-1"
    assert len(audit.records("signing.forged")) == 2


def test_signing_signature_from_unknown_or_wrong_key_is_refused(clock: FakeClock) -> None:
    """A key id we do not trust, or a right kid with a wrong secret, is refused."""
    v = _verifier(clock)
    with pytest.raises(Denied) as err:
        v.verify(sign(_req(), SigningKey.hmac("stranger", b"x" * 32), now=clock()))
    assert err.value.reason == "unknown_key"
    with pytest.raises(Denied) as err:
        v.verify(sign(_req(), SigningKey.hmac("ops-1", b"y" * 32), now=clock()))
    assert err.value.reason == "forged"
    with pytest.raises(Denied) as err:
        v.verify(sign(_req(), SigningKey.ed25519("ci-bot"), now=clock()))
    assert err.value.reason == "forged"


def test_signing_stale_request_is_refused(clock: FakeClock, audit: AuditLog) -> None:
    """A request signed 31 s ago (or 31 s in the future) is stale."""
    v = _verifier(clock, audit)
    for offset in (-31, 31):
        with pytest.raises(Denied) as err:
            v.verify(sign(_req(), HKEY, now=clock() + offset))
        assert err.value.reason == "stale"
    assert len(audit.records("signing.stale")) == 2
    v.verify(sign(_req(), HKEY, now=clock() - 29))


def test_signing_replayed_request_is_refused(clock: FakeClock, audit: AuditLog) -> None:
    """The same signed request sent twice is refused the second time, even just inside the skew window."""
    v = _verifier(clock, audit)
    signed = sign(_req(), HKEY, now=clock())
    v.verify(signed)
    clock.advance(29)
    with pytest.raises(Denied) as err:
        v.verify(signed)
    assert err.value.reason == "replayed"
    (rec,) = audit.records("signing.replayed")
    assert rec.fields["kid"] == "ops-1"
    clock.advance(60)  # past the skew: stale now, never accepted again
    with pytest.raises(Denied, match="timestamp"):
        v.verify(signed)


def test_signing_frame_is_schema_checked_after_the_signature_is_split_off(clock: FakeClock) -> None:
    """verify_frame keeps the closed body schema: a signed body with an unknown field is still refused."""
    from openfang.protocol.errors import ProtocolError

    signed = sign(_req(bogus=1), HKEY, now=clock())
    with pytest.raises(ProtocolError, match="bogus"):
        _verifier(clock).verify_frame(encode(signed))
    with pytest.raises(Denied):
        _verifier(clock).verify_frame(encode(_req()))


def test_signing_malformed_auth_is_refused(clock: FakeClock) -> None:
    """An _auth map with missing or mistyped fields is malformed."""
    v = _verifier(clock)
    signed = sign(_req(), HKEY, now=clock())
    broken = dict(signed.body[AUTH_KEY])
    broken["sig"] = "not-bytes"
    with pytest.raises(Denied) as err:
        v.verify(Envelope(id=signed.id, type=signed.type, body={**signed.body, AUTH_KEY: broken}))
    assert err.value.reason == "malformed"


def test_signing_canonical_encoding_ignores_key_order(clock: FakeClock) -> None:
    """A peer that packs the body maps in another key order still verifies (canonical encoding)."""
    signed = sign(_req(extra={"b": 2, "a": 1}), EKEY, now=clock())
    raw = msgpack.unpackb(encode(signed))
    raw["body"] = dict(reversed(list(raw["body"].items())))
    raw["body"]["extra"] = {"a": 1, "b": 2}
    assert _verifier(clock).verify(Envelope(**raw)).kid == "ci-bot"


def test_signing_key_repr_never_shows_secret() -> None:
    """repr of a signing key shows the key id only."""
    assert "sss" not in repr(HKEY) and "ops-1" in repr(HKEY)
