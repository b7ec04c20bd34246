"""The one error every security layer raises when it refuses something.

:class:`Denied` is a :class:`~openfang.protocol.errors.SecurityError` (wire code ``denied``) that also names
the *layer* that refused and a short machine-readable *reason*, so a client, a log line and an audit record
all say the same thing. Messages never contain the secret or the payload that caused the refusal.
"""

from __future__ import annotations

from typing import Any

from openfang.protocol.errors import SecurityError


class Denied(SecurityError):
    """A security layer refused a request. ``layer`` and ``reason`` are stable snake_case names."""

    def __init__(self, message: str, *, layer: str, reason: str) -> None:
        super().__init__(message)
        self.layer = layer
        self.reason = reason

    def to_wire(self) -> dict[str, Any]:
        """Error reply data: code ``denied`` plus the layer and reason (never the offending value)."""
        wire = super().to_wire()
        wire["layer"] = self.layer
        wire["reason"] = self.reason
        return wire
