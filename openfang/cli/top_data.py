"""What ``openfang top`` shows, as plain values: rows built from reply bodies, rates, CPU, the agent filter.

Nothing here talks to the daemon or draws on a terminal: :mod:`openfang.cli.top_feed` fetches the bodies
(``status``, ``tree``, ``agent.list``) and :mod:`openfang.cli.top_view` renders a :class:`Snapshot`. That
split is what lets the tests check every figure without a daemon or a terminal.

Where a figure comes from (and what the protocol does not carry today):

- tree: ``tree`` (pid, state, restarts, RSS, uptime per child);
- workers: the tree's worker nodes, plus per-worker sums over ``agent.list`` (agents, busy agents, queued
  messages). CPU % is measured here with psutil from the pids the tree reports, and only when the daemon
  runs on this host (an ``ipc://`` or loopback endpoint): the protocol carries no CPU time. The gateway's
  own count of requests in flight per worker is not exposed by any message either, so "busy + queued"
  (agents inside a call, messages waiting in agents' inboxes) stands in for it.
- agents: ``agent.list`` (state, activity, worker, messages, fuel used, memory, inbox, restarts); msgs/s is
  the change of ``messages`` between successive samples.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil

# Activities (the sandbox's state) in which an agent is handling a message right now.
BUSY_ACTIVITIES = frozenset({"running", "waiting", "throttled"})
_WORKER_START = "openfang.workers.worker"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRow:
    """One child of the supervision tree, flattened; ``depth`` 0 is the root."""

    depth: int
    id: str
    path: str
    type: str  # supervisor | worker
    state: str
    pid: int | None = None
    restarts: int = 0
    rss_bytes: int | None = None
    uptime_s: float | None = None
    core: int | None = None  # the CPU it is pinned to, if any
    hosts_agents: bool = False  # an agent worker process (not the gateway or the memory writer)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRow:
    """One agent worker process: its tree node plus what its agents add up to."""

    id: str
    state: str
    pid: int | None
    core: int | None
    cpu_percent: float | None  # None: not measurable from here (remote daemon, first sample, gone)
    rss_bytes: int | None
    restarts: int
    agents: int
    busy: int  # agents inside a call (running, waiting on a host job, throttled)
    queued: int  # messages waiting in its agents' inboxes


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    agent_id: str
    name: str
    worker: str  # "" when the record names none (not placed)
    state: str
    activity: str = ""
    service: str = ""
    messages: int | None = None
    msgs_per_s: float | None = None  # None until two samples of this agent exist
    fuel_used: int | None = None
    memory_bytes: int | None = None
    inbox: int | None = None
    restarts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One sample of the whole system, ready to draw."""

    taken_at: float
    name: str = ""
    state: str = ""
    version: str = ""
    uptime_s: float | None = None
    workers_connected: int | None = None
    nodes: tuple[NodeRow, ...] = ()
    workers: tuple[WorkerRow, ...] = ()
    agents: tuple[AgentRow, ...] = ()
    problems: tuple[str, ...] = ()  # partial answers, e.g. a worker that did not answer agent.list


# -- the tree --------------------------------------------------------------------------------------------


def flatten_tree(body: Mapping[str, Any]) -> list[NodeRow]:
    """The ``tree`` reply as rows in depth-first order, the root first (when the reply has one)."""
    rows: list[NodeRow] = []
    root = body.get("root")
    if isinstance(root, Mapping):
        rows.append(_node_row(root, 0))
    for node in body.get("children") or []:
        _walk(node, 1, rows)
    return rows


def _walk(node: Mapping[str, Any], depth: int, rows: list[NodeRow]) -> None:
    rows.append(_node_row(node, depth))
    for child in node.get("children") or []:
        _walk(child, depth + 1, rows)


def _node_row(node: Mapping[str, Any], depth: int) -> NodeRow:
    info = node.get("info")
    info = info if isinstance(info, Mapping) else {}
    start = str(node.get("start") or "")
    return NodeRow(
        depth=depth,
        id=str(node.get("id", "?")),
        path=str(node.get("path", "")),
        type=str(node.get("type", "?")),
        state=str(node.get("state", "?")),
        pid=_int(node.get("pid")),
        restarts=_int(node.get("restarts")) or 0,
        rss_bytes=_int(node.get("rss_bytes")),
        uptime_s=_float(node.get("uptime_s")),
        core=_int(node.get("cpu")),
        hosts_agents=node.get("type") == "worker" and (start.startswith(_WORKER_START) or "agents" in info),
    )


# -- agents and workers ----------------------------------------------------------------------------------


def agent_rows(body: Mapping[str, Any], rates: Mapping[str, float | None] | None = None) -> list[AgentRow]:
    """The ``agent.list`` reply as rows sorted by agent id, with msgs/s from ``rates`` where known.

    An id listed twice (a record from the registry and one from a worker, say) keeps its last record: the
    view keys its rows by agent id.
    """
    rows: dict[str, AgentRow] = {}
    for rec in body.get("agents") or []:
        if not isinstance(rec, Mapping) or not rec.get("agent_id"):
            continue
        aid = str(rec["agent_id"])
        rows[aid] = AgentRow(
            agent_id=aid,
            name=str(rec.get("name") or ""),
            worker=str(rec.get("worker") or ""),
            state=str(rec.get("state") or "?"),
            activity=str(rec.get("activity") or ""),
            service=str(rec.get("service") or ""),
            messages=_int(rec.get("messages")),
            msgs_per_s=(rates or {}).get(aid),
            fuel_used=_int(rec.get("fuel_used")),
            memory_bytes=_int(rec.get("memory_bytes")),
            inbox=_int(rec.get("inbox")),
            restarts=_int(rec.get("restarts")) or 0,
        )
    return [rows[k] for k in sorted(rows)]


def worker_rows(
    nodes: Iterable[NodeRow], agents: Iterable[AgentRow], cpu: Mapping[int, float | None] | None = None
) -> list[WorkerRow]:
    """One row per agent worker of the tree, with its agents' sums and its CPU % (by pid) where measured."""
    per_worker: dict[str, list[AgentRow]] = {}
    for agent in agents:
        per_worker.setdefault(agent.worker, []).append(agent)
    rows = []
    for node in nodes:
        if not node.hosts_agents:
            continue
        mine = per_worker.get(node.id, [])
        rows.append(
            WorkerRow(
                id=node.id,
                state=node.state,
                pid=node.pid,
                core=node.core,
                cpu_percent=(cpu or {}).get(node.pid) if node.pid is not None else None,
                rss_bytes=node.rss_bytes,
                restarts=node.restarts,
                agents=len(mine),
                busy=sum(1 for a in mine if a.activity in BUSY_ACTIVITIES),
                queued=sum(a.inbox or 0 for a in mine),
            )
        )
    return rows


# -- rates -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RateMeter:
    """Per-key rate of a growing counter, over the samples of the last ``window`` seconds.

    A counter that goes down (the agent restarted, or a new agent took the id) starts over: its rate is
    unknown until the next sample. Keys absent from a sample are forgotten.
    """

    window: float = 5.0
    _samples: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def update(self, now: float, counts: Mapping[str, int | None]) -> dict[str, float | None]:
        rates: dict[str, float | None] = {}
        for key, count in counts.items():
            if count is None:
                self._samples.pop(key, None)
                rates[key] = None
                continue
            samples = self._samples.setdefault(key, deque())
            if samples and (count < samples[-1][1] or now <= samples[-1][0]):
                samples.clear()  # a reset, or a clock that did not move: start over
            samples.append((now, count))
            # Keep one sample at or before the window's start, so the rate always spans the window.
            while len(samples) > 2 and samples[1][0] <= now - self.window:
                samples.popleft()
            if len(samples) < 2:
                rates[key] = None
                continue
            (t0, c0), (t1, c1) = samples[0], samples[-1]
            rates[key] = (c1 - c0) / (t1 - t0)
        for gone in set(self._samples) - set(counts):
            del self._samples[gone]
        return rates


# -- CPU -------------------------------------------------------------------------------------------------


def is_local(endpoint: str) -> bool:
    """True when a daemon at ``endpoint`` runs on this host, so its pids are ours to measure."""
    if endpoint.startswith("ipc://"):
        return True
    if endpoint.startswith("tcp://"):
        return (urlsplit(endpoint).hostname or "") in _LOOPBACK
    return False


class CpuMeter:
    """CPU % of local processes by pid (psutil), 100 % being one core fully used.

    A pid is measured only if the process's start time agrees with the uptime the daemon reported, so a
    recycled pid (or a pid of another namespace) is never shown as the worker. The first sample of a
    process has no figure yet (psutil needs two readings).
    """

    def __init__(self, tolerance_s: float = 5.0) -> None:
        self.tolerance_s = tolerance_s
        self._procs: dict[int, psutil.Process] = {}

    def measure(self, nodes: Iterable[NodeRow], now: float | None = None) -> dict[int, float | None]:
        now = time.time() if now is None else now
        out: dict[int, float | None] = {}
        seen: set[int] = set()
        for node in nodes:
            if node.pid is None:
                continue
            seen.add(node.pid)
            out[node.pid] = self._one(node, now)
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        return out

    def _one(self, node: NodeRow, now: float) -> float | None:
        assert node.pid is not None
        proc = self._procs.get(node.pid)
        try:
            if proc is None or not proc.is_running():
                proc = psutil.Process(node.pid)
                if node.uptime_s is not None and abs(proc.create_time() - (now - node.uptime_s)) > (
                    self.tolerance_s
                ):
                    self._procs.pop(node.pid, None)
                    return None  # not the process the daemon means
                self._procs[node.pid] = proc
                proc.cpu_percent(None)  # the first reading only starts the clock
                return None
            return float(proc.cpu_percent(None))
        except psutil.Error:
            self._procs.pop(node.pid, None)
            return None


# -- the agent filter ------------------------------------------------------------------------------------

FILTER_FIELDS = ("id", "name", "worker", "state", "service", "activity")


@dataclass(frozen=True, slots=True)
class AgentFilter:
    """Which agents to show: every term must match (case-insensitive substrings).

    A bare term matches any of id, name, worker, state, service; ``field:text`` matches one field
    (``state:susp``, ``worker:workers-1``); ``!term`` (or ``!field:text``) excludes what the term matches.
    """

    text: str = ""

    @property
    def terms(self) -> list[tuple[bool, str | None, str]]:
        out: list[tuple[bool, str | None, str]] = []
        for raw in self.text.lower().split():
            negate = raw.startswith("!")
            raw = raw[1:] if negate else raw
            name, sep, value = raw.partition(":")
            if sep and name in FILTER_FIELDS:
                out.append((negate, name, value))
            elif raw:
                out.append((negate, None, raw))
        return out

    def problem(self) -> str | None:
        """Why the text is not a filter as meant (an unknown ``field:``), or None."""
        for raw in self.text.lower().split():
            name, sep, _ = raw.lstrip("!").partition(":")
            if sep and name and name not in FILTER_FIELDS:
                return f"filter: unknown field {name!r} (fields: {', '.join(FILTER_FIELDS)})"
        return None

    def matches(self, row: AgentRow) -> bool:
        fields = {
            "id": row.agent_id,
            "name": row.name,
            "worker": row.worker,
            "state": row.state,
            "service": row.service,
            "activity": row.activity,
        }
        for negate, name, value in self.terms:
            if name is not None:
                hit = value in fields[name].lower()
            else:
                hit = any(value in fields[f].lower() for f in ("id", "name", "worker", "state", "service"))
            if hit == negate:
                return False
        return True

    def apply(self, rows: Iterable[AgentRow]) -> list[AgentRow]:
        return [r for r in rows if self.matches(r)]


def selected_after(rows: list[AgentRow], previous: str | None, index: int) -> int:
    """The row to select after a refresh: the same agent if it is still shown, else the same place."""
    if not rows:
        return 0
    if previous is not None:
        for i, row in enumerate(rows):
            if row.agent_id == previous:
                return i
    return max(0, min(index, len(rows) - 1))


# -- cells: every figure as the text the view shows -------------------------------------------------------

TREE_COLUMNS = ("ID", "PID", "STATE", "RESTARTS", "RSS", "UPTIME")
WORKER_COLUMNS = ("WORKER", "PID", "CORE", "CPU%", "RSS", "AGENTS", "BUSY", "QUEUED", "RESTARTS")
AGENT_COLUMNS = (
    "AGENT",
    "STATE",
    "ACTIVITY",
    "WORKER",
    "MSGS",
    "MSG/S",
    "INBOX",
    "FUEL USED",
    "MEMORY",
    "RESTARTS",
)


def node_cells(row: NodeRow) -> tuple[str, ...]:
    return (
        "  " * row.depth + row.id,
        _opt(row.pid),
        row.state,
        str(row.restarts),
        fmt_bytes(row.rss_bytes),
        fmt_duration(row.uptime_s),
    )


def worker_cells(row: WorkerRow) -> tuple[str, ...]:
    return (
        row.id,
        _opt(row.pid),
        _opt(row.core),
        "-" if row.cpu_percent is None else f"{row.cpu_percent:.1f}",
        fmt_bytes(row.rss_bytes),
        str(row.agents),
        str(row.busy),
        str(row.queued),
        str(row.restarts),
    )


def agent_cells(row: AgentRow) -> tuple[str, ...]:
    return (
        row.agent_id,
        row.state,
        row.activity or "-",
        row.worker or "-",
        _opt(row.messages),
        "-" if row.msgs_per_s is None else f"{row.msgs_per_s:.1f}",
        _opt(row.inbox),
        _opt(row.fuel_used),
        fmt_bytes(row.memory_bytes),
        str(row.restarts),
    )


def summary(snapshot: Snapshot, endpoint: str) -> str:
    """The header line: which system, its state, uptime, connected workers, agents."""
    workers = "?" if snapshot.workers_connected is None else str(snapshot.workers_connected)
    return (
        f"{snapshot.name or '?'}  {snapshot.state or '?'}  up {fmt_duration(snapshot.uptime_s)}  "
        f"openfang {snapshot.version or '?'}  {workers} workers connected  {len(snapshot.agents)} agents  "
        f"{endpoint}"
    )


def text_report(snapshot: Snapshot, endpoint: str) -> str:
    """The whole snapshot as plain text (``openfang top --once``)."""
    parts = [summary(snapshot, endpoint)]
    for title, columns, rows in (
        ("tree", TREE_COLUMNS, [node_cells(n) for n in snapshot.nodes]),
        ("workers", WORKER_COLUMNS, [worker_cells(w) for w in snapshot.workers]),
        ("agents", AGENT_COLUMNS, [agent_cells(a) for a in snapshot.agents]),
    ):
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in [columns, *rows]
        ]
        parts.append(f"\n{title}\n" + "\n".join(lines))
    parts.extend(f"\n{p}" for p in snapshot.problems)
    return "\n".join(parts)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1 << 20:
        return f"{n / 1024:.0f}K"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f}M"
    return f"{n / (1 << 30):.2f}G"


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m{s % 60:02.0f}s"
    if s < 86400:
        return f"{s // 3600:.0f}h{s % 3600 // 60:02.0f}m"
    return f"{s // 86400:.0f}d{s % 86400 // 3600:02.0f}h"


# -- helpers ---------------------------------------------------------------------------------------------


def _opt(v: int | None) -> str:
    return "-" if v is None else str(v)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
