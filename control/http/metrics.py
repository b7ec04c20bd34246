"""Prometheus text at ``GET /metrics``: the cluster as the gateway reports it, read on each scrape.

The face is a client of the gateway like any other, so every figure comes from a protocol request:
``status`` (daemon), ``tree`` (children: restarts, RSS, uptime), ``agent.list`` (per-agent counters, summed
per worker), ``memory.stats`` (the memory writer's store) and ``security.report`` (layers on or off). CPU
seconds per child are read with psutil from the pids ``tree`` reports: the face is a child of the same
daemon, so it runs on the same host (the protocol carries no CPU time).

One :class:`Sampler` per app caches the answers for ``CACHE_S`` and lets one refresh run at a time, so a
scrape storm costs the gateway one round of requests per ``CACHE_S``, whatever the number of scrapers.
The :class:`ClusterCollector` (a ``prometheus_client`` custom collector in the face's own
``CollectorRegistry``) turns the cached answers into metric families.

What the processes measured themselves (latency histograms, LLM and tool calls, hibernations, refusals, the
memory writer's queue and commits) rides on the same answers and becomes families in
:mod:`~openfang.control.http.metrics_runtime`. The same collector also serves ``[metrics] listen`` without
the face (:mod:`~openfang.control.http.metrics_server`).

Label cardinality is bounded with 10,000 agents: workers, tree children, agent states and memory kinds
are few; per-agent series are off by default (``[http] metrics_per_agent``) and, when on, cover only the
``metrics_top_agents`` agents with the most messages (``openfang_metrics_agents_omitted`` counts the rest).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openfang.control.http.app import Face, Installed
from openfang.control.http.metrics_runtime import runtime_families
from openfang.control.http.paging import walk_agents
from openfang.protocol.errors import OpenFangError

CACHE_S = 2.0
# The requests one refresh makes, in order; each one's failure is reported, the others still count.
REQUESTS: tuple[str, ...] = ("status", "tree", "agent.list", "memory.stats", "security.report")
# agent.list counters: record key -> (metric suffix, HELP). Monotonic while the agent lives.
AGENT_COUNTERS: dict[str, tuple[str, str]] = {
    "messages": ("messages", "messages the agent has handled"),
    "llm_calls": ("llm_calls", "LLM calls the agent has made"),
    "tool_calls": ("tool_calls", "tool calls the agent has made"),
    "denied": ("denials", "host calls and tool calls refused to the agent by its permissions"),
    "fuel_used": ("fuel_used", "wasm fuel the agent has consumed (wasmtime fuel units)"),
    "restarts": ("restarts", "times the agent was restarted"),
}
# agent.list gauges: record key -> (metric name part, HELP)
AGENT_GAUGES: dict[str, tuple[str, str]] = {
    "memory_bytes": ("memory_bytes", "linear memory of the agent's sandbox in bytes"),
    "inbox": ("inbox_messages", "messages waiting in the agent's inbox"),
}
BUSY_ACTIVITIES = frozenset({"running", "waiting", "throttled"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(slots=True)
class Sample:
    """The gateway's answers of one refresh: request type -> reply body, or the error it gave."""

    taken_at: float
    took_s: float
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cpu_s: dict[int, float] = field(default_factory=dict)  # pid -> user + system CPU seconds


Fetch = Callable[[str], Awaitable[dict[str, Any]]]


class Sampler:
    """Cached, single-flight reads of the gateway: at most one refresh per ``cache_s``."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        cache_s: float = CACHE_S,
        measure_cpu: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.cache_s = cache_s
        self.measure_cpu = measure_cpu
        self._clock = clock
        self._lock = asyncio.Lock()
        self.current: Sample | None = None
        self.refreshes = 0
        self.gateway_requests = 0

    async def sample(self) -> Sample:
        """The cached sample if younger than ``cache_s``, else a new one (concurrent callers share it)."""
        async with self._lock:
            now = self._clock()
            if self.current is not None and now - self.current.taken_at < self.cache_s:
                return self.current
            self.current = await self._refresh(now)
            return self.current

    async def _refresh(self, now: float) -> Sample:
        started = time.perf_counter()
        sample = Sample(taken_at=now, took_s=0.0)

        async def one(kind: str) -> None:
            self.gateway_requests += 1
            try:
                sample.bodies[kind] = await self._fetch(kind)
            except OpenFangError as exc:
                sample.errors[kind] = f"{exc.code or 'error'}: {exc}"

        await asyncio.gather(*(one(kind) for kind in REQUESTS))
        if self.measure_cpu and "tree" in sample.bodies:
            sample.cpu_s = _cpu_seconds(_nodes(sample.bodies["tree"]))
        sample.took_s = time.perf_counter() - started
        self.refreshes += 1
        return sample


class ClusterCollector(Collector):
    """Metric families from the sampler's latest sample (the handler refreshes it before collecting)."""

    def __init__(self, sampler: Sampler, *, per_agent: bool = False, top_agents: int = 100) -> None:
        self.sampler = sampler
        self.per_agent = per_agent
        self.top_agents = top_agents

    def collect(self) -> Iterable[Metric]:
        sample = self.sampler.current
        if sample is None:
            return []
        return list(
            families(sample, per_agent=self.per_agent, top_agents=self.top_agents, sampler=self.sampler)
        )


def families(
    sample: Sample, *, per_agent: bool = False, top_agents: int = 100, sampler: Sampler | None = None
) -> Iterator[Metric]:
    """Every metric family for one sample; the pure core of the collector (tests feed it samples)."""
    yield from _exporter(sample, sampler)
    yield from _daemon(sample.bodies.get("status"))
    tree = sample.bodies.get("tree")
    nodes = _nodes(tree) if tree is not None else []
    yield from _children(nodes, sample.cpu_s)
    listing = sample.bodies.get("agent.list")
    agents = _agents(listing)
    if listing is not None:
        yield from _workers(nodes, agents)
        yield from _agent_totals(agents, listing)
        if per_agent:
            yield from _per_agent(agents, top_agents)
    yield from _memory(sample.bodies.get("memory.stats"))
    yield from _security(sample.bodies.get("security.report"))
    yield from runtime_families(sample.bodies)


# -- families ---------------------------------------------------------------------------------------------


def _exporter(sample: Sample, sampler: Sampler | None) -> Iterator[Metric]:
    up = GaugeMetricFamily("openfang_up", "1 when the gateway answered the status request of this scrape")
    up.add_metric([], 0.0 if "status" in sample.errors or "status" not in sample.bodies else 1.0)
    yield up
    ok = GaugeMetricFamily(
        "openfang_gateway_request_up",
        "1 when the gateway answered this request of the scrape, 0 when it failed (see the face's log)",
        labels=["request"],
    )
    for kind in REQUESTS:
        ok.add_metric([kind], 1.0 if kind in sample.bodies else 0.0)
    yield ok
    took = GaugeMetricFamily(
        "openfang_scrape_gateway_seconds", "time the face took to read the cluster from the gateway"
    )
    took.add_metric([], sample.took_s)
    yield took
    if sampler is not None:
        asked = CounterMetricFamily(
            "openfang_scrape_gateway_requests",
            "requests /metrics has sent to the gateway (scrapes within the cache time share one round)",
        )
        asked.add_metric([], float(sampler.gateway_requests))
        yield asked


def _daemon(status: Mapping[str, Any] | None) -> Iterator[Metric]:
    if status is None:
        return
    info = InfoMetricFamily("openfang_daemon", "the daemon: cluster name, version and state")
    info.add_metric(
        [],
        {
            "name": str(status.get("name", "")),
            "version": str(status.get("version", "")),
            "state": str(status.get("state", "")),
        },
    )
    yield info
    yield _gauge("openfang_daemon_uptime_seconds", "seconds since the daemon started", status.get("uptime_s"))
    yield _gauge(
        "openfang_workers_connected", "worker processes connected to the gateway", status.get("workers")
    )
    reloads = CounterMetricFamily("openfang_reloads", "config reloads applied since the daemon started")
    reloads.add_metric([], float(status.get("reloads") or 0))
    yield reloads


def _children(nodes: list[Mapping[str, Any]], cpu_s: Mapping[int, float]) -> Iterator[Metric]:
    labels = ["path", "type"]
    up = GaugeMetricFamily("openfang_child_up", "1 when the child is running", labels=labels)
    restarts = CounterMetricFamily(
        "openfang_child_restarts", "times its supervisor restarted the child", labels=labels
    )
    rss = GaugeMetricFamily(
        "openfang_child_resident_memory_bytes", "resident memory of the child's process", labels=labels
    )
    uptime = GaugeMetricFamily(
        "openfang_child_uptime_seconds", "seconds since the child's process started", labels=labels
    )
    cpu = CounterMetricFamily(
        "openfang_child_cpu_seconds",
        "user + system CPU time of the child's process (read with psutil on this host)",
        labels=labels,
    )
    for node in nodes:
        key = [str(node.get("path", node.get("id", "?"))), str(node.get("type", "?"))]
        up.add_metric(key, 1.0 if node.get("state") == "running" else 0.0)
        restarts.add_metric(key, float(node.get("restarts") or 0))
        if isinstance(node.get("rss_bytes"), int):
            rss.add_metric(key, float(node["rss_bytes"]))
        if isinstance(node.get("uptime_s"), (int, float)):
            uptime.add_metric(key, float(node["uptime_s"]))
        pid = node.get("pid")
        if isinstance(pid, int) and pid in cpu_s:
            cpu.add_metric(key, cpu_s[pid])
    yield from (up, restarts, rss, uptime, cpu)


def _workers(nodes: list[Mapping[str, Any]], agents: list[Mapping[str, Any]]) -> Iterator[Metric]:
    """Per agent worker: agents by state, busy agents, and its agents' counters summed."""
    names = {str(n.get("id")) for n in nodes if _hosts_agents(n)} | {
        str(a.get("worker")) for a in agents if a.get("worker")
    }
    by_state = GaugeMetricFamily(
        "openfang_worker_agents", "agents on the worker, by state", labels=["worker", "state"]
    )
    busy = GaugeMetricFamily(
        "openfang_worker_agents_busy", "agents inside a call (running, waiting, throttled)", labels=["worker"]
    )
    counts: dict[tuple[str, str], int] = {}
    busy_n: dict[str, int] = dict.fromkeys(names, 0)
    sums: dict[str, dict[str, float]] = {w: {} for w in names}
    for agent in agents:
        worker = str(agent.get("worker") or "")
        if not worker:
            continue
        state = str(agent.get("state") or "unknown")
        counts[(worker, state)] = counts.get((worker, state), 0) + 1
        if agent.get("activity") in BUSY_ACTIVITIES:
            busy_n[worker] = busy_n.get(worker, 0) + 1
        mine = sums.setdefault(worker, {})
        for key in (*AGENT_COUNTERS, *AGENT_GAUGES):
            value = agent.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                mine[key] = mine.get(key, 0.0) + float(value)
    for (worker, state), n in sorted(counts.items()):
        by_state.add_metric([worker, state], float(n))
    for worker, n in sorted(busy_n.items()):
        busy.add_metric([worker], float(n))
    yield by_state
    yield busy
    # Sums over the agents living on the worker now: they drop when an agent goes, so they are gauges.
    for key, (part, help_) in {**AGENT_COUNTERS, **AGENT_GAUGES}.items():
        family = GaugeMetricFamily(
            f"openfang_worker_agent_{part}",
            f"sum over the worker's current agents: {help_}",
            labels=["worker"],
        )
        for worker in sorted(sums):
            family.add_metric([worker], sums[worker].get(key, 0.0))
        yield family


def _agent_totals(agents: list[Mapping[str, Any]], listing: Mapping[str, Any]) -> Iterator[Metric]:
    states = GaugeMetricFamily("openfang_agents", "agents in the cluster, by state", labels=["state"])
    counts: dict[str, int] = {}
    for agent in agents:
        state = str(agent.get("state") or "unknown")
        counts[state] = counts.get(state, 0) + 1
    for state, n in sorted(counts.items()):
        states.add_metric([state], float(n))
    yield states
    errors = listing.get("errors")
    yield _gauge(
        "openfang_agent_list_errors",
        "workers that did not answer the agent.list of this scrape (their agents are missing)",
        len(errors) if isinstance(errors, list) else 0,
    )


def _per_agent(agents: list[Mapping[str, Any]], top: int) -> Iterator[Metric]:
    ranked = sorted(agents, key=lambda a: (-_num(a.get("messages")), str(a.get("agent_id"))))
    chosen, omitted = ranked[:top], len(ranked) - min(top, len(ranked))
    labels = ["agent_id", "name", "worker"]
    state = GaugeMetricFamily(
        "openfang_agent_state", "1 for the agent's current state (the state label)", labels=[*labels, "state"]
    )
    counters = {
        key: CounterMetricFamily(f"openfang_agent_{part}", f"{help_} (per agent)", labels=labels)
        for key, (part, help_) in AGENT_COUNTERS.items()
    }
    gauges = {
        key: GaugeMetricFamily(f"openfang_agent_{part}", f"{help_} (per agent)", labels=labels)
        for key, (part, help_) in AGENT_GAUGES.items()
    }
    for agent in chosen:
        key = [str(agent.get("agent_id")), str(agent.get("name") or ""), str(agent.get("worker") or "")]
        state.add_metric([*key, str(agent.get("state") or "unknown")], 1.0)
        for families_of in (counters, gauges):
            for name, family in families_of.items():
                value = agent.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    family.add_metric(key, float(value))
    yield state
    yield from counters.values()
    yield from gauges.values()
    yield _gauge(
        "openfang_metrics_agents_omitted",
        "agents without per-agent series (beyond [http] metrics_top_agents, by messages)",
        omitted,
    )


def _memory(stats: Mapping[str, Any] | None) -> Iterator[Metric]:
    if stats is None:
        return
    rows = GaugeMetricFamily("openfang_memory_rows", "rows in the memory store, by kind", labels=["kind"])
    raw = stats.get("counts")
    counts: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    for kind, n in sorted(counts.items()):
        if kind != "seq" and isinstance(n, int):
            rows.add_metric([str(kind)], float(n))
    yield rows
    if isinstance(counts.get("seq"), int):
        seq = CounterMetricFamily(
            "openfang_memory_writes", "writes the memory writer has committed (its sequence number)"
        )
        seq.add_metric([], float(counts["seq"]))
        yield seq
    if isinstance(stats.get("db_bytes"), int):
        yield _gauge("openfang_memory_db_bytes", "size of the memory database file", stats["db_bytes"])
    info = InfoMetricFamily("openfang_memory_embedder", "the embedder the memory store uses")
    info.add_metric([], {"embedder": str(stats.get("embedder") or "none")})
    yield info


def _security(report: Mapping[str, Any] | None) -> Iterator[Metric]:
    if report is None:
        return
    enabled = GaugeMetricFamily(
        "openfang_security_layer_enabled", "1 when the security layer is on", labels=["layer", "name"]
    )
    for layer in report.get("layers") or []:
        if isinstance(layer, Mapping):
            enabled.add_metric(
                [str(layer.get("layer", "?")), str(layer.get("name", "?"))],
                1.0 if layer.get("enabled") else 0.0,
            )
    yield enabled


# -- helpers ----------------------------------------------------------------------------------------------


def _gauge(name: str, help_: str, value: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_)
    family.add_metric([], _num(value))
    return family


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _nodes(tree: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every node of a ``tree`` reply, the root first, depth first."""
    out: list[Mapping[str, Any]] = []

    def walk(node: Mapping[str, Any]) -> None:
        out.append(node)
        for child in node.get("children") or []:
            if isinstance(child, Mapping):
                walk(child)

    root = tree.get("root")
    if isinstance(root, Mapping):
        out.append(root)
    for child in tree.get("children") or []:
        if isinstance(child, Mapping):
            walk(child)
    return out


def _hosts_agents(node: Mapping[str, Any]) -> bool:
    raw = node.get("info")
    info: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    return node.get("type") == "worker" and (
        str(node.get("start") or "").startswith("openfang.workers.worker") or "agents" in info
    )


def _agents(listing: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if listing is None:
        return []
    return [a for a in listing.get("agents") or [] if isinstance(a, Mapping) and a.get("agent_id")]


def _cpu_seconds(nodes: list[Mapping[str, Any]]) -> dict[int, float]:
    """pid -> CPU seconds, for pids whose process started when the tree says (not a reused pid)."""
    out: dict[int, float] = {}
    for node in nodes:
        pid, started = node.get("pid"), node.get("started_at")
        if not isinstance(pid, int):
            continue
        try:
            proc = psutil.Process(pid)
            if isinstance(started, (int, float)) and abs(proc.create_time() - started) > 5.0:
                continue  # the pid belongs to another process now
            times = proc.cpu_times()
        except (psutil.Error, OSError):
            continue
        out[pid] = float(times.user + times.system)
    return out


def local_endpoint(endpoint: str) -> bool:
    """Whether a control endpoint is on this host (ipc or loopback tcp): only then is psutil meaningful."""
    if endpoint.startswith("ipc://"):
        return True
    return (urlsplit(endpoint).hostname or "") in _LOOPBACK


def install(face: Face) -> Installed:
    async def fetch(kind: str) -> dict[str, Any]:
        if kind == "agent.list":  # every page (of PAGE agents, up to WALK_MAX): totals cover every agent
            return await walk_agents(lambda body: face.bridge.request(kind, body, timeout=5.0))
        return await face.bridge.request(kind, timeout=5.0)

    sampler = Sampler(fetch, measure_cpu=local_endpoint(face.bridge.endpoint))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        ClusterCollector(sampler, per_agent=face.metrics_per_agent, top_agents=face.metrics_top_agents)
    )

    async def metrics(request: Request) -> Response:
        await sampler.sample()
        # No await between the sample and the encoding: the collector reads the sample just taken.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    return Installed(routes=[Route("/metrics", metrics, methods=["GET"])])
