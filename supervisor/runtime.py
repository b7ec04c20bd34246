"""The supervisor runtime: OTP's ``supervisor`` behaviour over forked processes and a selectors loop.

A supervisor starts its children in order (one at a time, each waiting for its ``ready``; or, opted into
with ``start_order = "parallel"``, all forked at once and then waited for in order), watches them
through pidfds and their uplinks, applies its strategy, restart types and intensity window when one
exits, escalates when the window overflows, and stops them in reverse order. Crashes arrive as messages
from its child watcher, never as exceptions.

Two classes, as OTP's static and dynamic supervisors are two behaviours in one module:

- :class:`Supervisor` (one_for_one, one_for_all, rest_for_one): children from the spec, started in order
  at start; ``start_child`` adds one by spec; terminated children keep their spec (but temporary ones);
  ``restart_child``, ``delete_child``; a reload applies a new spec by child id.
- :class:`~openfang.supervisor.dynamic.DynamicSupervisor` (simple_one_for_one): one template, no children
  at start; ``start_child`` takes extra args for it.

:func:`supervisor_for` picks the class from the spec's strategy. What both share (starting a child,
deciding after an exit, giving up, events, requests) is :class:`~openfang.supervisor._core.SupervisorCore`;
the entry point of a nested supervisor process is :func:`openfang.supervisor.nested.run_nested`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from openfang.protocol.errors import AlreadyExists, ConfigError, Problem, SupervisorError
from openfang.supervisor import _proc
from openfang.supervisor._core import SupervisorCore
from openfang.supervisor._record import EXITED, RESTARTING, STOPPED, SUP_STOPPED, ChildRecord
from openfang.supervisor._requests import OnRequest
from openfang.supervisor.dynamic import DynamicSupervisor
from openfang.supervisor.inline import InlineSupervisor
from openfang.supervisor.loop import Loop
from openfang.supervisor.restart import ExitReason
from openfang.supervisor.spec import (
    ChildSpec,
    ChildType,
    StartOrder,
    Strategy,
    SupervisorSpec,
    check_child,
    check_spec,
    child_from_dict,
    spec_to_dict,
)

__all__ = [
    "DynamicSupervisor",
    "InlineSupervisor",
    "Supervisor",
    "SupervisorCore",
    "make_inline",
    "supervisor_for",
]


def supervisor_for(
    spec: SupervisorSpec,
    *,
    loop: Loop,
    path: str = "root",
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_request: OnRequest | None = None,
    on_terminate: Callable[[str], None] | None = None,
    subreaper: bool | None = None,
) -> SupervisorCore:
    """The supervisor ``spec`` asks for: dynamic for simple_one_for_one, static for the others. It can host
    inline supervisor children (made by :func:`make_inline`, each running a supervisor made here)."""
    kind = DynamicSupervisor if spec.flags.strategy == Strategy.SIMPLE_ONE_FOR_ONE else Supervisor
    return kind(
        spec,
        loop=loop,
        path=path,
        on_event=on_event,
        on_request=on_request,
        on_terminate=on_terminate,
        subreaper=subreaper,
        make_inline=make_inline,
    )


def make_inline(
    child: ChildSpec,
    *,
    path: str,
    loop: Loop,
    to_parent: Callable[[dict[str, Any]], None],
    on_exit: Callable[[ExitReason], None],
) -> InlineSupervisor:
    """The inline supervisor of ``child`` (``inline = true``), running a :func:`supervisor_for` supervisor."""
    return InlineSupervisor(
        child, path=path, loop=loop, to_parent=to_parent, on_exit=on_exit, make_core=supervisor_for
    )


class Supervisor(SupervisorCore):
    """A static supervisor: one_for_one, one_for_all or rest_for_one over the children of its spec."""

    def _check_strategy(self, spec: SupervisorSpec, path: str) -> None:
        if spec.flags.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
            raise ConfigError(
                [
                    Problem(
                        f"{path} key 'strategy'",
                        "simple_one_for_one needs a DynamicSupervisor (supervisor_for)",
                    )
                ]
            )

    def _start_children(self) -> None:
        """OTP's ordered start: each child forked after the previous one is ready. With ``start_order =
        "parallel"`` every child is forked first and then waited for in spec order: the same outcome
        (events in spec order, the first failure in spec order rolls back every child, started or still
        starting), with the starts overlapping. A child with ``autostart = false`` is recorded and not
        started (a kept spec, as after ``terminate_child``).

        The children's start modules are imported here first (:func:`_proc.preimport_tree`). In an ordered
        start only the first child's are imported before its fork: the others' are imported while it
        starts, so a first child that imports its own modules (``preimport = false``) or has work to do
        before its ready overlaps the supervisor's imports instead of waiting for them. Not the first
        child's own again: launched from a preloaded process (``preload``), its module is not imported here
        until a later fork needs it (imported while only that child runs, it would be this process's
        alone)."""
        children = self.record.spec.children
        with self._serial:
            if self.record.spec.flags.start_order == StartOrder.PARALLEL:
                _proc.preimport_tree(self.record.spec)
                recs = [self.record.add(spec) for spec in children]
                started = [rec for rec in recs if rec.spec.autostart]  # the others: kept specs only
                for rec in started:
                    self._start_or_roll_back(rec, self._launcher.fork)
                for rec in started:
                    self._start_or_roll_back(rec, self._launcher.settle)
            else:
                first = True
                for i, spec in enumerate(children):
                    rec = self.record.add(spec)
                    if not spec.autostart:
                        continue  # a kept spec, as after terminate_child: restart_child starts it
                    _proc.preimport_child(spec)  # a no-op after the first (see below)
                    self._start_or_roll_back(rec, self._launcher.fork)
                    if first:  # while the first child starts: the others' (not its own: see below)
                        for later in children[i + 1 :]:
                            _proc.preimport_child(later)
                        first = False
                    self._start_or_roll_back(rec, self._launcher.settle)
        self.events.changed()

    def _start_or_roll_back(self, rec: ChildRecord, step: Callable[[ChildRecord], object]) -> None:
        """Run one start step for ``rec``; if it fails, stop every child in reverse order and raise."""
        try:
            step(rec)
        except SupervisorError as exc:
            self._log.error("start_failed_rollback", child=rec.id, error=exc.message)
            self._launcher.stop_in_order(self.record.in_reverse())
            self.record.clear()
            self.record.status = SUP_STOPPED
            self._release()
            raise SupervisorError(
                f"supervisor {self.path}: child {rec.id!r} failed to start: {exc.message}"
            ) from None

    def _stop_children(self, recs: list[ChildRecord]) -> None:
        self._launcher.stop_in_order(recs)

    # -- dynamic children (OTP's start_child / restart_child / delete_child) ----------

    def start_child(self, spec_or_extra_args: ChildSpec | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Add and start a child from its spec (a ChildSpec or its dict form); ``{"id", "pid"}`` (pid None
        when the child answered ``ignore``). already_present / already_started if the id is taken."""
        self.record.check_running()
        with self._serial:
            if isinstance(spec_or_extra_args, ChildSpec):
                spec = spec_or_extra_args
            elif isinstance(spec_or_extra_args, Mapping):
                spec = child_from_dict(spec_or_extra_args, where=f"{self.path} start_child")
            else:
                raise SupervisorError("start_child needs a child spec")
            problems = check_child(spec, f"{self.path} start_child", self.record.spec.flags)
            if problems:
                raise ConfigError(problems)
            existing = self.record.children.get(spec.id)
            if existing is not None:
                if existing.alive:
                    raise AlreadyExists(f"already_started: child {spec.id!r} is running (pid {existing.pid})")
                raise AlreadyExists(
                    f"already_present: child {spec.id!r} exists; restart_child or delete_child it"
                )
            return self._start_or_forget(self.record.add(spec, dynamic=True))

    def start_child_request(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.start_child(args["spec"] if isinstance(args.get("spec"), Mapping) else args)

    def restart_child(self, child_id: str) -> dict[str, Any]:
        """Start a stopped child again from its kept spec (not_found / running / restarting)."""
        self.record.check_running()
        rec = self.record.get(child_id)
        if rec.alive:
            raise SupervisorError(f"running: child {child_id!r} is running", code="running")
        if rec.state == RESTARTING:
            raise SupervisorError(f"restarting: child {child_id!r} is being restarted", code="restarting")
        with self._serial:
            self._launcher.start(rec)
        return {"id": child_id, "pid": rec.pid}

    def delete_child(self, child_id: str) -> None:
        """Forget a stopped child's spec (not_found / running / restarting)."""
        rec = self.record.get(child_id)
        if rec.alive:
            raise SupervisorError(
                f"running: child {child_id!r} is running; terminate_child it first", code="running"
            )
        if rec.state == RESTARTING:
            raise SupervisorError(f"restarting: child {child_id!r} is being restarted", code="restarting")
        self.record.remove(rec)
        self.events.changed()

    # -- reload ----------

    def reconfigure(self, new_spec: SupervisorSpec) -> dict[str, list[str]]:
        """Apply a new spec by child id: start new children, stop removed ones, replace changed ones, leave
        unchanged ones running; a nested supervisor whose children alone changed gets its new spec sent
        down instead of a restart. Children added by start_child are kept. A new child with ``autostart =
        false`` is recorded, not started; a child whose ``autostart`` alone changed is not restarted (a
        stopped one that must now run is started)."""
        problems = check_spec(new_spec, self.path)
        if problems:
            raise ConfigError(problems)
        self.record.check_running()
        if new_spec.flags.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
            raise ConfigError(
                [
                    Problem(
                        f"{self.path} key 'strategy'", "cannot change to or from simple_one_for_one on reload"
                    )
                ]
            )
        diff: dict[str, list[str]] = {
            "started": [],
            "stopped": [],
            "replaced": [],
            "unchanged": [],
            "reconfigured": [],
            "failed": [],
        }
        state = self.record
        with self._serial:
            state.spec = new_spec
            state.window.reset(new_spec.flags.intensity, new_spec.flags.period)
            wanted = {c.id: c for c in new_spec.children}
            for gone in state.in_reverse():
                if gone.id not in wanted and not gone.dynamic:
                    self._launcher.stop_in_order([gone])
                    state.remove(gone)
                    diff["stopped"].append(gone.id)
            for index, spec in enumerate(new_spec.children):
                rec = state.children.get(spec.id)
                if rec is None:
                    rec = state.add(spec, index=min(index, len(state.order)))
                    if spec.autostart:
                        self._start_logged(rec, diff, "started")
                    else:
                        diff["unchanged"].append(spec.id)  # a kept spec: nothing runs
                elif rec.spec == spec:
                    diff["unchanged"].append(spec.id)
                elif dataclasses.replace(rec.spec, autostart=spec.autostart) == spec:
                    # Only autostart changed: a running child is left running (an elastic pool's policy
                    # stops it when it is not needed); a stopped one that must now run is started.
                    rec.spec = spec
                    if spec.autostart and not rec.alive and rec.state not in (RESTARTING, EXITED):
                        self._start_logged(rec, diff, "started")
                    else:
                        diff["unchanged"].append(spec.id)
                elif _only_children_differ(rec.spec, spec) and rec.alive:
                    rec.spec = spec
                    assert spec.supervisor is not None
                    nested = {"spec": spec_to_dict(spec.supervisor)}
                    self._requests.ask_child(rec, "reconfigure", nested, self._log_nested_reply(rec))
                    diff["reconfigured"].append(spec.id)
                else:
                    was_running = rec.alive
                    self._launcher.stop_in_order([rec])
                    rec.spec = spec
                    if spec.autostart or was_running:
                        self._start_logged(rec, diff, "replaced")
                    else:
                        diff["unchanged"].append(spec.id)  # a kept spec, still not running
            # Start order follows the new spec; dynamic children keep their place after it.
            position = {s.id: i for i, s in enumerate(new_spec.children)}
            state.order.sort(key=lambda c: position.get(c, len(wanted)))
        self.events.changed()
        return diff

    def _start_logged(self, rec: ChildRecord, diff: dict[str, list[str]], key: str) -> None:
        try:
            if self._launcher.start(rec):
                diff[key].append(rec.id)
        except SupervisorError as exc:
            self._log.error("reload_start_failed", child=rec.id, error=exc.message)
            rec.state = STOPPED
            diff["failed"].append(rec.id)

    def _log_nested_reply(self, rec: ChildRecord) -> Callable[[bool, Any], None]:
        def reply(ok: bool, result: Any) -> None:
            if ok:
                self._log.info("nested_reconfigured", child=rec.id, diff=result)
            else:
                self._log.error("nested_reconfigure_failed", child=rec.id, error=result)

        return reply


def _only_children_differ(old: ChildSpec, new: ChildSpec) -> bool:
    """Both are nested supervisors whose specs differ only below them (so the new one can be sent down)."""
    if old.type != ChildType.SUPERVISOR or new.type != ChildType.SUPERVISOR:
        return False
    if old.supervisor is None or new.supervisor is None:
        return False
    if dataclasses.replace(old, supervisor=None) != dataclasses.replace(new, supervisor=None):
        return False
    return old.supervisor.flags.strategy == new.supervisor.flags.strategy or (
        Strategy.SIMPLE_ONE_FOR_ONE not in (old.supervisor.flags.strategy, new.supervisor.flags.strategy)
    )
