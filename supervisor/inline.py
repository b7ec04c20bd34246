"""A nested supervisor run inline: in its parent supervisor's process and event loop, not a process.

A child of type ``supervisor`` with ``inline = true`` is this object instead of a forked
:func:`openfang.supervisor.nested.run_nested` process. It is the same supervisor (a :class:`Supervisor` or a
:class:`DynamicSupervisor` from :func:`supervisor_for`, with its own strategy, intensity window, start order
and children's shutdown policies) talking to its parent through the same messages, only without a socket:

- its messages up (``ready``, ``event``, ``subtree``, ``req``, ``rep``) go to its parent's child watcher
  (``to_parent``), and its end (``on_exit``, with the :class:`ExitReason` a reaped process would have: 0
  when stopped or shut down by auto_shutdown, ``EXIT_ESCALATED`` when it gives up, ``EXIT_CRASH`` when its
  start fails, SIGKILL when killed), each from the loop (``call_soon``), never inside the call that caused
  it: the parent handles them as it handles packets and exits;
- the parent's messages (a ``req`` routed down, a ``rep`` to one of its requests) arrive at
  :meth:`InlineSupervisor.deliver`; the parent's SIGTERM is :meth:`terminate` (its children stopped in
  reverse order with their timeouts), SIGKILL is :meth:`kill` (its children SIGKILLed at once, as
  PDEATHSIG kills a nested process's children);
- its children are forked by this process (they are OS children of the process hosting it) and watched by
  its own core in the shared loop; it sets no signal handler (the process's are its host's).

Differences from a process, by construction: a stop interrupts an operation in progress (a group restart,
a start) instead of waiting for it to finish, because that operation runs the loop below the stop's frame
(the children end stopped in reverse order either way); a stop of several inline children of a dynamic
supervisor runs one after the other.

Failure isolation: an exception escaping the inline supervisor's own entry points (its start, a message
from its parent, a stop) is its crash, as an exception in a nested process's body is: logged as
``child_crashed`` with the traceback, its children killed, and its parent sees an abnormal exit (code
``EXIT_CRASH``) and applies its strategy (a restart makes a fresh inline supervisor). An exception in a
callback of its core (a child's exit, a timer) is logged by the loop and survived, as it is in a nested
process's loop. Nothing of it reaches the host's loop as an exception.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from openfang.supervisor._record import Reply, SupervisorState
from openfang.supervisor._requests import answer_routed
from openfang.supervisor.child import EXIT_CRASH, EXIT_ESCALATED
from openfang.supervisor.loop import Loop
from openfang.supervisor.restart import NORMAL, ExitReason, abnormal
from openfang.supervisor.spec import ChildSpec, SupervisorSpec

log = structlog.get_logger("openfang.supervisor")
KILLED = abnormal(signal=int(signal.SIGKILL), detail=signal.SIGKILL.name)


class _Changes(Protocol):
    on_change: Callable[[], None] | None


class NestedCore(Protocol):
    """What an inline supervisor uses of the supervisor it runs (a
    :class:`~openfang.supervisor._core.SupervisorCore`, made by ``make_core``)."""

    @property
    def record(self) -> SupervisorState: ...
    @property
    def events(self) -> _Changes: ...
    @property
    def spec(self) -> SupervisorSpec: ...
    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def kill(self) -> None: ...
    def tree(self) -> list[dict[str, Any]]: ...
    def request(self, path: str, op: str, args: dict[str, Any], reply: Reply) -> None: ...


class MakeCore(Protocol):
    """:func:`openfang.supervisor.runtime.supervisor_for`'s signature (passed in: runtime imports this)."""

    def __call__(
        self,
        spec: SupervisorSpec,
        *,
        loop: Loop,
        path: str,
        on_event: Callable[[dict[str, Any]], None],
        on_request: Callable[[str, str, dict[str, Any], Reply], None],
        on_terminate: Callable[[str], None],
        subreaper: bool,
    ) -> NestedCore: ...


class InlineSupervisor:
    """One incarnation of an inline nested supervisor (see the module docstring); made by its parent's
    launcher, which watches it through ``to_parent`` and ``on_exit``."""

    def __init__(
        self,
        child: ChildSpec,
        *,
        path: str,
        loop: Loop,
        to_parent: Callable[[dict[str, Any]], None],
        on_exit: Callable[[ExitReason], None],
        make_core: MakeCore,
    ) -> None:
        assert child.supervisor is not None
        self.child = child
        self.path = path
        self.loop = loop
        self._to_parent = to_parent
        self._on_exit = on_exit
        self.timed_out = False
        self.done = False  # it is ending or has ended: it says nothing more
        self._ended = False  # its exit is reported (or on its way): once, the first reason wins
        self._upward: dict[str, Reply] = {}  # our requests to the parent, by id
        self._seq = 0
        self.sup = make_core(
            child.supervisor,
            loop=loop,
            path=path,
            on_event=lambda event: self._up({"t": "event", "event": event}),
            on_request=self._ask_parent,
            on_terminate=self._gave_up,
            subreaper=False,
        )
        self.sup.events.on_change = self._push_subtree

    # -- the parent's side ----------

    def start(self) -> None:
        """Start its children from the loop (as a forked process starts by itself); ``ready`` follows."""
        self.loop.call_soon(self._run_start)

    def deliver(self, msg: dict[str, Any]) -> None:
        """A message from the parent: a request to answer (here or further down), or a reply to ours."""
        if self.done:
            return
        try:
            kind = msg.get("t")
            if kind == "req":
                answer_routed(self.sup, msg, self.path, self._up)
            elif kind == "rep":
                reply = self._upward.pop(str(msg.get("id")), None)
                if reply is not None:
                    ok = bool(msg.get("ok"))
                    reply(ok, msg.get("result") if ok else (msg.get("error") or {}))
        except Exception as exc:
            self._crash(exc)

    def terminate(self) -> None:
        """Stop the children in reverse order per their shutdown policies, then end normally."""
        if self.done:
            return
        try:
            self.sup.shutdown()
        except Exception as exc:
            self._crash(exc)
            return
        self._end(NORMAL)

    def kill(self) -> None:
        """Kill the children at once and end as killed (a process's SIGKILL)."""
        if self.done:
            return
        self.done = True  # at once: nothing it does while its children die goes up any more
        self._kill_children()
        self._end(KILLED)

    def pids(self) -> set[int]:
        return self.sup.record.pids()

    # -- its own side ----------

    def _run_start(self) -> None:
        if self.done:
            return  # stopped or killed before its start ran
        try:
            self.sup.start()
        except Exception as exc:
            if not self.done:  # a start interrupted by a stop or a kill is not a crash
                self._crash(exc)
            return
        if self.done:
            return
        spec = self.sup.spec
        self._up(
            {
                "t": "ready",
                "info": {
                    "strategy": str(spec.flags.strategy),
                    "children": len(spec.children),
                    "pid": os.getpid(),
                },
            }
        )
        self._push_subtree()

    def _ask_parent(self, child_id: str, op: str, args: dict[str, Any], reply: Reply) -> None:
        self._seq += 1
        req_id = f"{self.path}^{self._seq}"
        self._upward[req_id] = reply
        self._up({"t": "req", "id": req_id, "op": op, "args": args})

    def _push_subtree(self) -> None:
        self._up({"t": "subtree", "children": self.sup.tree()})

    def _gave_up(self, reason: str) -> None:
        # Its core has stopped every child already (escalation, or auto_shutdown).
        self._end(NORMAL if reason == "auto_shutdown" else abnormal(code=EXIT_ESCALATED, detail="escalated"))

    def _crash(self, exc: BaseException) -> None:
        if self.done:
            return
        log.error(
            "child_crashed",
            supervisor=self.path.rpartition("/")[0],
            offender=self.child.id,
            start="inline",
            reason=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )
        self.done = True
        self._kill_children()
        self._end(abnormal(code=EXIT_CRASH))

    def _kill_children(self) -> None:
        try:
            self.sup.kill()
        except Exception:  # the kill itself failed: its children die with this process at the latest
            log.exception("inline_kill_failed", supervisor=self.path)

    # -- to the parent, always from the loop ----------

    def _up(self, msg: dict[str, Any]) -> None:
        if not self.done:
            self.loop.call_soon(lambda: self._to_parent(msg))

    def _end(self, reason: ExitReason) -> None:
        # A kill inside a stop (its shutdown timeout expired) ends it first: the stop then has nothing to add.
        self.done = True
        if self._ended:
            return
        self._ended = True
        self._upward.clear()
        self.loop.call_soon(lambda: self._on_exit(reason))
