"""Agents using MCP servers' tools: the reference npm server-everything (stdio) and the cluster's own /mcp."""

from __future__ import annotations

import psutil
import pytest
from daemon_harness import Cluster, wait_for
from http_kit import GREETER, start_with_agents
from npm_tools import npm_bin

from openfang.protocol.errors import ConfigError
from openfang.workers.manifest import load_manifest

pytestmark = pytest.mark.integration

RULES = """
script = [
  {match = '^echo (?P<m>.+)', tool = "everything.echo", args = {message = "{m}"}, then = "echoed: {result}"},
  {match = '^add', tool = "everything.get-sum", args = {a = 2, b = 3}, then = "sum: {result}"},
]
"""


def _user(tools: str, mcp: str) -> str:
    return f"""
[agent]
name = "mcpuser"
tools = [{tools}]
mcp = [{mcp}]

[agent.model]
provider = "scripted"
default = "?"
{RULES}
"""


def _everything() -> str:
    return f'{{name = "everything", command = "{npm_bin("mcp-server-everything")}", args = ["stdio"]}}'


def test_mcp_client_server_tools_answer_through_the_agent(make_cluster: type[Cluster]) -> None:
    """`mcp.everything` grants every tool of the server; calls reach it and the replies come back."""
    c = make_cluster(workers=1)
    (agent,) = start_with_agents(c, _user('"mcp.everything"', _everything()))
    assert (
        c.ok("agent.send", {"agent_id": agent, "text": "echo hi there"})["reply"] == "echoed: Echo: hi there"
    )
    assert c.ok("agent.send", {"agent_id": agent, "text": "add"})["reply"] == "sum: The sum of 2 and 3 is 5."
    tools = c.ok("agent.info", {"agent_id": agent})["tools"]
    assert "everything.echo" in tools and "everything.get-sum" in tools, tools
    assert c.stop() == 0
    c.assert_no_survivors()  # the stdio server ended with its worker


def test_mcp_client_tools_not_listed_are_denied_and_audited(make_cluster: type[Cluster]) -> None:
    """Naming one tool grants only that one: another tool of the same server is denied and audited."""
    c = make_cluster(workers=1)
    (agent,) = start_with_agents(c, _user('"everything.echo"', _everything()))
    assert c.ok("agent.send", {"agent_id": agent, "text": "echo ok"})["reply"] == "echoed: Echo: ok"
    refused = c.ok("agent.send", {"agent_id": agent, "text": "add"})["reply"]
    assert "denied: tool 'everything.get-sum' is not in this agent's tools" in refused, refused
    denied = [e for e in c.log_events() if e.get("kind") == "permissions.tool_denied"]
    assert denied and denied[-1]["tool"] == "everything.get-sum"
    assert c.stop() == 0


def test_mcp_client_bad_servers_and_tools_are_bad_config(make_cluster: type[Cluster]) -> None:
    """A tool the server does not offer, or a server that cannot start, refuses the spawn, naming it."""
    c = make_cluster(workers=1)
    start_with_agents(c)
    missing = c.call("agent.spawn", {"manifest": _user('"everything.nope"', _everything())})
    assert missing.is_error and missing.body["code"] == "bad_config"
    assert "has no tool 'everything.nope'" in str(missing.body), missing.body
    broken = '{name = "ghost", command = "/nonexistent/mcp-server"}'
    failed = c.call("agent.spawn", {"manifest": _user('"mcp.ghost"', broken)})
    assert failed.is_error and failed.body["code"] == "bad_config" and "cannot connect" in str(failed.body)
    assert c.stop() == 0


def test_mcp_client_reaches_the_clusters_own_mcp_face_over_http(make_cluster: type[Cluster]) -> None:
    """A streamable-HTTP MCP server works too: an agent calls the greeter through the cluster's /mcp."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    asker = f"""
[agent]
name = "asker"
tools = ["self.greeter"]
mcp = [{{name = "self", url = "{c.http_url}/mcp"}}]

[agent.model]
provider = "scripted"
default = "?"
script = [
  {{match = '^ask (?P<m>.+)', tool = "self.greeter", args = {{message = "{{m}}"}}, then = "got: {{result}}"}},
]
"""
    agent = c.ok("agent.spawn", {"manifest": asker})["agent_id"]
    reply = c.ok("agent.send", {"agent_id": agent, "text": "ask who are you?"})["reply"]
    assert reply.startswith("got: I am greeter, a WebAssembly agent"), reply
    assert c.stop() == 0


def test_mcp_manifest_entries_are_validated_with_their_place() -> None:
    """Every problem of an `mcp` list is reported at once, each naming its entry."""
    text = _user(
        '"mcp.a"',
        '{name = "A!"}, {name = "b", command = "x", url = "http://h"}, {name = "c", url = "ftp://x"}',
    )
    with pytest.raises(ConfigError) as err:
        load_manifest(text)
    message = str(err.value)
    assert "mcp[0]" in message and "name must match" in message
    assert "mcp[1]" in message and "exactly one of command" in message
    assert "mcp[2]" in message and "url must be an http" in message


def test_mcp_client_results_pass_the_same_output_layers(make_cluster: type[Cluster]) -> None:
    """An MCP tool's result is redacted like a built-in tool's: an e-mail address and a card number never
    reach the client, and the call is in the agent's tool-call memory."""
    c = make_cluster(workers=1, memory=True)
    (agent,) = start_with_agents(c, _user('"everything.echo"', _everything()))
    text = "echo mail alice@example.com card 4111 1111 1111 1111 please"
    reply = c.ok("agent.send", {"agent_id": agent, "text": text})["reply"]
    assert "[REDACTED:email]" in reply and "[REDACTED:credit_card]" in reply, reply
    assert "alice@example.com" not in reply and "4111 1111" not in reply
    assert reply.endswith("please")
    calls = lambda: c.ok("memory.stats", {"agent_id": agent})["counts"].get("tool_calls", 0)  # noqa: E731
    wait_for(lambda: calls() >= 1, what="the MCP call in the agent's tool-call memory")
    assert c.stop() == 0


def test_mcp_client_stdio_server_runs_under_its_resource_limits(make_cluster: type[Cluster]) -> None:
    """cpu_s and max_files put the stdio server under RLIMIT_CPU / RLIMIT_NOFILE; a server that cannot start
    inside memory_mb fails the spawn as bad_config."""
    c = make_cluster(workers=1)
    server = f'{{name = "everything", command = "{npm_bin("mcp-server-everything")}", args = ["stdio"], '
    (agent,) = start_with_agents(c, _user('"everything.echo"', server + "cpu_s = 600, max_files = 512}"))
    assert c.ok("agent.send", {"agent_id": agent, "text": "echo limited"})["reply"] == "echoed: Echo: limited"
    (proc,) = [p for p in c.descendants() if "mcp-server-everything" in " ".join(p.cmdline())]
    assert proc.rlimit(psutil.RLIMIT_CPU) == (600, 601) and proc.rlimit(psutil.RLIMIT_NOFILE) == (512, 512)
    starved = _user('"mcp.tiny"', server.replace('"everything"', '"tiny"') + "memory_mb = 8}")
    refused = c.call("agent.spawn", {"manifest": starved})
    assert refused.is_error and refused.body["code"] == "bad_config" and "cannot connect" in str(refused.body)
    assert c.stop() == 0


def test_mcp_client_servers_in_cluster_toml_serve_every_agent_that_names_them(
    make_cluster: type[Cluster],
) -> None:
    """An `mcp` list in the workers' args (cluster.toml) lets any manifest name the server's tools without
    declaring it; an agent that does not name them does not get them (default deny)."""
    shared = f"\n[supervisor.children.pool.args]\nmcp = [{_everything()}]\n"
    c = make_cluster(workers=1, extra=shared)
    plain = _user('"mcp.everything"', "").replace("mcp = []\n", "")
    (agent,) = start_with_agents(c, plain)
    assert c.ok("agent.send", {"agent_id": agent, "text": "echo shared"})["reply"] == "echoed: Echo: shared"
    other = plain.replace('tools = ["mcp.everything"]', 'tools = ["time_now"]').replace(
        '"mcpuser"', '"other"'
    )
    stranger = c.ok("agent.spawn", {"manifest": other})["agent_id"]
    refused = c.ok("agent.send", {"agent_id": stranger, "text": "echo no"})["reply"]
    assert "denied: tool 'everything.echo' is not in this agent's tools" in refused, refused
    assert c.stop() == 0
