"""The message catalogue and the codec: round trips, every validator problem path, bad frames."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from openfang.protocol import _examples, messages
from openfang.protocol.envelope import Envelope, decode, encode, error_reply
from openfang.protocol.errors import (
    ConfigError,
    FrameTooLarge,
    Problem,
    ProtocolError,
    RemoteError,
    UnknownType,
    UnsupportedVersion,
)

BRIEF_TYPES = {
    "ping", "status", "tree", "stop", "reload", "child.start", "child.terminate", "child.restart",
    "child.delete", "child.which", "child.count", "worker.ping", "agent.spawn", "agent.send", "agent.list",
    "agent.info", "agent.suspend", "agent.resume", "agent.kill", "agent.hibernate", "agent.wake",
    "agent.move", "memory.search", "memory.history", "memory.stats", "security.report", "audit.verify",
}  # fmt: skip


def _raw(body: Any, *, type_: str, v: Any = 1, id_: Any = "r1", **extra: Any) -> bytes:
    frame: bytes = msgpack.packb({"v": v, "id": id_, "type": type_, "body": body, **extra}, use_bin_type=True)
    return frame


def _problems(type_: str, body: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(_raw(body, type_=type_))
    return str(info.value)


def _without_nil(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nil(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nil(v) for v in value]
    return value


def _all_examples() -> list[tuple[str, dict[str, Any]]]:
    pairs = [(t, b) for t, b in _examples.REQUESTS.items()]
    pairs += [(f"{t}.ok", b) for t, b in _examples.REPLIES.items()]
    return [*pairs, ("event", _examples.EVENT), ("error", _examples.ERROR)]


def test_catalogue_holds_exactly_the_v1_request_types() -> None:
    """Exactly the request types of protocol v1 are catalogued, each with an example request and reply."""
    assert set(messages.CATALOGUE) == BRIEF_TYPES
    assert set(_examples.REQUESTS) == BRIEF_TYPES == set(_examples.REPLIES)


@pytest.mark.parametrize(("type_", "body"), _all_examples(), ids=[t for t, _ in _all_examples()])
def test_every_example_round_trips_through_codec_parse_and_to_body(type_: str, body: dict[str, Any]) -> None:
    """encode -> decode (validated) -> parse -> to_body gives back the same body, for every message type."""
    env = decode(encode(Envelope(type=type_, body=body, id="abc")))
    assert (env.type, env.id, env.body) == (type_, "abc", body)
    schema = messages.body_schema(type_)
    assert schema is not None and schema.cls is not None
    typed = messages.parse(env, schema.cls)
    assert _without_nil(messages.to_body(typed)) == _without_nil(body)


def test_validator_reports_every_problem_of_a_body_at_once() -> None:
    """Wrong type, unknown field and an over-long string are all named in one error, each with its path."""
    text = _problems("agent.send", {"agent_id": "a", "text": 5, "colour": "red", "session": "s" * 129})
    assert "body.text: must be a string of at most 65536 characters, got int" in text
    assert "body.colour: unknown field (allowed: agent_id, service, session, stream, text)" in text
    assert "body.session: must be a string of 1 to 128 characters, got 129 characters" in text


def test_validator_names_a_missing_required_field() -> None:
    """A request without a required field is refused naming the field."""
    assert "body.path: required field is missing" in _problems("child.terminate", {"id": "x"})


def test_request_bodies_are_closed_and_reply_bodies_open() -> None:
    """An unknown field is an error in a request but allowed in a reply (newer servers may add fields)."""
    assert "body.extra: unknown field" in _problems("ping", {"extra": 1})
    assert decode(_raw({"pid": 1, "time": 2.0, "extra": 1}, type_="ping.ok")).body["extra"] == 1


def test_validator_refuses_an_over_long_text_and_manifest() -> None:
    """Text over 65536 characters and manifests over 262144 are refused with their actual length."""
    assert "got 65537 characters" in _problems("agent.send", {"agent_id": "a", "text": "x" * 65537})
    assert "body.manifest: must be a string of 1 to 262144 characters, got 0 characters" in _problems(
        "agent.spawn", {"manifest": ""}
    )


def test_validator_refuses_an_over_long_list() -> None:
    """A list beyond its bound is refused with its item count."""
    text = _problems("reload.ok", {"started": ["a"] * 5000, "stopped": [], "replaced": [], "unchanged": []})
    assert "body.started: must be a list of at most 4096 items, got 5000 items" in text


@pytest.mark.parametrize("limit", [0, 101, -5])
def test_validator_refuses_numbers_out_of_range(limit: int) -> None:
    """memory.search limit must lie in 1..100."""
    text = _problems("memory.search", {"query": "q", "limit": limit})
    assert f"body.limit: must be an integer from 1 to 100, got {limit}" in text


def test_validator_does_not_take_a_boolean_for_an_integer() -> None:
    """true is not 1: a boolean where an integer is expected is refused."""
    assert "body.limit: must be an integer from 1 to 100, got bool" in _problems(
        "memory.search", {"query": "q", "limit": True}
    )


def test_validator_refuses_non_finite_numbers() -> None:
    """NaN and infinity are not valid times."""
    assert "body.time: must be a finite number" in _problems("ping.ok", {"pid": 1, "time": math.nan})


def test_validator_reports_the_full_path_of_a_nested_problem() -> None:
    """A bad field deep in the tree is reported with its list indexes."""
    leaf = {"id": "w", "path": "root/s", "type": "worker", "state": "running", "pid": "12"}
    node = {"id": "s", "path": "root", "type": "supervisor", "state": "running", "children": [leaf]}
    assert "body.children[0].children[0].pid: must be an integer, got str" in _problems(
        "tree.ok", {"children": [node]}
    )


@pytest.mark.parametrize(
    "body", [{"text": "hi"}, {"text": "hi", "agent_id": "a", "service": "s"}], ids=["neither", "both"]
)
def test_agent_send_needs_exactly_one_of_agent_id_and_service(body: dict[str, Any]) -> None:
    """agent.send addresses one agent or one service, never both or none."""
    assert "body.agent_id: give exactly one of agent_id and service" in _problems("agent.send", body)


def test_nil_counts_as_absent_for_an_optional_field() -> None:
    """An optional field sent as nil is accepted and parsed as its default."""
    env = decode(_raw({"query": "q", "limit": None, "agent_id": None}, type_="memory.search"))
    parsed = messages.parse(env, messages.MemorySearch)
    assert (parsed.limit, parsed.agent_id) == (10, None)


def test_memory_search_mode_must_be_a_known_mode() -> None:
    """An unknown search mode is refused naming the allowed ones."""
    assert "body.mode: must be one of 'hybrid', 'keyword', 'vector', got 'fuzzy'" in _problems(
        "memory.search", {"query": "q", "mode": "fuzzy"}
    )


def test_problem_list_of_a_hostile_body_is_capped() -> None:
    """10,000 wrong items produce a bounded error, not 10,000 lines."""
    text = _problems("reload.ok", {"started": [1] * 4000, "stopped": [], "replaced": [], "unchanged": []})
    assert 40 <= text.count("body.started[") <= 50


def test_absurdly_deep_nesting_is_refused_without_crashing() -> None:
    """A tree nested hundreds deep is a clear error, not a RecursionError."""
    node: dict[str, Any] = {"id": "x", "path": "p", "type": "worker", "state": "running"}
    for _ in range(480):
        node = {"id": "x", "path": "p", "type": "supervisor", "state": "running", "children": [node]}
    assert "body: nested too deeply" in _problems("tree.ok", {"children": [node]})


def test_decode_refuses_a_frame_over_the_limit_with_too_large() -> None:
    """A frame over max_size raises FrameTooLarge (code too_large) before it is parsed."""
    frame = _raw({"agent_id": "a", "text": "x" * 5000}, type_="agent.send")
    with pytest.raises(FrameTooLarge) as info:
        decode(frame, max_size=4096)
    assert info.value.code == "too_large" and f"{len(frame)} bytes" in str(info.value)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (b"\x92\x01\x02", "envelope must be a map, got list"),
        (msgpack.packb({1: 2}), "not valid msgpack"),
        (msgpack.packb({"v": 1, "id": b"bin", "type": "ping", "body": {}}), "id: missing"),
        (msgpack.packb({"v": 1, "id": "x", "type": "", "body": []}), "type: missing"),
        (msgpack.packb({"v": 1, "id": "x", "type": "ping", "body": {}, "hmm": 1}), "unknown envelope fields"),
        (_raw({}, type_="ping")[:-3], "not valid msgpack"),
    ],
    ids=["empty", "reserved-byte", "list", "int-keys", "bin-id", "bad-type-body", "extra-key", "truncated"],
)
def test_decode_refuses_garbage_frames_with_bad_request(frame: bytes, expected: str) -> None:
    """Frames that are not valid envelopes raise ProtocolError (code bad_request) saying what is wrong."""
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code == "bad_request" and expected in str(info.value)


def test_decode_refuses_another_protocol_version() -> None:
    """v=2 raises UnsupportedVersion (code unsupported_version) naming both versions."""
    with pytest.raises(UnsupportedVersion) as info:
        decode(_raw({}, type_="ping", v=2))
    assert (
        info.value.code == "unsupported_version" and "2" in str(info.value) and "speaks 1" in str(info.value)
    )


def test_check_request_refuses_types_outside_the_catalogue() -> None:
    """Unknown request types, and reply types sent as requests, raise UnknownType (code unknown_type)."""
    for type_ in ("agent.teleport", "ping.ok", "event"):
        with pytest.raises(UnknownType) as info:
            messages.check_request(Envelope(type=type_))
        assert info.value.code == "unknown_type" and type_ in str(info.value)
    assert messages.check_request(Envelope(type="tree")).reply is messages.TreeOk


def test_parse_refuses_a_body_class_of_another_type() -> None:
    """parse(env, cls) checks that cls is the body of env.type."""
    with pytest.raises(ProtocolError, match="does not carry a AgentSend body"):
        messages.parse(Envelope(type="ping"), messages.AgentSend)


def test_parse_reports_problems_of_a_locally_built_envelope() -> None:
    """parse validates too: an envelope built in-process with a bad body is refused."""
    with pytest.raises(ProtocolError, match=r"body\.agent_id: required field is missing"):
        messages.parse(Envelope(type="agent.kill", body={}), messages.AgentRef)


def test_request_builds_the_envelope_of_a_body_class() -> None:
    """request(obj) finds the wire type of an unambiguous body class; shared classes need type=."""
    env = messages.request(messages.AgentSend(text="hi", service="echo"))
    assert (env.type, env.body) == ("agent.send", {"text": "hi", "service": "echo"})
    with pytest.raises(TypeError, match="several types"):
        messages.request(messages.AgentRef(agent_id="a"))
    assert messages.request(messages.AgentRef(agent_id="a"), type="agent.kill").type == "agent.kill"


def test_to_body_keeps_required_nil_and_drops_absent_optional_fields() -> None:
    """A stopped child's required-but-nil pid travels as nil; unset optional fields are left out."""
    worker = messages.WorkerPingOk(worker="w", pid=1, cpu=None)
    assert messages.to_body(worker) == {"worker": "w", "pid": 1, "cpu": None}
    assert messages.to_body(messages.ChildStartOk(id="c")) == {"id": "c"}


def test_bad_config_error_carries_every_problem_across_the_wire() -> None:
    """A ConfigError's problems survive error_reply -> encode -> decode -> remote_error."""
    err = ConfigError(
        [Problem("a.toml: [x].y", "must be an integer"), Problem("a.toml: [z]", "unknown table")]
    )
    env = decode(encode(error_reply("r9", err)))
    remote = messages.remote_error(env.body)
    assert isinstance(remote, RemoteError) and remote.code == "bad_config"
    assert remote.problems == err.problems
    assert remote.to_wire()["problems"] == env.body["problems"]


def test_protocol_imports_nothing_else_of_ours() -> None:
    """openfang.protocol depends only on the stdlib, msgpack and zmq: no other openfang package."""
    root = Path(__file__).resolve().parents[2] / "protocol"
    offenders = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith("openfang")
                and not (n == "openfang.protocol" or n.startswith("openfang.protocol."))
            ]
    assert offenders == []


def test_importing_only_the_envelope_still_registers_every_validator() -> None:
    """A process importing only openfang.protocol.envelope validates bodies (the package registers them)."""
    code = (
        "from openfang.protocol.envelope import _validators, decode, encode, Envelope\n"
        "assert {'agent.send', 'tree.ok', 'event', 'error'} <= set(_validators)\n"
        "try:\n"
        "    decode(encode(Envelope(type='agent.send', body={'text': 1})))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("ProtocolError body.text: must be a string")


def test_schema_of_a_type_is_compiled_on_its_first_message_only() -> None:
    """Importing the catalogue compiles no schema; the first agent.send decoded compiles agent.send's (and
    still reports its problems), and that compiled validator then replaces the first-use one."""
    code = (
        "from openfang.protocol import messages\n"
        "from openfang.protocol.envelope import _validators, decode, encode, Envelope\n"
        "print(sorted(messages._compiled))\n"
        "first = _validators['agent.send']\n"
        "try:\n"
        "    decode(encode(Envelope(type='agent.send', body={'text': 1})))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "print(sorted(messages._compiled), _validators['agent.send'] is not first)\n"
        "decode(encode(Envelope(type='agent.send', body={'agent_id': 'a', 'text': 'hi'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "[]"
    assert lines[1].startswith("ProtocolError body.text: must be a string")
    assert lines[2] == "['agent.send'] True"
