"""Generate the message reference of PROTOCOL.md from the catalogue, so the document cannot drift.

``python -m openfang.protocol._docgen`` prints the reference; ``--write`` replaces the part of
protocol/PROTOCOL.md between the BEGIN/END markers. A test fails when the file and the catalogue differ.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

import msgpack

from openfang.protocol import _examples, _schema, messages
from openfang.protocol._schema import Compiled
from openfang.protocol.bodies import ErrorBody
from openfang.protocol.envelope import ERROR_TYPE, PROTOCOL_VERSION

BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m openfang.protocol._docgen --write) -->"
END = "<!-- END GENERATED REFERENCE -->"
DOC = Path(__file__).with_name("PROTOCOL.md")
_HEX_WIDTH = 96
# (endpoint, heading, introduction) of each group of internal messages (InternalSpec.endpoint).
_INTERNAL_SECTIONS = (
    (
        "workers",
        "Internal messages (gateway and workers)",
        [
            "Between the gateway and its workers only, on the internal worker endpoint (a worker's DEALER,",
            "its child id as routing id). Clients never send them: the client door answers `unknown_type`.",
            "Workers also send `event` (kind `agent.state`), `agent.send.chunk`, and the replies to the",
            "requests the gateway forwards to them. The requests sent by an *agent* travel inside",
            "`worker.forward` (as `request.type` and `request.body`): its worker forwards them, the gateway",
            "answers them, and the reply comes back with the forward's id.",
        ],
    ),
    (
        "memory",
        "Internal messages (memory writer)",
        [
            "To the memory writer's own ROUTER endpoint (`ipc://<data_dir>/run/memory.sock`), from the",
            "memory client of a worker or of the `openfang memory` verbs (a DEALER). The request id is the",
            "idempotency key: the client resends an unacknowledged request with the same id, and the writer",
            "applies it once. A full queue answers `busy`, a bad body `bad_request`, a failed write",
            "`memory_error`.",
        ],
    ),
)


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a body class's field lines: the catalogue's field documentation."""
    comments: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"^\s+(\w+):[^#]*#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def _nested(cls: type, seen: dict[str, type]) -> None:
    def walk(tp: Any) -> None:
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if tp.__name__ not in seen:
                seen[tp.__name__] = tp
                _nested(tp, seen)
            return
        for arg in typing.get_args(tp):
            walk(arg)

    for tp in typing.get_type_hints(cls, include_extras=True).values():
        walk(tp)


def _describe(compiled: Compiled) -> str:
    return re.sub(r"a map \((\w+)\)", r"a `\1` map", compiled.describe)


def _table(compiled: Compiled) -> list[str]:
    if not compiled.fields:
        return ["(no fields: an empty map)", ""]
    assert compiled.cls is not None
    notes = _field_comments(compiled.cls)
    rows = ["| field | type | required | notes |", "|---|---|---|---|"]
    for name, field_compiled, required in compiled.fields:
        text = _describe(field_compiled).replace("|", "\\|")
        note = notes.get(name, "").replace("|", "\\|")
        rows.append(f"| `{name}` | {text} | {'yes' if required else 'no'} | {note} |")
    return [*rows, ""]


def _example(type_: str, body: dict[str, Any], number: int) -> list[str]:
    envelope = {"v": PROTOCOL_VERSION, "id": f"req-{number:02d}", "type": type_, "body": body}
    compact = json.dumps(envelope, ensure_ascii=False)
    as_json = compact if len(compact) <= 108 else json.dumps(envelope, indent=2, ensure_ascii=False)
    packed = msgpack.packb(envelope, use_bin_type=True).hex()
    lines = [packed[i : i + _HEX_WIDTH] for i in range(0, len(packed), _HEX_WIDTH)]
    return ["```json", as_json, "```", "```msgpack-hex", *lines, "```", ""]


def _body_section(title: str, type_: str, number: int, body: dict[str, Any]) -> list[str]:
    compiled = messages.body_schema(type_)
    assert compiled is not None, type_
    return [f"**{title}** `{type_}`:", "", *_table(compiled), *_example(type_, body, number)]


def reference() -> str:
    """The generated reference section (markdown, without the markers)."""
    out: list[str] = []
    number = 0
    groups: dict[str, list[messages.MessageSpec]] = {}
    for spec in messages.CATALOGUE.values():
        groups.setdefault(spec.group, []).append(spec)
    for group, specs in groups.items():
        out += [f"### {group.capitalize()} messages", ""]
        for spec in specs:
            number += 1
            errors = ", ".join(f"`{code}`" for code in spec.errors) or "none beyond the envelope's"
            out += [f"#### `{spec.type}`", "", f"{spec.summary[0].upper()}{spec.summary[1:]}.", ""]
            out += _body_section("Request", spec.type, number, _examples.REQUESTS[spec.type])
            out += _body_section("Reply", f"{spec.type}.ok", number, _examples.REPLIES[spec.type])
            out += [f"Errors: {errors}.", ""]
    for endpoint, title, intro in _INTERNAL_SECTIONS:
        out += [f"### {title}", "", *intro, ""]
        for internal in messages.INTERNAL.values():
            if internal.endpoint != endpoint:
                continue
            number += 1
            compiled = messages.body_schema(internal.type)
            assert compiled is not None, internal.type
            out += [f"#### `{internal.type}` (internal, sent by the {internal.sender})", ""]
            out += [f"{internal.summary[0].upper()}{internal.summary[1:]}.", "", *_table(compiled)]
            out += _example(internal.type, _examples.INTERNAL[internal.type], number)
            if internal.reply is not None:
                reply = _examples.INTERNAL_REPLIES[internal.type]
                out += _body_section("Reply", f"{internal.type}.ok", number, reply)
    out += ["### Events and errors", "", f"#### `{messages.EVENT_TYPE}`", ""]
    out += ["Published on the PUB socket with the kind as the topic frame. Kinds:", ""]
    out += [f"- `{kind}`: {text}" for kind, text in messages.EVENT_KINDS.items()]
    out += ["", *_body_section("Body of", messages.EVENT_TYPE, 0, _examples.EVENT)]
    out += [f"#### `{ERROR_TYPE}`", "", "The reply to any request that failed. Codes:", ""]
    out += [f"- `{code}`: {text}" for code, text in messages.ERROR_CODES.items()]
    out += ["", *_body_section("Body of", ERROR_TYPE, 0, _examples.ERROR)]
    structures: dict[str, type] = {}
    for spec in messages.CATALOGUE.values():
        _nested(spec.request, structures)
        _nested(spec.reply, structures)
    for internal in messages.INTERNAL.values():
        _nested(internal.body, structures)
        if internal.reply is not None:
            _nested(internal.reply, structures)
    _nested(ErrorBody, structures)
    out += ["### Structures", "", "Maps used inside the bodies above.", ""]
    for name, cls in sorted(structures.items()):
        compiled = _schema.compile_dataclass(cls, open_fields=True)
        out += [f"#### `{name}`", "", *_table(compiled)]
    return "\n".join(out).rstrip() + "\n"


def current_section(text: str) -> str:
    """The part of ``text`` between the markers (what :func:`reference` must equal)."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n") + "\n"


def write(path: Path = DOC) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + reference() + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write()
    else:
        sys.stdout.write(reference())
