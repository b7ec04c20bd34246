"""A ZAP (ZeroMQ Authentication Protocol, RFC 27) handler thread that admits only known CURVE client keys.

Why not ``zmq.auth.thread.ThreadAuthenticator``: its thread keeps its ZAP socket open when the context is
terminated, so ``ctx.term()`` in the owning process hangs unless every caller remembers ``stop()`` first.
This handler polls with a short timeout, leaves its loop on ``ContextTerminated`` and closes its socket, so
``ctx.term()`` always returns. One handler per context (libzmq has exactly one ZAP endpoint per context);
each :class:`~openfang.protocol.curve.CurveServer` registers under its own ZAP domain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_POLL_MS = 100

log = logging.getLogger("openfang.protocol.zap")

# domain -> lookup(z85 public key) -> client name, or None to deny
KeyLookup = Callable[[bytes], str | None]


class ZapHandler:
    """The ZAP handler of one context; :func:`handler_for` creates it on first use."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._domains: dict[str, KeyLookup] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.allowed = 0
        self.denied = 0
        sock: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        sock.linger = 0
        sock.bind(ZAP_ENDPOINT)  # bound here so a failure raises in the caller, not in the thread
        self._sock = sock
        # Thread.start() is a full memory barrier: handing the socket to the thread is safe.
        self._thread = threading.Thread(target=self._run, name="openfang-zap", daemon=True)
        self._thread.start()

    def register(self, domain: str, lookup: KeyLookup) -> None:
        with self._lock:
            self._domains[domain] = lookup

    def unregister(self, domain: str) -> None:
        with self._lock:
            self._domains.pop(domain, None)

    def stop(self) -> None:
        """Stop the thread (it closes its socket); idempotent."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                if self._sock.poll(_POLL_MS):
                    self._sock.send_multipart(self._answer(self._sock.recv_multipart()))
        except zmq.ContextTerminated:
            pass  # the owner is terminating the context: close our socket so term() can finish
        except zmq.ZMQError as exc:
            log.error("zap handler stopped: %s", exc)
        finally:
            self._sock.close(linger=0)
            self._stopped.set()

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        # Request: version, request id, domain, address, identity, mechanism, credentials...
        if len(frames) < 6 or frames[0] != b"1.0":
            request_id = frames[1] if len(frames) > 1 else b""
            return [b"1.0", request_id, b"400", b"malformed ZAP request", b"", b""]
        request_id, domain, address, mechanism = frames[1], frames[2], frames[3], frames[5]
        if mechanism == b"NULL":
            # Only sockets given a ZAP domain ask about NULL; ours are ipc (guarded by file permissions).
            return [b"1.0", request_id, b"200", b"OK", b"", b""]
        with self._lock:
            lookup = self._domains.get(domain.decode(errors="replace"))
        name = None
        if mechanism == b"CURVE" and len(frames) >= 7 and len(frames[6]) == 32 and lookup is not None:
            name = lookup(z85.encode(frames[6]))
        if name is None:
            self.denied += 1
            log.warning(
                "curve client denied: address=%s mechanism=%s",
                address.decode(errors="replace"),
                mechanism.decode(errors="replace"),
            )
            return [b"1.0", request_id, b"400", b"client key not authorized", b"", b""]
        self.allowed += 1
        return [b"1.0", request_id, b"200", b"OK", name.encode(), b""]


_handlers: dict[int, tuple[zmq.Context[zmq.Socket[bytes]], ZapHandler]] = {}
_handlers_lock = threading.Lock()


def handler_for(ctx: zmq.Context[zmq.Socket[bytes]]) -> ZapHandler:
    """The running ZAP handler of ``ctx``, started on first use (and again if the old one stopped)."""
    with _handlers_lock:
        for key in [k for k, (_, h) in _handlers.items() if not h.alive]:
            del _handlers[key]  # their contexts were terminated: do not keep them alive
        entry = _handlers.get(id(ctx))
        if entry is not None and entry[0] is ctx and entry[1].alive:
            return entry[1]
        handler = ZapHandler(ctx)
        _handlers[id(ctx)] = (ctx, handler)
        return handler


def forget(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """Stop and drop the handler of ``ctx`` if there is one."""
    with _handlers_lock:
        entry = _handlers.pop(id(ctx), None)
    if entry is not None:
        entry[1].stop()
