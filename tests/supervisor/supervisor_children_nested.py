"""A start module named only below a nested supervisor (tests that the top one imports it before forking)."""

from __future__ import annotations

from supervisor_children import serve

__all__ = ["serve"]
