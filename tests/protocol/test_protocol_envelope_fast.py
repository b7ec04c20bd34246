"""The envelope's fast paths give what the general ones give: ``Envelope``'s own ``__init__`` against the
dataclass-generated one, ``decode``'s shortcut for a well-formed envelope against the full checks (the same
envelope or the same error, over the catalogue's examples and their mutations), ``encode_as`` against
``encode`` of the re-addressed envelope, and ``messages.send_service`` against the built ``AgentSend``."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack
import pytest

from openfang.protocol import _examples, messages
from openfang.protocol import envelope as envelope_module
from openfang.protocol.bodies import AgentSend
from openfang.protocol.envelope import PROTOCOL_VERSION, Envelope, decode, encode, encode_as, readdressed
from openfang.protocol.errors import OpenFangError
from openfang.protocol.twin import construction_twin


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Generated:
    """Envelope's fields as the dataclass decorator would build them, its __init__ included."""

    type: str
    body: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=envelope_module.new_id)
    v: int = PROTOCOL_VERSION


def _fields(obj: Any) -> tuple[Any, ...]:
    return (obj.type, obj.body, obj.id, obj.v)


def test_envelope_init_sets_what_the_generated_init_sets() -> None:
    """Given fields are kept as given (None included), absent ones get the same defaults."""
    body = {"a": 1}
    for kwargs in (
        {"type": "ping"},
        {"type": "ping", "body": body},
        {"type": "ping", "id": "r-1"},
        {"type": "x", "body": body, "id": "r-2", "v": 7},
        {"type": "x", "body": None, "id": None},
    ):
        ours, theirs = Envelope(**kwargs), _Generated(**kwargs)
        if "id" in kwargs:
            assert _fields(ours) == _fields(theirs)
        else:
            assert _fields(ours)[:2] + _fields(ours)[3:] == _fields(theirs)[:2] + _fields(theirs)[3:]
            assert len(ours.id) == 32 and ours.id != Envelope(type="ping").id
    assert Envelope(type="ping", body=body).body is body
    assert Envelope(type="ping").body == {} and Envelope(type="ping").body is not Envelope(type="ping").body


def test_envelope_stays_frozen_comparable_and_replaceable() -> None:
    """Setting a field raises, equal fields compare equal, dataclasses.replace builds a new one."""
    env = Envelope(type="ping", id="r-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.type = "other"  # type: ignore[misc]
    assert env == Envelope(type="ping", id="r-1", body={})
    assert dataclasses.replace(env, id="r-2") == Envelope(type="ping", id="r-2")
    with pytest.raises(TypeError):
        Envelope("ping")  # type: ignore[misc]


def _slow_decode(data: bytes, **kwargs: Any) -> Envelope:
    """decode() with its fast path turned off: a raw map that never has exactly four keys."""

    class _NoFast(dict[Any, Any]):
        pass

    real = msgpack.unpackb

    def unpackb(*args: Any, **kw: Any) -> Any:
        raw = real(*args, **kw)
        return _NoFast(raw) if type(raw) is dict else raw

    # decode unpacks through its module's _unpackb (bound at import), a failed frame through msgpack.unpackb
    fast = envelope_module._unpackb
    envelope_module.msgpack.unpackb = envelope_module._unpackb = unpackb  # type: ignore[assignment]
    try:
        return decode(data, **kwargs)
    finally:
        envelope_module.msgpack.unpackb = real  # type: ignore[assignment]
        envelope_module._unpackb = fast


def _outcome(fn: Any, data: bytes, **kwargs: Any) -> tuple[str, Any]:
    try:
        env = fn(data, **kwargs)
    except OpenFangError as exc:
        return ("error", (type(exc).__name__, exc.code, exc.message))
    return ("ok", (_fields(env), type(env.body)))


def _mutations(rng: random.Random, raw: dict[str, Any]) -> list[Any]:
    """The envelope and variants of it that break (or do not break) one envelope rule each."""
    out: list[Any] = [dict(raw)]
    for key in ("v", "id", "type", "body"):
        for value in (None, True, 1, 1.0, 2, "", "x", "x" * 129, b"id", [], {}, {"k": 1}):
            changed = dict(raw)
            changed[key] = value
            out.append(changed)
        dropped = dict(raw)
        del dropped[key]
        out.append(dropped)
    out.append({**raw, "extra": 1})
    for key in ("v", "id", "type", "body"):  # four keys, one of them not an envelope field
        renamed = {("x" + k if k == key else k): value for k, value in raw.items()}
        out.append(renamed)
    out.append({**raw, "type": "error", "id": ""})
    body = raw.get("body")
    if isinstance(body, dict) and body:
        for _ in range(6):
            changed_body = dict(body)
            key = rng.choice(sorted(changed_body))
            changed_body[key] = rng.choice([None, 0, -1, "", "s" * 200, [], {}, 1.5, True])
            out.append({**raw, "body": changed_body})
    out.append([raw])
    return out


def test_slow_decode_takes_the_general_path() -> None:
    """The oracle below compares with the general path: _slow_decode never takes the shortcut."""
    data = msgpack.packb({"v": 1, "id": "r-1", "type": "ping", "body": {}})
    made: list[Any] = []
    twin = envelope_module._EnvelopeTwin

    def counted() -> Any:
        made.append(twin)
        return twin()

    envelope_module._EnvelopeTwin = counted  # type: ignore[assignment,misc]
    try:
        assert decode(data).type == "ping" and len(made) == 1  # the shortcut builds it on the twin
        assert _slow_decode(data).type == "ping" and len(made) == 1  # the general path by the class call
    finally:
        envelope_module._EnvelopeTwin = twin  # type: ignore[misc]


def test_decode_fast_path_matches_the_full_checks_on_every_example_and_mutation() -> None:
    """Every catalogued example and its mutations decode to the same envelope, or fail with the same
    error (type, code and text), with and without the door's type filter."""
    rng = random.Random(15)
    examples: list[tuple[str, Any]] = [
        *_examples.REQUESTS.items(),
        *((f"{t}.ok", b) for t, b in _examples.REPLIES.items()),
        ("event", _examples.EVENT),
        ("error", _examples.ERROR),
        *_examples.INTERNAL.items(),
        ("agent.send", {"service": "svc", "text": "hello"}),
        ("no.such.type", {"a": 1}),
    ]
    seen = 0
    for message_type, body in examples:
        raw = {"v": 1, "id": "r-1", "type": message_type, "body": body}
        for variant in _mutations(rng, raw):
            data = msgpack.packb(variant, use_bin_type=True)
            for kwargs in ({}, {"types": messages.REQUEST_TYPES}):
                assert _outcome(decode, data, **kwargs) == _outcome(_slow_decode, data, **kwargs), variant
                seen += 1
    assert seen > 1000


def test_encode_as_is_encode_of_the_readdressed_envelope() -> None:
    """The bytes are those of the same envelope with the other id."""
    env = Envelope(type="agent.send", body={"service": "s", "text": "t", "x": [1, b"\x00"]}, id="r-1")
    assert encode_as(env, "k-7") == encode(Envelope(type=env.type, body=env.body, id="k-7"))


@pytest.mark.parametrize(
    "body",
    [
        {"service": "svc", "text": "x"},
        {"service": "svc", "text": "x", "agent_id": None, "session": "s-1", "stream": True},
        {"agent_id": "a-1", "text": "x"},
        {"agent_id": "a-1", "text": "x", "service": None},
    ],
)
def test_send_service_is_the_built_bodys_service(body: dict[str, Any]) -> None:
    """For a decoded agent.send, send_service is the AgentSend's service when it names no agent."""
    env = decode(msgpack.packb({"v": 1, "id": "r-1", "type": "agent.send", "body": body}))
    built = messages.parse(env, AgentSend, decoded=True)
    assert messages.send_service(env) == (built.service if built.agent_id is None else None)


def test_encode_with_the_reused_packer_equals_packb() -> None:
    """encode/encode_as through the thread's reused Packer give msgpack.packb's bytes, also right after a
    failed encode and after one larger than the Packer is kept for (which drops it)."""
    rng = random.Random(7)
    big = Envelope(type="agent.send.ok", body={"reply": "x" * (envelope_module._PACKER_KEEP + 10)}, id="b")
    bad = Envelope(type="agent.send", body={"text": object()}, id="e")
    for n in range(300):
        body = {"text": "t" * rng.randrange(0, 300), "n": rng.randrange(-(2**40), 2**40), "raw": b"\x00" * n}
        env = Envelope(type="agent.send", body=body, id=f"r{n}")
        if n % 50 == 0:
            with pytest.raises(TypeError):
                encode(bad)
        if n % 70 == 0:
            assert encode(big) == msgpack.packb(
                {"v": 1, "id": "b", "type": big.type, "body": big.body}, use_bin_type=True
            )
            assert not hasattr(envelope_module._packers, "pack")
            assert encode(Envelope(type="ping", body={}, id="s")) == msgpack.packb(
                {"v": 1, "id": "s", "type": "ping", "body": {}}, use_bin_type=True
            )
            assert hasattr(envelope_module._packers, "pack")  # made again by the next encode
            assert encode_as(big, "c") == msgpack.packb(
                {"v": 1, "id": "c", "type": big.type, "body": big.body}, use_bin_type=True
            )
            assert not hasattr(envelope_module._packers, "pack")
            with pytest.raises(TypeError):
                encode_as(bad, "f")
        want = msgpack.packb({"v": 1, "id": env.id, "type": env.type, "body": body}, use_bin_type=True)
        assert encode(env) == want
        assert encode_as(env, "other") == msgpack.packb(
            {"v": 1, "id": "other", "type": env.type, "body": body}, use_bin_type=True
        )


def test_encode_in_threads_at_once_gives_each_its_own_bytes() -> None:
    """Threads encoding at the same time each get exactly their envelope's bytes (one Packer per thread)."""
    import threading

    failures: list[str] = []
    start = threading.Barrier(4)

    def run(k: int) -> None:
        start.wait()
        for n in range(2000):
            env = Envelope(type="agent.send", body={"text": f"{k}-{n}" * (n % 40)}, id=f"{k}.{n}")
            if msgpack.unpackb(encode(env)) != {"v": 1, "id": env.id, "type": env.type, "body": env.body}:
                failures.append(env.id)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_envelope_made_equals_the_class_call() -> None:
    """``made(type, body, id)`` is ``Envelope(type=, body=, id=)``: equal, the body kept as given, frozen."""
    body = {"reply": "x"}
    ours = envelope_module.made("agent.send.ok", body, "r-9")
    assert ours == Envelope(type="agent.send.ok", body=body, id="r-9") and ours.body is body
    assert _fields(ours) == ("agent.send.ok", body, "r-9", PROTOCOL_VERSION)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.id = "other"  # type: ignore[misc]


def test_envelopes_built_on_the_twin_are_envelopes_in_every_way() -> None:
    """made's and decode's envelopes (built on the twin class, then re-classed) are of exactly the class
    Envelope: isinstance, equality and hashing of equal fields, repr, replace, asdict and encode all as for
    the class call's; and a twin that lacks an envelope field is refused."""
    body = {"reply": "x", "usage": {"fuel": 3}}
    called = Envelope(type="test.twin", body=body, id="r-9")
    built = [envelope_module.made("test.twin", body, "r-9"), decode(encode(called))]
    for env in built:
        assert type(env) is Envelope and isinstance(env, Envelope) and dataclasses.is_dataclass(env)
        assert env == called and repr(env) == repr(called)
        assert dataclasses.asdict(env) == dataclasses.asdict(called)
        assert dataclasses.replace(env, id="r-10") == Envelope(type="test.twin", body=body, id="r-10")
        assert encode(env) == encode(called) and env.reply({"a": 1}).id == "r-9" and not env.is_error
        assert not hasattr(env, "__dict__")
    with pytest.raises(TypeError, match="construction twin"):
        construction_twin(Envelope, ("type", "body", "id"))  # a twin missing a field: refused at import


def test_envelope_reply_and_error_reply_equal_their_class_calls() -> None:
    """``reply`` and ``error_reply`` (made on the twin) give what the class call gave: a ``.ok`` envelope
    with a copy of the body (None: empty) and the request's id; an error envelope of the error's wire form."""
    from openfang.protocol.envelope import ERROR_TYPE, error_reply
    from openfang.protocol.errors import Busy

    request = Envelope(type="agent.send", body={"text": "hi"}, id="r-3")
    body = {"reply": "x"}
    ok = request.reply(body)
    assert ok == Envelope(type="agent.send.ok", body=body, id="r-3") and ok.body is not body
    assert type(ok) is Envelope and request.reply() == Envelope(type="agent.send.ok", body={}, id="r-3")
    err = Busy("full")
    for failed in (error_reply("r-3", err), request.error(err)):
        assert type(failed) is Envelope and failed.is_error
        assert failed == Envelope(type=ERROR_TYPE, body=err.to_wire(), id="r-3")


def _spelt_out(data: bytes, max_size: int) -> tuple[str, Any]:
    """How decode unpacked a frame before (its options and limits spelt out): the value or the error."""
    try:
        return (
            "ok",
            msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_size, max_str_len=max_size),
        )
    except Exception as exc:
        return ("error", (type(exc).__name__, str(exc)))


def test_decode_unpack_without_options_equals_the_spelt_out_unpack() -> None:
    """Every frame that unpacks without the options unpacks to the same value with them, and every other
    frame decodes to the error of the spelt-out unpack: truncations, flipped bytes, forged lengths, binary
    and non-string keys, over the catalogue's examples, at the default and a small max_size."""
    rng = random.Random(16)
    frames: list[bytes] = []
    for message_type, body in [*_examples.REQUESTS.items(), ("event", _examples.EVENT)]:
        data = msgpack.packb({"v": 1, "id": "r-1", "type": message_type, "body": body}, use_bin_type=True)
        frames.append(data)
        frames += [data[:cut] for cut in range(0, len(data), max(1, len(data) // 12))]
        for _ in range(12):
            flipped = bytearray(data)
            flipped[rng.randrange(len(data))] = rng.randrange(256)
            frames.append(bytes(flipped))
    frames += [
        b"\xdb\x00\x00\x10\x00abc",  # a str8/32 header longer than the frame (truncated or forged)
        b"\xc6\x00\x00\x10\x00abc",  # the same for bin
        b"\xdd\x00\x00\x10\x00\x01",  # an array claiming 4096 elements
        b"\xdf\x00\x00\x10\x00\x01\x01",  # a map claiming 4096 entries
        msgpack.packb({1: "x"}),  # a non-string key
        msgpack.packb({b"id": "x"}, use_bin_type=True),  # a binary key
        msgpack.packb({"v": 1, "id": b"raw", "type": "ping", "body": {}}, use_bin_type=True),
        msgpack.packb({"v": 1, "id": "r", "type": "ping", "body": {}}) + b"\x00",  # extra data
        b"\xc1",
        b"",
    ]
    checked = 0
    for data in frames:
        for max_size in (envelope_module.DEFAULT_MAX_FRAME, 64):
            if len(data) > max_size:
                continue
            try:
                fast: tuple[str, Any] = ("ok", msgpack.unpackb(data))
            except Exception:
                fast = ("error", None)
            before = _spelt_out(data, max_size)
            if fast[0] == "ok":
                assert before == fast, data
            else:
                with pytest.raises(OpenFangError) as caught:
                    decode(data, max_size=max_size)
                assert before[0] == "error", data
                assert caught.value.message.startswith("frame is not valid msgpack: "), data
                with pytest.raises(OpenFangError) as again:
                    envelope_module._unpack_spelt_out(data, max_size)
                assert again.value.message == caught.value.message
            checked += 1
    assert checked > 300


def _ids(rng: random.Random) -> list[str]:
    return ["r1", "a" * 31, "b" * 32, "c" * 128, "é" * 3, "x" * rng.randrange(1, 40), f"k{rng.random()}"]


def test_readdressed_is_encode_as_byte_for_byte_for_what_encode_wrote() -> None:
    """For a payload encode wrote, readdressed(payload, decoded, id) is encode_as(decoded, id): short and
    long ids (fixstr, str8), ASCII or not, on both sides, long types, bodies of every msgpack kind."""
    rng = random.Random(11)
    types = ["bench.reply", "t" * 31, "t" * 32, "ü.ok"]  # no schema: any body decodes
    for n in range(400):
        body = {
            "reply": "r" * rng.randrange(0, 300),
            "n": rng.randrange(-(2**40), 2**40),
            "f": rng.random(),
            "raw": b"\x00" * (n % 7),
            "nested": {"list": [1, "two", None, True, {"x": 1.5}]},
        }
        old_id = rng.choice(_ids(rng))
        payload = encode(Envelope(type=rng.choice(types), body=body, id=old_id))
        env = decode(payload)
        for new_id in _ids(rng):
            assert readdressed(payload, env, new_id) == encode_as(env, new_id), (old_id, new_id, env.type)


@pytest.mark.parametrize(
    "entries",
    [
        [("id", "ab"), ("v", 1), ("type", "bench.reply"), ("body", {"reply": "x"})],  # another order
        [("v", 1), ("id", "ab"), ("body", {"reply": "x"}), ("type", "bench.reply")],  # body before type
        [("v", 1), ("id", "zz"), ("id", "ab"), ("type", "bench.reply")],  # a second id: the last counts
        [("v", 1), ("id", "ab"), ("id", "ab"), ("type", "bench.reply")],  # the same id twice
        [("v", 1), ("id", "ab"), ("type", "bench.reply"), ("type", "bench.reply")],  # type twice
    ],
)
def test_readdressed_of_another_layout_decodes_as_encode_as(entries: list[tuple[str, Any]]) -> None:
    """A payload not laid out as encode writes it (another order, a key twice) is re-addressed to the value
    encode_as gives: the new id, never one left over from the payload."""
    packer = msgpack.Packer(use_bin_type=True)
    payload = packer.pack_map_header(len(entries)) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in entries
    )
    env = decode(payload)
    out = readdressed(payload, env, "new-id")
    assert decode(out) == decode(encode_as(env, "new-id"))
    assert decode(out).id == "new-id"


def test_readdressed_of_a_non_minimal_id_header_is_encode_as() -> None:
    """An id written with a longer header than encode's (str8 for two bytes) is not spliced: encode_as."""
    payload = b"\x84\xa1v\x01\xa2id\xd9\x02ab" + msgpack.packb("type") + msgpack.packb("bench.reply")
    payload += msgpack.packb("body") + msgpack.packb({})
    env = decode(payload)
    assert readdressed(payload, env, "n") == encode_as(env, "n")
