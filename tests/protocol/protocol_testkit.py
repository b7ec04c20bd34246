"""Helpers shared by the protocol tests: temporary ipc directories and a RequestServer in a thread."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import zmq

from openfang.protocol import _examples
from openfang.protocol.curve import CurveServer
from openfang.protocol.envelope import Envelope
from openfang.protocol.server import Handler, RequestServer
from openfang.protocol.sockets import bind_router


def _ping(_: Envelope) -> dict[str, Any]:
    return {"pid": os.getpid(), "time": time.time()}


def _status(_: Envelope) -> dict[str, Any]:
    body: dict[str, Any] = {**_examples.REPLIES["status"], "pid": os.getpid()}
    return body


def _tree(_: Envelope) -> dict[str, Any]:
    body: dict[str, Any] = _examples.REPLIES["tree"]
    return body


HANDLERS: dict[str, Handler] = {"ping": _ping, "status": _status, "tree": _tree}


@contextmanager
def ipc_dir() -> Iterator[str]:
    """A fresh short directory under /tmp (ipc paths must stay under ~100 bytes)."""
    path = tempfile.mkdtemp(dir="/tmp", prefix="ofp-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def serving(
    endpoint: str,
    handlers: Mapping[str, Handler] | None = None,
    *,
    curve: CurveServer | None = None,
    keys_dir: str | None = None,
    max_frame: int = 1 << 20,
) -> Iterator[tuple[str, RequestServer]]:
    """A bound ROUTER answered by a RequestServer thread; yields (actual endpoint, server)."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = bind_router(ctx, endpoint, curve=curve, keys_dir=keys_dir)
    server = RequestServer(sock, handlers if handlers is not None else HANDLERS, max_frame=max_frame)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sock.last_endpoint.decode(), server
    finally:
        stop.set()
        thread.join(timeout=10)
        sock.close()
        ctx.term()
