"""Coordination tools on a real daemon: schedule_add/list/remove through the gateway, agent_broadcast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from daemon_harness import Cluster, wait_for

pytestmark = pytest.mark.integration

SCHEDULER = """
[[supervisor.children]]
id = "scheduler"
start = "openfang.control.scheduler:main"
restart = "permanent"
shutdown = 5000
heartbeat_ms = 3000
"""

ALARM = """
[agent]
name = "alarm"
service = "{service}"
module = "builtin:llm-agent"

[agent.model]
provider = "scripted"
script = [{{match = 'wake', reply = 'awake now'}}]
default = "?"
"""

# One TOML inline table per rule (they cannot span lines); "then" shows the tool's result (or its error).
RULES = [
    "{match = '^remind (?P<to>\\S+) in (?P<d>\\S+) (?P<msg>.+)', tool = 'schedule_add', "
    "args = {to = '{to}', in = '{d}', text = '{msg}'}, then = 'R: {result}'}",
    "{match = '^selfremind (?P<msg>.+)', tool = 'schedule_add', "
    "args = {at = '2099-01-01T00:00', text = '{msg}'}, then = 'R: {result}'}",
    "{match = '^everysec (?P<to>\\S+)', tool = 'schedule_add', "
    "args = {to = '{to}', cron = '* * * * * *', text = 'wake'}, then = 'R: {result}'}",
    "{match = '^badcron', tool = 'schedule_add', args = {cron = 'every day', text = 'x'}, "
    "then = 'R: {result}'}",
    "{match = '^twowhens', tool = 'schedule_add', args = {cron = '* * * * *', in = '1m', text = 'x'}, "
    "then = 'R: {result}'}",
    "{match = '^list schedules', tool = 'schedule_list', args = {}, then = 'R: {result}'}",
    "{match = '^unschedule (?P<id>\\S+)', tool = 'schedule_remove', args = {id = '{id}'}, "
    "then = 'R: {result}'}",
    "{match = '^bcast (?P<a>\\S+) (?P<b>\\S+) (?P<msg>.+)', tool = 'agent_broadcast', "
    "args = {to = ['{a}', '{b}'], message = '{msg}'}, then = 'R: {result}'}",
    "{match = '^svcbcast (?P<svc>\\S+) (?P<msg>.+)', tool = 'agent_broadcast', "
    "args = {service = '{svc}', message = '{msg}'}, then = 'R: {result}'}",
    "{match = '^pub (?P<t>\\S+) (?P<msg>.+)', tool = 'topic_publish', "
    "args = {topic = '{t}', message = '{msg}'}, then = 'R: {result}'}",
    "{match = '^sub (?P<t>.+)', tool = 'topic_subscribe', args = {topic = '{t}'}, then = 'R: {result}'}",
    "{match = '^unsub (?P<t>\\S+)', tool = 'topic_unsubscribe', args = {topic = '{t}'}, "
    "then = 'R: {result}'}",
    "{match = '^ping', reply = 'pong'}",
]


ALL_TOOLS = (
    '"schedule_add", "schedule_list", "schedule_remove", "agent_broadcast", "topic_subscribe", '
    '"topic_unsubscribe", "topic_publish"'
)
# A subscriber: answers a published "wake" like the alarm, and subscribes on request.
LISTENER_RULES = "{match = 'wake', reply = 'awake now'}, " + ", ".join(RULES)


def planner(name: str, send: str, tools: str = ALL_TOOLS) -> str:
    return f"""
[agent]
name = "{name}"
module = "builtin:llm-agent"
tools = [{tools}]

[agent.permissions]
send = [{send}]

[agent.model]
provider = "scripted"
default = "?"
script = [{", ".join(RULES)}]
"""


def result(reply: str) -> Any:
    """The tool result a planner echoed (``R: <json>``), or the error text as a string."""
    assert reply.startswith("R: "), reply
    text = reply[3:]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cli_list(c: Cluster) -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "openfang.cli.main",
            "schedule",
            "list",
            "--data-dir",
            str(c.data_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def error(out: Any) -> str:
    """The error a failed tool call gave the agent (the llm-agent guest passes ``{"error": message}``)."""
    assert isinstance(out, dict) and set(out) == {"error"}, out
    return str(out["error"])


def pong(c: Cluster, agent_id: str) -> bool:
    """Whether ``agent_id`` answers a ping now (a request lost with a killed gateway counts as no)."""
    try:
        reply = c.call("agent.send", {"agent_id": agent_id, "text": "ping"}, timeout=3)
    except AssertionError:
        return False
    return not reply.is_error and reply.body.get("reply") == "pong"


def ask(c: Cluster, agent_id: str, text: str) -> Any:
    return result(c.ok("agent.send", {"agent_id": agent_id, "text": text})["reply"])


def test_agent_schedules_a_message_to_an_allowed_agent_and_it_fires(make_cluster: type[Cluster]) -> None:
    """schedule_add (in 1s) to a granted agent: the gateway stores it created_by the agent, the scheduler
    delivers it, schedule_list shows only the agent's own schedules, schedule_remove deletes it."""
    c = make_cluster(workers=2, extra=SCHEDULER).start()
    wait_for(
        lambda: all(not c.call("worker.ping", {"worker": w}).is_error for w in ("workers-0", "workers-1")),
        what="workers connected",
    )
    alarm = c.ok("agent.spawn", {"manifest": ALARM.format(service="alarms"), "worker": "workers-1"})[
        "agent_id"
    ]
    boss = c.ok("agent.spawn", {"manifest": planner("boss", '"alarm-*"'), "worker": "workers-0"})["agent_id"]
    added = ask(c, boss, f"remind {alarm} in 1s wake up")
    assert added["target"] == alarm and added["created_by"] == boss and added["id"].startswith("sch-"), added
    fired = wait_for(
        lambda: next((s for s in cli_list(c) if s["id"] == added["id"] and s["last_status"]), None),
        20,
        "the agent's schedule to fire",
    )
    assert fired["last_status"] == "delivered" and "awake now" in fired["recent_runs"][0]["detail"], fired
    assert c.ok("agent.info", {"agent_id": alarm})["messages"] == 1
    mine = ask(c, boss, "selfremind think again")
    assert mine["target"] == boss and mine["at"] is not None
    listed = ask(c, boss, "list schedules")["schedules"]
    assert {s["id"] for s in listed} == {added["id"], mine["id"]}
    removed = ask(c, boss, f"unschedule {mine['id']}")
    assert removed == {"schedule_id": mine["id"], "removed": True}
    assert mine["id"] not in {s["id"] for s in cli_list(c)}
    assert c.stop() == 0


def test_schedule_tools_refuse_without_grant_or_with_bad_input(make_cluster: type[Cluster]) -> None:
    """No send grant for the target: denied and nothing stored; a bad cron, two times, another's schedule
    and an unknown target: clear errors; the agent still answers afterwards."""
    c = make_cluster(workers=1, extra=SCHEDULER).start()
    alarm = c.ok("agent.spawn", {"manifest": ALARM.format(service="alarms")})["agent_id"]
    rude = c.ok("agent.spawn", {"manifest": planner("rude", '"nobody-*"')})["agent_id"]
    refused = ask(c, rude, f"remind {alarm} in 1s wake up")
    assert "may not send" in error(refused)
    assert cli_list(c) == [], "a refused schedule is not stored"
    bad = ask(c, rude, "badcron")
    assert "every day" in error(bad), bad
    two = ask(c, rude, "twowhens")
    assert "exactly one of at" in error(two)
    ghost = ask(c, rude, "remind ghost-1 in 1s wake")
    assert "may not send" in error(ghost)  # no grant for ghost-1 either
    selfish = c.ok("agent.spawn", {"manifest": planner("selfish", '"*"')})["agent_id"]
    unknown = ask(c, selfish, "remind ghost-1 in 1s wake")
    assert "'ghost-1' is not registered" in error(unknown)
    theirs = ask(c, selfish, f"remind {alarm} in 1h wake")["id"]
    stolen = ask(c, rude, f"unschedule {theirs}")
    assert "created by" in error(stolen)
    assert ask(c, rude, "list schedules") == {"schedules": []}
    assert [s["id"] for s in cli_list(c)] == [theirs]
    bad_id = ask(c, rude, "unschedule ../etc")
    assert "pattern" in error(bad_id) or "sch-" in error(bad_id), bad_id
    no_tool = c.ok("agent.spawn", {"manifest": planner("plain", '"*"', tools='"agent_send"')})["agent_id"]
    denied = ask(c, no_tool, "list schedules")
    assert "'schedule_list' is not in this agent's tools" in error(denied)
    assert c.ok("agent.send", {"agent_id": rude, "text": "ping"})["reply"] == "pong", "the agent is unharmed"
    assert c.stop() == 0


def test_agent_broadcast_reaches_each_permitted_target_and_reports_per_target(
    make_cluster: type[Cluster],
) -> None:
    """agent_broadcast to two ids (one on another worker) gets both replies; an ungranted or unknown target
    fails alone; by service it reaches every agent of that service on the worker."""
    c = make_cluster(workers=2).start()
    wait_for(
        lambda: all(not c.call("worker.ping", {"worker": w}).is_error for w in ("workers-0", "workers-1")),
        what="workers connected",
    )
    near = c.ok("agent.spawn", {"manifest": ALARM.format(service="alarms"), "worker": "workers-0"})[
        "agent_id"
    ]
    far = c.ok("agent.spawn", {"manifest": ALARM.format(service="alarms"), "worker": "workers-1"})["agent_id"]
    other = c.ok("agent.spawn", {"manifest": ALARM.format(service="other"), "worker": "workers-0"})[
        "agent_id"
    ]
    boss = c.ok("agent.spawn", {"manifest": planner("boss", '"alarm-*"'), "worker": "workers-0"})["agent_id"]
    out = ask(c, boss, f"bcast {near} {far} wake up")
    assert out["sent"] == 2 and out["failed"] == 0, out
    assert [r["to"] for r in out["results"]] == [near, far]
    assert all(r["ok"] and r["reply"] == "awake now" for r in out["results"]), out
    mixed = ask(c, boss, f"bcast {near} ghost-9 wake")
    assert mixed["sent"] == 1 and mixed["failed"] == 1, mixed
    assert mixed["results"][1]["to"] == "ghost-9" and mixed["results"][1]["code"] == "denied"
    svc = ask(c, boss, "svcbcast alarms wake")
    assert [r["to"] for r in svc["results"]] == [near] and svc["results"][0]["reply"] == "awake now", svc
    none = ask(c, boss, "svcbcast nobody wake")
    assert "nobody" in error(none)
    picky = c.ok("agent.spawn", {"manifest": planner("picky", f'"{near}"'), "worker": "workers-0"})[
        "agent_id"
    ]
    part = ask(c, picky, f"bcast {near} {other} wake")
    assert [r["ok"] for r in part["results"]] == [True, False] and "may not send" in part["results"][1][
        "error"
    ]
    assert c.ok("agent.info", {"agent_id": other})["messages"] == 0, "the refused target got nothing"
    assert c.ok("agent.send", {"agent_id": boss, "text": "ping"})["reply"] == "pong"
    assert c.stop() == 0


def listener(name: str) -> str:
    return planner(name, '"*"').replace(", ".join(RULES), LISTENER_RULES)


def test_topics_deliver_to_permitted_subscribers_and_survive_a_gateway_restart(
    make_cluster: type[Cluster],
) -> None:
    """Subscribers on two workers get a published message through agent.send (a subscriber the publisher may
    not message is reported denied and gets nothing); the subscriptions survive kill -9 of the gateway;
    unsubscribed and killed agents get nothing more; bad topics and a missing tool are clear errors."""
    c = make_cluster(workers=2).start()
    wait_for(
        lambda: all(not c.call("worker.ping", {"worker": w}).is_error for w in ("workers-0", "workers-1")),
        what="workers connected",
    )
    near = c.ok("agent.spawn", {"manifest": listener("alarm"), "worker": "workers-0"})["agent_id"]
    far = c.ok("agent.spawn", {"manifest": listener("alarm"), "worker": "workers-1"})["agent_id"]
    stranger = c.ok("agent.spawn", {"manifest": listener("other"), "worker": "workers-1"})["agent_id"]
    for agent_id in (near, far, stranger):
        assert ask(c, agent_id, "sub news")["subscribed"] is True
    again = ask(c, near, "sub news")
    assert again["new"] is False and again["topics"] == ["news"]
    boss = c.ok("agent.spawn", {"manifest": planner("boss", '"alarm-*"'), "worker": "workers-0"})["agent_id"]
    out = ask(c, boss, "pub news wake up")
    assert out["topic"] == "news" and out["sent"] == 2 and out["failed"] == 1, out
    by = {r["to"]: r for r in out["results"]}
    assert by[near]["reply"] == by[far]["reply"] == "awake now"
    assert by[stranger]["code"] == "denied" and c.ok("agent.info", {"agent_id": stranger})["messages"] == 1

    os.kill(c.node("control")["pid"], signal.SIGKILL)  # subscriptions are on disk, not in the gateway
    wait_for(lambda: pong(c, boss), 30, "the gateway back")
    after = ask(c, boss, "pub news wake")
    assert after["sent"] == 2, after

    assert ask(c, near, "unsub news") == {"topic": "news", "unsubscribed": True}
    assert ask(c, near, "unsub news") == {"topic": "news", "unsubscribed": False}
    c.ok("agent.kill", {"agent_id": far})
    last = ask(c, boss, "pub news wake")
    assert [r["to"] for r in last["results"]] == [stranger], last
    assert ask(c, boss, "pub empty-topic wake") == {
        "topic": "empty-topic",
        "results": [],
        "sent": 0,
        "failed": 0,
    }
    assert "args.topic: must match" in error(ask(c, boss, "sub bad topic!"))
    plain = c.ok("agent.spawn", {"manifest": planner("plain", '"*"', tools='"agent_send"')})["agent_id"]
    assert "'topic_publish' is not in this agent's tools" in error(ask(c, plain, "pub news wake"))
    assert c.ok("agent.send", {"agent_id": boss, "text": "ping"})["reply"] == "pong"
    assert c.stop() == 0
