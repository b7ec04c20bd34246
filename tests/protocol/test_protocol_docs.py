"""PROTOCOL.md is complete and true: every type documented, every hex example equal to its JSON twin."""

from __future__ import annotations

import json
import re
from typing import Any

import msgpack

from openfang.protocol import _docgen, messages
from openfang.protocol.envelope import decode

TEXT = _docgen.DOC.read_text(encoding="utf-8")
_PAIR = re.compile(r"```json\n(.*?)\n```\n```msgpack-hex\n(.*?)\n```", re.S)


def _pairs() -> list[tuple[dict[str, Any], bytes]]:
    return [(json.loads(js), bytes.fromhex("".join(hx.split()))) for js, hx in _PAIR.findall(TEXT)]


def test_every_hex_example_decodes_to_its_json_twin() -> None:
    """Each msgpack-hex block decodes to exactly the JSON block before it, and is a valid envelope."""
    pairs = _pairs()
    # request + reply per type, one per internal message and internal reply, one event, one error
    internal_replies = sum(1 for s in messages.INTERNAL.values() if s.reply is not None)
    assert len(pairs) == 2 * len(messages.CATALOGUE) + len(messages.INTERNAL) + internal_replies + 2
    assert TEXT.count("```msgpack-hex") == len(pairs)  # no hex block without a JSON twin
    for as_json, packed in pairs:
        assert msgpack.unpackb(packed, raw=False) == as_json
        env = decode(packed)  # validates the body against the catalogue, too
        assert (env.type, env.body) == (as_json["type"], as_json["body"])
        if env.type in messages.INTERNAL:  # checked by their handlers, through parse
            messages.parse(env, messages.INTERNAL[env.type].body)
        elif env.type.removesuffix(".ok") in messages.INTERNAL:  # an internal reply: its open schema
            reply_class = messages.INTERNAL[env.type.removesuffix(".ok")].reply
            messages.parse(env, reply_class)


def test_every_catalogued_type_error_code_and_event_kind_is_documented() -> None:
    """Every request type, its .ok reply, event, error, error code and event kind appears in PROTOCOL.md."""
    for type_ in messages.CATALOGUE:
        assert f"#### `{type_}`" in TEXT
        assert f"**Reply** `{type_}.ok`" in TEXT
    assert "#### `event`" in TEXT and "#### `error`" in TEXT
    for type_, spec in messages.INTERNAL.items():
        assert f"#### `{type_}` (internal" in TEXT
        assert spec.reply is None or f"**Reply** `{type_}.ok`" in TEXT
    for code in messages.ERROR_CODES:
        assert f"- `{code}`:" in TEXT
    for kind in messages.EVENT_KINDS:
        assert f"- `{kind}`:" in TEXT


def test_protocol_md_reference_is_the_generated_one() -> None:
    """The reference section equals what the catalogue generates (run _docgen --write after a change)."""
    assert _docgen.current_section(TEXT) == _docgen.reference()


def _block(label: str) -> str:
    match = re.search(rf"```{label}\n(.*?)\n```", TEXT, re.S)
    assert match is not None, f"PROTOCOL.md has no {label} block"
    return match.group(1)


def _sorted_deep(value: Any) -> Any:
    """Canonical order written from the PROTOCOL.md text alone (independent of openfang.security._canon)."""
    if isinstance(value, dict):
        return {k: _sorted_deep(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_deep(v) for v in value]
    return value


def test_signing_worked_example_is_exact(tmp_path: Any) -> None:
    """Section 1.5's example: key from the hex file, signed bytes, HMAC and frame all recompute exactly."""
    import hashlib
    import hmac

    from openfang.security.signing import KeyRing, SigningConfig, Verifier, read_key_material, signed_bytes

    key_text = re.search(r"The key file `ops-1.key` holds the text\n`([0-9a-f]+)`", TEXT)
    assert key_text is not None
    key_file = tmp_path / "ops-1.key"
    key_file.write_text(key_text.group(1) + "\n")
    key = read_key_material(str(key_file))
    assert key == bytes(range(32))  # the hex-decoded file, not its text
    request = json.loads(_block("signing-request-json"))
    auth = json.loads(_block("signing-auth-json"))
    documented = bytes.fromhex("".join(_block("signing-bytes-hex").split()))
    # From the prose: prefix, then the recursively sorted map of the eight entries.
    payload = {**{k: request[k] for k in ("v", "id", "type", "body")}, **auth}
    independent = b"openfang-req-v1\0" + msgpack.packb(_sorted_deep(payload), use_bin_type=True)
    assert documented == independent and len(documented) == 218
    env = decode(msgpack.packb(request, use_bin_type=True))
    assert signed_bytes(env, auth) == documented
    sig = bytes.fromhex(_block("signing-sig-hex"))
    assert hmac.new(key, documented, hashlib.sha256).digest() == sig
    frame = bytes.fromhex("".join(_block("signing-frame-hex").split()))
    raw = msgpack.unpackb(frame, raw=False)
    assert raw["body"]["_auth"] == {**auth, "sig": sig}  # sig unpacks as bytes: it is msgpack bin
    assert frame[frame.index(b"\xa3sig") + 4 : frame.index(b"\xa3sig") + 6] == b"\xc4\x20"
    ring = KeyRing()
    ring.add_hmac("ops-1", key)
    verifier = Verifier(ring, SigningConfig(require=True), clock=lambda: auth["ts"] / 1000)
    verified = verifier.verify_frame(frame)
    assert verified.kid == "ops-1" and verified.env.body == request["body"]
