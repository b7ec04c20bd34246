"""An asyncio client of the control gateway: many requests in flight on one DEALER socket.

The HTTP face serves many callers at once; :class:`openfang.protocol.client.Client` is one request at a
time. Here every request gets a fresh envelope id and a queue; one reader task hands each reply (and each
part of a streamed reply) to its request's queue by id, so answers may come back in any order. Error
replies raise :class:`RemoteError` (with the wire's code), no answer in time raises :class:`Timeout`.
Request bodies are checked against the catalogue before anything is sent, like the synchronous client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from openfang.protocol import messages
from openfang.protocol.envelope import Envelope, decode, encode
from openfang.protocol.errors import ProtocolError, Timeout
from openfang.protocol.sockets import connect_dealer

__all__ = ["GatewayBridge"]


class GatewayBridge:
    """One connection to the control endpoint, shared by every HTTP request of this process."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 30.0,
        keys_dir: str | None = None,
        key_name: str = "client",
        max_frame: int = 16 << 20,
        signer: Callable[[Envelope], Envelope] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_frame = max_frame
        self._signer = signer  # signs every request when the cluster requires it (PROTOCOL.md 1.5)
        curve = None
        if keys_dir and endpoint.startswith("tcp://"):
            from openfang.protocol.curve import CurveClient

            curve = CurveClient(keys_dir, name=key_name)
        self.curve = curve  # the dashboard's event subscription uses the same client key
        self._ctx = zmq.asyncio.Context()
        # connect_dealer is typed for sync contexts; an asyncio context makes asyncio sockets the same way.
        self._sock: zmq.asyncio.Socket = connect_dealer(self._ctx, endpoint, curve=curve)  # type: ignore[assignment]
        # IMMEDIATE (set by connect_dealer) stays on: changing it after connect trips a libzmq assertion, and
        # while the gateway restarts a send waits for the connection, bounded by the request's timeout.
        self._waiting: dict[str, asyncio.Queue[Envelope]] = {}  # request id -> what came back for it
        self._reader: asyncio.Task[None] | None = None

    async def request(
        self, type: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and return the reply body; RemoteError for an error reply."""
        async with contextlib.aclosing(self._exchange(type, dict(body or {}), timeout)) as replies:
            async for kind, reply in replies:
                if kind != messages.CHUNK_TYPE:
                    return reply
        raise ProtocolError(f"no reply to {type!r}")  # _exchange always ends with the reply or raises

    async def stream(
        self, type: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """Send a streaming request; yield ``(CHUNK_TYPE, part)`` per part, then ``("<type>.ok", reply)``.

        ``timeout`` bounds the wait for each next message, not the whole stream.
        """
        async with contextlib.aclosing(
            self._exchange(type, {**dict(body or {}), "stream": True}, timeout)
        ) as parts:
            async for item in parts:
                yield item

    async def _exchange(
        self, type: str, body: dict[str, Any], timeout: float | None
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        env = Envelope(type=type, body=body)
        schema = messages.body_schema(type) if type in messages.REQUEST_TYPES else None
        if schema is not None:
            problems: list[str] = []
            schema.check(env.body, "body", problems)
            if problems:
                raise ProtocolError("; ".join(problems))
        if self._signer is not None:
            env = self._signer(env)  # after the local check: the closed schemas know nothing of _auth
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        inbox: asyncio.Queue[Envelope] = asyncio.Queue()
        self._waiting[env.id] = inbox
        wait = self.timeout if timeout is None else timeout
        try:
            try:
                await asyncio.wait_for(self._sock.send_multipart([encode(env)]), wait)
            except TimeoutError:
                raise Timeout(
                    f"could not send {type!r} to the gateway within {wait:g}s: not connected"
                ) from None
            while True:
                try:
                    reply = await asyncio.wait_for(inbox.get(), wait)
                except TimeoutError:
                    raise Timeout(f"no reply to {type!r} from the gateway within {wait:g}s") from None
                if reply.type == messages.CHUNK_TYPE:
                    yield reply.type, dict(reply.body)
                    continue
                if reply.is_error:
                    raise messages.remote_error(reply.body)
                if reply.type != f"{type}.ok":
                    raise ProtocolError(f"reply type {reply.type!r} does not answer {type!r}")
                yield reply.type, dict(reply.body)
                return
        finally:
            self._waiting.pop(env.id, None)

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                reply = decode(frames[-1], max_size=self.max_frame)
            except ProtocolError:
                continue  # garbage: nothing to match it with
            inbox = self._waiting.get(reply.id)
            if inbox is not None:
                inbox.put_nowait(reply)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._sock.close(linger=0)
        self._ctx.term()
