"""The bodies of an agent's coordination requests: ``schedule.*`` and ``topic.*``.

An agent's ``schedule_*`` and ``topic_*`` tools become these requests; its worker forwards them inside
``worker.forward`` (as ``request.type`` and ``request.body``), and the gateway answers them itself from its
schedule and topic stores (``control.schedules``, ``control.topics``). They are internal messages of the
catalogue (:data:`openfang.protocol.messages.INTERNAL`): never accepted from clients.

The limits live here, once: the gateway's stores read them from this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from openfang.protocol._schema import Len, Match, Range

__all__ = [
    "MAX_SCHEDULE_TEXT",
    "MISFIRE_POLICIES",
    "TOPIC_PATTERN",
    "TOPIC_RULE",
    "ScheduleAdd",
    "ScheduleListOk",
    "ScheduleRecord",
    "ScheduleRemove",
    "ScheduleRemoveOk",
    "TopicRef",
    "TopicSubscribeOk",
    "TopicSubscribersOk",
    "TopicUnsubscribeOk",
]

MAX_SCHEDULE_TEXT = 100_000
MISFIRE_POLICIES = ("once", "skip", "all")
TOPIC_PATTERN = r"[A-Za-z0-9_.:/-]{1,128}"
TOPIC_RULE = "letters, digits and _ . : / -"

AgentId = Annotated[str, Len(128, 1)]
ScheduleId = Annotated[str, Len(64, 1)]
Topic = Annotated[str, Len(128, 1), Match(TOPIC_PATTERN, TOPIC_RULE)]
Misfire = Literal["once", "skip", "all"]


# -- schedule.* --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleAdd:
    """Send ``text`` to ``target`` once (``at``) or by ``cron``: exactly one of them; made by the sender."""

    target: AgentId  # the agent to message (the sender itself, or one its send grant allows)
    text: Annotated[str, Len(MAX_SCHEDULE_TEXT, 1)]
    at: Annotated[str, Len(64, 1)] | None = None  # an ISO 8601 time (naive: in tz) or a delay such as 10m
    cron: Annotated[str, Len(128, 1)] | None = None  # five fields, in tz
    tz: Annotated[str, Len(64, 1)] = "UTC"  # an IANA time zone name
    misfire: Misfire = "once"  # missed runs: once | skip | all

    @staticmethod
    def extra_checks(raw: Mapping[str, Any]) -> list[str]:
        if (raw.get("at") is None) == (raw.get("cron") is None):
            return ["at: give exactly one of at (a time or a delay) and cron"]
        return []


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRecord:
    """One schedule as the gateway's store keeps it, with ISO times for people."""

    id: ScheduleId
    target: AgentId
    text: Annotated[str, Len(MAX_SCHEDULE_TEXT, 1)]
    session: Annotated[str, Len(256)] | None
    cron: Annotated[str, Len(128)] | None
    tz: Annotated[str, Len(64)]
    at: float | None
    misfire: Misfire
    next_run: float | None  # nil: a one-off that has fired
    created_by: AgentId
    created_at: float
    runs: Annotated[int, Range(0)]
    last_run: float | None
    last_status: Annotated[str, Len(32)] | None  # claimed | delivered | failed | missed
    next_run_iso: Annotated[str, Len(64)] | None = None
    last_run_iso: Annotated[str, Len(64)] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleListOk:
    """The schedules the sender created, with their runs."""

    schedules: Annotated[list[ScheduleRecord], Len(100_000)]  # the sender's own schedules


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRemove:
    """Remove one schedule the sender created."""

    schedule_id: ScheduleId  # one the sender created


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRemoveOk:
    """The schedule removed."""

    schedule_id: ScheduleId
    removed: bool


# -- topic.* -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicRef:
    """A named topic (topic.subscribe, topic.unsubscribe, topic.subscribers)."""

    topic: Topic


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSubscribeOk:
    """The sender's subscription to a topic, and all its topics."""

    topic: Topic
    subscribed: bool
    new: bool  # false: the sender was subscribed already
    topics: Annotated[list[Topic], Len(1024)] = field(default_factory=list)  # all the sender's topics


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicUnsubscribeOk:
    """The sender's subscription ended (or there was none)."""

    topic: Topic
    unsubscribed: bool  # false: the sender was not subscribed


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSubscribersOk:
    """The live subscribers of a topic other than the sender."""

    topic: Topic
    subscribers: Annotated[list[AgentId], Len(1_000_000)]  # live subscribers other than the sender
