"""The gateway's topic subscriptions (control.topics): durable, per agent, bounded, names checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfang.control.topics import MAX_PER_AGENT, TopicStore, check_topic
from openfang.protocol.errors import OpenFangError, ProtocolError


def test_topic_store_subscriptions_survive_reopening(tmp_path: Path) -> None:
    """Subscribe twice is one subscription; they are read back after the store is closed and reopened."""
    store = TopicStore(tmp_path / "topics.db")
    assert store.subscribe("news", "a-1") is True
    assert store.subscribe("news", "a-1") is False
    store.subscribe("news", "b-1")
    store.subscribe("alerts", "a-1")
    store.close()
    again = TopicStore(tmp_path / "topics.db")
    assert again.subscribers("news") == ["a-1", "b-1"]
    assert again.topics_of("a-1") == ["alerts", "news"]
    assert again.unsubscribe("news", "a-1") is True and again.unsubscribe("news", "a-1") is False
    assert again.drop_agent("a-1") == 1 and again.topics_of("a-1") == []
    again.close()


def test_topic_store_refuses_bad_names_and_too_many_subscriptions(tmp_path: Path) -> None:
    """A bad topic name is a bad_request naming the rule; past the per-agent limit, limit_exceeded."""
    store = TopicStore(tmp_path / "topics.db")
    with pytest.raises(ProtocolError, match="letters, digits"):
        store.subscribe("no spaces", "a-1")
    with pytest.raises(ProtocolError):
        check_topic(None)
    for i in range(MAX_PER_AGENT):
        store.subscribe(f"t{i}", "a-1")
    with pytest.raises(OpenFangError) as err:
        store.subscribe("one-more", "a-1")
    assert err.value.code == "limit_exceeded"
    assert store.subscribe("one-more", "b-1") is True, "the limit is per agent"
    store.close()
