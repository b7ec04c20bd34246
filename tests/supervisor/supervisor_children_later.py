"""A child module that only test_supervisor_start_stop's preimport test uses (the child after the first)."""

from __future__ import annotations

import time

from openfang.supervisor.child import ChildContext


def serve(ctx: ChildContext) -> None:
    """Ready, then sleep until stopped."""
    ctx.ready()
    while True:
        time.sleep(3600)
