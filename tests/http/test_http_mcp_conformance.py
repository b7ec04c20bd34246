"""The official MCP conformance kit (npm @modelcontextprotocol/conformance) against the cluster's /mcp.

Only the server scenarios that apply to a server whose tools are agents run here; docs/interop.md lists
the others and why they do not apply (they call fixture tools such as ``test_image_content``, or need
prompts, resources, completion, logging, sampling or elicitation, which this server does not offer).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from daemon_harness import Cluster
from http_kit import GREETER, start_with_agents
from npm_tools import node22_env, npm_bin

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPLICABLE = (
    "server-initialize",
    "ping",
    "tools-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
)


def test_mcp_conformance_applicable_server_scenarios_pass(make_cluster: type[Cluster]) -> None:
    """Every applicable server scenario of the conformance kit passes with no failed check."""
    kit = npm_bin("conformance")
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    failures = {}
    for scenario in APPLICABLE:
        out = c.dir / "conformance" / scenario
        proc = subprocess.run(
            [str(kit), "server", "--url", c.http_url + "/mcp", "--scenario", scenario, "-o", str(out)],
            env=node22_env(dict(os.environ)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        checks = [check for path in out.rglob("*.json") for check in json.loads(path.read_text())]
        failed = [ch for ch in checks if ch.get("status") == "FAILURE"]
        if proc.returncode != 0 or failed or not any(ch.get("status") == "SUCCESS" for ch in checks):
            failures[scenario] = (proc.returncode, failed, proc.stdout[-2000:])
    assert not failures, failures
    assert c.stop() == 0
