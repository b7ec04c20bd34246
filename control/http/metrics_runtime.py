"""The runtime families of ``/metrics``: what the gateway, the workers and the memory writer measured.

Read from the figures the catalogue carries (``openfang.protocol.stats``, cumulative since each process
started; a restart starts from zero, which Prometheus reads as a counter reset):

- ``status`` -> ``gateway`` (GatewayStats): answer time per request type, refusals at the door and error
  replies by code, restarts and losses the gateway decided;
- ``agent.list`` -> ``workers`` (WorkerStats, one per answering worker): agent.send latency, LLM calls per
  provider and model, tool calls per tool, hibernations, wakes, restarts by cause;
- ``memory.stats`` -> ``writer`` (MemoryWriterStats): queue depth and group commits.

Every label comes from a bounded set: catalogue request types and error codes, workers, the provider/model
pairs of the agents' manifests (at most 64 per worker), the registry's tool names, a few fixed reasons.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)


def runtime_families(bodies: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Every runtime family the sample's answers allow (a missing answer or field: its families are out)."""
    status = bodies.get("status")
    if status is not None and isinstance(status.get("gateway"), Mapping):
        yield from _gateway(status["gateway"])
    listing = bodies.get("agent.list")
    if listing is not None:
        yield from _workers([w for w in listing.get("workers") or [] if isinstance(w, Mapping)])
    stats = bodies.get("memory.stats")
    if stats is not None and isinstance(stats.get("writer"), Mapping):
        yield from _writer(stats["writer"])


def _gateway(gw: Mapping[str, Any]) -> Iterator[Metric]:
    seconds = HistogramMetricFamily(
        "openfang_gateway_request_seconds",
        "time from a client request admitted by the gateway to its reply, by request type",
        labels=["type"],
    )
    for entry in gw.get("requests") or []:
        if isinstance(entry, Mapping):
            _add_histogram(seconds, [str(entry.get("type"))], entry.get("seconds"))
    yield seconds
    for key, name, help_, label in (
        (
            "refusals",
            "openfang_gateway_refusals",
            "requests refused at the gateway's door, by error code",
            "code",
        ),
        (
            "errors",
            "openfang_gateway_error_replies",
            "error replies sent to clients, by code (relayed too)",
            "code",
        ),
        ("agent_restarts", "openfang_gateway_agent_restarts", "agent restarts the gateway made", "reason"),
        ("agents_lost", "openfang_gateway_agents_lost", "agents given up, by agent.lost reason", "reason"),
    ):
        yield _counts(name, help_, [label], {(k,): v for k, v in _map(gw.get(key)).items()})
    if isinstance(gw.get("started_at"), (int, float)):
        started = GaugeMetricFamily(
            "openfang_gateway_start_time_seconds", "unix time the gateway started (its counters start then)"
        )
        started.add_metric([], float(gw["started_at"]))
        yield started


def _workers(workers: list[Mapping[str, Any]]) -> Iterator[Metric]:
    messages = HistogramMetricFamily(
        "openfang_worker_message_seconds",
        "agent.send on the worker: from the request reaching it to its reply leaving",
        labels=["worker"],
    )
    wake = HistogramMetricFamily(
        "openfang_worker_wake_seconds",
        "time to wake a hibernated agent (read and restore)",
        labels=["worker"],
    )
    llm_labels = ["worker", "provider", "model"]
    llm_requests = CounterMetricFamily(
        "openfang_llm_requests", "model calls (each fallback attempt counts)", labels=llm_labels
    )
    llm_errors = CounterMetricFamily(
        "openfang_llm_errors",
        "failed model calls by kind (http_4xx, http_5xx, timeout, connection, bad_response, config, error)",
        labels=[*llm_labels, "kind"],
    )
    llm_tokens = CounterMetricFamily(
        "openfang_llm_tokens",
        "tokens the provider counted, by type (prompt, completion)",
        labels=[*llm_labels, "type"],
    )
    llm_seconds = HistogramMetricFamily(
        "openfang_llm_request_seconds",
        "model call durations (answered calls, and failures without a fallback)",
        labels=llm_labels,
    )
    tool_calls = CounterMetricFamily(
        "openfang_tool_calls", "tool calls asked for, denials included", labels=["worker", "tool"]
    )
    tool_errors = CounterMetricFamily(
        "openfang_tool_errors", "tool calls that ran and failed", labels=["worker", "tool"]
    )
    tool_denials = CounterMetricFamily(
        "openfang_tool_denials",
        "tool calls refused by the agent's tools or permissions",
        labels=["worker", "tool"],
    )
    hibernations: dict[tuple[str, ...], Any] = {}
    wakes: dict[tuple[str, ...], Any] = {}
    restarts: dict[tuple[str, ...], Any] = {}
    for w in sorted(workers, key=lambda w: str(w.get("worker"))):
        worker = str(w.get("worker"))
        _add_histogram(messages, [worker], w.get("messages"))
        _add_histogram(wake, [worker], w.get("wake_seconds"))
        for e in w.get("llm") or []:
            if not isinstance(e, Mapping):
                continue
            key = [worker, str(e.get("provider")), str(e.get("model"))]
            llm_requests.add_metric(key, _num(e.get("requests")))
            for kind, n in sorted(_map(e.get("errors")).items()):
                llm_errors.add_metric([*key, kind], n)
            llm_tokens.add_metric([*key, "prompt"], _num(e.get("prompt_tokens")))
            llm_tokens.add_metric([*key, "completion"], _num(e.get("completion_tokens")))
            _add_histogram(llm_seconds, key, e.get("seconds"))
        for t in w.get("tools") or []:
            if isinstance(t, Mapping):
                key = [worker, str(t.get("tool"))]
                tool_calls.add_metric(key, _num(t.get("calls")))
                tool_errors.add_metric(key, _num(t.get("errors")))
                tool_denials.add_metric(key, _num(t.get("denials")))
        hibernations.update({(worker, k): v for k, v in _map(w.get("hibernations")).items()})
        wakes.update({(worker, k): v for k, v in _map(w.get("wakes")).items()})
        restarts.update({(worker, k): v for k, v in _map(w.get("restarts")).items()})
    yield from (messages, llm_requests, llm_errors, llm_tokens, llm_seconds, tool_calls, tool_errors)
    yield tool_denials
    yield _counts(
        "openfang_worker_hibernations",
        "agents hibernated, by why (request, idle)",
        ["worker", "why"],
        hibernations,
    )
    yield _counts(
        "openfang_worker_wakes",
        "hibernated agents woken, by why (request, message)",
        ["worker", "why"],
        wakes,
    )
    yield wake
    yield _counts(
        "openfang_worker_agent_crash_restarts",
        "agent restarts the worker made, by cause "
        "(trap, deadline, memory_cap, init_failed, wake_failed, host_error)",
        ["worker", "cause"],
        restarts,
    )


def _writer(writer: Mapping[str, Any]) -> Iterator[Metric]:
    for key, name, help_ in (
        ("queued", "openfang_memory_writer_queue_depth", "requests waiting for the writer's next commit"),
        ("queue_max", "openfang_memory_writer_queue_limit", "queue depth past which writes are refused"),
    ):
        gauge = GaugeMetricFamily(name, help_)
        gauge.add_metric([], _num(writer.get(key)))
        yield gauge
    for key, name, help_ in (
        ("commits", "openfang_memory_writer_commits", "group commits of the memory writer"),
        ("writes", "openfang_memory_writer_requests", "requests applied by those commits"),
        ("busy", "openfang_memory_writer_busy", "writes refused busy because the queue was full"),
    ):
        counter = CounterMetricFamily(name, help_)
        counter.add_metric([], _num(writer.get(key)))
        yield counter
    seconds = HistogramMetricFamily("openfang_memory_writer_commit_seconds", "duration of each group commit")
    _add_histogram(seconds, [], writer.get("commit_seconds"))
    yield seconds


# -- helpers ----------------------------------------------------------------------------------------------


def _add_histogram(family: HistogramMetricFamily, labels: Sequence[str], wire: Any) -> None:
    """A HistogramBody as Prometheus buckets (``le`` cumulative, then +Inf = count); skipped if malformed."""
    if not isinstance(wire, Mapping):
        return
    bounds, counts = wire.get("bounds"), wire.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list) or len(bounds) != len(counts):
        return
    buckets = [(_le(b), _num(c)) for b, c in zip(bounds, counts, strict=True)]
    buckets.append(("+Inf", _num(wire.get("count"))))
    family.add_metric(list(labels), buckets, _num(wire.get("sum")))


def _le(bound: Any) -> str:
    value = float(bound)
    return "+Inf" if math.isinf(value) else repr(value)


def _counts(
    name: str, help_: str, labels: list[str], values: Mapping[tuple[str, ...], Any]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric(list(key), _num(n))
    return family


def _map(raw: Any) -> dict[str, float]:
    return {str(k): _num(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
