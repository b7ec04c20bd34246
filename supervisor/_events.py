"""A supervisor's lifecycle events: each one logged, handed to ``on_event``, and a change of the tree
signalled to ``on_change``.

Events are plain dicts (they travel up the uplinks and out on the gateway's event stream), with ``kind``,
``path`` and ``time``; a child's events also carry ``supervisor``, ``id``/``child`` and ``pid``. The kinds
and their fields are listed in docs/supervisor.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from structlog.typing import FilteringBoundLogger

from openfang.supervisor._record import ChildRecord
from openfang.supervisor.restart import ExitReason

EventSink = Callable[[dict[str, Any]], None]
_TREE_CHANGES = ("child.started", "child.exited", "child.restarted")


class Events:
    """Where one supervisor's events go. ``on_event`` and ``on_change`` may be set at any time."""

    def __init__(self, path: str, log: FilteringBoundLogger, on_event: EventSink | None = None) -> None:
        self.path = path
        self._log = log
        self.on_event = on_event
        self.on_change: Callable[[], None] | None = None  # a nested supervisor pushes its subtree up

    def child(self, kind: str, rec: ChildRecord, **fields: Any) -> None:
        """An event about one child of this supervisor."""
        self.emit(
            {
                "kind": kind,
                "path": rec.path,
                "supervisor": self.path,
                "id": rec.id,
                "child": rec.id,
                "pid": rec.pid,
                **fields,
            }
        )

    def emit(self, event: dict[str, Any]) -> None:
        """Log ``event`` (stamped with ``time``) and hand it on."""
        event["time"] = time.time()
        fields = {k: v for k, v in event.items() if k not in ("kind", "time")}
        self._log.info(event["kind"].replace(".", "_"), **fields)
        if self.on_event is not None:
            self.on_event(event)
        if event["kind"] in _TREE_CHANGES:
            self.changed()

    def forward(self, event: dict[str, Any]) -> None:
        """An event a child sent up (from deeper in the tree): handed on unchanged."""
        if self.on_event is not None:
            self.on_event(event)

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def exit_fields(reason: ExitReason) -> dict[str, Any]:
    """Event fields of an exit: ``status`` as the wire has it (exit code, or minus the signal number),
    ``detail`` (hung, escalated, the signal's name) and the whole reason as ``exit``."""
    status = -reason.signal if reason.signal is not None else (reason.code or 0)
    return {"status": status, "detail": reason.detail, "exit": reason.to_dict()}
