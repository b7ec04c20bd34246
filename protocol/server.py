"""The server side of a request/reply endpoint, for simple services: framing, decoding and error replies.

PROTOCOL.md's rules for a ROUTER endpoint in one place, so every small service answers alike:

- frames ``[identity, payload]`` come from DEALER clients, ``[identity, b"", payload]`` from REQ clients;
  the reply uses the same framing; anything else gets a ``bad_request`` reply (DEALER framing);
- a frame that does not decode gets an error reply with the request id when it can be read, else ``""``;
- a type outside the catalogue (or not served here) gets ``unknown_type``;
- a handler's :class:`OpenFangError` becomes its code; any other exception becomes ``internal`` (the
  message names the exception type only: tracebacks never cross the wire);
- a handler's reply body is validated against the catalogue before it leaves (a server bug surfaces as an
  ``internal`` error naming the field, not as a client-side decode failure).

The control gateway has its own loop (it forwards to the root and the workers); tests, the Node example's
test server and single-purpose services use :class:`RequestServer`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from openfang.protocol import messages
from openfang.protocol.envelope import DEFAULT_MAX_FRAME, Envelope, decode, encode, error_reply, peek_id
from openfang.protocol.errors import OpenFangError, ProtocolError, UnknownType
from openfang.protocol.sockets import send_nowait

Handler = Callable[[Envelope], Mapping[str, Any] | None]

log = logging.getLogger("openfang.protocol.server")


def split_frames(frames: list[bytes]) -> tuple[list[bytes], bytes]:
    """``(route, payload)`` of a ROUTER message: route is ``[identity]`` or ``[identity, b""]`` (REQ).

    Raises :class:`ProtocolError` for any other shape; the route is then still usable for the error reply
    via :func:`reply_frames` with ``[frames[0]]``.
    """
    if len(frames) == 2:
        return frames[:1], frames[1]
    if len(frames) == 3 and frames[1] == b"":
        return frames[:2], frames[2]
    raise ProtocolError(
        "expected one payload frame (DEALER) or an empty delimiter and a payload (REQ), "
        f"got {len(frames) - 1} frames after the routing id"
    )


def reply_frames(route: list[bytes], env: Envelope) -> list[bytes]:
    """The frames that answer a request that came with ``route``."""
    return [*route, encode(env)]


class RequestServer:
    """Answers catalogued requests arriving on a bound ROUTER ``sock`` with ``handlers[type](request)``."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        handlers: Mapping[str, Handler],
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.sock = sock
        self.handlers = dict(handlers)
        self.max_frame = max_frame
        self.handled = 0

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """The reply frames for one incoming ROUTER message (pure apart from the handler it calls)."""
        try:
            route, payload = split_frames(frames)
        except ProtocolError as exc:
            return reply_frames(frames[:1], error_reply("", exc))
        try:
            request = decode(payload, max_size=self.max_frame, types=messages.REQUEST_TYPES)
        except OpenFangError as exc:
            request_id = peek_id(payload) if len(payload) <= self.max_frame else ""
            return reply_frames(route, error_reply(request_id, exc))
        return reply_frames(route, self._answer(request))

    def _answer(self, request: Envelope) -> Envelope:
        try:
            messages.check_request(request)
            handler = self.handlers.get(request.type)
            if handler is None:
                raise UnknownType(f"type: {request.type!r} is not served at this endpoint")
            body = dict(handler(request) or {})
        except OpenFangError as exc:
            return request.error(exc)
        except Exception as exc:  # a handler bug must not kill the server; its type is enough for the client
            log.exception("handler for %s failed", request.type)
            return request.error(OpenFangError(f"handler for {request.type!r} failed: {type(exc).__name__}"))
        reply = request.reply(body)
        schema = messages.body_schema(reply.type)
        if schema is not None:
            problems: list[str] = []
            schema.check(reply.body, "body", problems)
            if problems:
                return request.error(OpenFangError(f"server built an invalid reply: {'; '.join(problems)}"))
        return reply

    def serve(self, stop: threading.Event, *, poll_ms: int = 50) -> None:
        """Answer requests until ``stop`` is set (checked every ``poll_ms``)."""
        while not stop.is_set():
            if not self.sock.poll(poll_ms):
                continue
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = self.handle(frames)
                self.handled += 1
                try:
                    send_nowait(self.sock, reply, peer="client")
                except OpenFangError as exc:
                    log.info("reply dropped: %s", exc)  # the client left or stopped reading
