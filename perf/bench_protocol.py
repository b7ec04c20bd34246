"""Protocol benchmarks: codec throughput (validated and raw), ipc round trips, and msgspec for comparison.

``run(quick=False) -> list[dict]`` (see perf/run.py). Figures:

- ``protocol_codec_send_msgs_per_s``: one ``agent.send`` request (120-character text) encoded and decoded
  with its body validated against the catalogue, per second, one core.
- ``protocol_codec_tree_msgs_per_s``: the same for a ``tree.ok`` reply (a supervisor with one worker).
- ``protocol_codec_raw_msgpack_msgs_per_s``: the ``agent.send`` frame through msgpack alone (no envelope
  checks, no validation): the floor our validation costs are measured against.
- ``protocol_codec_msgspec_msgs_per_s``: the same message through msgspec (typed Struct decode), if msgspec is
  installed; a comparison only, not a dependency.
- ``protocol_ipc_roundtrip_per_s`` (+ p50/p99 in microseconds): sync ``Client.request("ping")`` against a
  ``RequestServer`` in another process over ipc, one request in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack

from openfang.protocol import _examples
from openfang.protocol.envelope import Envelope, decode, encode

TIMEOUT_S = 300
SEND_BODY = {
    "agent_id": "a-7f3c",
    "text": "Summarise the last three invoices and flag any over 500 EUR. " * 2,
}


def _metric(name: str, value: float, unit: str, notes: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "system": "openfang",
        "value": round(value, 1),
        "unit": unit,
        "better": extra.pop("better", "higher"),
        "target": None,
        "notes": notes,
        **extra,
    }


def _rate(step: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``step`` over about ``seconds`` (best of 3 runs, to dodge a noisy neighbour)."""
    best = 0.0
    for _ in range(3):
        count, started = 0, time.perf_counter()
        deadline = started + seconds / 3
        while (now := time.perf_counter()) < deadline:
            for _ in range(200):
                step()
            count += 200
        best = max(best, count / (now - started))
    return best


def _codec(seconds: float) -> list[dict[str, Any]]:
    send = Envelope(type="agent.send", body=SEND_BODY, id="0123456789abcdef0123456789abcdef")
    tree = Envelope(type="tree.ok", body=_examples.REPLIES["tree"], id="0123456789abcdef0123456789abcdef")
    frame = encode(send)
    out = [
        _metric(
            "protocol_codec_send_msgs_per_s",
            _rate(lambda: decode(encode(send)), seconds),
            "msgs/s",
            f"agent.send ({len(frame)} B) encode + decode with body validation, 1 core",
        ),
        _metric(
            "protocol_codec_tree_msgs_per_s",
            _rate(lambda: decode(encode(tree)), seconds),
            "msgs/s",
            f"tree.ok ({len(encode(tree))} B, 2 nodes) encode + decode with validation",
        ),
    ]
    raw = {"v": 1, "id": send.id, "type": send.type, "body": SEND_BODY}
    out.append(
        _metric(
            "protocol_codec_raw_msgpack_msgs_per_s",
            _rate(lambda: msgpack.unpackb(msgpack.packb(raw, use_bin_type=True), raw=False), seconds),
            "msgs/s",
            "same agent.send through msgpack alone (no envelope checks, no validation): the floor",
        )
    )
    out.append(_msgspec(raw, seconds))
    return out


def _msgspec(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    try:
        import msgspec
    except ImportError:
        return _metric(
            "protocol_codec_msgspec_msgs_per_s", 0.0, "msgs/s", "not measured: msgspec not installed"
        )

    # defstruct, not class syntax: this module's annotations are strings msgspec cannot resolve in a function.
    optional = [(name, str | None, None) for name in ("agent_id", "service", "session")]
    Body = msgspec.defstruct("Body", [("text", str), *optional], forbid_unknown_fields=True)
    Env = msgspec.defstruct(
        "Env", [("v", int), ("id", str), ("type", str), ("body", Body)], forbid_unknown_fields=True
    )
    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(Env)
    value = decoder.decode(encoder.encode(raw))
    return _metric(
        "protocol_codec_msgspec_msgs_per_s",
        _rate(lambda: decoder.decode(encoder.encode(value)), seconds),
        "msgs/s",
        f"comparison: msgspec {msgspec.__version__} typed Struct encode + decode of the same agent.send "
        "(types and unknown fields checked; no length limits)",
    )


def _serve(endpoint: str, ready: Any, stop: Any) -> None:
    # A forked child: its own ZeroMQ context, created after the fork.
    import zmq

    from openfang.protocol.server import RequestServer
    from openfang.protocol.sockets import bind_router

    ctx: zmq.Context[Any] = zmq.Context()
    sock = bind_router(ctx, endpoint)
    server = RequestServer(sock, {"ping": lambda env: {"pid": os.getpid(), "time": time.time()}})
    stopping = threading.Event()

    def relay() -> None:  # the multiprocessing Event cannot be polled by the serve loop: mirror it
        stop.wait()
        stopping.set()

    threading.Thread(target=relay, daemon=True).start()
    ready.set()
    server.serve(stopping, poll_ms=20)
    sock.close()
    ctx.term()


def _roundtrip(seconds: float) -> dict[str, Any]:
    from openfang.protocol.client import Client

    workdir = tempfile.mkdtemp(dir="/tmp", prefix="ofb-")
    endpoint = f"ipc://{workdir}/bench.sock"
    fork = multiprocessing.get_context("fork")
    ready, stop = fork.Event(), fork.Event()
    proc = fork.Process(target=_serve, args=(endpoint, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("bench server did not start")
        latencies: list[float] = []
        with Client(endpoint, timeout=10) as client:
            client.request("ping")  # connect
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                client.request("ping")
                latencies.append(time.perf_counter() - started)
        cuts = statistics.quantiles(latencies, n=100)
        return _metric(
            "protocol_ipc_roundtrip_per_s",
            len(latencies) / sum(latencies),
            "req/s",
            "sync Client.request('ping') -> RequestServer in another process over ipc, 1 in flight",
            p50=round(cuts[49] * 1e6, 1),
            p99=round(cuts[98] * 1e6, 1),
            p_unit="us",
        )
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        shutil.rmtree(workdir, ignore_errors=True)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every protocol figure (about 10 s; 2 s with ``quick``)."""
    seconds = 0.6 if quick else 3.0
    return [*_codec(seconds), _roundtrip(seconds)]


if __name__ == "__main__":
    import json

    for row in run(quick=True):
        print(json.dumps(row))
