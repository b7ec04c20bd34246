"""The supervisor's administrative API: dynamic children, requests routed through the tree, reloads.

Mixed into :class:`openfang.supervisor.runtime.Supervisor`. The operations and their errors are OTP's:
``start_child`` (already_present / already_started), ``terminate_child`` (keeps the spec, except for
temporary and simple_one_for_one children), ``restart_child`` (not_found / running / restarting),
``delete_child`` (running / restarting), ``which_children``, ``count_children``, ``get_childspec``; on a
simple_one_for_one supervisor ``restart_child`` and ``delete_child`` are errors and ``start_child`` takes
extra args for the template.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from openfang.protocol.errors import (
    AlreadyExists,
    ConfigError,
    NotFound,
    OpenFangError,
    Problem,
    SupervisorError,
)
from openfang.supervisor._record import RESTARTING, RUNNING, STOPPED, ChildRecord, Reply
from openfang.supervisor.spec import (
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
    SupervisorSpec,
    check_child,
    check_spec,
    child_from_dict,
    child_to_dict,
    spec_to_dict,
)

if TYPE_CHECKING:
    from openfang.supervisor.restart import RestartWindow
    from openfang.supervisor.runtime import _Serial
    from structlog.typing import FilteringBoundLogger

OPS = (
    "start_child",
    "terminate_child",
    "restart_child",
    "delete_child",
    "which_children",
    "count_children",
    "get_childspec",
    "reconfigure",
    "tree",
)


class AdminMixin:
    """Dynamic children, requests and reconfigure (see the module docstring)."""

    # What this mixin uses of its host, :class:`~openfang.supervisor.runtime.Supervisor`, declared so
    # that it type-checks on its own (annotations only: nothing is created at run time).
    spec: SupervisorSpec
    path: str
    state: str
    window: RestartWindow
    on_request: Callable[[str, str, dict[str, Any], Reply], None] | None
    _children: dict[str, ChildRecord]
    _order: list[str]
    _next_dynamic: int
    _req_seq: int
    _log: FilteringBoundLogger

    if TYPE_CHECKING:  # defined by Supervisor and WatchMixin; a definition here would shadow theirs

        @property
        def strategy(self) -> Strategy: ...
        def tree(self) -> list[dict[str, Any]]: ...
        def _serial(self) -> _Serial: ...
        def _serialize(self, work: Callable[[], None]) -> None: ...
        def _add(self, spec: Any, *, index: int | None = None, dynamic: bool = False) -> ChildRecord: ...
        def _start(self, rec: ChildRecord) -> bool: ...
        def _remove(self, rec: ChildRecord) -> None: ...
        def _changed(self) -> None: ...
        def send_to_child(self, child_id: str, msg: dict[str, Any]) -> bool: ...
        def _terminate_many(self, recs: list[ChildRecord]) -> None: ...

    # -- dynamic children ----------

    def start_child(self, spec_or_extra_args: ChildSpec | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Add and start a child. simple_one_for_one: ``extra args`` merged over the template's args.
        Returns ``{"id", "pid"}`` (pid None when the child answered ``ignore``)."""
        self._check_running()
        with self._serial():
            if self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
                extra = spec_or_extra_args if isinstance(spec_or_extra_args, Mapping) else {}
                template = self.spec.children[0]
                self._next_dynamic += 1
                spec = dataclasses.replace(
                    template, id=f"{template.id}-{self._next_dynamic}", args={**template.args, **extra}
                )
            else:
                if isinstance(spec_or_extra_args, ChildSpec):
                    spec = spec_or_extra_args
                elif isinstance(spec_or_extra_args, Mapping):
                    spec = child_from_dict(spec_or_extra_args, where=f"{self.path} start_child")
                else:
                    raise SupervisorError("start_child needs a child spec")
                problems = check_child(spec, f"{self.path} start_child", self.spec.flags)
                if problems:
                    raise ConfigError(problems)
                existing = self._children.get(spec.id)
                if existing is not None:
                    if existing.alive:
                        raise AlreadyExists(
                            f"already_started: child {spec.id!r} is running (pid {existing.pid})"
                        )
                    raise AlreadyExists(
                        f"already_present: child {spec.id!r} exists; restart_child or delete_child it"
                    )
            rec = self._add(spec, dynamic=True)
            try:
                started = self._start(rec)
            except SupervisorError:
                self._remove(rec)  # a child that fails to start is not kept
                raise
            if not started and (
                spec.restart == Restart.TEMPORARY or self.strategy == Strategy.SIMPLE_ONE_FOR_ONE
            ):
                self._remove(rec)
            return {"id": spec.id, "pid": rec.pid}

    def terminate_child(self, child_id: str) -> None:
        """Stop a child per its shutdown policy; its spec stays (temporary / simple_one_for_one: removed)."""
        rec = self._get(child_id)
        with self._serial():
            self._terminate_many([rec])
            rec.state = STOPPED
            if rec.spec.restart == Restart.TEMPORARY or self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
                self._remove(rec)
        self._changed()

    def restart_child(self, child_id: str) -> dict[str, Any]:
        """Start a stopped child again from its kept spec."""
        self._check_running()
        self._no_sofo("restart_child")
        rec = self._get(child_id)
        if rec.alive:
            raise SupervisorError(f"running: child {child_id!r} is running", code="running")
        if rec.state == RESTARTING:
            raise SupervisorError(f"restarting: child {child_id!r} is being restarted", code="restarting")
        with self._serial():
            self._start(rec)
        return {"id": child_id, "pid": rec.pid}

    def delete_child(self, child_id: str) -> None:
        """Forget a stopped child's spec."""
        self._no_sofo("delete_child")
        rec = self._get(child_id)
        if rec.alive:
            raise SupervisorError(
                f"running: child {child_id!r} is running; terminate_child it first", code="running"
            )
        if rec.state == RESTARTING:
            raise SupervisorError(f"restarting: child {child_id!r} is being restarted", code="restarting")
        self._remove(rec)
        self._changed()

    def which_children(self) -> list[dict[str, Any]]:
        """``[{id, pid, type, state}]`` in start order (state: running / restarting / stopped / undefined)."""
        return [
            {"id": r.id, "pid": r.pid, "type": str(r.spec.type), "state": r.public_state()}
            for r in (self._children[c] for c in self._order)
        ]

    def count_children(self) -> dict[str, int]:
        """OTP's counts: specs, active (alive processes), supervisors, workers."""
        recs = list(self._children.values())
        return {
            "specs": len(recs),
            "active": sum(1 for r in recs if r.alive),
            "supervisors": sum(1 for r in recs if r.spec.type == ChildType.SUPERVISOR),
            "workers": sum(1 for r in recs if r.spec.type == ChildType.WORKER),
        }

    def get_childspec(self, child_id: str) -> ChildSpec:
        return self._get(child_id).spec

    def _get(self, child_id: str) -> ChildRecord:
        rec = self._children.get(child_id)
        if rec is None:
            raise NotFound(f"not_found: supervisor {self.path!r} has no child {child_id!r}")
        return rec

    def _no_sofo(self, op: str) -> None:
        if self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
            raise SupervisorError(f"simple_one_for_one: {op} is not supported by supervisor {self.path!r}")

    def _check_running(self) -> None:
        if self.state != "running":
            raise SupervisorError(f"supervisor {self.path!r} is {self.state}")

    # -- requests ----------

    def request(self, path: str, op: str, args: dict[str, Any], reply: Reply) -> None:
        """Run ``op`` on the supervisor at ``path`` (this one or a nested one below); ``reply(ok, result)``
        is called exactly once (on failure with ``{"code", "message"}``)."""
        if path in ("", self.path):
            self._serialize(lambda: self._local_request(op, args, reply))
            return
        if not path.startswith(self.path + "/"):
            reply(False, NotFound(f"not_found: no supervisor {path!r} under {self.path!r}").to_wire())
            return
        child_id = path[len(self.path) + 1 :].split("/", 1)[0]
        rec = self._children.get(child_id)
        if rec is None or not rec.is_supervisor:
            reply(False, NotFound(f"not_found: {self.path!r} has no supervisor child {child_id!r}").to_wire())
            return
        self._request_child(rec, op, args, reply, path=path)

    def _request_child(
        self,
        rec: ChildRecord,
        op: str,
        args: dict[str, Any],
        reply: Reply,
        *,
        path: str | None = None,
    ) -> None:
        if rec.uplink is None:
            reply(False, SupervisorError(f"child {rec.path!r} is not running").to_wire())
            return
        self._req_seq += 1
        req_id = f"{self.path}#{self._req_seq}"
        rec.pending[req_id] = reply
        msg: dict[str, Any] = {"t": "req", "id": req_id, "op": op, "args": args}
        if path is not None:
            msg["path"] = path
        if not self.send_to_child(rec.id, msg):
            rec.pending.pop(req_id, None)
            reply(False, SupervisorError(f"cannot reach {rec.path!r}").to_wire())

    def _local_request(self, op: str, args: dict[str, Any], reply: Reply) -> None:
        try:
            result = self._do(op, args)
        except OpenFangError as exc:
            reply(False, exc.to_wire())
        except Exception as exc:  # a bug must still answer, or the asker waits for its timeout
            self._log.exception("request_failed", op=op)
            reply(False, {"code": "internal", "message": f"{op} failed: {type(exc).__name__}: {exc}"})
        else:
            reply(True, result)

    def _do(self, op: str, args: dict[str, Any]) -> Any:
        child_id = str(args.get("id", ""))
        if op == "start_child":
            if self.strategy == Strategy.SIMPLE_ONE_FOR_ONE:
                extra = args.get("args", {})
                return self.start_child(extra if isinstance(extra, Mapping) else {})
            return self.start_child(args["spec"] if isinstance(args.get("spec"), Mapping) else args)
        if op == "terminate_child":
            self.terminate_child(child_id)
            return {}
        if op == "restart_child":
            return self.restart_child(child_id)
        if op == "delete_child":
            self.delete_child(child_id)
            return {}
        if op == "which_children":
            return {"children": self.which_children()}
        if op == "count_children":
            return self.count_children()
        if op == "get_childspec":
            return child_to_dict(self.get_childspec(child_id))
        if op == "tree":
            return self.tree()
        if op == "reconfigure":
            from openfang.supervisor.spec import spec_from_dict

            return self.reconfigure(spec_from_dict(args.get("spec") or {}, where=self.path))
        raise SupervisorError(
            f"unknown supervisor operation {op!r} (known: {', '.join(OPS)})", code="unknown_type"
        )

    def _child_request(self, rec: ChildRecord, msg: dict[str, Any]) -> None:
        """A ``req`` from a child: answered by ``on_request`` (the daemon, or our own parent)."""
        req_id = msg.get("id")
        uplink = rec.uplink

        def reply(ok: bool, result: Any) -> None:
            if rec.uplink is not uplink:
                return  # the child is gone (or is a new incarnation that never asked)
            out: dict[str, Any] = {"t": "rep", "id": req_id, "ok": ok}
            out["result" if ok else "error"] = result
            self.send_to_child(rec.id, out)

        op, args = str(msg.get("op", "")), msg.get("args")
        if self.on_request is None:
            reply(False, SupervisorError(f"supervisor {self.path!r} answers no requests ({op!r})").to_wire())
            return
        try:
            self.on_request(rec.id, op, args if isinstance(args, dict) else {}, reply)
        except OpenFangError as exc:
            reply(False, exc.to_wire())
        except Exception as exc:
            self._log.exception("child_request_failed", child=rec.id, op=op)
            reply(False, {"code": "internal", "message": f"{op} failed: {type(exc).__name__}: {exc}"})

    # -- reload ----------

    def reconfigure(self, new_spec: SupervisorSpec) -> dict[str, list[str]]:
        """Apply a new spec by child id: start new children, stop removed ones, replace changed ones, leave
        unchanged ones running; a nested supervisor whose children alone changed gets its new spec sent
        down instead of a restart. Children added by start_child are kept."""
        problems = check_spec(new_spec, self.path)
        if problems:
            raise ConfigError(problems)
        self._check_running()
        old_sofo = self.strategy == Strategy.SIMPLE_ONE_FOR_ONE
        if old_sofo != (new_spec.flags.strategy == Strategy.SIMPLE_ONE_FOR_ONE):
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
        with self._serial():
            self.spec = new_spec
            self.window.reset(new_spec.flags.intensity, new_spec.flags.period)
            if old_sofo:
                diff["unchanged"] = list(self._order)
                return diff
            wanted = {c.id: c for c in new_spec.children}
            removed = [c for c in reversed(self._order) if c not in wanted and not self._children[c].dynamic]
            for cid in removed:
                gone = self._children[cid]
                self._terminate_many([gone])
                self._remove(gone)
                diff["stopped"].append(cid)
            for index, spec in enumerate(new_spec.children):
                rec = self._children.get(spec.id)
                if rec is None:
                    rec = self._add(spec, index=min(index, len(self._order)))
                    self._start_logged(rec, diff, "started")
                elif rec.spec == spec:
                    diff["unchanged"].append(spec.id)
                elif _only_children_differ(rec.spec, spec) and rec.alive:
                    rec.spec = spec
                    assert spec.supervisor is not None
                    self._request_child(
                        rec, "reconfigure", {"spec": spec_to_dict(spec.supervisor)}, _log_reply(self, rec)
                    )
                    diff["reconfigured"].append(spec.id)
                else:
                    self._terminate_many([rec])
                    rec.spec = spec
                    self._start_logged(rec, diff, "replaced")
            # Start order follows the new spec; dynamic children keep their place after it.
            self._order.sort(
                key=lambda c: next((i for i, s in enumerate(new_spec.children) if s.id == c), len(wanted))
            )
        self._changed()
        return diff

    def _start_logged(self, rec: ChildRecord, diff: dict[str, list[str]], key: str) -> None:
        try:
            if self._start(rec):
                diff[key].append(rec.id)
        except SupervisorError as exc:
            self._log.error("reload_start_failed", child=rec.id, error=exc.message)
            rec.state = STOPPED
            diff["failed"].append(rec.id)


def _only_children_differ(old: ChildSpec, new: ChildSpec) -> bool:
    if old.type != ChildType.SUPERVISOR or new.type != ChildType.SUPERVISOR:
        return False
    if old.supervisor is None or new.supervisor is None:
        return False
    if dataclasses.replace(old, supervisor=None) != dataclasses.replace(new, supervisor=None):
        return False
    return old.supervisor.flags.strategy == new.supervisor.flags.strategy or (
        Strategy.SIMPLE_ONE_FOR_ONE not in (old.supervisor.flags.strategy, new.supervisor.flags.strategy)
    )


def _log_reply(sup: AdminMixin, rec: ChildRecord) -> Callable[[bool, Any], None]:
    def reply(ok: bool, result: Any) -> None:
        if ok:
            sup._log.info("nested_reconfigured", child=rec.id, diff=result)
        else:
            sup._log.error("nested_reconfigure_failed", child=rec.id, error=result)

    return reply


_ = RUNNING
