"""A child module for the preload tests: it records, at its import, which process imported it.

Imported in a preloaded process, ``IMPORTED_BY`` is that process's own pid (the child's); imported by the
supervisor before a fork (its preimport), it is the supervisor's pid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

from openfang.supervisor.child import ChildContext

IMPORTED_BY = os.getpid()


def report(ctx: ChildContext) -> None:
    """Write what this child sees to ``args["out"]``, say ready, then exit 0 once told to (uplink) or after
    ``args["ms"]``."""
    facts: dict[str, Any] = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "imported_by": IMPORTED_BY,
        "id": ctx.id,
        "path": ctx.path,
        "args": {k: v for k, v in ctx.args.items() if k not in ("out", "lock")},
        "cpu": ctx.cpu,
        "affinity": sorted(os.sched_getaffinity(0)),
        "env": os.environ.get("PRELOAD_TEST_VALUE"),
        "context": {k: v for k, v in structlog.contextvars.get_contextvars().items() if k == "test_bound"},
        "setup_ran": os.environ.get("PRELOAD_TEST_SETUP"),
    }
    Path(ctx.args["out"]).write_text(json.dumps(facts))
    ctx.ready()


def setup(value: str) -> None:
    """A setup call run in a launched child before its start (preload.set_setup)."""
    os.environ["PRELOAD_TEST_SETUP"] = value
