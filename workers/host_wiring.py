"""Builds a worker's :class:`AgentHost` with the real services: LLM providers, tools, events, audit.

Kept apart from ``worker.py`` so the process loop does not need to know how an agent's world is assembled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from openfang.workers.agent_host import AgentHost
from openfang.workers.llm import make_provider
from openfang.workers.manifest import ModelConfig
from openfang.workers.tools import default_registry

EventSink = Callable[[dict[str, Any]], None]


def _provider_for(model: ModelConfig) -> Any:
    return make_provider(model.raw or {"provider": model.provider})


def build_host(worker_id: str, args: Mapping[str, Any], *, events: EventSink, audit: EventSink) -> AgentHost:
    """The agent host of one worker process (``args`` are the worker's child args)."""
    return AgentHost(
        worker_id,
        llm_factory=_provider_for,
        tools=default_registry(),
        events=events,
        audit=audit,
        max_threads=int(args.get("io_threads", 4)),
    )
