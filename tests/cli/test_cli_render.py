"""The CLI's plain renderings of replies."""

from __future__ import annotations

from openfang.cli import render


def test_kv_aligns_keys_and_leaves_out_fields_without_a_value() -> None:
    """An agent.spawn reply: sorted, aligned lines; the nil service is not shown as 'None'."""
    body = {"worker": "workers-0", "agent_id": "greeter-1", "service": None, "spawn": "warm"}
    assert render.kv(body) == "agent_id  greeter-1\nspawn     warm\nworker    workers-0"


def test_kv_of_a_value_that_is_not_a_map_is_its_text() -> None:
    """A bare value (a pong's text, say) prints as it is."""
    assert render.kv("pong") == "pong"


def test_render_status_shows_each_elastic_pool_running_of_max() -> None:
    """An elastic pool's line says how many members run of its maximum, its minimum, and a change underway."""
    from openfang.cli import render

    body = {
        "name": "n",
        "state": "running",
        "ready": True,
        "workers": 1,
        "workers_expected": 1,
        "pools": {"root/workers": {"running": 1, "max": 2, "min_running": 1, "starting": "workers-1"}},
    }
    out = render.status(body)
    assert "pools     root/workers 1 running of 2, min 1 (starting one)" in out.splitlines()
