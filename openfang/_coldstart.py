"""The daemon's start without the cyclic garbage collector, until its tree has started (cold start, issue 15).

The root supervisor imports ~250 modules, then reads its config, opens the audit chain and starts its tree,
importing its workers' modules (preimport) while the gateway starts: ~60,000 objects, nearly none of them
garbage (a full collection afterwards finds ~400, a few kB). Yet the collector runs all along, ~90 times,
walking the young objects and, every tenth time, everything imported so far: ~7 ms of the root's CPU before
its first fork and ~4 ms in the workers' preimport after it, all on the cold start's path.

:func:`install` (from ``openfang/__init__``, first thing) turns the collector off when this process is the
daemon: ``python -m openfang.control.daemon`` or the ``openfang-supervisor`` script; any other process
(the CLI, a test importing the daemon's module) is left as it is. Every process forked meanwhile (the
gateway, the workers) turns it back on first thing (an ``os.register_at_fork`` hook): a child has a working
collector whenever it is forked. :func:`resume` (the daemon, once its tree has started) moves every object
to the permanent generation, as the supervisor does before each fork (``gc.freeze``: what is garbage then
is kept, never collected; the collector does not walk the rest again), and turns the collector back on.

:func:`preload` (from ``openfang/__init__``, once ``openfang``'s own imports are done) forks, in the daemon
only, the process that imports the workers' module while the daemon imports its own, on the other core, and
becomes the first worker the tree starts (:mod:`openfang.supervisor.preload`): the workers' ~40 ms of
imports were in series on the root's path before. ``OPENFANG_PRELOAD=0`` turns it off (the supervisor then
forks that worker and imports its module first, as it does for every later fork).
"""

from __future__ import annotations

import gc
import os
import sys

DAEMON_MODULE = "openfang.control.daemon"
DAEMON_SCRIPT = "openfang-supervisor"
WORKER_MODULE = "openfang.workers.worker"  # the workers' start module in the shipped and embedded trees
PRELOAD_ENV = "OPENFANG_PRELOAD"  # "0": no preloaded worker process (the supervisor forks as always)
# What the daemon and its workers both import, imported before the preloaded process is forked: then shared
# by the two (their pages: 10,000 idle agents -4.3 MB PSS, idle -1.6), not imported twice side by side on
# the two cores (~20 ms of the preloaded process's CPU; end to end within the noise, 4 pairs: 141.4 ->
# 143.0 ms mean).
SHARED_FIRST = ("structlog", "zmq", "sqlite3", "openfang.security.config", "openfang.supervisor._proc")
_paused = False  # the collector is off because of install() (inherited by a fork: read in the child)


def is_daemon(orig_argv: list[str], argv: list[str]) -> bool:
    """Is this process the daemon, by its command line (``sys.orig_argv``, ``sys.argv``)?"""
    if "-m" in orig_argv:
        i = orig_argv.index("-m")
        if orig_argv[i + 1 : i + 2] == [DAEMON_MODULE]:
            return True
    return bool(argv) and os.path.basename(argv[0]) == DAEMON_SCRIPT


def install() -> None:
    """Turn the cyclic collector off in the daemon until :func:`resume` (a no-op in any other process);
    a process forked before that turns it back on."""
    global _paused
    if is_daemon(list(getattr(sys, "orig_argv", [])), list(sys.argv)):
        gc.disable()
        _paused = True
        os.register_at_fork(after_in_child=_forked)


def preload() -> None:
    """In the daemon (after ``openfang``'s own imports, before the daemon's): import :data:`SHARED_FIRST`,
    then fork the process that imports the workers' module meanwhile, on the other core, and becomes the
    first worker the tree starts (openfang/supervisor/preload.py). A tree that cannot use it has it killed
    once the config is loaded (preload.fit)."""
    if _paused and os.environ.get(PRELOAD_ENV, "1") != "0":
        import importlib

        for name in SHARED_FIRST:
            importlib.import_module(name)
        from openfang.supervisor import _proc

        _proc.preload(WORKER_MODULE, title="openfang: preload")


def _forked() -> None:
    """In a child forked while the start is paused: its collector on (what the parent allocated is frozen
    by the supervisor's fork; anything else is walked as in any process)."""
    global _paused
    if _paused:
        _paused = False
        gc.enable()


def resume() -> None:
    """Freeze what the start allocated and turn the collector back on (a no-op when it is on)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
