"""One object per distinct pattern set held by many agents.

A worker keeps a permission set and a sandbox grant per agent, and agents of one manifest hold equal
pattern sets: keeping one frozenset of each (instead of one per agent, ~0.2-0.7 KiB each) is most of what
those records cost. Only frozensets go through here (never changed once made), so sharing cannot leak one
agent's state into another's. The table is bounded: past ``MAX_KEPT`` distinct sets it starts over, which
loses only sharing, never a value.
"""

from __future__ import annotations

MAX_KEPT = 4096
_KEPT: dict[frozenset[str], frozenset[str]] = {}


def shared(value: frozenset[str]) -> frozenset[str]:
    """``value``, or an equal frozenset met before."""
    kept = _KEPT.get(value)
    if kept is None:
        if len(_KEPT) >= MAX_KEPT:
            _KEPT.clear()
        kept = _KEPT.setdefault(value, value)
    return kept
