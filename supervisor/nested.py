"""The body of a nested supervisor process: a :class:`Supervisor` of its own, talking to its parent.

The parent forks a child of type ``supervisor`` into :func:`run_nested` with the nested spec as data in
``ctx.args["spec"]``. This process then: starts its children in order (a failure makes it exit 1 before
``ready``, which the parent sees as a failed start), reports ready, forwards its events and every change
of its subtree up the uplink, answers the parent's requests (routing deeper ones further down), forwards
its children's requests up (the root answers them), stops in reverse order on SIGTERM and exits 0, and
exits with ``EXIT_ESCALATED`` when it gives up (its parent sees an ordinary abnormal exit).

This module is named in data (:data:`openfang.supervisor.spec.NESTED_START`), so it is public.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import structlog

from openfang.protocol.errors import FrameTooLarge, OpenFangError
from openfang.supervisor._requests import answer_routed
from openfang.supervisor.child import EXIT_ESCALATED, ChildContext
from openfang.supervisor.loop import Loop
from openfang.supervisor.runtime import supervisor_for
from openfang.supervisor.spec import spec_from_dict

log = structlog.get_logger("openfang.supervisor")


def run_nested(ctx: ChildContext) -> None:
    """Entry point of a nested supervisor (``openfang.supervisor.nested:run_nested``)."""
    spec = spec_from_dict(ctx.args.get("spec") or {}, where=ctx.path)
    loop = Loop()
    outcome: dict[str, int] = {}
    upward: dict[str, Any] = {}  # our requests to the parent, by id -> reply callback
    seq = [0]

    def on_event(event: dict[str, Any]) -> None:
        ctx.send({"t": "event", "event": event})

    def on_request(child_id: str, op: str, args: dict[str, Any], reply: Any) -> None:
        seq[0] += 1
        req_id = f"{ctx.path}^{seq[0]}"
        upward[req_id] = reply
        ctx.send({"t": "req", "id": req_id, "op": op, "args": args})

    def on_terminate(reason: str) -> None:
        outcome["code"] = 0 if reason == "auto_shutdown" else EXIT_ESCALATED

    sup = supervisor_for(
        spec,
        loop=loop,
        path=ctx.path,
        on_event=on_event,
        on_request=on_request,
        on_terminate=on_terminate,
        subreaper=False,
    )
    sup.extra_close_fds = [ctx.fileno()]

    def push_subtree() -> None:
        _push_subtree(ctx, sup.tree())

    sup.events.on_change = push_subtree

    def shut_down() -> None:
        sup.shutdown()
        outcome.setdefault("code", 0)

    def stop() -> None:
        if "code" not in outcome:
            sup.run_serial(shut_down)

    def on_parent() -> None:
        while True:
            try:
                msg = ctx.recv_nowait()
            except EOFError:
                # The parent is gone; PDEATHSIG is on its way. Stop our children in order meanwhile.
                loop.remove_reader(ctx.fileno())
                stop()
                return
            except OpenFangError:
                continue
            if msg is None:
                return
            if msg["t"] == "req":
                answer_routed(sup, msg, ctx.path, ctx.send)
            elif msg["t"] == "rep":
                reply = upward.pop(str(msg.get("id")), None)
                if reply is not None:
                    ok = bool(msg.get("ok"))
                    reply(ok, msg.get("result") if ok else (msg.get("error") or {}))

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_reader(ctx.fileno(), on_parent)
    sup.start()
    ctx.ready(strategy=str(spec.flags.strategy), children=len(spec.children), pid=os.getpid())
    push_subtree()
    loop.run_until(lambda: "code" in outcome)
    loop.close()
    raise SystemExit(outcome["code"])


def _push_subtree(ctx: ChildContext, children: list[dict[str, Any]]) -> None:
    """Send our subtree up; one too big for a packet goes without the levels below our children."""
    try:
        ctx.send({"t": "subtree", "children": children})
        return
    except FrameTooLarge:
        pass
    trimmed = [{**node, "info": {}, "children": []} for node in children]
    try:
        ctx.send({"t": "subtree", "children": trimmed, "truncated": True})
    except FrameTooLarge:
        log.warning("subtree_too_large", children=len(children))
