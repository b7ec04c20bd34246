"""The daemon's start without the cyclic garbage collector, until it forks (cold start, issue 15).

The root supervisor imports ~250 modules, then reads its config, opens the audit chain and takes the
integrity baseline before it forks its first child: ~40,000 objects, nearly none of them garbage (a full
collection afterwards finds ~400, a few kB). Yet the collector runs all along, ~50 times, walking the young
objects and, every tenth time, everything imported so far: ~7 ms of the root's CPU, on the cold start's path.

:func:`install` (from ``openfang/__init__``, first thing) turns the collector off when this process is the
daemon: ``python -m openfang.control.daemon`` or the ``openfang-supervisor`` script; any other process
(the CLI, a test importing the daemon's module) is left as it is. :func:`resume` (the daemon, before it
starts the tree) moves every object to the permanent generation, as the supervisor does before each fork
(``gc.freeze``: what is garbage then is kept, never collected; the collector does not walk the rest again),
and turns the collector back on, so every child inherits a working one.
"""

from __future__ import annotations

import gc
import os
import sys

DAEMON_MODULE = "openfang.control.daemon"
DAEMON_SCRIPT = "openfang-supervisor"


def is_daemon(orig_argv: list[str], argv: list[str]) -> bool:
    """Is this process the daemon, by its command line (``sys.orig_argv``, ``sys.argv``)?"""
    if "-m" in orig_argv:
        i = orig_argv.index("-m")
        if orig_argv[i + 1 : i + 2] == [DAEMON_MODULE]:
            return True
    return bool(argv) and os.path.basename(argv[0]) == DAEMON_SCRIPT


def install() -> None:
    """Turn the cyclic collector off in the daemon until :func:`resume` (a no-op in any other process)."""
    if is_daemon(list(getattr(sys, "orig_argv", [])), list(sys.argv)):
        gc.disable()


def resume() -> None:
    """Freeze what the start allocated and turn the collector back on (a no-op when it is on)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
