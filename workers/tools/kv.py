"""The per-agent key-value store behind ``kv_get``/``kv_set``: in memory in the worker, with size limits.

One :class:`KVStore` per worker holds a namespace per agent; an agent's :class:`ToolContext` gets only
``store.namespace(agent_id)``, so no tool call can name another agent's keys. Values are JSON values,
counted by the size of their JSON text; a write that would pass a limit is refused and changes nothing.
The store is thread-safe (tool calls may run on the agent host's threads). It is not persistent: an agent
that needs durable facts uses ``memory_store``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from openfang.workers.tools.errors import ToolError

FULL = "limit_exceeded"


@dataclass(frozen=True, slots=True, kw_only=True)
class KVLimits:
    """Size limits per agent namespace."""

    max_key_chars: int = 256
    max_value_bytes: int = 64 * 1024
    max_keys: int = 1024
    max_total_bytes: int = 1024 * 1024


class KVStore:
    """Every agent's namespace of one worker."""

    def __init__(self, limits: KVLimits | None = None) -> None:
        self.limits = limits or KVLimits()
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, tuple[Any, int]]] = {}
        self._used: dict[str, int] = {}

    def namespace(self, agent_id: str) -> KVNamespace:
        """The handle of ``agent_id``'s namespace (created empty on first write)."""
        return KVNamespace(self, agent_id)

    def drop(self, agent_id: str) -> None:
        """Forget an agent's namespace (when the agent is stopped for good)."""
        with self._lock:
            self._data.pop(agent_id, None)
            self._used.pop(agent_id, None)

    def export(self, agent_id: str) -> dict[str, Any]:
        """A copy of ``agent_id``'s namespace as plain JSON values (what a snapshot carries)."""
        with self._lock:
            return {k: json.loads(json.dumps(v)) for k, (v, _) in self._data.get(agent_id, {}).items()}

    def load(self, agent_id: str, values: Any) -> None:
        """Replace ``agent_id``'s namespace with ``values`` (from a snapshot), every write under the limits.

        All or nothing: a value past a limit, a bad key or something that is not a map raises ToolError and
        leaves the namespace as it was.
        """
        if not isinstance(values, dict):
            raise ToolError(f"kv namespace must be a map, got {type(values).__name__}", code="bad_args")
        staging = KVStore(self.limits)
        for key, value in values.items():
            staging._set(agent_id, key, value)
        with self._lock, staging._lock:
            self._data[agent_id] = staging._data.get(agent_id, {})
            self._used[agent_id] = staging._used.get(agent_id, 0)

    def usage(self, agent_id: str) -> tuple[int, int]:
        """(keys, bytes) used by ``agent_id``."""
        with self._lock:
            return len(self._data.get(agent_id, {})), self._used.get(agent_id, 0)

    def _get(self, ns: str, key: str) -> tuple[bool, Any]:
        with self._lock:
            hit = self._data.get(ns, {}).get(key)
        return (False, None) if hit is None else (True, hit[0])

    def _set(self, ns: str, key: str, value: Any) -> None:
        lim = self.limits
        if not isinstance(key, str) or not key:
            raise ToolError("kv key must be a non-empty string", code="bad_args")
        if len(key) > lim.max_key_chars:
            raise ToolError(
                f"kv key is {len(key)} characters, the limit is {lim.max_key_chars}", code="bad_args"
            )
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ToolError(f"kv value is not a JSON value: {exc}", code="bad_args") from None
        # Copy through JSON so later changes to the caller's object cannot reach the store.
        value = json.loads(text)
        vsize = len(text.encode())
        if vsize > lim.max_value_bytes:
            raise ToolError(f"kv value is {vsize} bytes, the limit is {lim.max_value_bytes}", code=FULL)
        size = vsize + len(key.encode())
        with self._lock:
            space = self._data.setdefault(ns, {})
            old = space.get(key)
            used = self._used.get(ns, 0) - (old[1] if old else 0) + size
            if old is None and len(space) >= lim.max_keys:
                raise ToolError(f"kv namespace is full: {lim.max_keys} keys", code=FULL)
            if used > lim.max_total_bytes:
                raise ToolError(
                    f"kv namespace would hold {used} bytes, the limit is {lim.max_total_bytes}", code=FULL
                )
            space[key] = (value, size)
            self._used[ns] = used

    def _delete(self, ns: str, key: str) -> bool:
        with self._lock:
            old = self._data.get(ns, {}).pop(key, None)
            if old is None:
                return False
            self._used[ns] -= old[1]
            return True

    def _keys(self, ns: str, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._data.get(ns, {}) if k.startswith(prefix))


class KVNamespace:
    """One agent's view of the store: get, set, delete, keys. Cannot reach another namespace."""

    __slots__ = ("_ns", "_store")

    def __init__(self, store: KVStore, agent_id: str) -> None:
        self._store = store
        self._ns = agent_id

    def __repr__(self) -> str:
        return f"KVNamespace({self._ns!r})"

    def get(self, key: str) -> tuple[bool, Any]:
        """(found, value)."""
        return self._store._get(self._ns, key)

    def set(self, key: str, value: Any) -> None:
        """Store a JSON value (Busy when a limit would be passed; nothing changes then)."""
        self._store._set(self._ns, key, value)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        return self._store._delete(self._ns, key)

    def keys(self, prefix: str = "") -> list[str]:
        """This namespace's keys starting with ``prefix``, sorted."""
        return self._store._keys(self._ns, prefix)
