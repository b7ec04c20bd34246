"""walk_agents: the HTTP face's walk over agent.list pages (``after`` = each reply's ``next``), bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from openfang.control.http.paging import walk_agents

IDS = [f"a-{n:03d}" for n in range(23)]


class Pages:
    """agent.list over IDS as the gateway pages it (id order, exclusive cursor), recording each body."""

    def __init__(self, errors: list[str] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.errors = errors or []

    async def __call__(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.bodies.append(dict(body))
        rest = [i for i in IDS if body.get("after") is None or i > body["after"]]
        page = rest[: body["limit"]]
        more = len(rest) > len(page)
        return {
            "agents": [{"agent_id": i, "state": "running"} for i in page],
            "errors": list(self.errors),
            "workers": [{"worker": "workers-0"}],
            "next": page[-1] if more else None,
            "total": len(IDS),
        }


def test_walk_agents_reads_every_page_once_with_the_cursor() -> None:
    """Pages of 10 over 23 agents: 3 requests, after = the previous next, every id once, next None."""
    pages = Pages(errors=["workers-1: timeout"])
    out = asyncio.run(walk_agents(pages, page=10))
    assert [a["agent_id"] for a in out["agents"]] == IDS
    assert [b.get("after") for b in pages.bodies] == [None, "a-009", "a-019"]
    assert out["next"] is None and out["total"] == 23
    assert out["errors"] == ["workers-1: timeout"] and out["workers"] == [{"worker": "workers-0"}]


def test_walk_agents_stops_at_most_and_keeps_the_cursor() -> None:
    """most=12 with pages of 10: two requests, 12 agents, next names where the walk stopped."""
    pages = Pages()
    out = asyncio.run(walk_agents(pages, page=10, most=12))
    assert [a["agent_id"] for a in out["agents"]] == IDS[:12]
    assert len(pages.bodies) == 2 and out["next"] == "a-019"


def test_walk_agents_keep_filters_until_enough_match() -> None:
    """keep= selects agents; the walk goes on until `most` are kept (or the last page)."""
    pages = Pages()
    out = asyncio.run(walk_agents(pages, page=5, most=3, keep=lambda a: a["agent_id"].endswith("7")))
    assert [a["agent_id"] for a in out["agents"]] == ["a-007", "a-017"]
    assert len(pages.bodies) == 5 and out["next"] is None
