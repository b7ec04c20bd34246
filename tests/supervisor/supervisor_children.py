"""Child functions for the supervisor tests, started by name ("supervisor_children:func") in forked children.

Each child appends a line to ``args["marks"]/<id>`` when it starts, so tests can count starts and see order.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from pathlib import Path
from typing import Any

from openfang.supervisor.child import ChildContext


def _mark(ctx: ChildContext, what: str = "start") -> None:
    d = ctx.args.get("marks")
    if d:
        with open(Path(d) / "log", "a") as f:
            f.write(f"{what} {ctx.id} {os.getpid()}\n")


def serve(ctx: ChildContext) -> None:
    """Ready, then sleep until told to stop (SIGTERM -> SystemExit(0), the default)."""
    _mark(ctx)
    try:
        ctx.ready(role="serve", **dict(ctx.args.get("info", {})))
        while True:
            time.sleep(3600)
    finally:
        _mark(ctx, "stop")


def serve_hb(ctx: ChildContext) -> None:
    """Ready, heartbeat every args['every_ms'] until args['hang_after'] beats, then hang."""
    _mark(ctx)
    ctx.ready()
    every = ctx.args.get("every_ms", 50) / 1000
    hang_after = ctx.args.get("hang_after")
    beats = 0
    while True:
        time.sleep(every)
        if hang_after is None or beats < hang_after:
            ctx.heartbeat()
            beats += 1


def ignore_term(ctx: ChildContext) -> None:
    """Ready, then ignore SIGTERM (so only SIGKILL stops it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark(ctx)
    ctx.ready()
    while True:
        time.sleep(3600)


def slow_stop(ctx: ChildContext) -> None:
    """Takes args['stop_ms'] to stop after SIGTERM, then exits 0."""
    _mark(ctx)

    def term(signum: int, frame: Any) -> None:
        time.sleep(ctx.args.get("stop_ms", 100) / 1000)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, term)
    ctx.ready()
    while True:
        time.sleep(3600)


def crash_after(ctx: ChildContext) -> None:
    """Ready, then raise after args['ms'] milliseconds (abnormal exit)."""
    _mark(ctx)
    ctx.ready()
    time.sleep(ctx.args.get("ms", 50) / 1000)
    raise RuntimeError("crash_after: boom")


def exit_after(ctx: ChildContext) -> None:
    """Ready, then exit with args['code'] after args['ms'] milliseconds."""
    _mark(ctx)
    ctx.ready()
    time.sleep(ctx.args.get("ms", 50) / 1000)
    raise SystemExit(ctx.args.get("code", 0))


def fail_start(ctx: ChildContext) -> None:
    """Raise before ready (a failed start)."""
    _mark(ctx)
    raise RuntimeError("fail_start: cannot start")


def fail_start_if_file(ctx: ChildContext) -> None:
    """Fail before ready while the file args['flag'] exists, else serve."""
    _mark(ctx)
    if os.path.exists(ctx.args["flag"]):
        raise RuntimeError("fail_start_if_file: flag set")
    ctx.ready()
    while True:
        time.sleep(3600)


def never_ready(ctx: ChildContext) -> None:
    """Never call ready (start timeout)."""
    _mark(ctx)
    while True:
        time.sleep(3600)


def ignore(ctx: ChildContext) -> None:
    """OTP's ignore."""
    _mark(ctx)
    ctx.ignore()


def emit_events(ctx: ChildContext) -> None:
    """Ready, then emit an event, then serve."""
    _mark(ctx)
    ctx.ready()
    ctx.event("test.hello", n=1)
    while True:
        time.sleep(3600)


def ask_parent(ctx: ChildContext) -> None:
    """Ready, ask the supervisor chain for args['op'] and write the answer to marks/answer, then serve."""
    ctx.ready()
    try:
        result = ctx.request(ctx.args["op"], timeout=10, **ctx.args.get("req_args", {}))
        text = repr(result)
    except Exception as exc:
        text = f"error {exc}"
    with open(Path(ctx.args["marks"]) / "answer", "w") as f:
        f.write(text)
    while True:
        time.sleep(3600)


def cpu_report(ctx: ChildContext) -> None:
    """Ready with info = the CPU set this process may run on."""
    ctx.ready(cpus=sorted(os.sched_getaffinity(0)))
    while True:
        time.sleep(3600)


def wait_for_siblings(ctx: ChildContext) -> None:
    """Ready only once every child in args['siblings'] has started (a marks line each; up to 20 s), else
    fail: it can start only if its siblings are forked before any of them is ready."""
    _mark(ctx)
    log = Path(ctx.args["marks"]) / "log"
    want = set(ctx.args["siblings"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        started = {line.split()[1] for line in log.read_text().splitlines() if line.startswith("start ")}
        if want <= started:
            ctx.ready()
            while True:
                time.sleep(3600)
        time.sleep(0.01)
    raise RuntimeError(f"wait_for_siblings: {sorted(want - started)} never started")


def gc_report(ctx: ChildContext) -> None:
    """Ready with info = how many objects this process's cyclic GC leaves alone (frozen before the fork)."""
    ctx.ready(frozen=gc.get_freeze_count())
    while True:
        time.sleep(3600)


def echo_down(ctx: ChildContext) -> None:
    """Ready, then append every message the supervisor sends down to marks/down (one repr per line)."""
    import select

    assert ctx.uplink is not None
    ctx.ready()
    while True:
        select.select([ctx.uplink], [], [], 3600)
        while (msg := ctx.recv_nowait()) is not None:
            with open(Path(ctx.args["marks"]) / "down", "a") as f:
                f.write(repr(msg) + "\n")


def slow_ready(ctx: ChildContext) -> None:
    """Take args['ms'] before ready, then serve."""
    _mark(ctx)
    time.sleep(ctx.args.get("ms", 100) / 1000)
    ctx.ready()
    while True:
        time.sleep(3600)


def ignore_if_file(ctx: ChildContext) -> None:
    """Answer ignore while the file args['flag'] exists, else serve."""
    _mark(ctx)
    if os.path.exists(ctx.args["flag"]):
        ctx.ignore()
        return
    ctx.ready()
    while True:
        time.sleep(3600)


def hang_if_file(ctx: ChildContext) -> None:
    """Never get ready while the file args['flag'] exists, else serve."""
    _mark(ctx)
    while os.path.exists(ctx.args["flag"]):
        time.sleep(3600)
    ctx.ready()
    while True:
        time.sleep(3600)


def crash_on_term(ctx: ChildContext) -> None:
    """Ready; on SIGTERM exit with code 5 (a non-shutdown exit while being stopped)."""
    _mark(ctx)
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(5))
    ctx.ready()
    while True:
        time.sleep(3600)


def record_term(ctx: ChildContext) -> None:
    """Ready; on SIGTERM write 'term <id>' to the log and keep running (only SIGKILL stops it)."""
    _mark(ctx)
    signal.signal(signal.SIGTERM, lambda s, f: _mark(ctx, "term"))
    ctx.ready()
    while True:
        time.sleep(3600)


def trim_loop(ctx: ChildContext) -> None:
    """Ready, then bursts of garbage, each followed by a quiet period whose trim runs a hook that marks
    ``quiet``; beats every 20 ms until stopped."""
    from openfang.supervisor import trim

    trim.QUIET_S = 0.05
    _mark(ctx)
    ctx.ready()
    ctx.when_quiet(lambda: _mark(ctx, "quiet"))
    turn = 0
    while True:
        if turn % 20 == 0:  # a burst: garbage (large blocks come from malloc), then quiet
            junk = [bytes(4096) for _ in range(2000)]
            del junk
            ctx.worked()
        time.sleep(0.02)
        ctx.heartbeat()
        turn += 1
