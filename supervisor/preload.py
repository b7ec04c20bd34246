"""A child's process forked ahead, importing its start module on the other core while the supervisor's
own start goes on; the supervisor's first fork of a child with that module takes it instead (issue 15).

A supervisor imports each child's module before forking it (``_proc._preimport``), so that every fork, a
restart included, starts warm. For the first child of a start module that import is on the start's path,
in series: the daemon imported its own modules (~40 ms) and then its workers' (~40 ms) on one core while
the other waited. :func:`preload` (the daemon calls it once ``openfang``'s core is imported, before its own
imports) forks a process that imports ``module`` meanwhile and then waits. When this process first starts a
child whose start is in that module, :func:`take` hands the waiting process over and
:meth:`Preloaded.launch` sends it what a fork would have given it: the child's id, path, start, args and
CPU, the uplink's child end (``SCM_RIGHTS``), the environment and the ``structlog`` context of that moment,
and the setup calls registered with :func:`set_setup` (the daemon's logging configuration). It then runs
exactly as a forked child (``_proc._child_main``); its pid and the pidfd taken at its fork are the child's.

While the process waits, this process does not import that module (:func:`waiting`); once it is taken, the
next fork of that module (a restart, another worker) imports it first, as any first fork does. Anything
wrong (the process died, its import failed, the args do not pickle, the launch cannot be sent) makes the
supervisor fork as it always did: a preloaded process can only save time. One that no child took is killed
and reaped by :func:`discard` (at the latest when this process exits); a process forked from this one
forgets them (they are not its children). A preloaded process dies with its parent (``PR_SET_PDEATHSIG``),
ignores a terminal's ^C while it waits (the supervisor decides when its children stop), and says nothing
before its launch.
"""

from __future__ import annotations

import _socket
import array
import atexit
import contextlib
import gc
import importlib
import os
import signal
from collections.abc import Mapping
from typing import Any

_LAUNCH_MAX = 1 << 22  # a launch message's size limit (args are a child spec's: kilobytes)
EXIT_NOT_LAUNCHED = 0  # the supervisor said "exit" (or is gone): nothing ran
EXIT_IMPORT_FAILED = 3


class Preloaded:
    """A process forked by :func:`preload`, waiting for its launch."""

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
        caller forks instead, and :func:`discard` reaps this process)."""
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
        fds = array.array("i", [uplink.fileno()])
        try:
            self.sock.sendmsg(
                [len(data).to_bytes(4, "big") + data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
            )
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


def preload(module: str, *, title: str = "") -> Preloaded | None:
    """Fork a process that imports ``module`` and waits for its launch (None when the fork fails or one
    already waits for that module). Call it before this process's own imports: they overlap then."""
    if module in _waiting:
        return None
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:  # pragma: no cover - runs in the preloaded process, which never returns from here
        code = EXIT_IMPORT_FAILED
        try:
            ours.close()
            code = _serve(module, theirs, parent, title)
        finally:
            os._exit(code)
    theirs.close()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ours.close()
        return None
    pre = Preloaded(module, pid, pidfd, ours)
    if not _waiting:
        atexit.register(discard)  # whatever way this process ends (a --check, a config error): reaped
    _waiting[module] = pre
    return pre


def set_setup(target: str, **kwargs: Any) -> None:
    """Run ``target(**kwargs)`` (``"module:function"``) in every child launched from now on, before its
    start: what this process configured after :func:`preload` that a fork would have inherited (the
    daemon's logging). A target already registered is replaced."""
    _setup[:] = [(t, k) for t, k in _setup if t != target]
    _setup.append((target, dict(kwargs)))


def waiting(module: str) -> bool:
    """A preloaded process for ``module`` waits for its launch (the supervisor does not import it here)."""
    return module in _waiting


def take(module: str) -> Preloaded | None:
    """The process waiting for ``module``, now the caller's to launch (or None)."""
    return _waiting.pop(module, None)


def discard() -> None:
    """Kill and reap every process no child took (the tree has started without them)."""
    while _waiting:
        _, pre = _waiting.popitem()
        pre.kill()


def _serve(module: str, sock: _socket.socket, parent: int, title: str) -> int:  # pragma: no cover
    """The preloaded process: import, wait for the launch, run the child (never returns from a launch)."""
    from openfang.supervisor import _proc

    _proc._prctl(_proc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return EXIT_NOT_LAUNCHED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group: the supervisor decides
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    if title:
        _proc.set_title(title)
    gc.disable()  # as the supervisor's own start: next to no garbage (openfang/_coldstart.py)
    try:
        importlib.import_module(module)
    except BaseException:
        return EXIT_IMPORT_FAILED
    gc.freeze()
    gc.enable()
    try:
        data, fds = _receive(sock)
    except OSError:
        return EXIT_NOT_LAUNCHED
    if data is None or not fds:
        return EXIT_NOT_LAUNCHED
    import pickle

    import structlog

    msg = pickle.loads(data)
    sock.close()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(msg["environ"])
    for target, kwargs in msg["setup"]:
        module_name, _, function = target.partition(":")
        getattr(importlib.import_module(module_name), function)(**kwargs)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**msg["context"])
    for fd in fds[1:]:
        with contextlib.suppress(OSError):
            os.close(fd)
    uplink = _socket.socket(fileno=fds[0])
    # Exactly a forked child's start from here (it closes no fd: this process holds none of its parent's
    # later ones); _child_main never returns, and the caller's os._exit is for the paths above.
    _proc._child_main(msg["child_id"], msg["path"], msg["start"], msg["args"], msg["cpu"], uplink, parent, [])
    return EXIT_NOT_LAUNCHED


def _receive(sock: _socket.socket) -> tuple[bytes | None, list[int]]:
    """One launch message and its fds; (None, []) when the supervisor closed its end."""
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(_LAUNCH_MAX + 4, _socket.CMSG_SPACE(fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    if len(msg) < 4:
        return None, list(fds)
    size = int.from_bytes(msg[:4], "big")
    if size != len(msg) - 4:
        return None, list(fds)
    return msg[4:], list(fds)


__all__ = ["Preloaded", "discard", "preload", "set_setup", "take", "waiting"]
