"""Named topics between agents: who subscribed to what, kept in ``<data_dir>/topics.db``.

The gateway owns this store (one thread, its own SQLite connection). A subscription names an agent id, and
agent ids are durable (the registry), so subscriptions survive an agent's restart or move to another
worker, a worker's death, the gateway's restart and a daemon restart; they end with ``topic_unsubscribe``
or when the agent is found dead (pruned at the next publish on that topic). Publishing is not done here:
the gateway answers the publisher's worker with the live subscribers, and that worker sends each one the
message through the normal ``agent.send`` path, under the publisher's ``send`` grant.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from openfang.protocol.coordination import TOPIC_PATTERN, TOPIC_RULE
from openfang.protocol.errors import OpenFangError, ProtocolError

TOPIC = re.compile(TOPIC_PATTERN)  # the topic.* bodies' rule (protocol.coordination), matched whole
MAX_PER_AGENT = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (topic, agent_id)
);
CREATE INDEX IF NOT EXISTS subscriptions_agent ON subscriptions(agent_id);
"""


def check_topic(topic: object) -> str:
    """``topic`` if it is a valid name, else ProtocolError naming the rule."""
    if not isinstance(topic, str) or not TOPIC.fullmatch(topic):
        raise ProtocolError(f"topic {str(topic)[:140]!r}: 1 to 128 of {TOPIC_RULE}")
    return topic


class TopicStore:
    """Subscriptions of one data dir (one connection, one thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.path.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    def subscribe(self, topic: str, agent_id: str, now: float | None = None) -> bool:
        """Subscribe (True) or find it already subscribed (False); limit_exceeded past MAX_PER_AGENT."""
        check_topic(topic)
        held = self.topics_of(agent_id)
        if topic in held:
            return False
        if len(held) >= MAX_PER_AGENT:
            raise OpenFangError(
                f"agent {agent_id!r} already holds {MAX_PER_AGENT} subscriptions (the limit)",
                code="limit_exceeded",
            )
        self._db.execute(
            "INSERT INTO subscriptions VALUES (?, ?, ?)",
            (topic, agent_id, time.time() if now is None else now),
        )
        return True

    def unsubscribe(self, topic: str, agent_id: str) -> bool:
        """Whether there was such a subscription."""
        cur = self._db.execute(
            "DELETE FROM subscriptions WHERE topic = ? AND agent_id = ?", (topic, agent_id)
        )
        return cur.rowcount > 0

    def subscribers(self, topic: str) -> list[str]:
        rows = self._db.execute(
            "SELECT agent_id FROM subscriptions WHERE topic = ? ORDER BY created_at", (topic,)
        )
        return [r[0] for r in rows]

    def topics_of(self, agent_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT topic FROM subscriptions WHERE agent_id = ? ORDER BY topic", (agent_id,)
        )
        return [r[0] for r in rows]

    def drop_agent(self, agent_id: str) -> int:
        """Remove every subscription of a dead agent; how many."""
        return int(self._db.execute("DELETE FROM subscriptions WHERE agent_id = ?", (agent_id,)).rowcount)
