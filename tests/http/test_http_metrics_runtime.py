"""/metrics runtime families: latency histograms, LLM calls per provider, tool calls, hibernations, restarts,
gateway refusals and the memory writer, measured by the processes and moved by real traffic; and the plain
``[metrics] listen`` endpoint of a cluster without the HTTP face."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import ROOT, Cluster, free_port, wait_for
from http_kit import start_with_agents
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from openfang.control.config import parse_config
from openfang.control.http.metrics_runtime import runtime_families
from openfang.control.stats import GatewayStats
from openfang.protocol.errors import ConfigError
from openfang.workers.host.stats import HostStats

NASTY = ROOT / "examples" / "agents" / "nasty"
LIMITS = "\n[security.ratelimit.client_requests]\nrate = 50\nburst = 200\n"


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _scrape(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=20)
    assert response.status_code == 200, response.text
    return _families(response.text)


def _sample(family: Any, suffix: str = "", **labels: str) -> float:
    """The value of the sample ``<family><suffix>`` with ``labels`` (0 when the series is absent)."""
    for s in family.samples:
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


# -- the accumulators and the rendering, on their own -------------------------------------------------------


def test_runtime_families_render_as_valid_prometheus_histograms() -> None:
    """Worker and gateway histograms parse back with their buckets, sums and counts."""
    stats = HostStats("workers-0")
    stats.message_done(0.003)
    stats.message_done(2.0)
    gw = GatewayStats()
    gw.admitted(b"c", "1", "status")
    gw.replied_all([([b"c", b"payload"], "status.ok", "1", {})])
    bodies = {
        "status": {"gateway": gw.to_wire()},
        "agent.list": {"agents": [], "workers": [stats.to_wire()]},
    }

    class Fixed(Collector):
        def collect(self) -> Any:
            return list(runtime_families(bodies))

    registry = CollectorRegistry()
    registry.register(Fixed())
    fams = _families(generate_latest(registry).decode())
    msg = fams["openfang_worker_message_seconds"]
    assert msg.type == "histogram"
    assert _sample(msg, "_bucket", worker="workers-0", le="0.005") == 1
    assert _sample(msg, "_bucket", worker="workers-0", le="+Inf") == 2
    assert _sample(msg, "_sum", worker="workers-0") == pytest.approx(2.003)
    assert _sample(fams["openfang_gateway_request_seconds"], "_count", type="status") == 1


# -- a real daemon ----------------------------------------------------------------------------------------


class _FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers 503 to its first request, then a fixed completion."""

    calls = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with _FakeLLM.lock:
            _FakeLLM.calls += 1
            first = _FakeLLM.calls == 1
        if first:
            status, body = 503, {"error": {"message": "overloaded, try later"}}
        else:
            status, body = (
                200,
                {
                    "model": "fake-model",
                    "choices": [
                        {"message": {"role": "assistant", "content": "from http"}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7},
                },
            )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def fake_llm() -> Iterator[str]:
    _FakeLLM.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _http_agent(base_url: str) -> str:
    return f"""
[agent]
name = "viahttp"
module = "builtin:llm-agent"

[agent.model]
provider = "vllm"
name = "fake-model"
base_url = "{base_url}"
max_retries = 0

[[agent.model.fallback]]
provider = "scripted"
label = "backup"
default = "from backup"
"""


TOOLS_AGENT = """
[agent]
name = "tooly"
module = "builtin:llm-agent"
tools = ["time_now"]
restart = "permanent"

[agent.model]
provider = "scripted"
label = "script-b"
default = "ok"
script = [
  {match = 'time', tool = 'time_now', args = {}, then = 'it is {result}'},
  {match = 'forbidden', tool = 'text_count', args = {text = 'x'}, then = 'got {result}'},
  {match = 'outage', error = 'simulated outage'},
]
"""


@pytest.mark.integration
def test_metrics_runtime_series_move_with_real_traffic(make_cluster: type[Cluster], fake_llm: str) -> None:
    """Messages, an LLM 503 then answers, a tool and a denied tool, a hibernate and wake, a trap restart,
    refusals (not_found, rate_limited) and memory commits: each series moves by what was done."""
    c = make_cluster(workers=1, http=True, memory=True, extra=LIMITS)
    rec_manifest = (
        f'[agent]\nname = "rec"\nmodule = "{NASTY / "deep_recursion.wat"}"\nrestart = "permanent"\n'
    )
    viahttp, tooly, rec = start_with_agents(c, _http_agent(fake_llm), TOOLS_AGENT, rec_manifest)
    metrics_url = c.http_url + "/metrics"
    sends = 0

    def send(agent_id: str, text: str) -> Any:
        nonlocal sends
        sends += 1
        return c.call("agent.send", {"agent_id": agent_id, "text": text}, timeout=30)

    first, second = send(viahttp, "hi"), send(viahttp, "hi again")
    assert first.body["reply"] == "from backup" and second.body["reply"] == "from http", (first, second)
    assert "it is" in send(tooly, "what time is it").body["reply"]
    send(tooly, "forbidden please")  # text_count is not in its tools: denied
    outage = send(tooly, "outage")
    assert outage.is_error and outage.body["code"] == "llm_error", outage.body
    c.ok("agent.hibernate", {"agent_id": tooly})
    assert send(tooly, "hello").body["reply"] == "ok"  # woken by the message
    crashed = send(rec, "recurse")
    assert crashed.is_error and crashed.body["code"] == "sandbox_error", crashed.body
    wait_for(lambda: c.ok("agent.info", {"agent_id": rec})["state"] == "running", what="rec restarted")
    missing = c.call("agent.info", {"agent_id": "no-such-agent"})
    assert missing.is_error and missing.body["code"] == "not_found"
    limited = sum(c.call("ping").body.get("code") == "rate_limited" for _ in range(400))
    assert limited > 0
    time.sleep(5)  # the bucket refills before the face asks the gateway

    fams = _scrape(metrics_url)
    w = {"worker": "workers-0"}
    assert _sample(fams["openfang_worker_message_seconds"], "_count", **w) == sends
    assert _sample(fams["openfang_worker_message_seconds"], "_bucket", le="+Inf", **w) == sends
    assert _sample(fams["openfang_worker_message_seconds"], "_sum", **w) > 0
    assert _sample(fams["openfang_gateway_request_seconds"], "_count", type="agent.send") == sends
    assert _sample(fams["openfang_gateway_request_seconds"], "_count", type="agent.hibernate") == 1
    # LLM: the HTTP provider failed once (503, no retries) and answered once; the backup answered once.
    http = {"provider": "vllm", "model": "fake-model", **w}
    assert _sample(fams["openfang_llm_requests"], "_total", **http) == 2
    assert _sample(fams["openfang_llm_errors"], "_total", kind="http_5xx", **http) == 1
    assert _sample(fams["openfang_llm_tokens"], "_total", type="prompt", **http) == 11
    assert _sample(fams["openfang_llm_tokens"], "_total", type="completion", **http) == 7
    assert _sample(fams["openfang_llm_request_seconds"], "_count", **http) == 1
    assert _sample(fams["openfang_llm_requests"], "_total", provider="backup", **w) == 1
    assert _sample(fams["openfang_llm_errors"], "_total", provider="script-b", kind="error", **w) == 1
    assert _sample(fams["openfang_tool_calls"], "_total", tool="time_now", **w) == 1
    assert _sample(fams["openfang_tool_errors"], "_total", tool="time_now", **w) == 0
    assert _sample(fams["openfang_tool_denials"], "_total", tool="text_count", **w) == 1
    assert _sample(fams["openfang_worker_hibernations"], "_total", why="request", **w) == 1
    assert _sample(fams["openfang_worker_wakes"], "_total", why="message", **w) == 1
    assert _sample(fams["openfang_worker_wake_seconds"], "_count", **w) == 1
    assert _sample(fams["openfang_worker_agent_crash_restarts"], "_total", cause="trap", **w) == 1
    # The gateway's door and its error replies.
    assert _sample(fams["openfang_gateway_refusals"], "_total", code="not_found") == 1
    assert _sample(fams["openfang_gateway_refusals"], "_total", code="rate_limited") == limited
    assert _sample(fams["openfang_gateway_error_replies"], "_total", code="llm_error") == 1
    assert _sample(fams["openfang_gateway_error_replies"], "_total", code="sandbox_error") == 1
    # The memory writer committed the conversation.
    commits = _sample(fams["openfang_memory_writer_commits"], "_total")
    assert commits > 0 and _sample(fams["openfang_memory_writer_requests"], "_total") >= commits
    assert _sample(fams["openfang_memory_writer_commit_seconds"], "_count") == commits
    assert _sample(fams["openfang_memory_writer_queue_limit"]) > 0
    assert c.stop() == 0


@pytest.mark.integration
def test_metrics_listen_serves_the_collector_without_the_http_face(make_cluster: type[Cluster]) -> None:
    """[metrics] listen with [http] off: a child serves the same families on a plain port, parsed."""
    port = free_port()
    c = make_cluster(workers=1, extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    greeter = start_with_agents(c, (ROOT / "openfang" / "data" / "agents" / "greeter.toml").read_text())[0]
    for _ in range(3):
        c.ok("agent.send", {"agent_id": greeter, "text": "hello"})
    assert c.node("metrics")["state"] == "running"
    fams = wait_for(lambda: _scrape(f"http://127.0.0.1:{port}/metrics"), what="metrics endpoint")
    assert _sample(fams["openfang_up"]) == 1.0
    assert _sample(fams["openfang_agents"], state="running") == 1
    assert _sample(fams["openfang_worker_message_seconds"], "_count", worker="workers-0") == 3
    assert _sample(fams["openfang_gateway_request_seconds"], "_count", type="agent.send") == 3
    assert _sample(fams["openfang_llm_requests"], "_total", provider="scripted", worker="workers-0") == 3
    assert _sample(fams["openfang_child_up"], path="root/metrics") == 1.0
    assert c.stop() == 0


def test_metrics_table_becomes_a_child_and_bad_values_are_named(tmp_path: Path) -> None:
    """[metrics] adds the metrics child with its args; bad keys and values name file, table and key."""
    base = '[cluster]\nname = "t"\ndata_dir = "data"\n'
    cfg = parse_config(
        base + '[metrics]\nlisten = "127.0.0.1:9464"\nper_agent = true\ntop_agents = 5\n',
        source="c.toml",
        base_dir=tmp_path,
    )
    child = cfg.tree.children[-1]
    assert child.id == "metrics" and child.start == "openfang.control.http.metrics_server:main"
    metrics = child.args["metrics"]
    assert (metrics.host, metrics.port, metrics.per_agent, metrics.top_agents) == ("127.0.0.1", 9464, True, 5)
    assert child.args["control"] == cfg.control and cfg.metrics == metrics
    assert all(
        c.id != "metrics" for c in parse_config(base, source="c.toml", base_dir=tmp_path).tree.children
    )
    with pytest.raises(ConfigError) as err:
        parse_config(
            base + '[metrics]\nlisten = "nowhere"\nper_agent = "yes"\ntop_agents = 0\ncolour = 1\n',
            source="c.toml",
            base_dir=tmp_path,
        )
    text = str(err.value)
    for key in ("listen", "per_agent", "top_agents", "colour"):
        assert f"c.toml: [metrics] key '{key}'" in text, text
    with pytest.raises(ConfigError, match=r"\[metrics\] key 'listen': required"):
        parse_config(base + "[metrics]\nper_agent = true\n", source="c.toml", base_dir=tmp_path)


def test_metrics_docs_list_exactly_the_sections_keys() -> None:
    """docs/config.md's [metrics] table names every key of MetricsConfig and no other."""
    from openfang.control.config import MetricsConfig
    from openfang.protocol.config_kit import describe

    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split("## [metrics]\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")}
    assert rows == {k.key for k in describe(MetricsConfig)}
