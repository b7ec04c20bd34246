"""A real gateway in the test's process, built as its child builds it (its ZeroMQ sockets on ipc paths
under ``tmp``, its registry file), and DEALERs that speak to it for clients or workers; the tests drive
its loop turns by hand."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Any

import zmq

from openfang.control.config import ControlConfig
from openfang.control.gateway import Gateway
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


def registry_state(db: Path, agent_id: str) -> str | None:
    """An agent row's state as another connection reads it from the registry file (None: no row)."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT state FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])
