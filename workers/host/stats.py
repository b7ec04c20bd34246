"""One worker's monitoring figures: message latency, LLM calls per provider and model, tool calls per tool,
hibernations, wakes and agent restarts. Answered with every ``agent.list`` (``workers``: WorkerStats).

Measured where they happen: the worker's loop times each ``agent.send`` (``HostStats.message_done``),
the LLM job reports each answer and failure (:meth:`llm_answer`, :meth:`llm_failed`, on pool threads),
the tool job each call (:meth:`tool_called`), the host its hibernations, wakes and restarts.

Label sets stay bounded: tools are named only when the worker's registry knows them (others add up under
``unknown``); at most :data:`MAX_LLM_PAIRS` provider/model pairs are kept (later ones under ``other``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openfang.protocol.errors import OpenFangError
from openfang.protocol.stats import OTHER, Counts, Histogram

MAX_LLM_PAIRS = 64
MAX_TOOLS = 1024
UNKNOWN_TOOL = "unknown"
# LLMError.cause -> error kind (http_status is split by status class).
_KINDS = {
    "timeout": "timeout",
    "connection": "connection",
    "malformed": "bad_response",
    "refused": "bad_response",
    "config": "config",
}


def llm_error_kind(error: OpenFangError) -> str:
    """The bounded kind of an LLM failure: http_4xx, http_5xx, http_other, timeout, connection,
    bad_response (malformed or an error object in a 2xx), config or error."""
    if error.code == "timeout":
        return "timeout"
    cause = str(getattr(error, "cause", "") or "")
    status = getattr(error, "status", None)
    if cause == "http_status" or isinstance(status, int):
        if isinstance(status, int) and 400 <= status < 600:
            return f"http_{status // 100}xx"
        return "http_other"
    return _KINDS.get(cause, "error")


@dataclass(slots=True)
class _LLM:
    """One (provider, model) pair's figures: requests, tokens, errors by kind, latency."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: Counts = field(default_factory=lambda: Counts(16))
    seconds: Histogram = field(default_factory=Histogram)


def count_answer_totals(totals: dict[str, Any], prompt: int, completion: int, cost: float | None) -> None:
    """Count one model answer into an agent's running totals (``llm_usage``: llm_calls, prompt_tokens,
    completion_tokens, and cost_usd when priced). The caller holds the lock that guards ``totals``."""
    totals["llm_calls"] = totals.get("llm_calls", 0) + 1
    totals["prompt_tokens"] = totals.get("prompt_tokens", 0) + prompt
    totals["completion_tokens"] = totals.get("completion_tokens", 0) + completion
    if cost is not None:
        totals["cost_usd"] = round(totals.get("cost_usd", 0) + cost, 8)


class HostStats:
    """The figures of one worker; every method is safe from any thread."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.messages = Histogram()
        # One agent.send answered, its seconds from arrival to reply (the worker's loop, each message): the
        # histogram's own observe, bound here, so the loop pays no HostStats frame around it.
        self.message_done: Callable[[float], None] = self.messages.observe
        self.wake_seconds = Histogram()
        self.hibernations = Counts(8)
        self.wakes = Counts(8)
        self.restarts = Counts(16)
        self._lock = threading.Lock()
        self._llm: dict[tuple[str, str], _LLM] = {}
        self._tools: dict[str, list[int]] = {}  # tool -> [calls, errors, denials]

    # -- LLM ---------------------------------------------------------------------------------------------
    def _pair(self, provider: str, model: str) -> _LLM:
        key = (provider[:128] or "?", model[:256])
        with self._lock:
            entry = self._llm.get(key)
            if entry is None:
                if len(self._llm) >= MAX_LLM_PAIRS:
                    key = (OTHER, OTHER)
                # The entry's histogram is guarded by this lock (not its own): llm_answer counts an answer's
                # figures, latency included, in one hold of it.
                entry = self._llm.setdefault(key, _LLM(seconds=Histogram(lock=self._lock)))
            return entry

    def llm_entry(self, provider: str, model: str) -> _LLM:
        """The figures ``provider``/``model`` count into (``other`` past MAX_LLM_PAIRS): an entry, once
        made, stays the pair's for the life of the stats, so a caller may keep it (the usage recorder of
        an agent keeps the last one) and count into it with :meth:`llm_answer`."""
        # A known pair's entry is read without the lock (entries are only ever added; a dict read is
        # atomic): one hold of the lock per answer, not two. A new pair takes _pair's way.
        return self._llm.get((provider[:128] or "?", model[:256])) or self._pair(provider, model)

    def llm_answer(
        self,
        entry: _LLM,
        prompt: int,
        completion: int,
        seconds: float,
        totals: dict[str, Any],
        cost: float | None,
    ) -> None:
        """One answer of the pair whose :meth:`llm_entry` is ``entry`` (its requests, tokens and latency)
        and the answering agent's running totals (``totals``: llm_calls, prompt_tokens, completion_tokens
        and cost_usd when priced, as the usage recorder keeps them), all in one hold of the lock: the usage
        recorder's one lock an answer. ``totals`` must be counted into
        only here (its read-modify-writes are safe against each other, not against other writers)."""
        histogram = entry.seconds
        index = bisect_left(histogram.bounds, seconds)
        with self._lock:  # the entry's histogram's lock too (_pair)
            entry.requests += 1
            if prompt > 0:
                entry.prompt_tokens += prompt
            if completion > 0:
                entry.completion_tokens += completion
            histogram.per_bucket[index] += 1
            histogram.total += seconds
            count_answer_totals(totals, prompt, completion, cost)

    def llm_failed(self, provider: str, model: str, kind: str, seconds: float | None = None) -> None:
        entry = self._pair(provider, model)
        with self._lock:
            entry.requests += 1
        entry.errors.add(kind)
        if seconds is not None:
            entry.seconds.observe(seconds)

    def llm_error(
        self, error: OpenFangError, seconds: float, *, provider: str = "?", model: str = ""
    ) -> None:
        """A call that raised: each failed attempt of a fallback chain counts for its own provider; an
        error that names no provider (a bare Timeout) counts for ``provider``/``model``."""
        attempts = tuple(getattr(error, "attempts", ()) or ())
        if attempts:
            for attempt in attempts:
                self.llm_failed(str(attempt.provider), str(attempt.model or ""), llm_error_kind(attempt))
            return
        named = str(getattr(error, "provider", "") or provider)
        model = str(getattr(error, "model", "") or model)
        self.llm_failed(named, model, llm_error_kind(error), seconds)

    # -- tools -------------------------------------------------------------------------------------------
    def tool_called(self, tool: str, outcome: str, *, known: bool = True) -> None:
        """One tool call: ``outcome`` is ok, error or denied; ``known`` whether the registry has the tool."""
        name = tool if known else UNKNOWN_TOOL
        with self._lock:
            row = self._tools.get(name)
            if row is None:
                if len(self._tools) >= MAX_TOOLS:
                    name = UNKNOWN_TOOL
                row = self._tools.setdefault(name, [0, 0, 0])
            row[0] += 1
            if outcome == "error":
                row[1] += 1
            elif outcome == "denied":
                row[2] += 1

    # -- the wire ----------------------------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        """The WorkerStats body."""
        with self._lock:
            llm = list(self._llm.items())
            tools = sorted((name, list(row)) for name, row in self._tools.items())
        return {
            "worker": self.worker_id,
            "messages": self.messages.to_wire(),
            "llm": [
                {
                    "provider": provider,
                    "model": model,
                    "requests": e.requests,
                    "errors": e.errors.to_wire(),
                    "prompt_tokens": e.prompt_tokens,
                    "completion_tokens": e.completion_tokens,
                    "seconds": e.seconds.to_wire(),
                }
                for (provider, model), e in sorted(llm)
            ],
            "tools": [
                {"tool": name, "calls": row[0], "errors": row[1], "denials": row[2]} for name, row in tools
            ],
            "hibernations": self.hibernations.to_wire(),
            "wakes": self.wakes.to_wire(),
            "wake_seconds": self.wake_seconds.to_wire(),
            "restarts": self.restarts.to_wire(),
        }
