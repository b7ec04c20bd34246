"""The dynamic supervisor: OTP's simple_one_for_one, a pool of children made from one template.

OTP writes it as ``?is_simple`` special cases inside the static supervisor; here it is its own class.
What makes it different:

- no children at start; ``start_child(extra_args)`` makes one from the template, its args merged over the
  template's, with the id ``<template id>-<n>``;
- a child that stops for good (terminated, not restarted, ignored its start or its restart) is forgotten,
  never kept as a stopped spec, so ``restart_child`` and ``delete_child`` are errors;
- a restart is one_for_one: the siblings are never touched;
- shutdown stops every child at once with one shared timer (OTP: children of a dynamic supervisor are
  terminated asynchronously), not one after the other;
- a reload takes the new flags and template (for children started from then on) and leaves the running
  children as they are; the strategy cannot change to or from simple_one_for_one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from openfang.protocol.errors import ConfigError, Problem, SupervisorError
from openfang.supervisor import _proc
from openfang.supervisor._core import SupervisorCore
from openfang.supervisor._record import STOPPING, ChildRecord
from openfang.supervisor.spec import ChildSpec, Strategy, SupervisorSpec, check_spec


class DynamicSupervisor(SupervisorCore):
    """A simple_one_for_one supervisor (see the module docstring)."""

    def _check_strategy(self, spec: SupervisorSpec, path: str) -> None:
        if spec.flags.strategy != Strategy.SIMPLE_ONE_FOR_ONE:
            raise ConfigError(
                [
                    Problem(
                        f"{path} key 'strategy'", "a DynamicSupervisor is simple_one_for_one (supervisor_for)"
                    )
                ]
            )

    @property
    def template(self) -> ChildSpec:
        return self.record.spec.children[0]

    def _start_children(self) -> None:
        # Children come only from start_child; the template's module is warm for them from now on.
        _proc.preimport_tree(self.record.spec)

    def _stop_children(self, recs: list[ChildRecord]) -> None:
        alive = [r for r in recs if r.pid is not None]
        for rec in alive:
            rec.state = STOPPING
        self._watcher.stop_together(alive)

    def _forgotten_when_stopped(self, rec: ChildRecord) -> bool:
        return True

    def start_child(self, spec_or_extra_args: ChildSpec | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start one more child from the template, ``extra args`` merged over its args. Returns
        ``{"id", "pid"}`` (pid None when the child answered ``ignore``; it is then forgotten)."""
        self.record.check_running()
        extra = spec_or_extra_args if isinstance(spec_or_extra_args, Mapping) else {}
        with self._serial:
            self.record.made += 1
            template = self.template
            spec = dataclasses.replace(
                template, id=f"{template.id}-{self.record.made}", args={**template.args, **extra}
            )
            return self._start_or_forget(self.record.add(spec, dynamic=True))

    def start_child_request(self, args: dict[str, Any]) -> dict[str, Any]:
        extra = args.get("args", {})
        return self.start_child(extra if isinstance(extra, Mapping) else {})

    def restart_child(self, child_id: str) -> dict[str, Any]:
        self.record.check_running()
        raise self._unsupported("restart_child")

    def delete_child(self, child_id: str) -> None:
        raise self._unsupported("delete_child")

    def _unsupported(self, op: str) -> SupervisorError:
        return SupervisorError(f"simple_one_for_one: {op} is not supported by supervisor {self.path!r}")

    def reconfigure(self, new_spec: SupervisorSpec) -> dict[str, list[str]]:
        """New flags and template for the pool; the children already running are left as they are."""
        problems = check_spec(new_spec, self.path)
        if problems:
            raise ConfigError(problems)
        self.record.check_running()
        if new_spec.flags.strategy != Strategy.SIMPLE_ONE_FOR_ONE:
            raise ConfigError(
                [
                    Problem(
                        f"{self.path} key 'strategy'", "cannot change to or from simple_one_for_one on reload"
                    )
                ]
            )
        with self._serial:
            self.record.spec = new_spec
            self.record.window.reset(new_spec.flags.intensity, new_spec.flags.period)
        diff: dict[str, list[str]] = {
            key: [] for key in ("started", "stopped", "replaced", "unchanged", "reconfigured", "failed")
        }
        diff["unchanged"] = list(self.record.order)
        return diff
