"""/metrics: Prometheus text read from the gateway on each scrape, cached, with bounded label cardinality."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import Cluster, wait_for
from http_kit import CLOCK, GREETER, start_with_agents
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from openfang.control.config import parse_config
from openfang.control.http.metrics import CACHE_S, REQUESTS, Sample, Sampler, families
from openfang.protocol.errors import ConfigError, RemoteError

TOKEN = "metrics-token-0123456789"


def _scrape(url: str, **kw: Any) -> dict[str, Any]:
    """GET /metrics and parse it: family name -> family (fails on text Prometheus could not parse)."""
    response = httpx.get(url + "/metrics", timeout=15, **kw)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def _value(family: Any, **labels: str) -> float:
    for s in family.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created"):
            return float(s.value)
    raise AssertionError(f"no sample of {family.name} with {labels}: {family.samples}")


def _synthetic(n_agents: int, n_workers: int = 4) -> Sample:
    """A sample as the gateway would answer with ``n_agents`` agents spread over ``n_workers`` workers."""
    workers = [
        {
            "id": f"workers-{w}",
            "path": f"root/workers/workers-{w}",
            "type": "worker",
            "start": "openfang.workers.worker:main",
            "state": "running",
            "pid": 100 + w,
            "restarts": w,
            "rss_bytes": 1 << 20,
            "info": {"agents": n_agents // n_workers},
        }
        for w in range(n_workers)
    ]
    tree = {"children": [{"id": "workers", "path": "root/workers", "type": "supervisor", "state": "running",
                          "children": workers}]}  # fmt: skip
    agents = [
        {
            "agent_id": f"a{i}@workers-{i % n_workers}",
            "name": f"agent{i % 50}",
            "worker": f"workers-{i % n_workers}",
            "state": "running" if i % 7 else "suspended",
            "activity": "running" if i % 11 == 0 else "idle",
            "messages": i,
            "fuel_used": 10 * i,
            "memory_bytes": 65536,
            "inbox": i % 3,
            "llm_calls": i // 2,
            "tool_calls": 0,
            "denied": i % 5,
            "restarts": 0,
        }
        for i in range(n_agents)
    ]
    return Sample(
        taken_at=0.0,
        took_s=0.01,
        bodies={
            "status": {
                "name": "t",
                "version": "0",
                "state": "running",
                "uptime_s": 5.0,
                "workers": n_workers,
            },
            "tree": tree,
            "agent.list": {"agents": agents, "errors": []},
            "memory.stats": {"counts": {"episodes": 3, "seq": 9}, "db_bytes": 4096, "embedder": "hash"},
            "security.report": {"layers": [{"layer": 1, "name": "input validation", "enabled": True}]},
        },
    )


class _Fixed(Collector):
    def __init__(self, sample: Sample, **kw: Any) -> None:
        self.sample, self.kw = sample, kw

    def collect(self) -> Any:
        return list(families(self.sample, **self.kw))


def _render(sample: Sample, **kw: Any) -> list[Any]:
    registry = CollectorRegistry()
    registry.register(_Fixed(sample, **kw))
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


def test_metrics_series_stay_bounded_with_ten_thousand_agents() -> None:
    """10,000 agents: without per-agent series a few dozen series; with them, top-N agents only."""
    sample = _synthetic(10_000)
    off = sum(len(f.samples) for f in _render(sample))
    assert off < 200, off
    fams = {f.name: f for f in _render(sample, per_agent=True, top_agents=50)}
    on = sum(len(f.samples) for f in fams.values())
    assert on < 200 + 50 * 20, on
    per_agent = {s.labels["agent_id"] for s in fams["openfang_agent_messages"].samples}
    assert len(per_agent) == 50 and "a9999@workers-3" in per_agent  # the busiest agents are kept
    assert _value(fams["openfang_metrics_agents_omitted"]) == 10_000 - 50
    assert _value(fams["openfang_agents"], state="suspended") == len([i for i in range(10_000) if i % 7 == 0])
    assert _value(fams["openfang_worker_agent_messages"], worker="workers-1") == sum(range(1, 10_000, 4))


def test_metrics_types_help_and_units_follow_prometheus_names() -> None:
    """Counters end in _total, every family has HELP, byte and second figures say so in the name."""
    fams = _render(_synthetic(20), per_agent=True)
    for family in fams:
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
    names = {f.name for f in fams}
    for name in ("openfang_child_resident_memory_bytes", "openfang_daemon_uptime_seconds",
                 "openfang_agent_memory_bytes", "openfang_scrape_gateway_seconds"):  # fmt: skip
        assert name in names
    types = {f.name: f.type for f in fams}
    assert types["openfang_child_restarts"] == "counter" and types["openfang_agent_fuel_used"] == "counter"
    assert types["openfang_worker_agents"] == "gauge" and "openfang_daemon_info" in types


def test_sampler_shares_one_gateway_round_among_concurrent_scrapes() -> None:
    """50 scrapes at once, then 50 more within the cache time: one round of gateway requests in all."""
    calls: list[str] = []

    async def fetch(kind: str) -> dict[str, Any]:
        calls.append(kind)
        await asyncio.sleep(0.05)
        return {}

    now = [0.0]
    sampler = Sampler(fetch, cache_s=2.0, measure_cpu=False, clock=lambda: now[0])

    async def storm() -> None:
        await asyncio.gather(*(sampler.sample() for _ in range(50)))
        now[0] = 1.5
        await asyncio.gather(*(sampler.sample() for _ in range(50)))
        assert sorted(calls) == sorted(REQUESTS)
        now[0] = 2.5
        await sampler.sample()

    asyncio.run(storm())
    assert len(calls) == 2 * len(REQUESTS) and sampler.refreshes == 2


def test_sampler_reports_a_failed_request_and_keeps_the_others() -> None:
    """memory.stats failing (no memory writer) marks that request down; the other figures are still there."""

    async def fetch(kind: str) -> dict[str, Any]:
        if kind == "memory.stats":
            raise RemoteError("no memory service", code="not_found")
        return {"name": "t", "state": "running"} if kind == "status" else {}

    sample = asyncio.run(Sampler(fetch, measure_cpu=False).sample())
    fams = {f.name: f for f in _render(sample)}
    assert _value(fams["openfang_gateway_request_up"], request="memory.stats") == 0.0
    assert _value(fams["openfang_gateway_request_up"], request="status") == 1.0
    assert _value(fams["openfang_up"]) == 1.0 and "openfang_memory_rows" not in fams


@pytest.mark.integration
def test_metrics_scrape_a_real_daemon(make_cluster: type[Cluster]) -> None:
    """A real daemon with the face: workers, children, agents, memory and security figures, parsed."""
    c = make_cluster(workers=2, http=True, memory=True)
    c.settings["http_table"] = (
        f'[http]\nlisten = "127.0.0.1:{c.http_port}"\nmetrics_per_agent = true\nmetrics_top_agents = 1\n\n'
    )
    c.write_config()
    greeter, _clock = start_with_agents(c, GREETER, CLOCK)
    for _ in range(3):
        c.ok("agent.send", {"agent_id": greeter, "text": "hello"})
    wait_for(lambda: c.ok("memory.stats", {})["counts"].get("episodes", 0) >= 3, what="episodes written")
    fams = _scrape(c.http_url)
    assert _value(fams["openfang_up"]) == 1.0
    assert all(_value(fams["openfang_gateway_request_up"], request=r) == 1.0 for r in REQUESTS)
    assert _value(fams["openfang_workers_connected"]) == 2
    assert _value(fams["openfang_agents"], state="running") == 2
    assert _value(fams["openfang_worker_agents"], worker="workers-0", state="running") >= 1
    assert _value(fams["openfang_child_up"], path="root/workers/workers-0") == 1.0
    assert _value(fams["openfang_child_resident_memory_bytes"], path="root/http") > 1 << 20
    assert _value(fams["openfang_child_cpu_seconds"], path="root/control") > 0
    # top 1 by messages: the greeter (3 messages) has per-agent series, the clock (0) is omitted
    assert [
        s.labels["agent_id"] for s in fams["openfang_agent_messages"].samples if s.name.endswith("_total")
    ] == [greeter]
    assert _value(fams["openfang_agent_messages"], agent_id=greeter) == 3
    assert _value(fams["openfang_agent_fuel_used"], agent_id=greeter) > 0
    assert _value(fams["openfang_agent_state"], agent_id=greeter, state="running") == 1.0
    assert _value(fams["openfang_metrics_agents_omitted"]) == 1
    assert _value(fams["openfang_memory_rows"], kind="episodes") >= 3
    assert _value(fams["openfang_memory_db_bytes"]) > 0
    assert _value(fams["openfang_security_layer_enabled"], name="input validation") == 1.0
    assert c.stop() == 0


@pytest.mark.integration
def test_metrics_scrape_storm_is_served_from_the_cache(make_cluster: type[Cluster]) -> None:
    """40 concurrent scrapes of a real face cost the gateway at most two rounds of requests."""
    c = make_cluster(workers=1, http=True)
    start_with_agents(c, GREETER)
    before = _value(_scrape(c.http_url)["openfang_scrape_gateway_requests"])
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _scrape(c.http_url), range(40)))
    elapsed = time.monotonic() - t0
    after = max(_value(f["openfang_scrape_gateway_requests"]) for f in results)
    # One round per cache period the storm spans (a loaded machine may stretch it past one period),
    # never one per scrape: 40 scrapes would be 40 rounds without the cache.
    rounds = 2 + int(elapsed / CACHE_S)
    assert rounds < 40 and after - before <= rounds * len(REQUESTS), (before, after, elapsed)
    assert c.stop() == 0


@pytest.mark.integration
def test_metrics_need_the_bearer_token_when_tokens_are_set(make_cluster: type[Cluster]) -> None:
    """With [http] tokens, /metrics is 401 without the token and parses with it."""
    c = make_cluster(workers=1, http=True)
    c.settings["http_table"] = f'[http]\nlisten = "127.0.0.1:{c.http_port}"\ntokens = ["{TOKEN}"]\n\n'
    c.write_config()
    start_with_agents(c)
    assert httpx.get(c.http_url + "/metrics").status_code == 401
    fams = _scrape(c.http_url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert _value(fams["openfang_up"]) == 1.0
    assert c.stop() == 0


def test_metrics_config_keys_reach_the_http_child_and_bad_values_are_named(tmp_path: Path) -> None:
    """metrics_per_agent / metrics_top_agents go to the child's args; bad values name file, table and key."""
    base = '[cluster]\nname = "t"\ndata_dir = "data"\n[http]\nlisten = "127.0.0.1:9000"\n'
    cfg = parse_config(
        base + "metrics_per_agent = true\nmetrics_top_agents = 7\n", source="c.toml", base_dir=tmp_path
    )
    http = cfg.tree.children[-1].args["http"]  # the typed [http] config, forked into the child
    assert http.metrics_per_agent is True and http.metrics_top_agents == 7
    with pytest.raises(ConfigError) as err:
        parse_config(
            base + 'metrics_per_agent = "yes"\nmetrics_top_agents = 0\n', source="c.toml", base_dir=tmp_path
        )
    text = str(err.value)
    assert (
        "c.toml: [http] key 'metrics_per_agent'" in text and "c.toml: [http] key 'metrics_top_agents'" in text
    )
