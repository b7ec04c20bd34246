"""The coordination tools' own checks (schedule_*, agent_broadcast, topic_*), before any host callback."""

from __future__ import annotations

from typing import Any

from openfang.workers.tools.registry import ToolContext, default_registry

REG = default_registry()


def _ctx(**callbacks: Any) -> ToolContext:
    return ToolContext(
        agent_id="a-1", allowed=frozenset({"agent.schedule", "agent.send", "agent.topic"}), **callbacks
    )


def test_coordination_tools_hand_their_arguments_to_the_host_with_the_operation() -> None:
    """schedule_* and topic_* pass the caller and the validated args plus "op"; broadcast: the args as is."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def host(agent_id: str, args: dict[str, Any]) -> Any:
        seen.append((agent_id, args))
        return {"ok": True}

    ctx = _ctx(schedule=host, topic=host, broadcast=host)
    assert REG.invoke(ctx, "schedule_add", {"text": "hi", "in": "10m"}).ok
    assert REG.invoke(ctx, "schedule_remove", {"id": "sch-0123456789ab"}).ok
    assert REG.invoke(ctx, "topic_publish", {"topic": "news", "message": {"k": 1}}).ok
    assert REG.invoke(ctx, "agent_broadcast", {"to": ["b-1"], "message": "x"}).ok
    assert seen[0] == ("a-1", {"text": "hi", "in": "10m", "tz": "UTC", "misfire": "once", "op": "add"})
    assert seen[1][1] == {"id": "sch-0123456789ab", "op": "remove"}
    assert seen[2][1] == {"topic": "news", "message": {"k": 1}, "op": "publish"}
    assert seen[3][1] == {"to": ["b-1"], "message": "x"}


def test_coordination_tools_refuse_bad_input_without_calling_the_host() -> None:
    """Two times, a bad schedule id, a bad topic, too many broadcast targets: bad_args naming the problem."""
    calls: list[Any] = []
    ctx = _ctx(schedule=lambda a, b: calls.append(b), topic=lambda a, b: calls.append(b))
    two = REG.invoke(ctx, "schedule_add", {"text": "x", "in": "1m", "cron": "* * * * *"})
    assert two.code == "bad_args" and "exactly one of at" in str(two.error)
    none = REG.invoke(ctx, "schedule_add", {"text": "x"})
    assert none.code == "bad_args"
    assert REG.invoke(ctx, "schedule_remove", {"id": "../x"}).code == "bad_args"
    assert REG.invoke(ctx, "topic_subscribe", {"topic": "a b"}).code == "bad_args"
    many = REG.invoke(ctx, "agent_broadcast", {"to": [f"a-{i}" for i in range(33)], "message": "x"})
    assert many.code == "bad_args" and calls == []


def test_coordination_tools_denied_without_permission_and_unavailable_without_host() -> None:
    """Not in the allow list: denied; allowed but the host gave no callback: unavailable."""
    bare = ToolContext(agent_id="a-1", allowed=frozenset({"time"}))
    for name, args in (
        ("schedule_list", {}),
        ("topic_subscribe", {"topic": "news"}),
        ("agent_broadcast", {"to": ["b-1"], "message": "x"}),
    ):
        assert REG.invoke(bare, name, args).code == "denied"
        assert REG.invoke(_ctx(), name, args).code == "unavailable"
