"""The contract between a supervisor and a child process it starts.

A child's start is data, like OTP's ``{M, F, A}``: a ``"module:function"`` string and an ``args`` mapping.
The supervisor forks (from a thread-free, pre-imported process, so a restart costs a fork, not an
interpreter start), pins the child to its CPU if the spec names one, sets PDEATHSIG, then calls::

    function(ctx: ChildContext) -> None

- The child calls :meth:`ChildContext.ready` once it is serving. The supervisor's start of that child (and so
  the whole ordered start) waits for it; a child that exits or times out before ``ready`` failed to start.
  :meth:`ChildContext.ignore` is OTP's ``ignore``: the child is not started and that is not an error.
- Returning from ``function`` (or ``SystemExit(0)``) is a *normal* exit. An exception, a non-zero exit, or
  death by a signal the supervisor did not send is *abnormal*. Termination the supervisor asked for
  (SIGTERM per the child's shutdown policy) is *shutdown*.
- A child whose spec sets ``heartbeat_ms`` must call :meth:`ChildContext.heartbeat` from its main loop at
  least that often; one that falls silent is considered hung, killed and handled as an abnormal exit.
- SIGTERM is the request to stop: the default handler raises :class:`SystemExit` (0); children with a loop
  may install their own handler and leave the loop cleanly.

The uplink is a ``SOCK_SEQPACKET`` socket pair (one msgpack map per packet, so no framing). Every message is
a map whose ``"t"`` names its kind; :data:`UPLINK` lists every kind with its direction and fields, and
:func:`unpack` refuses any other. A request a parent sends down to a nested supervisor may carry ``"path"``:
the supervisor further down that must run ``op``.

Exit codes: 0 normal, :data:`EXIT_CRASH` (1) an exception (after a ``child_crashed`` log line with the
traceback), :data:`EXIT_ESCALATED` (3) a supervisor that gave up (restart intensity exceeded: a nested one,
and the daemon when the root gives up). The parent side is :mod:`openfang.supervisor.runtime`.
"""

from __future__ import annotations

import _socket  # the C module: socket.py adds enums of its constants (~1.6 ms of every process's start)
import contextlib
import errno
import importlib
import os
import select
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from openfang.protocol.errors import FrameTooLarge, ProtocolError, SupervisorError, Timeout
from openfang.supervisor import trim

EXIT_CRASH = 1  # the child raised (or failed before running its target)
EXIT_ESCALATED = 3  # a supervisor that gave up; its parent reports the exit with detail "escalated"
HEARTBEAT_MIN_GAP_S = 0.05  # well under any sensible heartbeat_ms
MAX_UPLINK_PACKET = 4 << 20
ChildTarget = Callable[["ChildContext"], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkMessage:
    """One kind of uplink message: its ``t``, who sends it, its other fields (name -> type) and its job."""

    t: str
    sender: str  # child | parent | both
    fields: Mapping[str, str]
    summary: str


UPLINK: dict[str, UplinkMessage] = {
    m.t: m
    for m in [
        UplinkMessage(
            t="ready",
            sender="child",
            fields={"info": "map (shown in openfang tree)"},
            summary="the child is up and serving; its start (and the ordered start) waits for this",
        ),
        UplinkMessage(t="ignore", sender="child", fields={}, summary="OTP's ignore: do not count me started"),
        UplinkMessage(t="hb", sender="child", fields={}, summary="a heartbeat (required by heartbeat_ms)"),
        UplinkMessage(
            t="event",
            sender="both",
            fields={"event": "map: kind, path, pid, ... (see EVENT_KINDS in protocol.messages)"},
            summary="a lifecycle event travelling up to the root, or from the root down to the gateway",
        ),
        UplinkMessage(
            t="subtree",
            sender="child",
            fields={"children": "list of tree nodes", "truncated": "bool (optional)"},
            summary="a nested supervisor's view of its children, for the root's tree",
        ),
        UplinkMessage(
            t="req",
            sender="both",
            fields={"id": "str", "op": "str", "args": "map", "path": "str (optional, downwards)"},
            summary="a request: a tree operation (status, tree, child.*, ...), or from the root to the "
            "gateway gateway.info, gateway.evacuate {workers} (move their agents off before a reload stops "
            "them) and gateway.undrain {workers}",
        ),
        UplinkMessage(
            t="rep",
            sender="both",
            fields={"id": "str", "ok": "bool", "result": "any (ok)", "error": "map: code, message (not ok)"},
            summary="the answer to a req with the same id",
        ),
    ]
}


def resolve_target(start: str) -> ChildTarget:
    """Import ``"package.module:function"`` and return the function; SupervisorError naming the problem."""
    module_name, sep, func_name = start.partition(":")
    if not sep or not module_name or not func_name:
        raise SupervisorError(f"start {start!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SupervisorError(f"start {start!r}: cannot import {module_name!r}: {exc}") from None
    target = getattr(module, func_name, None)
    if not callable(target):
        raise SupervisorError(f"start {start!r}: {module_name!r} has no callable {func_name!r}")
    return target  # type: ignore[no-any-return]


def uplink_pair() -> tuple[_socket.socket, _socket.socket]:
    """A (parent_end, child_end) SOCK_SEQPACKET pair, both close-on-exec.

    One packet must fit the send buffer (EMSGSIZE otherwise), so the buffers are raised towards
    MAX_UPLINK_PACKET (the kernel caps them at net.core.wmem_max / rmem_max).
    """
    parent_end, child_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    for end in (parent_end, child_end):
        with contextlib.suppress(OSError):
            end.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, MAX_UPLINK_PACKET)
    return parent_end, child_end


def pack(msg: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(msg, use_bin_type=True)
    return packed


def unpack(packet: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(packet, raw=False)
    except Exception as exc:
        raise ProtocolError(f"uplink packet is not msgpack: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError("uplink packet must be a map with a string 't'")
    if msg["t"] not in UPLINK:
        raise ProtocolError(f"uplink packet t: {msg['t']!r} is not one of {', '.join(UPLINK)}")
    return msg


@dataclass(kw_only=True)
class ChildContext:
    """What a child process gets from its supervisor. ``uplink`` is None when run outside a supervisor."""

    id: str
    path: str
    args: Mapping[str, Any] = field(default_factory=dict)
    cpu: int | None = None
    uplink: _socket.socket | None = None
    _ready_sent: bool = False
    _last_heartbeat: float = 0.0
    _trim: trim.QuietTrim | None = None

    def send(self, msg: Mapping[str, Any]) -> None:
        """Send one message up. A dead parent is not an error here: PDEATHSIG ends us right after.

        Raises FrameTooLarge when the packet does not fit the uplink (see :func:`uplink_pair`).
        """
        if self.uplink is None:
            return
        packet = pack(msg)
        try:
            self.uplink.send(packet)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise FrameTooLarge(
                    f"uplink message {msg.get('t')!r} of {len(packet)} bytes does not fit"
                ) from None
            raise

    def ready(self, **info: Any) -> None:
        """Tell the supervisor this child is up and serving; ``info`` is shown in ``openfang tree``."""
        if not self._ready_sent:
            self._ready_sent = True
            self.send({"t": "ready", "info": info})
            # Its start is over: the garbage of imports and setup goes back to the kernel now, and the
            # loop's heartbeat trims again after each later burst it reports (:meth:`worked`).
            trim.trim()
            self._trim = trim.QuietTrim(armed=False)

    def worked(self) -> None:
        """Tell the process's memory trimming that this loop turn did work (see :mod:`.trim`): once the
        loop has been quiet for a moment, a :meth:`heartbeat` gives the burst's free heap pages back."""
        if self._trim is not None:
            self._trim.busy()

    def when_quiet(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` each time the loop goes quiet after a burst, before the heap is trimmed (a child's
        own memory to give back while idle, such as code pages it can map again on use). Call after
        :meth:`ready`; a hook that raises is not run again."""
        if self._trim is None:
            raise SupervisorError("when_quiet: call ready() first (the trimming starts with it)")
        self._trim.hooks.append(hook)

    def ignore(self) -> None:
        """OTP's ``ignore``: do not count this child as started (call, then return)."""
        self.send({"t": "ignore"})

    def heartbeat(self) -> None:
        """Prove liveness; required at least every ``heartbeat_ms`` when the spec sets it.

        Cheap to call every loop turn: at most one packet per HEARTBEAT_MIN_GAP_S leaves (a busy loop
        turning thousands of times a second would otherwise spend its time on heartbeats).
        """
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_MIN_GAP_S:
            self._last_heartbeat = now
            self.send({"t": "hb"})
        if self._trim is not None:
            self._trim.tick(now)

    def event(self, kind: str, **fields: Any) -> None:
        """Emit a lifecycle event; the root publishes it on the event stream."""
        self.send({"t": "event", "event": {"kind": kind, "path": self.path, "pid": os.getpid(), **fields}})

    def fileno(self) -> int:
        """The uplink's fd, to poll it beside other sockets (zmq.Poller accepts raw fds)."""
        if self.uplink is None:
            raise SupervisorError("this child has no uplink")
        return self.uplink.fileno()

    def recv_nowait(self) -> dict[str, Any] | None:
        """One message from the parent if one is waiting, else None. Raises EOFError if the parent is gone."""
        if self.uplink is None:
            return None
        try:
            packet = self.uplink.recv(MAX_UPLINK_PACKET, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        if not packet:
            raise EOFError("supervisor closed the uplink")
        return unpack(packet)

    def pending(self) -> Iterator[dict[str, Any]]:
        """Every message from the parent that is waiting now (none: the iteration ends at once).

        Raises EOFError when the parent is gone, so a child loop can stop instead of spinning.
        """
        while (msg := self.recv_nowait()) is not None:
            yield msg

    def request(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
        """Ask the parent supervisor to do ``op`` and wait for the reply (for simple children).

        Messages that arrive meanwhile and are not the reply are dropped; children that also receive
        events should run their own loop over :meth:`recv_nowait` instead.
        """
        if self.uplink is None:
            raise SupervisorError("this child has no uplink")
        req_id = os.urandom(8).hex()
        self.send({"t": "req", "id": req_id, "op": op, "args": args})
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.uplink], [], [], left)
            if not readable:
                continue
            msg = self.recv_nowait()
            if msg and msg.get("t") == "rep" and msg.get("id") == req_id:
                if msg.get("ok"):
                    return msg.get("result")
                err = msg.get("error") or {}
                raise SupervisorError(str(err.get("message", "request failed")), code=err.get("code"))
        raise Timeout(f"supervisor did not answer {op!r} within {timeout}s")
