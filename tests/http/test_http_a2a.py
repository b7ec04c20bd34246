"""Agents as A2A 1.0 agents, driven by the a2a-sdk's own client against a running daemon."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers import new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError
from daemon_harness import Cluster, wait_for
from http_kit import CLOCK, GREETER, start_with_agents
from npm_tools import NPM_DIR, npm_bin

pytestmark = pytest.mark.integration
REPLY = "I am greeter, a WebAssembly agent sandboxed by wasmtime inside an OpenFANG worker."


async def _send(url: str, text: str, *, streaming: bool, polling: bool = False) -> list[StreamResponse]:
    client = await create_client(url, client_config=ClientConfig(streaming=streaming, polling=polling))
    async with client:
        message = new_text_message(text, role=Role.ROLE_USER)
        return [event async for event in client.send_message(SendMessageRequest(message=message))]


def test_a2a_card_is_built_from_the_manifest(make_cluster: type[Cluster]) -> None:
    """The per-agent card names the agent, its description, a skill per tool and the JSON-RPC endpoint."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, CLOCK)
    card = httpx.get(c.http_url + "/a2a/clock/.well-known/agent-card.json").json()
    assert card["name"] == "clock" and card["description"] == "Tells the time using the time_now tool"
    assert card["supportedInterfaces"] == [
        {"url": c.http_url + "/a2a/clock", "protocolBinding": binding, "protocolVersion": "1.0"}
        for binding in ("JSONRPC", "HTTP+JSON")
    ]
    assert card["capabilities"]["streaming"] is True
    assert {s["id"] for s in card["skills"]} == {"clock", "tool:time_now"}
    missing = httpx.get(c.http_url + "/a2a/ghost/.well-known/agent-card.json")
    assert (
        missing.status_code == 404
        and "no agent with id or name 'ghost'" in missing.json()["error"]["message"]
    )
    no_default = httpx.get(c.http_url + "/.well-known/agent-card.json")
    assert no_default.status_code == 404 and "default_agent" in no_default.json()["error"]["message"]
    assert c.stop() == 0


def test_a2a_cluster_card_is_the_default_agents(make_cluster: type[Cluster]) -> None:
    """[http] default_agent: /.well-known/agent-card.json is that agent's card, and the SDK can use it."""
    c = make_cluster(workers=1, http=True)
    c.settings["http_table"] = f'[http]\nlisten = "127.0.0.1:{c.http_port}"\ndefault_agent = "greeter"\n\n'
    c.write_config()
    start_with_agents(c, GREETER)
    card = httpx.get(c.http_url + "/.well-known/agent-card.json").json()
    assert card["name"] == "greeter" and card["supportedInterfaces"][0]["url"] == c.http_url + "/a2a/greeter"
    events = asyncio.run(_send(c.http_url, "who are you?", streaming=False))
    assert events[-1].task.status.state == TaskState.TASK_STATE_COMPLETED
    assert c.stop() == 0


def test_a2a_send_and_stream_complete_tasks_with_the_reply(make_cluster: type[Cluster]) -> None:
    """SendMessage returns a completed task; SendStreamingMessage streams the reply's pieces, then done."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    url = c.http_url + "/a2a/greeter"
    (done,) = asyncio.run(_send(url, "who are you?", streaming=False))
    assert done.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert "WebAssembly agent" in done.task.artifacts[0].parts[0].text
    events = asyncio.run(_send(url, "what can you do?", streaming=True))
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task" and "artifact_update" in kinds, kinds
    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert states == [TaskState.TASK_STATE_WORKING, TaskState.TASK_STATE_COMPLETED]
    updates = [e.artifact_update for e in events if e.HasField("artifact_update")]
    assert len(updates) > 3 and all(u.append for u in updates[1:-1]), "text pieces as appended chunks"
    streamed = "".join(u.artifact.parts[0].text for u in updates[:-1])
    assert not updates[-1].append and updates[-1].last_chunk, "the whole reply replaces the chunks last"
    assert streamed == updates[-1].artifact.parts[0].text and streamed.startswith("I keep our conversation")
    assert c.stop() == 0


def test_a2a_tasks_survive_a_daemon_restart(make_cluster: type[Cluster]) -> None:
    """Tasks live in SQLite under the data dir: after a restart GetTask and ListTasks still find them."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    url = c.http_url + "/a2a/greeter"
    task_ids = [
        asyncio.run(_send(url, text, streaming=False))[-1].task.id for text in ("hello", "who are you?")
    ]
    assert c.stop() == 0
    assert (c.data_dir / "http" / "a2a-tasks.db").is_file()
    start_with_agents(c, GREETER)

    async def read_back() -> tuple[list[str], list[str], int]:
        client = await create_client(url)
        async with client:
            got = [await client.get_task(GetTaskRequest(id=tid)) for tid in task_ids]
            page = await client.list_tasks(ListTasksRequest(page_size=1, include_artifacts=True))
            rest = await client.list_tasks(ListTasksRequest(page_size=1, page_token=page.next_page_token))
            return (
                [t.artifacts[0].parts[0].text for t in got],
                [t.id for t in [*page.tasks, *rest.tasks]],
                page.total_size,
            )

    replies, listed, total = asyncio.run(read_back())
    assert replies == [
        "Hello! Ask me who I am.",
        "I am greeter, a WebAssembly agent sandboxed by wasmtime inside an OpenFANG worker.",
    ]
    assert sorted(listed) == sorted(task_ids) and total == 2
    assert c.stop() == 0


def test_a2a_cancel_task_cancels_a_running_task(make_cluster: type[Cluster]) -> None:
    """A task whose agent is busy (suspended) can be cancelled; its state is then canceled."""
    c = make_cluster(workers=1, http=True, request_timeout_ms=4000)
    (greeter,) = start_with_agents(c, GREETER)
    c.ok("agent.suspend", {"agent_id": greeter})
    url = c.http_url + "/a2a/greeter"

    async def cancel() -> tuple[int, int]:
        client = await create_client(url, client_config=ClientConfig(streaming=False, polling=True))
        async with client:
            message = new_text_message("who are you?", role=Role.ROLE_USER)
            (first,) = [e async for e in client.send_message(SendMessageRequest(message=message))]
            task_id = first.task.id
            running = first.task.status.state
            cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
            return running, cancelled.status.state

    running, cancelled = asyncio.run(cancel())
    assert running in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
    assert cancelled == TaskState.TASK_STATE_CANCELED
    c.ok("agent.resume", {"agent_id": greeter})
    wait_for(lambda: c.ok("agent.info", {"agent_id": greeter})["state"] == "running", what="agent resumed")
    assert c.stop() == 0


def test_a2a_failed_agent_fails_the_task_with_the_reason(make_cluster: type[Cluster]) -> None:
    """When the agent cannot answer in time the task ends failed, its status message saying why."""
    c = make_cluster(workers=1, http=True, request_timeout_ms=1500)
    (greeter,) = start_with_agents(c, GREETER)
    c.ok("agent.suspend", {"agent_id": greeter})
    (done,) = asyncio.run(_send(c.http_url + "/a2a/greeter", "hello", streaming=False))
    why = done.task.status.message.parts[0].text
    assert done.task.status.state == TaskState.TASK_STATE_FAILED, (done.task.status.state, why)
    assert why.startswith("timeout:"), why
    assert c.stop() == 0


def test_a2a_http_json_binding_sends_and_reads_tasks(make_cluster: type[Cluster]) -> None:
    """The SDK client on the HTTP+JSON binding (message:send, tasks/{id}) gets the same task as JSON-RPC."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)

    async def over_rest() -> tuple[int, str, int]:
        config = ClientConfig(streaming=False, supported_protocol_bindings=["HTTP+JSON"])
        client = await create_client(c.http_url + "/a2a/greeter", client_config=config)
        async with client:
            message = new_text_message("who are you?", role=Role.ROLE_USER)
            (done,) = [e async for e in client.send_message(SendMessageRequest(message=message))]
            again = await client.get_task(GetTaskRequest(id=done.task.id))
            listed = await client.list_tasks(ListTasksRequest())
            return again.status.state, again.artifacts[0].parts[0].text, listed.total_size

    state, text, total = asyncio.run(over_rest())
    assert state == TaskState.TASK_STATE_COMPLETED and text.startswith("I am greeter") and total == 1
    raw = httpx.post(
        c.http_url + "/a2a/greeter/message:send", json={"message": {}}, headers={"A2A-Version": "1.0"}
    )
    assert raw.status_code == 400, raw.text
    assert c.stop() == 0


def test_a2a_subscribe_follows_a_running_task_to_its_end(make_cluster: type[Cluster]) -> None:
    """SubscribeToTask on a task still waiting for its (suspended) agent streams it to completed."""
    c = make_cluster(workers=1, http=True, request_timeout_ms=8000)
    (greeter,) = start_with_agents(c, GREETER)
    c.ok("agent.suspend", {"agent_id": greeter})
    url = c.http_url + "/a2a/greeter"

    async def follow() -> list[int]:
        poster = await create_client(url, client_config=ClientConfig(streaming=False, polling=True))
        async with poster:
            message = new_text_message("hello", role=Role.ROLE_USER)
            (first,) = [e async for e in poster.send_message(SendMessageRequest(message=message))]
            task_id = first.task.id
        client = await create_client(url, client_config=ClientConfig(streaming=True))
        async with client:
            states: list[int] = []

            async def watch() -> None:
                async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                    if event.HasField("status_update"):
                        states.append(event.status_update.status.state)
                    elif event.HasField("task"):
                        states.append(event.task.status.state)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)
            await asyncio.to_thread(c.ok, "agent.resume", {"agent_id": greeter})
            await asyncio.wait_for(watcher, 20)
            return states

    states = asyncio.run(follow())
    assert states[-1] == TaskState.TASK_STATE_COMPLETED, states
    assert c.stop() == 0


def test_a2a_javascript_sdk_client_sends_and_streams(make_cluster: type[Cluster]) -> None:
    """The npm @a2a-js/sdk client reads the card, completes a task and streams the reply's pieces."""
    node = npm_bin("node")
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    script = NPM_DIR / "a2a_client.mjs"
    out = subprocess.run(
        [str(node), str(script), c.http_url + "/a2a/greeter", "who are you?"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    sent, streamed = (json.loads(line) for line in out.stdout.splitlines())
    assert sent == {"step": "send", "state": 3, "reply": REPLY}
    kinds = [e["kind"] for e in streamed["events"]]
    assert kinds[0] == "task" and kinds[-1] == "status" and streamed["events"][-1]["state"] == 3
    chunks = [e for e in streamed["events"] if e["kind"] == "artifact"]
    assert "".join(e["text"] for e in chunks[:-1]) == chunks[-1]["text"] == REPLY
    assert c.stop() == 0


def test_a2a_send_tool_calls_a_remote_agent_under_network_rules(make_cluster: type[Cluster]) -> None:
    """An agent's a2a_send reaches an A2A agent on an allowed host; a loopback host not allowed is refused."""
    c = make_cluster(workers=1, http=True, extra='\n[security.network]\nallow_hosts = ["127.0.0.1"]\n')
    start_with_agents(c, GREETER)
    asker = """
[agent]
name = "asker"
tools = ["a2a_send"]

[agent.model]
provider = "scripted"
default = "?"
script = [
  {match = '^ask (?P<u>\\S+) (?P<m>.+)', tool = "a2a_send", args = {url = "{u}", message = "{m}"}},
]
"""
    agent = c.ok("agent.spawn", {"manifest": asker})["agent_id"]
    reply = c.ok("agent.send", {"agent_id": agent, "text": f"ask {c.http_url}/a2a/greeter who are you?"})[
        "reply"
    ]
    result = json.loads(reply)
    assert result["state"] == "TASK_STATE_COMPLETED" and result["text"] == REPLY, result
    other = c.http_url.replace("127.0.0.1", "127.0.0.2")  # loopback too, but not in allow_hosts
    refused = c.ok("agent.send", {"agent_id": agent, "text": f"ask {other}/a2a/greeter hi"})["reply"]
    assert "url refused" in refused and "loopback" in refused, refused
    assert c.stop() == 0


BOOKER = """
[agent]
name = "booker"
tools = ["task_update"]

[agent.model]
provider = "scripted"
default = "?"
script = [
  {match = '(?i)^book', tool = "task_update", args = {state = "input-required", message = "Which city?"}},
  {match = '(?i)^in (?P<city>\\w+)', tool = "task_update", then = "Booked {city}.", args = {artifacts = [
    {name = "booking", data = {city = "{city}", nights = "2"}},
    {name = "ticket", uri = "https://example.com/t/{city}.pdf", media_type = "application/pdf"},
    {name = "note", text = "Booked {city}"}]}},
  {match = '(?i)^refuse', tool = "task_update", args = {state = "rejected", message = "Not my job."}},
  {match = '(?i)^break', tool = "task_update", args = {state = "failed", message = "The backend is down."}},
]
"""


def test_a2a_agent_sets_task_states_and_artifacts_with_task_update(make_cluster: type[Cluster]) -> None:
    """task_update: input-required then completed (data, file and text artifacts), rejected, failed."""
    c = make_cluster(workers=1, http=True)
    (booker,) = start_with_agents(c, BOOKER)
    plain = c.ok("agent.send", {"agent_id": booker, "text": "refuse this"})
    assert plain["task"]["state"] == "rejected", "the wire reply carries the agent's task outcome"
    url = c.http_url + "/a2a/booker"

    async def converse() -> list[Any]:
        client = await create_client(url, client_config=ClientConfig(streaming=False))
        async with client:

            async def say(text: str, task: Any = None) -> Any:
                message = new_text_message(text, role=Role.ROLE_USER)
                if task is not None:
                    message.task_id, message.context_id = task.id, task.context_id
                (event,) = [e async for e in client.send_message(SendMessageRequest(message=message))]
                return event.task

            asked = await say("book a room")
            done = await say("in Paris", asked)
            stored = await client.get_task(GetTaskRequest(id=done.id))
            return [asked, done, stored, await say("refuse"), await say("break it")]

    asked, done, stored, rejected, failed = asyncio.run(converse())
    assert asked.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert asked.status.message.parts[0].text == "Which city?"
    assert done.id == asked.id and done.status.state == TaskState.TASK_STATE_COMPLETED
    parts = {a.name: a.parts[0] for a in stored.artifacts}
    assert parts["reply"].text == "Booked Paris."
    assert dict(parts["booking"].data.struct_value) == {"city": "Paris", "nights": "2"}
    assert (parts["ticket"].url, parts["ticket"].media_type) == (
        "https://example.com/t/Paris.pdf",
        "application/pdf",
    )
    assert parts["note"].text == "Booked Paris"
    assert rejected.status.state == TaskState.TASK_STATE_REJECTED
    assert rejected.status.message.parts[0].text == "Not my job."
    assert failed.status.state == TaskState.TASK_STATE_FAILED
    assert failed.status.message.parts[0].text == "The backend is down."
    assert c.stop() == 0


class _Webhook:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies and tokens POSTed to it."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.posts.append((self.headers.get("X-A2A-Notification-Token", ""), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a2a_push_notifications_reach_an_allowed_webhook_and_configs_persist(
    make_cluster: type[Cluster],
) -> None:
    """A task's events are POSTed to its webhook (with its token); the config survives a restart."""
    c = make_cluster(workers=1, http=True)
    c.settings["http_table"] = (
        f'[http]\nlisten = "127.0.0.1:{c.http_port}"\npush_allow_hosts = ["127.0.0.1"]\n\n'
    )
    c.write_config()
    start_with_agents(c, GREETER)
    hook = _Webhook()
    url = c.http_url + "/a2a/greeter"
    try:

        async def send() -> str:
            client = await create_client(url, client_config=ClientConfig(streaming=False))
            async with client:
                push = TaskPushNotificationConfig(url=hook.url, token="hook-token-1")
                request = SendMessageRequest(
                    message=new_text_message("who are you?", role=Role.ROLE_USER),
                    configuration=SendMessageConfiguration(task_push_notification_config=push),
                )
                (done,) = [e async for e in client.send_message(request)]
                refused = TaskPushNotificationConfig(task_id=done.task.id, url="http://10.1.2.3/hook")
                with pytest.raises(InvalidParamsError, match="Invalid push notification URL"):
                    await client.create_task_push_notification_config(refused)
                return str(done.task.id)

        task_id = asyncio.run(send())
        wait_for(
            lambda: any("COMPLETED" in json.dumps(body) for _, body in hook.posts), what="the completed event"
        )
        assert {token for token, _ in hook.posts} == {"hook-token-1"}
        assert c.stop() == 0
        start_with_agents(c, GREETER)

        async def configs() -> list[str]:
            client = await create_client(url)
            async with client:
                listed = await client.list_task_push_notification_configs(
                    ListTaskPushNotificationConfigsRequest(task_id=task_id)
                )
                return [cfg.url for cfg in listed.configs]

        assert asyncio.run(configs()) == [hook.url]
    finally:
        hook.close()
    assert c.stop() == 0
