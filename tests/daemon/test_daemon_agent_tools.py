"""A manifest-only agent on a real daemon uses the new built-in tools with one manifest line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from daemon_harness import Cluster

pytestmark = pytest.mark.integration

RULES = """
{match = '^calc (?P<e>.+)', tool = 'calc', args = {expression = '{e}'}, then = '{result}'},
{match = '^sql (?P<q>.+)', tool = 'sql_query', args = {sql = '{q}'}, then = '{result}'},
{match = '^hash (?P<t>.+)', tool = 'hash', args = {text = '{t}'}, then = '{result}'},
"""


def manifest(name: str, tools: str) -> str:
    return f"""
[agent]
name = "{name}"
module = "builtin:llm-agent"
tools = {tools}

[agent.model]
provider = "scripted"
default = "ok"
script = [
{RULES}
]
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(workers=1, request_timeout_ms=20000)
    try:
        c.start()
        yield c
    finally:
        c.close()


def say(c: Cluster, agent_id: str, text: str) -> str:
    return str(c.ok("agent.send", {"agent_id": agent_id, "text": text})["reply"])


def test_agent_uses_calc_and_its_own_sql_database_through_the_daemon(cluster: Cluster) -> None:
    """calc and sql_query answer through a real worker; the agent's SQL table persists between messages."""
    a = str(cluster.ok("agent.spawn", {"manifest": manifest("analyst", '["calc", "sql_query"]')})["agent_id"])
    assert json.loads(say(cluster, a, "calc 6 * 7"))["value"] == 42
    say(cluster, a, "sql CREATE TABLE notes (t TEXT)")
    say(cluster, a, "sql INSERT INTO notes VALUES ('kept')")
    assert json.loads(say(cluster, a, "sql SELECT t FROM notes"))["rows"] == [["kept"]]


def test_agent_without_the_grant_is_refused_the_tool_and_stays_alive(cluster: Cluster) -> None:
    """A tool outside the manifest's list is refused (denied) and the agent keeps answering."""
    a = str(cluster.ok("agent.spawn", {"manifest": manifest("limited", '["calc"]')})["agent_id"])
    assert "denied" in say(cluster, a, "hash abc")
    assert json.loads(say(cluster, a, "calc 1 + 1"))["value"] == 2


def test_tools_list_cli_shows_every_tool_with_its_permission() -> None:
    """`openfang tools list --json` works without a daemon and lists each tool's permission and schema."""
    out = subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "tools", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    assert len(rows) >= 33
    assert rows["sql_query"]["permission"] == "sql" and rows["calc"]["schema"]["required"] == ["expression"]


def test_agent_runs_an_allowed_command_in_the_sandbox_through_the_daemon(cluster: Cluster) -> None:
    """shell_exec from a manifest-only agent: the allowed command runs in bubblewrap; another is denied."""
    from openfang.workers.tools import shell

    if shell.sandbox_available() is not None:
        pytest.fail(f"bubblewrap cannot run here ({shell.sandbox_available()}): `make test` installs it")
    text = (
        manifest("sheller", '["shell_exec"]')
        .replace("[agent.model]", '[agent.shell]\nallow = ["echo"]\n\n[agent.model]')
        .replace(
            "script = [\n",
            "script = [\n{match = '^run (?P<c>\\S+) (?P<a>.+)', tool = 'shell_exec', "
            "args = {argv = ['{c}', '{a}']}, then = '{result}'},\n",
        )
    )
    a = str(cluster.ok("agent.spawn", {"manifest": text})["agent_id"])
    out = json.loads(say(cluster, a, "run echo sandboxed"))
    assert out["exit_code"] == 0 and out["stdout"] == "sandboxed\n"
    assert "not in this agent's allow list" in say(cluster, a, "run cat /etc/passwd")
