"""A child's process forked ahead, importing its start module on the other core while the supervisor's
own start goes on; the supervisor's first fork of a child with that module takes it instead (issue 15).

A supervisor imports each child's module before forking it (``_proc._preimport``), so that every fork, a
restart included, starts warm. For the first child of a start module that import is on the start's path,
in series: the daemon imported its own modules (~40 ms) and then its workers' (~40 ms) on one core while
the other waited. ``_proc.preload`` (the daemon calls it once ``openfang``'s core is imported, before its
own imports) forks a process that imports ``module`` meanwhile (:func:`load`) and then waits. When this
process first starts a child whose start is in that module, :func:`take` hands the waiting process over
and :meth:`Preloaded.launch` sends it what a fork would have given it: the child's id, path, start, args and
CPU, the uplink's child end (``SCM_RIGHTS``), the environment and the ``structlog`` context of that moment,
and the setup calls registered with :func:`set_setup` (the daemon's logging configuration). It then runs
exactly as a forked child (``_proc._child_main``); its pid and the pidfd taken at its fork are the child's.

While the process waits, this process does not import that module (:func:`waiting`); once it is taken, the
next fork of that module (a restart, a pool growing under load) imports it here first, as any first fork
does. Not sooner: imported here while only the preloaded worker runs, the modules would be this process's
alone (measured: idle PSS 52.4 -> 61.8 MB with them imported 0.5 s after READY); imported for a fork, the
forked child shares them. Anything
wrong (the process died, its import failed, the args do not pickle, the launch cannot be sent) makes the
supervisor fork as it always did: a preloaded process can only save time. One the tree cannot use well
(:func:`fit`: no child, or several, of that module start here) is killed as soon as the tree is known, one
that no child took by :func:`discard` (at the latest when this process exits); a process forked from this one
forgets them (they are not its children). A preloaded process dies with its parent (``PR_SET_PDEATHSIG``),
ignores a terminal's ^C while it waits (the supervisor decides when its children stop), and says nothing
before its launch.
"""

from __future__ import annotations

import _socket
import atexit
import contextlib
import gc
import importlib
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openfang.supervisor.spec import SupervisorSpec

_LAUNCH_MAX = 1 << 22  # a launch message's size limit (args are a child spec's: kilobytes)
_FD_SIZE = 4  # sizeof(int): one fd in SCM_RIGHTS
EXIT_NOT_LAUNCHED = 0  # the supervisor said "exit" (or is gone): nothing ran
EXIT_IMPORT_FAILED = 3


class Preloaded:
    """A process forked by ``_proc.preload``, waiting for its launch."""

    def __init__(self, module: str, pid: int, pidfd: int, sock: _socket.socket) -> None:
        self.module = module
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock

    def launch(
        self,
        *,
        child_id: str,
        path: str,
        start: str,
        args: Mapping[str, Any],
        cpu: int | None,
        uplink: _socket.socket,
    ) -> bool:
        """Send the child's launch (the uplink's child end with it); False when it cannot be sent (the
        caller then kills this process and forks)."""
        import pickle

        import structlog

        message = {
            "child_id": child_id,
            "path": path,
            "start": start,
            "args": dict(args),
            "cpu": cpu,
            "environ": dict(os.environ),
            "context": structlog.contextvars.get_contextvars(),
            "setup": list(_setup),
        }
        try:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an argument that does not pickle: forked as usual
            return False
        if len(data) > _LAUNCH_MAX:
            return False
        fd = uplink.fileno().to_bytes(_FD_SIZE, sys.byteorder)  # a C int (not array: off the start's imports)
        try:
            # One datagram (SOCK_SEQPACKET keeps its bounds): the receiver sees it whole or truncated.
            self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd)])
        except OSError:
            return False
        self._close_sock()
        return True

    def kill(self) -> None:
        """Kill and reap it (not launched)."""
        self._close_sock()
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        with contextlib.suppress(OSError):
            os.close(self.pidfd)

    def _close_sock(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


_waiting: dict[str, Preloaded] = {}  # module -> its process, until taken or discarded
_setup: list[tuple[str, dict[str, Any]]] = []  # ("module:function", kwargs) run in a launched child first


def _forget_in_child() -> None:
    """A forked child (a nested supervisor, the gateway, a worker) cannot launch its parent's preloaded
    processes (not its children): it closes its copies of their ends and forgets them."""
    for pre in _waiting.values():
        pre.sock.close()
        with contextlib.suppress(OSError):
            os.close(pre.pidfd)
    _waiting.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def register(pre: Preloaded) -> None:
    """Keep ``pre`` (forked by ``_proc.preload``, which forks none for a module already waiting) until a
    child takes it."""
    if not _waiting:
        atexit.register(discard)  # whatever way this process ends (a --check, a config error): reaped
    _waiting[pre.module] = pre


def set_setup(target: str, **kwargs: Any) -> None:
    """Run ``target(**kwargs)`` (``"module:function"``) in every child launched from now on, before its
    start: what this process configured after ``_proc.preload`` that a fork would have inherited (the
    daemon's logging). A target already registered is replaced."""
    _setup[:] = [(t, k) for t, k in _setup if t != target]
    _setup.append((target, dict(kwargs)))


def waiting(module: str) -> bool:
    """A preloaded process for ``module`` waits for its launch (the supervisor does not import it here)."""
    return module in _waiting


def take(module: str) -> Preloaded | None:
    """The process waiting for ``module``, now the caller's to launch (or None)."""
    return _waiting.pop(module, None)


def fit(spec: SupervisorSpec) -> None:
    """Keep only the preloaded processes ``spec``'s start can use well: a module exactly one of whose
    children this process starts at once (its own children and its inline supervisors', ``autostart``).
    With none, nothing would take it; with several, the others are forked after this process imports the
    module anyway, so the first one's start gains nothing and its modules are not shared (measured: +6-7 MB
    PSS with a pool of two). Called as soon as the tree is known, so a discarded one stops at once."""
    for module in list(_waiting):
        if _starts_here(spec, module) != 1:
            _waiting.pop(module).kill()


def _starts_here(spec: SupervisorSpec, module: str) -> int:
    count = 0
    for child in spec.children:
        if child.inline and child.supervisor is not None:
            count += _starts_here(child.supervisor, module)
        elif child.autostart and child.start.partition(":")[0] == module:
            count += 1
    return count


def discard() -> None:
    """Kill and reap every process no child took (the tree has started without them)."""
    while _waiting:
        _, pre = _waiting.popitem()
        pre.kill()


def load(module: str) -> bool:
    """In the preloaded process: import ``module`` (the collector off meanwhile, as in the supervisor's own
    start); False when the import fails. Nothing more is done ahead: this process is what the first
    child's start waits for (stamped: it finishes its imports ~10-15 ms after the gateway's ready), so
    work moved here from after the child's ready only moves along that same path."""
    gc.disable()  # next to no garbage (openfang/_coldstart.py)
    try:
        importlib.import_module(module)
    except BaseException:
        return False
    gc.freeze()
    gc.enable()
    return True


def receive(sock: _socket.socket) -> tuple[dict[str, Any], int] | None:
    """In the preloaded process: wait for the launch; its message and the uplink's fd (None: the supervisor
    said nothing before it closed, or the message is not a launch)."""
    try:
        data, fds = _receive(sock)
    except OSError:
        return None
    if data is None or not fds:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return None
    for fd in fds[1:]:
        with contextlib.suppress(OSError):
            os.close(fd)
    import pickle

    return pickle.loads(data), fds[0]


def apply(msg: dict[str, Any]) -> None:
    """In the launched process: the environment, setup calls and structlog context a fork would have given."""
    import structlog

    os.environ.clear()
    os.environ.update(msg["environ"])
    for target, kwargs in msg["setup"]:
        module_name, _, function = target.partition(":")
        getattr(importlib.import_module(module_name), function)(**kwargs)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**msg["context"])


def _receive(sock: _socket.socket) -> tuple[bytes | None, list[int]]:
    """One launch message and its fds; (None, fds) when the supervisor closed its end or the message or its
    fds came truncated."""
    fds: list[int] = []
    msg, ancdata, flags, _addr = sock.recvmsg(_LAUNCH_MAX, _socket.CMSG_SPACE(_FD_SIZE))
    for level, kind, cdata in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(cdata[k : k + _FD_SIZE], sys.byteorder)
                for k in range(0, len(cdata) - _FD_SIZE + 1, _FD_SIZE)
            ]
    if not msg or flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        return None, fds
    return msg, fds


__all__ = [
    "Preloaded",
    "apply",
    "discard",
    "fit",
    "load",
    "receive",
    "register",
    "set_setup",
    "take",
    "waiting",
]
