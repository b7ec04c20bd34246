"""Socket helpers for the gateway, workers, the memory writer and clients: one place for ZeroMQ options.

- Every socket: ``LINGER=0`` (closing never blocks on unsent messages) and explicit high-water marks.
- ROUTER: ``ROUTER_MANDATORY`` (an unroutable reply raises instead of vanishing) and ``ROUTER_HANDOVER``
  (a restarted peer reclaims its routing id). Connecting sockets: ``IMMEDIATE`` (no queueing towards a
  peer that is not connected, so a send fails fast instead of piling up).
- ``ipc://``: the socket file's directory is created 0700 if missing; the file is made ``mode`` (default 0600,
  or 0660 with a ``group``) right after bind, and is created under a tight umask so it is never wider, not
  even briefly. Modes granting anything to others are refused.
- ``tcp://``: binding REQUIRES CURVE (a :class:`CurveServer`, or ``keys_dir`` to load one); without it bind
  raises :class:`ConfigError` naming the endpoint. ``inproc://`` needs neither.
- :func:`send_nowait` never blocks and never drops silently: a full queue is :class:`Busy`, an unknown or
  departed ROUTER peer is :class:`NotFound`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from openfang.protocol.errors import Busy, ConfigError, NotFound, OpenFangError, Problem

if TYPE_CHECKING:
    from openfang.protocol.curve import CurveClient, CurveServer, KeyFiles, generate_keys

__all__ = [
    "MAX_IPC_PATH",
    "CurveClient",
    "CurveServer",
    "KeyFiles",
    "bind_pub",
    "bind_router",
    "connect_dealer",
    "connect_sub",
    "generate_keys",
    "ipc_path",
    "send_each",
    "send_nowait",
]

# The longest ipc:// path, in bytes: Linux's sun_path is 108 bytes with the terminating NUL, and libzmq
# refuses a path of sizeof(sun_path) or more (ENAMETOOLONG); pyzmq calls this zmq.IPC_PATH_MAX_LEN. Every
# config check of an ipc path uses this one value.
MAX_IPC_PATH = 107
Context = zmq.Context[Any]
Socket = zmq.Socket[bytes]

# The CURVE helpers (curve.py: zmq.auth, the ZAP handler, shutil, glob: ~2 ms) are imported when a tcp
# endpoint needs them: the daemon imports this module for MAX_IPC_PATH, and an ipc cluster never needs CURVE.
_CURVE_NAMES = frozenset({"CurveClient", "CurveServer", "KeyFiles", "generate_keys"})
_servers: dict[str, CurveServer] = {}  # keys_dir (real path) -> server, shared by the sockets of a process
# Plain ints: pyzmq's flag enums cost an enum operation per frame (send_multipart ORs SNDMORE into each).
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_SUGAR_SEND = zmq.Socket.send
_BACKEND_SEND = zmq.backend.Socket.send  # what zmq.Socket.send calls (see send_nowait)


def __getattr__(name: str) -> Any:
    """The CURVE names this module re-exports, imported on first use (see ``_CURVE_NAMES``)."""
    if name in _CURVE_NAMES:
        from openfang.protocol import curve

        return getattr(curve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint, or None for other transports."""
    scheme, _, address = endpoint.partition("://")
    return Path(address) if scheme == "ipc" else None


def _curve_server(curve: CurveServer | None, keys_dir: str | os.PathLike[str] | None) -> CurveServer | None:
    if curve is not None or keys_dir is None:
        return curve
    key = os.path.realpath(keys_dir)
    if key not in _servers:
        from openfang.protocol.curve import CurveServer

        _servers[key] = CurveServer(keys_dir)
    return _servers[key]


def _group_id(group: str | int) -> int:
    if isinstance(group, int):
        return group
    import grp  # only a socket group given by name needs it (~0.2 ms at every process's start otherwise)

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(Problem(f"socket group {group!r}", "no such group")) from None


def _bind(
    sock: Socket,
    endpoint: str,
    *,
    curve: CurveServer | None,
    keys_dir: str | os.PathLike[str] | None,
    mode: int | None,
    group: str | int | None,
) -> None:
    if mode is None:
        mode = 0o600 if group is None else 0o660
    scheme, sep, address = endpoint.partition("://")
    if not sep or not address:
        raise ConfigError(
            Problem(endpoint, "endpoint must look like ipc:///path, tcp://host:port or inproc://name")
        )
    path: Path | None = None
    if scheme == "tcp":
        curve = _curve_server(curve, keys_dir)
        if curve is None:
            raise ConfigError(
                Problem(
                    endpoint,
                    "tcp endpoints require CURVE: set keys_dir (openfang keys generate) or use ipc://",
                )
            )
    elif scheme == "ipc":
        if address.startswith("@") or "*" in address:
            raise ConfigError(
                Problem(endpoint, "abstract or wildcard ipc endpoints have no file permissions")
            )
        if len(os.fsencode(address)) > MAX_IPC_PATH:
            raise ConfigError(Problem(endpoint, f"ipc path is longer than {MAX_IPC_PATH} bytes"))
        if mode & 0o007 or mode & ~0o770:
            raise ConfigError(
                Problem(endpoint, f"socket mode {mode:o} must grant nothing to others (600 or 660)")
            )
        path = Path(address)
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
            path.parent.chmod(0o700)
    elif scheme != "inproc":
        raise ConfigError(Problem(endpoint, f"transport {scheme!r} is not supported (ipc, tcp or inproc)"))
    if curve is not None:
        curve.apply(sock)
    old_umask = os.umask(0o177) if path is not None else None
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(Problem(endpoint, f"cannot bind: {exc.strerror}")) from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    if path is not None:
        if group is not None:
            os.chown(path, -1, _group_id(group))
        os.chmod(path, mode)


def _connect(sock: Socket, endpoint: str, curve: CurveClient | None) -> None:
    if curve is not None:
        curve.apply(sock)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(Problem(endpoint, f"cannot connect: {exc.strerror}")) from None


def _new(ctx: Context, kind: int, hwm: int) -> Socket:
    sock: Socket = ctx.socket(kind)
    sock.linger = 0
    sock.sndhwm = hwm
    sock.rcvhwm = hwm
    return sock


def bind_router(
    ctx: Context,
    endpoint: str,
    *,
    hwm: int = 1000,
    curve: CurveServer | None = None,
    keys_dir: str | os.PathLike[str] | None = None,
    mode: int | None = None,
    group: str | int | None = None,
    mandatory: bool = True,
    handover: bool = True,
    max_msgsize: int | None = None,
) -> Socket:
    """A bound ROUTER. ``keys_dir`` loads a :class:`CurveServer` for tcp (ipc is guarded by ``mode``).

    ``max_msgsize`` makes libzmq drop the *connection* of a peer sending a bigger frame; leave it above the
    protocol's frame limit so ordinary oversized requests get a ``too_large`` reply instead.
    """
    sock = _new(ctx, zmq.ROUTER, hwm)
    try:
        sock.router_mandatory = int(mandatory)
        sock.router_handover = int(handover)
        if max_msgsize is not None:
            sock.maxmsgsize = max_msgsize
        _bind(sock, endpoint, curve=curve, keys_dir=keys_dir, mode=mode, group=group)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_pub(
    ctx: Context,
    endpoint: str,
    *,
    hwm: int = 10000,
    curve: CurveServer | None = None,
    keys_dir: str | os.PathLike[str] | None = None,
    mode: int | None = None,
    group: str | int | None = None,
) -> Socket:
    """A bound PUB for events (a slow subscriber loses events past ``hwm``; the publisher never blocks)."""
    sock = _new(ctx, zmq.PUB, hwm)
    try:
        _bind(sock, endpoint, curve=curve, keys_dir=keys_dir, mode=mode, group=group)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_dealer(
    ctx: Context,
    endpoint: str,
    *,
    hwm: int = 1000,
    curve: CurveClient | None = None,
    identity: str | bytes | None = None,
) -> Socket:
    """A connected DEALER; ``identity`` is its routing id (workers use their child id)."""
    sock = _new(ctx, zmq.DEALER, hwm)
    try:
        sock.immediate = 1
        if identity is not None:
            sock.routing_id = identity.encode() if isinstance(identity, str) else identity
        _connect(sock, endpoint, curve)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_sub(
    ctx: Context,
    endpoint: str,
    *,
    topics: Iterable[str] = ("",),
    hwm: int = 10000,
    curve: CurveClient | None = None,
) -> Socket:
    """A connected SUB subscribed to ``topics`` (ZeroMQ prefix match; ``""`` = everything)."""
    sock = _new(ctx, zmq.SUB, hwm)
    try:
        sock.immediate = 1
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        _connect(sock, endpoint, curve)
    except BaseException:
        sock.close()
        raise
    return sock


def send_nowait(sock: Socket, frames: Sequence[bytes], *, peer: str | None = None) -> None:
    """Send one multipart message without ever blocking; all frames go, or none and an error says why.

    - :class:`Busy`: the queue towards the peer is at its high-water mark, or (DEALER, PUSH with
      ``IMMEDIATE``) no peer is connected yet. Retry later or answer ``busy``.
    - :class:`NotFound`: a ROUTER with ``ROUTER_MANDATORY`` has no peer with the first frame's routing id
      (never connected, or gone): retrying will not help until it reconnects.
    ``peer`` names the destination in the message (``"worker worker-1"``).
    """
    failed = send_each(sock, (frames,), peer=peer)
    if failed:
        raise failed[0][1]


def send_each(
    sock: Socket, messages: Iterable[Sequence[bytes]], *, peer: str | None = None
) -> list[tuple[int, OpenFangError]]:
    """Send each multipart message in order, without ever blocking, in one loop (no call per message: the
    gateway's flush of its client replies; :func:`send_nowait` is this for one message). A message that
    cannot be sent does not stop the others: the result lists ``(index, error)`` for each that failed, the
    error a :class:`Busy` or :class:`NotFound` as :func:`send_nowait` describes them; empty when every
    message went."""
    # pyzmq's own Socket.send (its Python wrapper only adds the draft routing_id/group arguments and calls it
    # with keywords): 0.94 against 1.66 us a two-frame message (measured). A subclass that overrides send
    # (zmq.asyncio's, say) keeps its own.
    send = _BACKEND_SEND if type(sock).send is _SUGAR_SEND else type(sock).send
    failed: list[tuple[int, OpenFangError]] = []
    for index, frames in enumerate(messages):
        try:
            if len(frames) == 2:  # a routing id and a payload, the usual message: 0.58 against 0.79 us looped
                send(sock, frames[0], _NOBLOCK_MORE)
                send(sock, frames[1], _NOBLOCK)
            elif len(frames) == 1:  # a DEALER's one frame (a worker's batch to the gateway)
                send(sock, frames[0], _NOBLOCK)
            else:
                # Frame by frame with SNDMORE, as send_multipart does (so the same errors at the same frames),
                # without its per-frame type checks and enum flags: 0.8 us for two frames against 2.3 us.
                last = len(frames) - 1
                for i, frame in enumerate(frames):
                    send(sock, frame, _NOBLOCK_MORE if i < last else _NOBLOCK)
        except zmq.ZMQError as exc:
            failed.append((index, _send_error(exc, frames, peer)))
    return failed


def _send_error(exc: zmq.ZMQError, frames: Sequence[bytes], peer: str | None) -> OpenFangError:
    """The error a failed non-blocking send of ``frames`` to ``peer`` is reported as (see send_nowait)."""
    who = peer or "peer"
    if isinstance(exc, zmq.Again):
        return Busy(f"send queue to {who} is full (or {who} is not connected yet); nothing was sent")
    if exc.errno == zmq.EHOSTUNREACH:
        routing_id = frames[0][:64] if frames else b""
        return NotFound(f"{who} (routing id {routing_id!r}) is not connected; nothing was sent")
    return OpenFangError(f"send to {who} failed: {exc.strerror}")
