"""Layer 15: inter-agent messages are signed by the sender; impersonation and replay are refused."""

from __future__ import annotations

import pytest
from _security_clock import FakeClock

from openfang.protocol.envelope import Envelope, decode, encode
from openfang.security._errors import Denied
from openfang.security.audit import AuditLog
from openfang.security.identity import (
    FROM_KEY,
    AgentIdentity,
    AgentMessageVerifier,
    IdentityRegistry,
    sign_agent_message,
)

ALICE = AgentIdentity.generate("alice")
BOB = AgentIdentity.generate("bob")


def _setup(clock: FakeClock, audit: AuditLog | None = None) -> AgentMessageVerifier:
    reg = IdentityRegistry(audit=audit)
    reg.register("alice", ALICE.public_bytes())
    reg.register("bob", BOB.public_bytes())
    return AgentMessageVerifier(reg, clock=clock, audit=audit)


def _msg() -> Envelope:
    return Envelope(type="agent.message", body={"to": "carol", "text": "please summarise doc 7"})


def test_identity_signed_message_proves_its_sender(clock: FakeClock) -> None:
    """A message signed by alice verifies as from alice, across the wire, without _from."""
    got = _setup(clock).verify(
        decode(encode(sign_agent_message(_msg(), ALICE, now=clock()))), transport_sender="alice"
    )
    assert got.sender == "alice" and FROM_KEY not in got.env.body


def test_identity_impersonation_is_refused_audited_and_service_continues(
    clock: FakeClock, audit: AuditLog
) -> None:
    """Bob claiming to be alice (own key, alice's name) is refused; genuine messages still pass."""
    v = _setup(clock, audit)
    forged = sign_agent_message(_msg(), BOB, now=clock())
    meta = dict(forged.body[FROM_KEY])
    meta["agent"] = "alice"
    forged = Envelope(id=forged.id, type=forged.type, body={**forged.body, FROM_KEY: meta})
    with pytest.raises(Denied) as err:
        v.verify(forged)
    assert err.value.reason == "impersonation"
    with pytest.raises(Denied, match="sent by 'bob' but claims to be 'alice'"):
        v.verify(sign_agent_message(_msg(), ALICE, now=clock()), transport_sender="bob")
    assert v.verify(sign_agent_message(_msg(), BOB, now=clock()), transport_sender="bob").sender == "bob"
    assert len(audit.records("identity.impersonation")) == 2


def test_identity_tampered_unsigned_unknown_stale_and_replayed_are_refused(clock: FakeClock) -> None:
    """Every way around the signature has its own reason."""
    v = _setup(clock)
    good = sign_agent_message(_msg(), ALICE, now=clock())
    tampered = Envelope(id=good.id, type=good.type, body={**good.body, "text": "transfer funds"})
    cases = {
        "impersonation": tampered,
        "unsigned": _msg(),
        "unknown_sender": sign_agent_message(_msg(), AgentIdentity.generate("mallory"), now=clock()),
        "stale": sign_agent_message(_msg(), ALICE, now=clock() - 120),
    }
    for reason, env in cases.items():
        with pytest.raises(Denied) as err:
            v.verify(env)
        assert err.value.reason == reason
    v.verify(good)
    with pytest.raises(Denied) as err:
        v.verify(good)
    assert err.value.reason == "replayed"


def test_identity_registry_refuses_rebinding_an_id(audit: AuditLog) -> None:
    """A second key for an existing agent id is refused until the agent is unregistered."""
    reg = IdentityRegistry(audit=audit)
    reg.register("alice", ALICE.public_bytes())
    reg.register("alice", ALICE.public_bytes())  # same key: idempotent
    with pytest.raises(Denied) as err:
        reg.register("alice", BOB.public_bytes())
    assert err.value.reason == "identity_conflict"
    reg.unregister("alice")
    reg.register("alice", BOB.public_bytes())
    assert audit.records("identity.conflict")


def test_identity_private_key_is_not_in_repr() -> None:
    """repr of an identity shows the agent id only."""
    assert repr(ALICE) == "AgentIdentity(agent_id='alice')"


def test_identity_registry_keeps_few_key_objects_and_still_verifies_every_sender(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 2 key objects and 5 agents, every agent's message still verifies, a forgery is still
    refused, and a re-bind to another key is still refused for an agent whose key object was let go."""
    monkeypatch.setattr(IdentityRegistry, "KEYS_KEPT", 2)
    reg = IdentityRegistry()
    agents = [AgentIdentity.generate(f"a-{n}") for n in range(5)]
    for agent in agents:
        reg.register(agent.agent_id, agent.public_bytes())
    assert len(reg._keys) == 2
    v = AgentMessageVerifier(reg, clock=clock)
    for agent in agents:
        signed = sign_agent_message(_msg(), agent, now=clock())
        assert v.verify(signed, transport_sender=agent.agent_id).sender == agent.agent_id
    assert len(reg._keys) == 2
    forged = sign_agent_message(_msg(), agents[1], now=clock())
    meta = {**forged.body[FROM_KEY], "agent": "a-0"}
    with pytest.raises(Denied):
        v.verify(Envelope(id=forged.id, type=forged.type, body={**forged.body, FROM_KEY: meta}))
    with pytest.raises(Denied, match="already bound"):
        reg.register("a-0", agents[4].public_bytes())
    reg.unregister("a-0")
    assert reg.key("a-0") is None
