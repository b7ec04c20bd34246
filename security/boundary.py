"""Layer 8, sandbox boundary: network and file access of agents, audited.

The mechanisms are :func:`openfang.security.netguard.check_url` (SSRF: private, loopback, link-local and
metadata addresses, every resolved address checked, the checked address pinned for the connection) and
:class:`openfang.security.fs_scope.ScopedFS` (a per-agent root reached without following symlinks, no
``..``, no absolute paths, size limits). :class:`BoundaryGuard` applies them with the cluster's
``[security.network]`` settings and turns every refusal into a
:class:`~openfang.security._errors.Denied` (layer ``boundary``) plus an audit record, so layer 8 reports
like every other layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from openfang.protocol.errors import SecurityError
from openfang.security._errors import Denied
from openfang.security.audit import AuditSink
from openfang.security.fs_scope import ScopedFS
from openfang.security.netguard import ResolvedTarget, Resolver, check_url

T = TypeVar("T")


class BoundaryGuard:
    """Audited network and file checks for the host functions that reach outside a sandbox."""

    def __init__(
        self,
        *,
        allow_hosts: tuple[str, ...] = (),
        allow_private: bool = False,
        resolver: Resolver | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.allow_hosts = allow_hosts
        self.allow_private = allow_private
        self._resolver = resolver
        self._audit = audit

    def check_url(self, agent_id: str, url: str) -> ResolvedTarget:
        """The target to connect to, or Denied (reason ``network``) audited as ``boundary.network_denied``."""
        try:
            return check_url(
                url, allow_hosts=self.allow_hosts, allow_private=self.allow_private, resolver=self._resolver
            )
        except SecurityError as exc:
            if self._audit is not None:
                self._audit.append(
                    "boundary.network_denied", agent_id=agent_id, url=url[:300], reason=exc.message
                )
            raise Denied(exc.message, layer="boundary", reason="network") from None

    def fs(self, root: str | os.PathLike[str], **limits: Any) -> ScopedFS:
        """A scoped file system for one agent's root directory."""
        return ScopedFS(root, **limits)

    def file_op(self, agent_id: str, op: str, call: Callable[[], T]) -> T:
        """Run one ScopedFS operation; a refusal becomes Denied (reason ``filesystem``), audited."""
        try:
            return call()
        except SecurityError as exc:
            if self._audit is not None:
                self._audit.append("boundary.fs_denied", agent_id=agent_id, op=op, reason=exc.message[:300])
            raise Denied(exc.message, layer="boundary", reason="filesystem") from None
