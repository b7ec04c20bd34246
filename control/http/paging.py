"""Walking ``agent.list`` pages from the HTTP face (issue 9: one request never carries 100,000 agents).

``agent.list`` answers one page (agent id order, ``next`` = the following page's ``after``). The consumers
that need more than a page (the MCP tool list, A2A cards, ``/v1/models``, ``/metrics``, the dashboard's
filter) walk pages of :data:`PAGE` agents with :func:`walk_agents`, up to a bound, and merge them into one
body shaped like a single reply: ``agents``, ``errors`` (each distinct one once), ``workers`` (the first
page's per-worker figures), ``total`` (the last page's) and ``next`` (where the walk stopped; None when it
reached the end).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

PAGE = 5_000  # agents per request: ~2.5 MB replies, well under every frame limit
WALK_MAX = 100_000  # the most agents one walk reads (MCP, A2A, /v1/models, /metrics)

Request = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]


async def walk_agents(
    request: Request,
    *,
    most: int = WALK_MAX,
    page: int = PAGE,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Every agent (``keep``: only those it accepts) from the first pages, until ``most`` are kept or the
    last page. ``request(body)`` sends one ``agent.list`` and returns its reply body."""
    merged: dict[str, Any] = {"agents": [], "errors": [], "workers": [], "total": 0, "next": None}
    # Without keep, no page larger than what is kept; with it, full pages (most of a page may be skipped).
    body: dict[str, Any] = {"limit": max(1, page if keep is not None else min(page, most))}
    while True:
        reply = await request(body)
        rows = [a for a in reply.get("agents") or [] if isinstance(a, dict)]
        merged["agents"].extend(a for a in rows if keep is None or keep(a))
        merged["errors"].extend(e for e in reply.get("errors") or [] if e not in merged["errors"])
        merged["workers"] = merged["workers"] or list(reply.get("workers") or [])
        merged["total"] = reply.get("total", len(merged["agents"]))
        merged["next"] = reply.get("next")
        if not merged["next"] or len(merged["agents"]) >= most:
            del merged["agents"][most:]
            return merged
        body = {**body, "after": merged["next"]}
