"""agent_send between agents on different workers, through the gateway."""

from __future__ import annotations

import pytest
from daemon_harness import ROOT, Cluster, wait_for

pytestmark = pytest.mark.integration
GREETER = (ROOT / "openfang" / "data" / "agents" / "greeter.toml").read_text()


# One TOML inline table (they cannot span lines): ask <agent> <message> -> agent_send, then report.
RULE = (
    "{match = '^ask (?P<to>\\S+) (?P<msg>.+)', tool = 'agent_send', "
    "args = {to = '{to}', message = '{msg}'}, then = 'they said: {result}'}"
)


def _asker(name: str, send: str) -> str:
    return f"""
[agent]
name = "{name}"
module = "builtin:llm-agent"
tools = ["agent_send"]

[agent.permissions]
send = [{send}]

[agent.model]
provider = "scripted"
default = "?"
script = [{RULE}]
"""


def test_agent_send_reaches_an_agent_on_another_worker(make_cluster: type[Cluster]) -> None:
    """An agent on workers-0 messages one on workers-1 and gets its reply; a missing grant is denied."""
    c = make_cluster(workers=2).start()
    wait_for(
        lambda: all(not c.call("worker.ping", {"worker": w}).is_error for w in ("workers-0", "workers-1")),
        what="workers connected",
    )
    target = c.ok("agent.spawn", {"manifest": GREETER, "worker": "workers-1"})["agent_id"]
    asker = c.ok("agent.spawn", {"manifest": _asker("asker", '"greeter-*"'), "worker": "workers-0"})[
        "agent_id"
    ]
    reply = c.ok("agent.send", {"agent_id": asker, "text": f"ask {target} who are you?"})["reply"]
    assert "they said" in reply and "WebAssembly agent" in reply, reply
    history = c.ok("agent.info", {"agent_id": target})
    assert history["messages"] == 1, "the target really handled one message"
    rude = c.ok("agent.spawn", {"manifest": _asker("rude", '"nobody-*"'), "worker": "workers-0"})["agent_id"]
    refused = c.ok("agent.send", {"agent_id": rude, "text": f"ask {target} who are you?"})["reply"]
    assert "may not send messages to" in refused, refused
    assert c.ok("agent.info", {"agent_id": target})["messages"] == 1, "the refused message never arrived"
    assert c.stop() == 0


def test_a_worker_cannot_forward_on_behalf_of_another_workers_agent(make_cluster: type[Cluster]) -> None:
    """The gateway refuses a worker.forward whose sender the forwarding worker does not host."""
    import zmq

    from openfang.protocol.envelope import Envelope, decode, encode
    from openfang.protocol.linkframe import pack, unpack

    c = make_cluster(workers=1).start()
    wait_for(lambda: not c.call("worker.ping", {"worker": "workers-0"}).is_error, what="worker connected")
    victim = c.ok("agent.spawn", {"manifest": GREETER})["agent_id"]
    rogue = c.zctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.setsockopt(zmq.ROUTING_ID, b"workers-9")
    rogue.connect(f"ipc://{c.data_dir}/run/workers.sock")
    body = {"agent_id": victim, "text": "who are you?", "session": "agent:x"}
    forward = {"sender": victim, "request": {"type": "agent.send", "body": body}}
    rogue.send(pack([encode(Envelope(type="worker.forward", body=forward))]))
    assert rogue.poll(10_000), "the gateway answers a refused forward"
    (reply,) = (decode(p) for p in unpack(rogue.recv()))
    assert reply.is_error and "does not host agent" in reply.body["message"]
    assert c.ok("agent.info", {"agent_id": victim})["messages"] == 0
    rogue.close()
    assert c.stop() == 0
