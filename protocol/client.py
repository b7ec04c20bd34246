"""A synchronous client of the control endpoint (the ctl, tests and scripts use it).

::

    with Client("ipc:///run/openfang/control.sock") as client:
        client.request("ping")                       # -> {"pid": ..., "time": ...}
        for kind, body in client.stream("agent.send", {"agent_id": "a-1@workers-0", "text": "hi"}):
            print(kind, body)                        # agent.send.chunk ... then agent.send.ok
        for event in client.events(["child.exited"], timeout=30):
            print(event["id"], event["reason"])

One DEALER socket, one request at a time (not thread-safe: give each thread its own client). Replies are
matched by request id, so a late reply to an earlier, timed-out request is discarded, never mistaken for the
current one. Error replies raise :class:`RemoteError` with the wire's ``code``; no reply in time raises
:class:`Timeout`; a request body that breaks the catalogue's schema raises :class:`ProtocolError` before
anything is sent.

``signer`` signs every request just before it is sent (PROTOCOL.md section 1.5): pass
``openfang.security.signing.request_signer(key)``. It is a plain callable, so this package needs nothing of
the security package.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import zmq

from openfang.protocol import messages
from openfang.protocol.curve import CurveClient
from openfang.protocol.envelope import DEFAULT_MAX_FRAME, Envelope, decode, encode, peek_id
from openfang.protocol.errors import Busy, ConfigError, Problem, ProtocolError, Timeout
from openfang.protocol.sockets import connect_dealer, connect_sub, send_nowait


class Client:
    """A connection to a control endpoint (``ipc://`` or, with ``curve``, ``tcp://``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        curve: CurveClient | None = None,
        timeout: float = 10.0,
        events: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME * 16,
        signer: Callable[[Envelope], Envelope] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._signer = signer
        self.timeout = timeout
        self.events_endpoint = events
        self.max_frame = max_frame
        self._curve = curve
        # An own context: closing the client ends everything it started, whatever the caller does.
        self._ctx: zmq.Context[Any] = zmq.Context()
        try:
            self._sock = connect_dealer(self._ctx, endpoint, curve=curve)
        except BaseException:
            self._ctx.term()
            raise
        self._closed = False
        self._subs: set[zmq.Socket[bytes]] = set()

    def request(
        self,
        type: str,
        body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        *,
        validate: bool = True,
    ) -> dict[str, Any]:
        """Send one request and return the reply body (of type ``<type>.ok``).

        ``validate`` checks a catalogued request's body locally first (unknown types are sent as they are,
        and the server answers ``unknown_type``).
        """
        if self._closed:
            raise ProtocolError("the client is closed")
        env = Envelope(type=type, body=dict(body or {}))
        schema = messages.body_schema(type) if validate and type in messages.REQUEST_TYPES else None
        if schema is not None and not schema.valid(env.body):  # the full checker only to name problems
            problems: list[str] = []
            schema.check(env.body, "body", problems)
            raise ProtocolError("; ".join(problems))
        if self._signer is not None:
            env = self._signer(env)  # after the local check: the closed schemas know nothing of _auth
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        self._send(env, deadline, wait)
        reply: dict[str, Any] = self._await_reply(env, deadline, wait)
        return reply

    def stream(
        self, type: str, body: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Send a streaming request (``agent.send`` with ``stream = true``) and yield what comes back.

        Yields ``(messages.CHUNK_TYPE, chunk body)`` for each part as it arrives, then ``("<type>.ok",
        reply body)`` last. ``timeout`` bounds the wait for each next message, not the whole stream.
        """
        env = Envelope(type=type, body={**dict(body or {}), "stream": True})
        wait = self.timeout if timeout is None else timeout
        self._send(env, time.monotonic() + wait, wait)
        chunks: list[dict[str, Any]] = []
        while True:
            reply = self._await_reply(env, time.monotonic() + wait, wait, chunks=chunks)
            while chunks:
                yield messages.CHUNK_TYPE, chunks.pop(0)
            if reply is not None:
                yield f"{type}.ok", reply
                return

    def _send(self, env: Envelope, deadline: float, wait: float) -> None:
        payload = encode(env)
        while True:
            try:
                send_nowait(self._sock, [payload], peer=self.endpoint)
                return
            except Busy:
                # IMMEDIATE: nothing is queued until the connection (and CURVE handshake) is complete.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(
                        f"could not send {env.type!r} to {self.endpoint} within {wait:g}s: not connected "
                        f"(is the daemon running, and are the keys right?)"
                    ) from None
                self._sock.poll(max(1, int(left * 1000)), zmq.POLLOUT)

    def _await_reply(
        self, env: Envelope, deadline: float, wait: float, *, chunks: list[dict[str, Any]] | None = None
    ) -> Any:
        """The reply body; with ``chunks``, None as soon as a streamed chunk arrived (appended there)."""
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                continue
            frames = self._sock.recv_multipart()
            payload = frames[-1]
            try:
                reply = decode(payload, max_size=self.max_frame)
            except ProtocolError as exc:
                if peek_id(payload) == env.id:
                    raise ProtocolError(f"invalid reply to {env.type!r}: {exc}") from None
                continue  # garbage that is not ours: nothing to match it with
            # A server that could not read our id answers with id "" (we have exactly one request out).
            if reply.id != env.id and not (reply.is_error and reply.id == ""):
                continue  # a late reply to an earlier request that timed out
            if reply.type == messages.CHUNK_TYPE:
                if chunks is None:
                    continue  # a plain request ignores the parts of a streamed reply
                chunks.append(reply.body)
                return None
            if reply.is_error:
                raise messages.remote_error(reply.body)
            if reply.type != f"{env.type}.ok":
                raise ProtocolError(f"reply type {reply.type!r} does not answer {env.type!r}")
            body: dict[str, Any] = reply.body
            return body
        raise Timeout(f"no reply to {env.type!r} from {self.endpoint} within {wait:g}s")

    def events(
        self,
        kinds: Iterable[str] | None = None,
        *,
        endpoint: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield event bodies (``{"kind", "time", ...}``) of ``kinds`` (all when None) as they are published.

        ``endpoint`` defaults to the client's ``events`` endpoint, else the one ``status`` reports. The
        iteration ends when no event arrived for ``timeout`` seconds (None: never). Events published before
        the subscription is connected are not seen (ZeroMQ PUB/SUB keeps no history).
        """
        wanted = frozenset(kinds) if kinds is not None else None
        where = endpoint or self.events_endpoint or self.request("status").get("events")
        if not isinstance(where, str) or not where:
            raise ConfigError(Problem(self.endpoint, "no events endpoint given and status does not name one"))
        sub = connect_sub(self._ctx, where, topics=sorted(wanted) if wanted else ("",), curve=self._curve)
        self._subs.add(sub)
        try:
            while True:
                if not sub.poll(None if timeout is None else max(1, int(timeout * 1000))):
                    return
                frames = sub.recv_multipart()
                if len(frames) != 2:
                    continue
                try:
                    env = decode(frames[1], max_size=self.max_frame)
                except ProtocolError:
                    continue  # one bad event must not end the stream
                if env.type != messages.EVENT_TYPE:
                    continue
                # Topics are prefix matches: "child.exit" would also receive "child.exited". Filter exactly.
                if wanted is None or env.body.get("kind") in wanted:
                    yield env.body
        finally:
            self._subs.discard(sub)
            sub.close()

    def close(self) -> None:
        """Close the socket and the client's context (idempotent)."""
        if not self._closed:
            self._closed = True
            for sub in list(self._subs):  # an unfinished events() iterator must not block term()
                sub.close()
            self._subs.clear()
            self._sock.close()
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
