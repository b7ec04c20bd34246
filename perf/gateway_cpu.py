"""The gateway's CPU per routed request, in one process: a real gateway (its sockets on ipc paths, its
registry file, every security layer on, the rate limits unlimited as in ``bench_system``), a DEALER for a
client and one for a fake worker.

    python -m perf.gateway_cpu [--count 20000] [--batch 64] [--rounds 5]

Each round sends ``count`` ``agent.send`` requests to a service in batches of ``batch`` (as the pipelined
benchmark client does); the fake worker answers each with an ``agent.send.ok``, the answers to one message
of the gateway's together in one message (as a worker's loop turn sends them); every reply the client gets
is checked (its id, type and text). Only the gateway's own calls are timed, with the thread's CPU clock
(``time.thread_time``): its loop's work on the client socket, on the worker socket and its flushes. The
client, the fake worker and ZeroMQ's I/O thread are not counted. Prints the CPU per request of each round,
then the fastest and the median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from openfang.control.config import ControlConfig
from openfang.control.gateway import Gateway, _receive
from openfang.control.guard import receive_client
from openfang.protocol.linkframe import pack, unpack
from openfang.supervisor.child import ChildContext

_BUCKETS = ("client_requests", "global_requests", "agent_requests", "agent_tokens", "agent_tool_calls")
_NOBLOCK = int(zmq.NOBLOCK)


def _gateway(tmp: Path) -> Gateway:
    control = ControlConfig(
        endpoint=f"ipc://{tmp}/control.sock",
        events=f"ipc://{tmp}/events.sock",
        workers=f"ipc://{tmp}/workers.sock",
    )
    table = {"ratelimit": {b: {"rate": 0, "burst": 0} for b in _BUCKETS}}
    security = {"table": table, "data_dir": str(tmp), "source": "perf"}
    args: dict[str, Any] = {"control": control, "registry": str(tmp / "agents.db"), "security": security}
    return Gateway(ChildContext(id="control", path="root/control", args=args), args)


def _dealer(zctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, routing_id: bytes) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    return sock


def _recv_all(sock: zmq.Socket[bytes], count: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < count:
        if not sock.poll(5000):
            raise TimeoutError(f"{len(out)} of {count} messages arrived")
        while len(out) < count:
            try:
                out.append(sock.recv(_NOBLOCK))
            except zmq.Again:
                break
    return out


def run(count: int, batch: int, rounds: int) -> list[float]:
    """CPU microseconds of the gateway's thread per request, one figure per round."""
    with tempfile.TemporaryDirectory() as tmp:
        gw = _gateway(Path(tmp))
        zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        client = _dealer(zctx, gw.control.endpoint, b"client-1")
        worker = _dealer(zctx, gw.control.workers, b"w-0")
        hello = {"worker": "w-0", "pid": 4242, "cpu": 0, "agent_ids": []}
        worker.send(pack([msgpack.packb({"v": 1, "id": "h-1", "type": "worker.hello", "body": hello})]))
        assert gw.worker_sock.poll(5000)
        gw._drain(gw.worker_sock, gw._on_worker_frames, receive=_receive)
        gw.agents.add("a-1", "w-0", service="svc")
        usage = {"prompt_tokens": 12, "completion_tokens": 3, "tool_calls": 0, "fuel": 1000}
        figures: list[float] = []
        n = 0
        try:
            for _ in range(rounds):
                spent = 0.0
                done = 0
                while done < count:
                    k = min(batch, count - done)
                    ids = []
                    for _ in range(k):
                        n += 1
                        rid = f"r{n}"
                        ids.append(rid)
                        body = {"service": "svc", "text": f"message {n} for the service"}
                        client.send(msgpack.packb({"v": 1, "id": rid, "type": "agent.send", "body": body}))
                    handled = 0
                    while handled < k:  # the gateway's loop turns on its client socket
                        assert gw.clients.poll(5000)
                        before = len(gw.waiting)
                        t0 = time.thread_time()
                        gw._drain(gw.clients, gw._on_client_frames, receive=receive_client)
                        gw._flush()
                        spent += time.thread_time() - t0
                        handled += len(gw.waiting) - before
                    got = 0
                    while got < k:  # the fake worker answers each, a batch's answers in one batch
                        answers = []
                        for raw in unpack(_recv_all(worker, 1)[0]):
                            req = msgpack.unpackb(raw)
                            reply = {"reply": req["body"]["text"].upper(), "agent_id": "a-1", "usage": usage}
                            body = {"v": 1, "id": req["id"], "type": "agent.send.ok", "body": reply}
                            answers.append(msgpack.packb(body))
                        worker.send(pack(answers))
                        got += len(answers)
                    while gw.waiting:  # the gateway's loop turns on its worker socket
                        assert gw.worker_sock.poll(5000)
                        t0 = time.thread_time()
                        gw._drain(gw.worker_sock, gw._on_worker_frames, receive=_receive)
                        gw._flush()
                        spent += time.thread_time() - t0
                    for rid, raw in zip(ids, _recv_all(client, k), strict=True):
                        got = msgpack.unpackb(raw)
                        if got["id"] != rid or got["type"] != "agent.send.ok" or not got["body"]["reply"]:
                            raise RuntimeError(f"bad reply to {rid}: {got!r}")
                    done += k
                figures.append(spent / count * 1e6)
        finally:
            client.close(0)
            worker.close(0)
            zctx.term()
            gw.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    figures = run(ns.count, ns.batch, ns.rounds)
    print("rounds (us per request):", " ".join(f"{f:.2f}" for f in figures))
    print(f"gateway CPU per request: min {min(figures):.2f} us, median {statistics.median(figures):.2f} us")


if __name__ == "__main__":
    main()
