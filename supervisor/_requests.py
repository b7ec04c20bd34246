"""Requests through the supervision tree: the router of one supervisor.

Three kinds of traffic meet here:

- a request for an operation (``start_child``, ``which_children``, ``reconfigure``, ...) on the supervisor
  at some ``path``: run here (as the supervisor's next operation, never in the middle of one) when the path
  is ours, else sent down the uplink of the nested supervisor on the way, which routes it further;
- a ``req`` a child sends up: answered by ``on_request`` (the daemon at the root; a nested supervisor's
  own parent above it);
- a ``rep`` a child sends back to a request we sent down.

:class:`Requests` is handed the supervisor's :class:`~openfang.supervisor._record.SupervisorState`
(to find the child on the way) and the operations it may run, as plain callables; it never reaches into
the supervisor. ``reply(ok, result)`` is called exactly once per request (on failure with
``{"code", "message"}``), even when the child that was asked dies first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from openfang.protocol.errors import NotFound, OpenFangError, SupervisorError
from openfang.supervisor._record import ChildRecord, Reply, SupervisorState
from openfang.supervisor.loop import Serial
from openfang.supervisor.spec import ChildSpec, SupervisorSpec, child_to_dict, spec_from_dict

# The operations a supervisor answers; each takes the request's args and returns the result (plain data).
Operation = Callable[[dict[str, Any]], Any]
OnRequest = Callable[[str, str, dict[str, Any], Reply], None]
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


class Administered(Protocol):
    """The operations of a supervisor that requests may run (see :func:`operations_of`)."""

    def start_child_request(self, args: dict[str, Any]) -> dict[str, Any]: ...
    def terminate_child(self, child_id: str) -> None: ...
    def restart_child(self, child_id: str) -> dict[str, Any]: ...
    def delete_child(self, child_id: str) -> None: ...
    def which_children(self) -> list[dict[str, Any]]: ...
    def count_children(self) -> dict[str, int]: ...
    def get_childspec(self, child_id: str) -> ChildSpec: ...
    def tree(self) -> list[dict[str, Any]]: ...
    def reconfigure(self, new_spec: SupervisorSpec) -> dict[str, list[str]]: ...


def operations_of(sup: Administered, where: str) -> dict[str, Operation]:
    """Each of :data:`OPS` as a call on ``sup`` taking the request's args and returning plain data."""

    def child_id(args: dict[str, Any]) -> str:
        return str(args.get("id", ""))

    def terminate(args: dict[str, Any]) -> dict[str, Any]:
        # ``pid`` (optional): stop only that incarnation. An elastic pool drains a worker and then stops it;
        # if the worker crashed and was restarted meanwhile, the new incarnation may host agents again.
        cid, pid = child_id(args), args.get("pid")
        if pid is not None:
            running = next((c["pid"] for c in sup.which_children() if c["id"] == cid), None)
            if running != pid:
                raise SupervisorError(
                    f"not terminated: child {cid!r} runs as pid {running} now, not {pid} (restarted since)"
                )
        sup.terminate_child(cid)
        return {}

    def delete(args: dict[str, Any]) -> dict[str, Any]:
        sup.delete_child(child_id(args))
        return {}

    return {
        "start_child": sup.start_child_request,
        "terminate_child": terminate,
        "restart_child": lambda args: sup.restart_child(child_id(args)),
        "delete_child": delete,
        "which_children": lambda args: {"children": sup.which_children()},
        "count_children": lambda args: sup.count_children(),
        "get_childspec": lambda args: child_to_dict(sup.get_childspec(child_id(args))),
        "tree": lambda args: sup.tree(),
        "reconfigure": lambda args: sup.reconfigure(spec_from_dict(args.get("spec") or {}, where=where)),
    }


class Requests:
    """Routes and answers requests for one supervisor (see the module docstring)."""

    def __init__(
        self,
        state: SupervisorState,
        *,
        operations: Mapping[str, Operation],
        serial: Serial,
        send: Callable[[ChildRecord, dict[str, Any]], bool],
        on_request: OnRequest | None,
        log: FilteringBoundLogger,
    ) -> None:
        self._state = state
        self._operations = dict(operations)
        self._serial = serial
        self._send = send
        self.on_request = on_request
        self._log = log
        self._seq = 0

    # -- downwards ----------

    def request(self, path: str, op: str, args: dict[str, Any], reply: Reply) -> None:
        """Run ``op`` on the supervisor at ``path`` (this one or a nested one below)."""
        here = self._state.path
        if path in ("", here):
            self._serial.run(lambda: self._run(op, args, reply))
            return
        if not path.startswith(here + "/"):
            reply(False, NotFound(f"not_found: no supervisor {path!r} under {here!r}").to_wire())
            return
        child_id = path[len(here) + 1 :].split("/", 1)[0]
        rec = self._state.children.get(child_id)
        if rec is None or not rec.is_supervisor:
            reply(False, NotFound(f"not_found: {here!r} has no supervisor child {child_id!r}").to_wire())
            return
        self.ask_child(rec, op, args, reply, path=path)

    def ask_child(
        self, rec: ChildRecord, op: str, args: dict[str, Any], reply: Reply, *, path: str | None = None
    ) -> None:
        """Send ``op`` down to the nested supervisor ``rec`` (``path``: the one further down to run it)."""
        if rec.link is None:
            reply(False, SupervisorError(f"child {rec.path!r} is not running").to_wire())
            return
        self._seq += 1
        req_id = f"{self._state.path}#{self._seq}"
        rec.pending[req_id] = reply  # failed by the watcher if the child exits before answering
        msg: dict[str, Any] = {"t": "req", "id": req_id, "op": op, "args": args}
        if path is not None:
            msg["path"] = path
        if not self._send(rec, msg):
            rec.pending.pop(req_id, None)
            reply(False, SupervisorError(f"cannot reach {rec.path!r}").to_wire())

    def answered(self, rec: ChildRecord, msg: dict[str, Any]) -> None:
        """A ``rep`` from ``rec`` to one of our requests."""
        reply = rec.pending.pop(str(msg.get("id")), None)
        if reply is not None:
            ok = bool(msg.get("ok"))
            reply(ok, msg.get("result") if ok else (msg.get("error") or {}))

    def _run(self, op: str, args: dict[str, Any], reply: Reply) -> None:
        operation = self._operations.get(op)
        if operation is None:
            known = ", ".join(OPS)
            reply(
                False,
                SupervisorError(
                    f"unknown supervisor operation {op!r} (known: {known})", code="unknown_type"
                ).to_wire(),
            )
            return
        try:
            result = operation(args)
        except OpenFangError as exc:
            reply(False, exc.to_wire())
        except Exception as exc:  # a bug must still answer, or the asker waits for its timeout
            self._log.exception("request_failed", op=op)
            reply(False, {"code": "internal", "message": f"{op} failed: {type(exc).__name__}: {exc}"})
        else:
            reply(True, result)

    # -- upwards ----------

    def from_child(self, rec: ChildRecord, msg: dict[str, Any]) -> None:
        """A ``req`` from a child: answered by ``on_request`` (the daemon, or our own parent)."""
        req_id = msg.get("id")
        link = rec.link

        def reply(ok: bool, result: Any) -> None:
            if rec.link is not link:
                return  # the child is gone (or is a new incarnation that never asked)
            out: dict[str, Any] = {"t": "rep", "id": req_id, "ok": ok}
            out["result" if ok else "error"] = result
            self._send(rec, out)

        op, args = str(msg.get("op", "")), msg.get("args")
        if self.on_request is None:
            here = self._state.path
            reply(False, SupervisorError(f"supervisor {here!r} answers no requests ({op!r})").to_wire())
            return
        try:
            self.on_request(rec.id, op, args if isinstance(args, dict) else {}, reply)
        except OpenFangError as exc:
            reply(False, exc.to_wire())
        except Exception as exc:
            self._log.exception("child_request_failed", child=rec.id, op=op)
            reply(False, {"code": "internal", "message": f"{op} failed: {type(exc).__name__}: {exc}"})


class Routable(Protocol):
    """What answers a request routed to it: a supervisor (:meth:`SupervisorCore.request`)."""

    def request(self, path: str, op: str, args: dict[str, Any], reply: Reply) -> None: ...


def answer_routed(
    sup: Routable, msg: Mapping[str, Any], own_path: str, send: Callable[[dict[str, Any]], None]
) -> None:
    """Answer a ``req`` its parent routed down to a nested supervisor (a process or inline) with exactly one
    ``rep`` through ``send``: the request runs on ``sup`` at the message's ``path`` (``own_path`` if none)."""
    req_id = msg.get("id")

    def reply(ok: bool, result: Any) -> None:
        out: dict[str, Any] = {"t": "rep", "id": req_id, "ok": ok}
        out["result" if ok else "error"] = result
        send(out)

    args = msg.get("args")
    sup.request(
        str(msg.get("path") or own_path),
        str(msg.get("op", "")),
        args if isinstance(args, dict) else {},
        reply,
    )
