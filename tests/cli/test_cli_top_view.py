"""The Textual view of ``openfang top``, headless (Textual's pilot), with no daemon behind it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

if os.environ.get("CI") is None:  # under CI, `make install` has the 'tui' extra: a missing one must fail
    pytest.importorskip("textual", reason="the 'tui' extra (Textual) is not installed")

from textual.widgets import DataTable, Input, Static

from openfang.cli.top_data import AgentRow, Snapshot
from openfang.cli.top_feed import Feed
from openfang.cli.top_view import SnapshotReady, TopApp


def _text(app: TopApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def test_view_without_a_daemon_says_so_and_keys_do_not_crash(tmp_path: Path) -> None:
    """No daemon: the header says 'no daemon at', s/K answer 'no agent selected', a bad filter is named."""
    endpoint = f"ipc://{tmp_path}/control.sock"

    async def scenario() -> None:
        app = TopApp(Feed(endpoint, timeout=1.0), interval=0.2)
        async with app.run_test(size=(160, 50)) as pilot:
            for _ in range(100):
                if "no daemon at" in _text(app, "#summary"):
                    break
                await pilot.pause(0.05)
            assert _text(app, "#summary") == f"no daemon at {endpoint} (retrying)"
            await pilot.press("s")
            assert _text(app, "#status").endswith("suspend: no agent selected")
            await pilot.press("K")
            assert _text(app, "#status").endswith("kill: no agent selected")
            await pilot.press("slash")
            await pilot.pause(0.1)
            assert app.focused is app.query_one("#filter", Input)
            await pilot.press(*"colour:red")
            assert "unknown field 'colour'" in _text(app, "#status")
            assert "filter: colour:red" in _text(app, "#agents-title")
            await pilot.press("escape")
            assert _text(app, "#agents-title") == "agents  0 of 0"
            await pilot.press("q")
        assert not app.monitor._thread.is_alive(), "quitting stops the feed thread"

    asyncio.run(scenario())


def _agents(*specs: tuple[str, str, int]) -> Snapshot:
    return Snapshot(
        taken_at=1.0,
        agents=tuple(
            AgentRow(agent_id=aid, name=aid, worker="workers-0", state=state, messages=msgs)
            for aid, state, msgs in specs
        ),
    )


def _table(app: TopApp) -> list[list[str]]:
    table = app.query_one("#agents", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def test_view_redraws_changed_agents_in_place_and_keeps_the_selection(tmp_path: Path) -> None:
    """Samples that change, add, remove and replace agents leave the table exactly as the last sample,
    sorted by id, with the cursor on the agent it was on (or at the same place when that one is gone)."""
    endpoint = f"ipc://{tmp_path}/control.sock"

    async def scenario() -> None:
        app = TopApp(Feed(endpoint, timeout=1.0), interval=60)
        async with app.run_test(size=(160, 50)) as pilot:
            samples = [
                _agents(("a", "running", 1), ("b", "running", 2), ("c", "running", 3)),
                _agents(("a", "running", 1), ("b", "suspended", 2), ("c", "running", 9)),
                # c goes, aa and d come: aa must be sorted in between, not appended
                _agents(
                    ("a", "running", 1), ("aa", "running", 0), ("b", "suspended", 2), ("d", "running", 5)
                ),
                _agents(("x", "running", 0), ("y", "running", 0), ("z", "running", 0)),
            ]
            expected_cursor = ["a", "b", "b", "z"]  # b (third) gone: the third row
            for i, snap in enumerate(samples):
                app.post_message(SnapshotReady(snap))
                await pilot.pause()
                rows = _table(app)
                assert [r[0] for r in rows] == [a.agent_id for a in snap.agents], i
                assert [(r[1], r[4]) for r in rows] == [(a.state, str(a.messages)) for a in snap.agents], i
                selected = app._selected()
                assert selected is not None and selected.agent_id == expected_cursor[i], (i, selected)
                state_column = app.query_one("#agents", DataTable).ordered_columns[1]
                assert state_column.content_width >= max(len(a.state) for a in snap.agents), "no clipping"
                if i == 0:
                    await pilot.press("j")  # select b; it must stay selected while rows come and go
            await pilot.press("q")

    asyncio.run(scenario())
