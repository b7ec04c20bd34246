"""A real gateway in the test's process, built as its child builds it (its ZeroMQ sockets on ipc paths
under ``tmp``, its registry file), and DEALERs that speak to it for clients or workers; the tests drive
its loop turns by hand."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from openfang.control.config import ControlConfig
from openfang.control.gateway import Gateway
from openfang.control.guard import receive_client
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.linkframe import pack, unpack
from openfang.supervisor.child import ChildContext


def in_process_gateway(tmp: Path, uplink: socket.socket | None = None) -> Gateway:
    """A gateway bound under ``tmp`` (``control.sock``, ``events.sock``, ``workers.sock``, ``agents.db``);
    with ``uplink`` (one end of a socket pair, the test keeping the other) its loop's ``turn`` can run."""
    control = ControlConfig(
        endpoint=f"ipc://{tmp}/control.sock",
        events=f"ipc://{tmp}/events.sock",
        workers=f"ipc://{tmp}/workers.sock",
    )
    args: dict[str, Any] = {"control": control, "registry": str(tmp / "agents.db")}
    return Gateway(ChildContext(id="control", path="root/control", args=args, uplink=uplink), args)


def dealer(gw: Gateway, endpoint: str, routing_id: bytes) -> zmq.Socket[bytes]:
    """A DEALER on ``endpoint`` (one of the gateway's) with ``routing_id``, closed without linger."""
    sock: zmq.Socket[bytes] = gw.zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def from_gateway(sock: zmq.Socket[bytes]) -> list[Envelope]:
    """The envelopes of the next message a worker's DEALER ``sock`` gets from the gateway (one batch)."""
    assert sock.poll(5000), "the worker got nothing"
    return [decode(p) for p in unpack(sock.recv())]


def one_from_gateway(sock: zmq.Socket[bytes]) -> Envelope:
    """The next message a worker's DEALER ``sock`` gets from the gateway: a batch of exactly one envelope."""
    (env,) = from_gateway(sock)
    return env


def registry_state(db: Path, agent_id: str) -> str | None:
    """An agent row's state as another connection reads it from the registry file (None: no row)."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT state FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


class SyncedDoor:
    """A gateway in this process, a client DEALER and worker ``w-0`` (synced, hosting nothing); the test
    drives the loop's turns by hand."""

    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "agents.db"
        self.gw = in_process_gateway(tmp)
        self.worker = dealer(self.gw, self.gw.control.workers, b"w-0")
        self.client = dealer(self.gw, self.gw.control.endpoint, b"client")
        self.gw.placement.worker_synced("w-0", [])

    def ask(self, env: Envelope) -> None:
        """The client's request, taken in by the gateway and what it made flushed (as after each batch)."""
        self.client.send(encode(env))
        assert self.gw.clients.poll(5000), "the gateway got no request"
        self.gw._drain(self.gw.clients, self.gw._on_client_frames, receive=receive_client)
        self.gw._flush()

    def answer(self, reply: Envelope) -> None:
        """The worker's answer, taken in by the gateway."""
        self.worker.send(pack([encode(reply)]))
        assert self.gw.worker_sock.poll(5000), "the gateway got no answer"
        self.gw._drain(self.gw.worker_sock, self.gw._on_worker_frames)
        self.gw._flush()

    def end_turn(self) -> None:
        """What the loop does at the end of every turn: commit the registry, send what waits."""
        self.gw._commit()
        self.gw._flush()

    def reply(self, timeout_ms: int = 5000) -> Envelope | None:
        """The client's next message, if one comes within ``timeout_ms``."""
        return decode(self.client.recv()) if self.client.poll(timeout_ms) else None

    def on_disk(self, agent_id: str) -> str | None:
        """The row's state as another connection reads it from the file (None: not there)."""
        return registry_state(self.db, agent_id)

    def close(self) -> None:
        self.worker.close(0)
        self.client.close(0)
        self.gw.close()


@contextlib.contextmanager
def looped_gateway(
    tmp: Path,
) -> Iterator[tuple[Gateway, zmq.Poller, zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A gateway whose loop ``turn`` runs (its uplink one end of a socket pair, as a child's), its poller, a
    client DEALER ``client`` and worker ``w-0``'s DEALER (no hello sent); all closed at the end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gw = in_process_gateway(tmp, uplink=ours)
    client = dealer(gw, gw.control.endpoint, b"client")
    worker = dealer(gw, gw.control.workers, b"w-0")
    time.sleep(0.05)  # the connections are made
    try:
        yield gw, gw.poller(), client, worker
    finally:
        worker.close(0)
        client.close(0)
        gw.close()
        ours.close()
        theirs.close()
