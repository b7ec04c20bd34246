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
    assert len(pairs) == 2 * len(messages.CATALOGUE) + 2  # request + reply per type, one event, one error
    assert TEXT.count("```msgpack-hex") == len(pairs)  # no hex block without a JSON twin
    for as_json, packed in pairs:
        assert msgpack.unpackb(packed, raw=False) == as_json
        env = decode(packed)  # validates the body against the catalogue, too
        assert (env.type, env.body) == (as_json["type"], as_json["body"])


def test_every_catalogued_type_error_code_and_event_kind_is_documented() -> None:
    """Every request type, its .ok reply, event, error, error code and event kind appears in PROTOCOL.md."""
    for type_ in messages.CATALOGUE:
        assert f"#### `{type_}`" in TEXT
        assert f"**Reply** `{type_}.ok`" in TEXT
    assert "#### `event`" in TEXT and "#### `error`" in TEXT
    for code in messages.ERROR_CODES:
        assert f"- `{code}`:" in TEXT
    for kind in messages.EVENT_KINDS:
        assert f"- `{kind}`:" in TEXT


def test_protocol_md_reference_is_the_generated_one() -> None:
    """The reference section equals what the catalogue generates (run _docgen --write after a change)."""
    assert _docgen.current_section(TEXT) == _docgen.reference()
