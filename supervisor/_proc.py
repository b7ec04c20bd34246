"""Linux process plumbing for the supervisor: fork a child into its target, signal it, reap it.

The parent side is :func:`spawn` (gc.freeze, fork, pidfd), :func:`send_signal` (by pidfd, immune to pid
reuse) and :func:`reap` (``waitid(P_PIDFD)``). The child side, :func:`_child_main`, never returns: it arms
PDEATHSIG, pins its CPU, resets the signal dispositions it inherited from the loop, closes the parent's fds,
runs the target and ``os._exit``\\ s with 0 (normal) or ``EXIT_CRASH`` (exception, after a structured crash
report). :func:`set_subreaper` is the one place the subreaper flag is set (the daemon's root supervisor
sets it at start).
"""

from __future__ import annotations

import _socket
import contextlib
import ctypes
import functools
import gc
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog

from openfang.supervisor import preload as preload_
from openfang.supervisor import trim
from openfang.supervisor.child import EXIT_CRASH, EXIT_ESCALATED, ChildContext, resolve_target, uplink_pair
from openfang.supervisor.restart import NORMAL, ExitReason, abnormal
from openfang.supervisor.spec import ChildSpec, SupervisorSpec

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

log = structlog.get_logger("openfang.supervisor")


@dataclass(frozen=True, slots=True)
class Spawned:
    """A forked child: its pid, a pidfd on it and the parent's end of its uplink."""

    pid: int
    pidfd: int
    uplink: _socket.socket  # the parent's end


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded once and kept with its ``prctl`` looked up: the supervisor's own uses (its
    title, the subreaper flag) make it before its forks, so a forked child's start (PDEATHSIG, its title)
    calls straight into it instead of a ``dlopen`` and a symbol lookup each time (~0.3 ms of a worker's
    start before its ready, first touches after the fork included)."""
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    libc = _libc()
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


PR_GET_CHILD_SUBREAPER = 37


def set_title(title: str) -> None:
    """Name this process in ``ps``/``top`` (``/proc/<pid>/cmdline``) and its main thread (``comm``).

    Every child is a fork of the same interpreter, so without this they all show the daemon's command line.
    setproctitle rewrites the argv area; without it only the 15-byte thread name changes.
    """
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a core dependency; the name alone is the fallback
        with contextlib.suppress(OSError):
            _prctl_name(title)
        return
    setproctitle.setproctitle(title)
    with contextlib.suppress(OSError):
        _prctl_name(title)


def _prctl_name(title: str) -> None:
    libc = _libc()
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(title.encode()[:15]), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_subreaper(on: bool) -> bool:
    """Make orphaned descendants re-parent to this process (which must then reap them), or stop that.

    Returns whether this process was a subreaper before, so a caller can put the previous state back.
    """
    was = ctypes.c_int(0)
    libc = _libc()
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)
    return bool(was.value)


def spawn(
    *,
    child_id: str,
    path: str,
    start: str,
    args: Mapping[str, Any],
    cpu: int | None,
    close_fds: Iterable[int],
    preimport: bool = True,
) -> Spawned:
    """Fork a child that runs ``start(ctx)``; the caller watches ``pidfd`` and ``uplink``. With
    ``preimport`` the child's module is imported here first (see :func:`_preimport`); without, the child
    imports it after the fork. A process preloaded for that module (:mod:`.preload`) is launched instead
    of a fork, once: it imported the module while this process started."""
    pre = preload_.take(start.partition(":")[0])
    if pre is not None:
        spawned = _launch(pre, child_id=child_id, path=path, start=start, args=args, cpu=cpu)
        if spawned is not None:
            return spawned
        pre.kill()  # gone, or its launch could not be sent: forked as always
    if preimport:
        _preimport(start)
    parent_end, child_end = uplink_pair()
    parent_pid = os.getpid()
    to_close = [fd for fd in close_fds if fd not in (0, 1, 2)]
    sys.stdout.flush()
    sys.stderr.flush()
    # Every object alive now goes to the permanent generation, on both sides of the fork: the cyclic GC
    # of neither process walks (and so writes to) the GC headers of the heap they share, so those pages
    # stay shared instead of being copied into each child at its first collection. Refcount writes still
    # copy the pages of the objects a child really uses; the others stay shared for good. What is garbage
    # now (cycles) is kept, not collected: a supervisor forks rarely and holds little garbage.
    gc.freeze()
    # Free heap pages are not worth inheriting: dropped here, the child neither maps them nor copies them
    # when it allocates there (it gets fresh zero pages, as it would copies).
    trim.trim()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns from here
        try:
            parent_end.close()
            _child_main(child_id, path, start, args, cpu, child_end, parent_pid, to_close)
        finally:
            os._exit(EXIT_CRASH)
    child_end.close()
    try:
        pidfd = _pidfd_of(pid)
    except OSError:
        parent_end.close()
        raise
    parent_end.setblocking(False)
    return Spawned(pid=pid, pidfd=pidfd, uplink=parent_end)


def _pidfd_of(pid: int) -> int:
    """A pidfd on this process's new child ``pid``. Cannot fail for our own unreaped child; if it does, the
    child is killed and reaped (never left running unwatched) and the OSError raised."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def preload(module: str, *, title: str = "") -> preload_.Preloaded | None:
    """Fork a process that imports ``module`` now and becomes the first child of it this process starts
    (:mod:`.preload`); None when it could not be forked. ``title``: its name in ``ps`` while it waits."""
    if preload_.waiting(module):
        return None
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    parent = os.getpid()
    sys.stdout.flush()  # as before any fork: the child would write this process's buffered output again
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:  # pragma: no cover - runs in the preloaded process, which never returns from here
        code = preload_.EXIT_IMPORT_FAILED
        try:
            ours.close()
            code = _serve_preloaded(module, theirs, parent, title=title)
        finally:
            os._exit(code)
    theirs.close()
    try:
        pidfd = _pidfd_of(pid)
    except OSError:
        ours.close()
        return None
    pre = preload_.Preloaded(module, pid, pidfd, ours)
    preload_.register(pre)
    return pre


def _serve_preloaded(
    module: str, sock: _socket.socket, parent: int, *, title: str
) -> int:  # pragma: no cover
    """The preloaded process: import, wait for the launch, then run as a forked child (never returns from
    there); the exit code of the other ways out."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return preload_.EXIT_NOT_LAUNCHED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group: the supervisor decides
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    if title:
        set_title(title)
    if not preload_.load(module):
        return preload_.EXIT_IMPORT_FAILED
    launch = preload_.receive(sock)
    sock.close()
    if launch is None:
        return preload_.EXIT_NOT_LAUNCHED
    msg, uplink_fd = launch
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    preload_.apply(msg)
    uplink = _socket.socket(fileno=uplink_fd)
    # Exactly a forked child's start from here; it closes no fd: this process holds none of its parent's
    # later ones.
    _child_main(msg["child_id"], msg["path"], msg["start"], msg["args"], msg["cpu"], uplink, parent, [])
    return preload_.EXIT_NOT_LAUNCHED  # not reached: _child_main exits


def _launch(
    pre: preload_.Preloaded, *, child_id: str, path: str, start: str, args: Mapping[str, Any], cpu: int | None
) -> Spawned | None:
    """Launch a preloaded process as this child (None when it cannot be: the caller forks)."""
    parent_end, child_end = uplink_pair()
    try:
        sent = pre.launch(child_id=child_id, path=path, start=start, args=args, cpu=cpu, uplink=child_end)
    finally:
        child_end.close()
    if not sent:
        parent_end.close()
        return None
    parent_end.setblocking(False)
    return Spawned(pid=pre.pid, pidfd=pre.pidfd, uplink=parent_end)


def preimport_tree(spec: SupervisorSpec, *, here: bool = True) -> None:
    """Import the start module of every child in ``spec``'s tree (nested supervisors' children included)
    here, in the supervisor, unless the child says ``preimport = false``.

    Every process forked below then maps those modules' pages from this one: a nested supervisor that
    imported its workers' module itself, after its own fork, would write to pages it shares with its
    siblings (sys.modules, interned strings), making private copies on both sides. The total import work
    is the same; it only moves up to the top of the tree. Import errors are left for the child (below).
    ``here``: this process forks ``spec``'s children itself (it runs ``spec``, or ``spec`` is an inline
    supervisor's): a module whose preloaded process waits is then left to that process (:mod:`.preload`);
    the children of a forked nested supervisor are forked there, where it cannot be taken.
    """
    for child in spec.children:
        preimport_child(child, here=here)


def preimport_child(child: ChildSpec, *, here: bool = True) -> None:
    """Import ``child``'s start module and its subtree's (see :func:`preimport_tree`), if it wants that."""
    if not child.preimport:
        return
    if not child.inline:  # an inline supervisor runs no start module: it is an object in this process
        _preimport(child.start, preloaded_here=here)
    if child.supervisor is not None:
        preimport_tree(child.supervisor, here=here and child.inline)


def _preimport(start: str, *, preloaded_here: bool = True) -> None:
    """Import the child's module here, in the parent, once: every later fork (a restart) inherits it warm.

    A worker's imports (zmq, wasmtime, the agent host) cost ~250 ms; paid in each restarted child they
    would make restart latency an interpreter start. Importing starts no thread (checked in tests), so the
    parent stays safe to fork. Import errors are left for the child, which reports them as a failed start.
    """
    module_name = start.partition(":")[0]
    # A preloaded process imports it for the first child this process starts: importing it here meanwhile
    # would put the import back on the start's path (the next fork after that launch imports it: spawn).
    if preloaded_here and preload_.waiting(module_name):
        return
    if module_name and module_name not in sys.modules:
        with contextlib.suppress(Exception):
            importlib.import_module(module_name)


def send_signal(pidfd: int, signum: int) -> bool:
    """Signal the process behind ``pidfd``; False when it is already gone."""
    try:
        signal.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False


def reap(pidfd: int) -> ExitReason | None:
    """Reap the exited process behind ``pidfd`` (non-blocking); None if it has not exited (or was reaped)."""
    try:
        res = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None
    if res is None:
        return None
    return classify(res.si_code, res.si_status)


def classify(si_code: int, si_status: int) -> ExitReason:
    """An exit as seen by waitid: exit code 0 is normal; anything else (a code, a signal) is abnormal."""
    if si_code == os.CLD_EXITED:
        if si_status == 0:
            return NORMAL
        detail = "escalated" if si_status == EXIT_ESCALATED else ""
        return abnormal(code=si_status, detail=detail)
    return abnormal(signal=si_status, detail=signal.Signals(si_status).name if si_status in _SIGNUMS else "")


_SIGNUMS = {int(s) for s in signal.Signals}


def reap_orphans(ours: set[int]) -> list[int]:
    """Reap exited children that are not ``ours`` (orphans re-parented to a subreaper); their pids."""
    reaped: list[int] = []
    for pid in _children_of_self():
        if pid in ours:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(pid)
    return reaped


def _children_of_self() -> list[int]:
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return pids


# -- the child side ----------


def _sigterm_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _child_main(
    child_id: str,
    path: str,
    start: str,
    args: Mapping[str, Any],
    cpu: int | None,
    uplink: _socket.socket,
    parent_pid: int,
    close_fds: list[int],
) -> None:  # pragma: no cover - exercised in forked children
    # Die with the parent: armed before anything else, then re-checked (the parent may already be gone).
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(EXIT_CRASH)
    # The loop's wakeup fd and handlers were inherited: signals must reach this process's code again.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, _sigterm_exit)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    keep = uplink.fileno()
    for fd in close_fds:
        if fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    structlog.contextvars.bind_contextvars(child=child_id, path=path, pid=os.getpid())
    set_title(f"openfang: {child_id}")
    code = 0
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # early: threads the target starts inherit the pin
        target = resolve_target(start)
        target(ChildContext(id=child_id, path=path, args=args, cpu=cpu, uplink=uplink))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_CRASH)
    except BaseException as exc:
        # OTP-style crash report: who, where, why, and the traceback, as one structured line.
        log.error(
            "child_crashed",
            supervisor=path.rpartition("/")[0],
            offender=child_id,
            start=start,
            reason=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
        code = EXIT_CRASH
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
    os._exit(code)
