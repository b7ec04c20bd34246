"""A child module that only test_supervisor_start_stop's preimport test uses (so whether the supervisor
imported it is observable in the test process)."""

from __future__ import annotations

import sys
import time

from openfang.supervisor.child import ChildContext


def report(ctx: ChildContext) -> None:
    """Ready with info = which of args['watch'] this process has imported."""
    ctx.ready(loaded=[m for m in ctx.args["watch"] if m in sys.modules])
    while True:
        time.sleep(3600)
