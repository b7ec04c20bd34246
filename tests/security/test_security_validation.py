"""Layer 1: oversized, deep, wide or ill-typed messages and manifests are refused, naming the field."""

from __future__ import annotations

import msgpack
import pytest

from openfang.protocol.envelope import Envelope, decode
from openfang.protocol.errors import ConfigError, FrameTooLarge, ProtocolError
from openfang.security.audit import AuditLog
from openfang.security.validation import (
    MessageValidator,
    TooDeep,
    ValidationLimits,
    check_frame,
    check_manifest,
    check_message,
)

LIMITS = ValidationLimits(
    max_text=100, max_depth=5, max_keys=8, max_list=10, max_nodes=200, max_frame_bytes=4096
)


def test_validation_long_text_is_refused_naming_the_field() -> None:
    """A string over max_text raises FrameTooLarge with the path of the field."""
    env = Envelope(type="agent.send", body={"messages": [{"content": "ok"}, {"content": "x" * 101}]})
    with pytest.raises(FrameTooLarge, match=r"body\.messages\[1\]\.content: text is 101 characters"):
        check_message(env, LIMITS)


def test_validation_deep_nesting_is_refused_without_recursion() -> None:
    """A frame nested thousands deep is refused by depth, not by a RecursionError."""
    deep: dict[str, object] = {}
    cur = deep
    for _ in range(5000):
        nxt: dict[str, object] = {}
        cur["a"] = nxt
        cur = nxt
    with pytest.raises(TooDeep, match="nested 6 levels deep"):
        check_message(Envelope(type="t", body=deep), LIMITS)


def test_validation_wide_maps_lists_and_node_floods_are_refused() -> None:
    """Too many keys, too long a list, or too many values in total each have their own message."""
    with pytest.raises(FrameTooLarge, match=r"body\.m: map has 9 keys"):
        check_message(Envelope(type="t", body={"m": {str(i): i for i in range(9)}}), LIMITS)
    with pytest.raises(FrameTooLarge, match=r"body.l: list has 11 items"):
        check_message(Envelope(type="t", body={"l": list(range(11))}), LIMITS)
    flood = {"a": [[1] * 10] * 10, "b": [[1] * 10] * 10}
    with pytest.raises(FrameTooLarge, match="more than 200 values"):
        check_message(Envelope(type="t", body=flood), LIMITS)


def test_validation_bad_types_and_keys_are_protocol_errors() -> None:
    """Non-string keys, huge ints and long keys are refused as bad_request."""
    with pytest.raises(ProtocolError, match="map keys must be strings"):
        check_message(Envelope(type="t", body={"m": {1: "x"}}), LIMITS)
    with pytest.raises(ProtocolError, match="64-bit"):
        check_message(Envelope(type="t", body={"n": 2**70}), LIMITS)
    with pytest.raises(ProtocolError, match="a key is 200 characters"):
        check_message(Envelope(type="t", body={"k" * 200: 1}), LIMITS)


def test_validation_oversized_frame_is_refused_before_decoding() -> None:
    """check_frame refuses a frame over the limit by its length alone."""
    with pytest.raises(FrameTooLarge, match="4097 bytes"):
        check_frame(b"\0" * 4097, LIMITS)


def test_validation_attack_is_audited_and_next_request_served(audit: AuditLog) -> None:
    """After a refused hostile message, a normal one passes and the refusal is in the audit log."""
    validator = MessageValidator(LIMITS, audit=audit)
    raw = msgpack.packb({"v": 1, "id": "r1", "type": "sec.test", "body": {"text": "y" * 500}})
    with pytest.raises(FrameTooLarge) as err:
        validator.check(decode(raw), client="c1")
    assert err.value.code == "too_large"
    validator.check(Envelope(type="sec.test", body={"text": "hello"}), client="c1")
    (rec,) = audit.records("validation.rejected")
    assert rec.fields["client"] == "c1" and "body.text" in rec.fields["reason"]


def test_validation_manifest_reports_every_problem() -> None:
    """A bad manifest lists all its problems with the source and key."""
    manifest = {"name": "Bad Name", "sha256": "xyz", "secrets": ["ok_lower", "GOOD"], "permissions": [1]}
    with pytest.raises(ConfigError) as err:
        check_manifest(manifest, LIMITS, source="agents/bad.toml")
    wheres = [p.where for p in err.value.problems]
    assert "agents/bad.toml: key 'name'" in wheres
    assert "agents/bad.toml: key 'sha256'" in wheres
    assert "agents/bad.toml: key 'secrets'[0]" in wheres
    assert "agents/bad.toml: key 'permissions'" in wheres
    check_manifest({"name": "good-agent", "version": 3, "sha256": "a" * 64}, LIMITS, source="ok.toml")


def test_validation_agent_toml_layout_gets_limits_only() -> None:
    """An agent.toml manifest ([agent] table) is checked for size, not for the flat keys."""
    check_manifest(
        {"agent": {"name": "research-analyst", "module": "builtin:echo"}}, LIMITS, source="agent.toml"
    )
    with pytest.raises(ConfigError, match=r"agent\.toml: manifest\.agent\.system_prompt: text is 101"):
        check_manifest({"agent": {"name": "x", "system_prompt": "p" * 101}}, LIMITS, source="agent.toml")
