"""The worker link's batch frame (protocol/linkframe.py): what ``pack`` makes ``unpack`` gives back, in
order and byte for byte, and anything else is a ProtocolError naming the problem (truncated, trailing bytes,
another type, an empty batch), never a msgpack exception or a partial list."""

from __future__ import annotations

import random
import threading

import msgpack
import pytest

from openfang.protocol import linkframe
from openfang.protocol.envelope import Envelope, encode
from openfang.protocol.errors import ProtocolError
from openfang.protocol.linkframe import pack, unpack


def _envelopes(count: int) -> list[bytes]:
    return [
        encode(Envelope(type="worker.ping", body={"worker": f"w-{i}"}, id=f"p-{i}")) for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 2, 32, 1000])
def test_unpack_gives_back_what_pack_made_in_order(count: int) -> None:
    """A batch of 1, 2, 32 or 1,000 envelopes unpacks to the same bytes in the same order."""
    payloads = _envelopes(count)
    assert unpack(pack(payloads)) == payloads


def test_pack_keeps_any_bytes_even_empty_or_large_or_with_msgpack_inside() -> None:
    """The framing does not look into an item: empty, 1 MiB, or bytes that are themselves a batch."""
    rng = random.Random(7)
    payloads = [b"", rng.randbytes(1 << 20), pack([b"inner"]), b"\x00" * 3, rng.randbytes(70_000)]
    assert unpack(pack(payloads)) == payloads
    assert unpack(pack(tuple(payloads))) == payloads


def test_unpack_reads_a_memoryview_as_its_bytes() -> None:
    """A zero-copy frame's buffer (a memoryview) unpacks as the bytes would."""
    payloads = _envelopes(3)
    assert unpack(memoryview(pack(payloads))) == payloads


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (pack(_envelopes(3))[:-5], "not a msgpack array of envelopes"),
        (pack(_envelopes(3))[:2], "not a msgpack array of envelopes"),
        (b"", "not a msgpack array of envelopes"),
        (pack(_envelopes(2)) + b"\x01\x02\x03", "3 trailing bytes after the batch ends"),
        (pack(_envelopes(1)) + pack(_envelopes(1)), "trailing bytes"),
        (msgpack.packb([]), "empty"),
        (msgpack.packb([b"ok", "text", b"ok"]), "item 1 must be bin"),
        (msgpack.packb([b"ok", 7]), "item 1 must be bin (an envelope's bytes), got int"),
        (
            encode(Envelope(type="worker.ping", body={}, id="p")),
            "must be a msgpack array of bin items, got dict",
        ),
        (msgpack.packb(b"just bytes"), "got bytes"),
        (b"\xc1", "not a msgpack array of envelopes (1 bytes)"),
        (b"\xdd\xff\xff\xff\xff", "not a msgpack array of envelopes"),  # an array claiming 4 G items
    ],
    ids=[
        "truncated",
        "header-only",
        "nothing",
        "trailing",
        "two-batches",
        "empty",
        "str-item",
        "int-item",
        "bare-envelope",
        "bare-bin",
        "reserved-byte",
        "huge-count",
    ],
)
def test_unpack_refuses_a_malformed_batch_naming_the_problem(frame: bytes, problem: str) -> None:
    """Each malformed batch is one ProtocolError (code bad_request) whose text says what is wrong."""
    with pytest.raises(ProtocolError) as caught:
        unpack(frame)
    assert problem in caught.value.message and caught.value.message.startswith("batch: ")
    assert caught.value.code == "bad_request"


def test_unpack_refuses_every_truncation_of_a_batch() -> None:
    """Every proper prefix of a batch is refused (never a shorter list passed off as the batch)."""
    frame = pack(_envelopes(4))
    for end in range(len(frame)):
        with pytest.raises(ProtocolError):
            unpack(frame[:end])


def test_pack_uses_a_packer_per_thread_and_drops_a_large_ones_buffer() -> None:
    """Threads packing at once never mix their bytes; after a batch over the keep size the thread's packer
    is dropped (the next pack makes a new one)."""
    results: dict[int, bool] = {}

    def packs(n: int) -> None:
        payloads = [bytes([n]) * (10 + i) for i in range(50)]
        results[n] = all(unpack(pack(payloads)) == payloads for _ in range(300))

    threads = [threading.Thread(target=packs, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: True, 1: True, 2: True, 3: True}
    pack([b"x"])
    assert hasattr(linkframe._packers, "pack")
    pack([b"x" * (linkframe._PACKER_KEEP + 1)])
    assert not hasattr(linkframe._packers, "pack")
    assert unpack(pack([b"y"])) == [b"y"]
