"""Token usage and cost per LLM call on a real daemon: procedural records, agent info and `memory usage`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from daemon_harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def manifest(name: str, model: str) -> str:
    # The scripted provider reports usage (words in and out) and names the model by its `name` key, so a
    # scripted agent named like a priced model is charged by the price table.
    return f"""
[agent]
name = "{name}"
module = "builtin:llm-agent"
tools = ["time_now"]

[agent.model]
provider = "scripted"
name = "{model}"
default = "fine thanks"
script = [{{match = '^clock', tool = 'time_now', args = {{}}, then = 'it is {{result}}'}}]
"""


def usage_cli(c: Cluster, *extra: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "openfang.cli.main",
            "memory",
            "usage",
            "--db",
            str(c.data_dir / "memory.db"),
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["usage"])


def test_llm_calls_are_recorded_with_tokens_and_cost_and_shown_in_agent_info(make_cluster: Any) -> None:
    """Three LLM calls (a tool round trip and a plain answer) land in procedural memory as `llm` records
    with tokens and a cost for a priced model (null for an unpriced one); agent info and `openfang memory
    usage` give the same totals; tool sequences are not broken by them."""
    c = make_cluster(workers=1, memory=True).start(env={"OPENFANG_EMBEDDER": "hash"})
    priced = c.ok("agent.spawn", {"manifest": manifest("payer", "gpt-4o-mini")})["agent_id"]
    free = c.ok("agent.spawn", {"manifest": manifest("local", "llama3.1:8b")})["agent_id"]
    assert c.ok("agent.send", {"agent_id": priced, "text": "clock please"})["reply"].startswith("it is")
    assert c.ok("agent.send", {"agent_id": priced, "text": "how are you"})["reply"] == "fine thanks"
    c.ok("agent.send", {"agent_id": free, "text": "how are you"})
    info = c.ok("agent.info", {"agent_id": priced})["llm_usage"]
    assert info["llm_calls"] == 3 and info["prompt_tokens"] > 0 and info["completion_tokens"] > 0, info
    expected = (info["prompt_tokens"] * 0.15 + info["completion_tokens"] * 0.60) / 1e6
    assert info["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert "cost_usd" not in c.ok("agent.info", {"agent_id": free})["llm_usage"], "no price, no cost"
    rows = wait_for(
        lambda: (u := usage_cli(c)) and sum(r["llm_calls"] for r in u) == 4 and u,
        20,
        "the llm records to be written",
    )
    mine = [r for r in rows if r["agent_id"] == priced]
    assert len(mine) == 1 and mine[0]["model"] == "gpt-4o-mini" and mine[0]["provider"] == "scripted"
    assert {k: mine[0][k] for k in ("llm_calls", "prompt_tokens", "completion_tokens")} == {
        k: info[k] for k in ("llm_calls", "prompt_tokens", "completion_tokens")
    }
    assert mine[0]["cost_usd"] == pytest.approx(info["cost_usd"], rel=1e-6)
    (theirs,) = usage_cli(c, "--agent", free)
    assert theirs["cost_usd"] is None and theirs["llm_calls"] == 1
    assert usage_cli(c, "--agent", "nobody-1") == []
    assert c.stop() == 0
