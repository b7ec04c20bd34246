"""Child functions that the daemon tests put in cluster.toml (importable through PYTHONPATH)."""

from __future__ import annotations

import os
import time

from openfang.supervisor.child import ChildContext


def steady(ctx: ChildContext) -> None:
    """Ready, then heartbeat until SIGTERM."""
    ctx.ready()
    while True:
        ctx.heartbeat()
        time.sleep(0.1)


def hang_after(ctx: ChildContext) -> None:
    """Ready, heartbeat for args.seconds, then hang without heartbeats (a wedged main loop)."""
    ctx.ready()
    until = time.monotonic() + float(ctx.args.get("seconds", 0.5))
    while time.monotonic() < until:
        ctx.heartbeat()
        time.sleep(0.05)
    while True:
        time.sleep(3600)


def crash_after(ctx: ChildContext) -> None:
    """Ready, then crash with an exception after args.seconds."""
    ctx.ready()
    time.sleep(float(ctx.args.get("seconds", 0.05)))
    raise RuntimeError(f"deliberate crash of {ctx.id} pid {os.getpid()}")


def fail_start(ctx: ChildContext) -> None:
    """Exit before ever being ready (a failed start)."""
    raise SystemExit(3)


def finish_after(ctx: ChildContext) -> None:
    """Ready, then end normally after args.seconds (a significant job that is done)."""
    ctx.ready()
    until = time.monotonic() + float(ctx.args.get("seconds", 0.3))
    while time.monotonic() < until:
        ctx.heartbeat()
        time.sleep(0.05)


def report_gc(ctx: ChildContext) -> None:
    """Write whether this process's cyclic garbage collector is on to args.path, then ready and steady."""
    import gc

    with open(str(ctx.args["path"]), "w") as f:
        f.write(f"{gc.isenabled()}\n")
    steady(ctx)
