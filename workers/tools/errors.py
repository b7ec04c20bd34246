"""The error every tool raises to explain itself; its own module so the tools and the registry share it
without importing each other (the kv store raised it from ``core``, which names the store's type)."""

from __future__ import annotations

from openfang.protocol.errors import OpenFangError


class ToolError(OpenFangError):
    """A tool failed in a way it can explain; ``code`` defaults to ``tool_error``."""

    code = "tool_error"
