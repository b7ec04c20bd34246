"""The Textual view of ``openfang top``, headless (Textual's pilot), with no daemon behind it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("textual", reason="the 'tui' extra (Textual) is not installed")

from textual.widgets import Input, Static

from openfang.cli.top_feed import Feed
from openfang.cli.top_view import TopApp


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
