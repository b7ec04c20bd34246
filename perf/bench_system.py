"""OpenFANG's side of the headline table (perf/README.md), measured on the real running system.

Every figure comes from a real daemon (``openfang.control.daemon``: root supervisor, control gateway, an
elastic pool of up to one pinned worker per CPU, one running while idle, as shipped; the throughput
phases' warm-up grows it: :func:`grow_pool`) driven over its ZeroMQ control socket by a client written from
PROTOCOL.md (raw msgpack on a DEALER, many requests in flight, matched by id). Agents are wasmtime
sandboxes running the built-in LLM guest with the scripted model; the manifests are in ``perf/agents/``,
the tool-chain tools in ``perf/bench_tools.py``. Every reply is checked against ``perf/workloads.py``.

    python -m perf.bench_system [--quick] [--only cold warm memory routing scaling toolchain venv]

Metrics (system "openfang"): cold_start_ms, warm_start_ms (one request: agent.spawn with its first message;
+ warm_start_two_requests_ms, warm_spawn_ms), idle_pss_mb, idle_rss_mb, agents_{100,1000,10000}_pss_mb (each
with a per-process PSS/USS/RSS breakdown and each process's private pages by mapping),
routing_tasks_per_s (+ scaling points with ``workers``),
toolchain_tasks_per_s, venv_mb.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

import msgpack
import zmq

from perf import workloads as wl
from perf._cluster import SYSTEM_MIN_RUNNING, BenchCluster

TIMEOUT_S = 900  # read by perf/run.py
REPO = Path(__file__).resolve().parent.parent
AGENTS = Path(__file__).resolve().parent / "agents"
COLD_ROUNDS, COLD_ROUNDS_QUICK = 7, 3
WARM_SPAWNS, WARM_SPAWNS_QUICK = 200, 50
AGENT_COUNTS = (1, 100, 1_000, 10_000)
MEMORY_BUILD_BUDGET_S = 150.0  # as for the peers: a point projected to take longer is not measured
SPAWN_WINDOW = 1_000  # spawns in flight at once on one DEALER
ROUTING_WINDOW = 256  # routing tasks in flight
# Rounds of the routing count, each of fresh messages, on the same daemon: tasks / wall seconds over all of
# them. One round of 2,000 tasks is ~0.2 s here (the peers' one round ~2 s and more), and single rounds of
# the same tree moved by +-15 % from run to run (a scaling point and the headline of one run 25 % apart).
ROUTING_ROUNDS = 5
TOOLCHAIN_WINDOW = 64
TOOLCHAIN_AGENTS_PER_WORKER = 4
PHASE_TIMEOUT_S = 120.0
GROW_STEP, GROW_TASKS_MAX = 2_000, 40_000  # an elastic pool's warm-up (grow_pool): steps of sustained load
TOOL_MODULES = 'tool_modules = ["perf.bench_tools:register"]'
# Rate limits are a policy, not overhead: a benchmark client must not be throttled to the defaults (50
# requests/s per client, 20 per agent, 5 tool calls/s per agent). rate = 0 is "unlimited"; the limiters stay
# enabled, so their cost is still measured. The gateway reads [security]; a worker reads its pool args'
# `security` table (workers/host/wiring.py), so the same limits go to both.
_BUCKETS = ("client_requests", "global_requests", "agent_requests", "agent_tokens", "agent_tool_calls")
NO_RATE_LIMITS = "".join(f"\n[security.ratelimit.{b}]\nrate = 0\nburst = 0\n" for b in _BUCKETS)


def pool_args(tools: bool = False) -> str:
    """The worker pool's args table: the unlimited rate limits, and the benchmark tools when asked."""
    text = "\n[supervisor.children.pool.args]\n" + (TOOL_MODULES + "\n" if tools else "")
    text += '[supervisor.children.pool.args.security]\nsource = "cluster.toml"\n'
    table = "supervisor.children.pool.args.security.table.ratelimit"
    return text + "".join(f"[{table}.{b}]\nrate = 0\nburst = 0\n" for b in _BUCKETS)


Reply = Callable[[str, dict[str, Any]], None]
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
# pyzmq's own send and recv (zmq.Socket.send's Python wrapper only adds the draft routing_id/group arguments;
# recv has none) and its poll (Socket.poll builds a Poller per call).
_SEND = zmq.backend.Socket.send
_RECV = zmq.backend.Socket.recv
_zmq_poll = zmq.backend.zmq_poll


def _metric(
    name: str, value: float | None, unit: str, better: str, target: float | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "system": "openfang",
        "value": None if value is None else round(value, 3),
        "unit": unit,
        "better": better,
        "target": target,
        **extra,
    }


def _log(msg: str) -> None:
    print(f"  {msg}", flush=True)


def manifest(name: str, route: str = "billing") -> str:
    """The text of ``perf/agents/<name>.toml`` (``@ROUTE@`` filled in for the class agents)."""
    return (AGENTS / f"{name}.toml").read_text().replace("@ROUTE@", route)


class BenchFailed(RuntimeError):
    """A reply was wrong or an error came back: the benchmark must not count it."""


class Pipe:
    """A pipelined control client: one DEALER, requests sent at once, replies dispatched by id.

    Requests made while replies are being handled (a task's next step, from its reply's callback) are sent
    together when that batch is done, before the next wait: back to back, they cost ZeroMQ's I/O thread one
    wake-up and the gateway one read for many, on the same two cores the system under test uses.

    It shares those two cores with the system it measures, so it does per message only what a message
    needs: one Packer reused for every request (``msgpack.packb`` makes one per call), pyzmq's own send and
    poll (the Python wrappers add ~1 us a send and a Poller per wait), and one ``zmq.Again`` per batch of
    replies read, not per reply.
    """

    def __init__(self, endpoint: str) -> None:
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.pending: dict[str, Reply] = {}
        self._n = 0
        self._out: list[bytes] = []  # requests made but not sent yet (flush)
        # The bench's requests are small: the Packer's buffer never grows past a few hundred bytes.
        self._pack: Callable[[Any], bytes] = msgpack.Packer().pack
        self._poll_items = [(self.sock, _POLLIN)]

    def send(self, type_: str, body: dict[str, Any], on_reply: Reply) -> None:
        """Queue one request; it leaves with the next :meth:`flush` (every :meth:`pump` starts with one)."""
        self._n += 1
        rid = f"r{self._n}"
        self.pending[rid] = on_reply
        self._out.append(self._pack({"v": 1, "id": rid, "type": type_, "body": body}))

    def flush(self) -> None:
        """Send every queued request, in order (one message each)."""
        out = self._out
        if not out:
            return
        self._out = []
        sock = self.sock
        for payload in out:
            _SEND(sock, payload, 0)  # SNDHWM 0: never blocks

    def pump(self, timeout_ms: int = 100) -> None:
        """Send what is queued, wait up to ``timeout_ms`` for replies, then hand every reply available to its
        callback (requests the callbacks make are sent by the next pump)."""
        self.flush()
        if not _zmq_poll(self._poll_items, timeout_ms):
            return
        sock, pending, unpack = self.sock, self.pending, msgpack.unpackb
        while True:
            try:
                raw = unpack(_RECV(sock, _NOBLOCK))
            except zmq.Again:
                return
            callback = pending.pop(raw.get("id"), None)
            if callback is not None:
                callback(raw["type"], raw.get("body") or {})

    def drain(self, timeout: float = PHASE_TIMEOUT_S) -> None:
        """Pump until every request sent has its reply; TimeoutError past ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.pending)} requests unanswered after {timeout:.0f} s")
            self.pump()

    def call(self, type_: str, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """One request, waited for (other replies arriving meanwhile are dispatched too)."""
        box: list[tuple[str, dict[str, Any]]] = []
        self.send(type_, body, lambda t, b: box.append((t, b)))
        deadline = time.monotonic() + timeout
        while not box:
            if time.monotonic() > deadline:
                raise TimeoutError(type_)
            self.pump()
        t, b = box[0]
        if t == "error":
            raise BenchFailed(f"{type_}: {b.get('code')}: {b.get('message')}")
        return b

    def close(self) -> None:
        self.sock.close()
        self.zctx.term()


@contextmanager
def cluster(
    workers: int | str = "auto", extra: str = "", min_running: int | None = SYSTEM_MIN_RUNNING
) -> Iterator[tuple[BenchCluster, Pipe]]:
    """A started daemon and a pipelined client on its control socket; both stopped on exit. The pool is
    elastic (``min_running``) as shipped; None: every worker runs from the start."""
    extra = (extra or pool_args()) + NO_RATE_LIMITS
    with BenchCluster(workers=workers, extra=extra, min_running=min_running) as c:
        c.start()
        pipe = Pipe(c.endpoint)
        try:
            yield c, pipe
        finally:
            pipe.close()


def pool_members(pipe: Pipe) -> list[str]:
    """The ids of every member of the worker pool, running or not (an elastic pool's maximum)."""
    node = next(n for n in pipe.call("tree", {})["children"] if n["id"] == "workers")
    return [w["id"] for w in node["children"]]


def worker_ids(pipe: Pipe, expected: int | None = None, timeout: float = 30) -> list[str]:
    """The ids of the running workers, once each answers worker.ping through the gateway (an elastic
    pool's stopped members are not among them)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            tree = pipe.call("tree", {})
            node = next(n for n in tree["children"] if n["id"] == "workers")
            ids = [w["id"] for w in node["children"] if w.get("state") == "running"]
            if expected is None or len(ids) == expected:
                for wid in ids:
                    pipe.call("worker.ping", {"worker": wid}, timeout=2)
                return ids
        except (BenchFailed, TimeoutError, StopIteration, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not all connect to the gateway")
        time.sleep(0.005)


def spawn_many(
    pipe: Pipe, text: str, count: int, *, worker: str | None = None, window: int = SPAWN_WINDOW
) -> list[str]:
    """Spawn ``count`` agents of one manifest with up to ``window`` spawns in flight; their ids."""
    ids: list[str] = []
    errors: list[str] = []
    body: dict[str, Any] = {"manifest": text}
    if worker is not None:
        body["worker"] = worker
    sent = 0

    def done(t: str, b: dict[str, Any]) -> None:
        if t == "error":
            errors.append(f"{b.get('code')}: {b.get('message')}")
        else:
            ids.append(b["agent_id"])

    deadline = time.monotonic() + PHASE_TIMEOUT_S + count / 100
    while len(ids) + len(errors) < count:
        while sent < count and sent - len(ids) - len(errors) < window:
            pipe.send("agent.spawn", body, done)
            sent += 1
        pipe.pump()
        if errors:
            raise BenchFailed(f"agent.spawn failed ({len(errors)} times): {errors[0]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"spawned {len(ids)} of {count}")
    return ids


# --- 1. cold start ------------------------------------------------------------------------------------------


def bench_cold(rounds: int) -> list[dict[str, Any]]:
    """Exec of the daemon -> one agent spawned and its reply to one message read by the client."""
    msg = wl.routing_messages(1)[0]
    want = wl.agent_reply("billing", msg)
    text = manifest("route", "billing")
    samples: list[float] = []
    ready: list[float] = []
    for i in range(rounds + 1):
        with BenchCluster(
            workers="auto", extra=pool_args() + NO_RATE_LIMITS, min_running=SYSTEM_MIN_RUNNING
        ) as c:
            # The disk's writeback of what earlier phases wrote (bench_scale's registries, this cluster's own
            # config) is done before the clock starts: the start's fsyncs measure the start, not that backlog.
            os.sync()
            t0 = time.perf_counter()
            ready_s = c.start()
            # A worker's hello may still wait in the gateway's queue at READY: the gateway then answers
            # not_found or restarting (both retryable, as for any client); retry until a worker takes it.
            while True:
                try:
                    agent = c.call("agent.spawn", {"manifest": text}, timeout=10)["agent_id"]
                    break
                except RuntimeError as exc:
                    if "not_found" not in str(exc) and "restarting" not in str(exc):
                        raise
                    time.sleep(0.001)
            reply = c.call("agent.send", {"agent_id": agent, "text": msg})["reply"]
            elapsed = (time.perf_counter() - t0) * 1000
        if reply != want:
            raise BenchFailed(f"cold start reply {reply!r}, expected {want!r}")
        if i > 0:  # as for the peers: one warm-up run (bytecode caches), then the measured runs
            samples.append(elapsed)
            ready.append(ready_s * 1000)
        _log(f"cold start round {i}/{rounds}: {elapsed:.1f} ms (READY at {ready_s * 1000:.1f} ms)")
    s = wl.summarize(samples)
    return [
        _metric(
            "cold_start_ms",
            s["p50"],
            "ms",
            "lower",
            150,
            p50=s["p50"],
            p99=s["p99"],
            notes=f"{rounds} runs after 1 warm-up; daemon exec -> spawn -> reply over the control "
            f"socket; exec->READY p50 {statistics.median(ready):.0f} ms",
        )
    ]


# --- 2. warm start ------------------------------------------------------------------------------------------


def bench_warm(count: int) -> list[dict[str, Any]]:
    """In a running system: spawn one more agent (module cached) and have it answer.

    The headline (``warm_start_ms``) is one ``agent.spawn`` with the first message (``text``): one request,
    one reply carrying the spawn and the agent's answer (PROTOCOL.md 4d). ``warm_start_two_requests_ms`` is
    the same done as ``agent.spawn`` then ``agent.send``, and ``warm_spawn_ms`` that spawn alone; the two
    ways alternate agent by agent on the same daemon, so both see the same machine.
    """
    msg = wl.routing_messages(1)[0]
    with cluster() as (_c, pipe):
        workers = worker_ids(pipe)
        for wid in workers:  # first spawn on each worker compiles the module: not part of warm start
            first = pipe.call("agent.spawn", {"manifest": manifest("route", "billing"), "worker": wid})
            pipe.call("agent.send", {"agent_id": first["agent_id"], "text": msg})
        total: list[float] = []
        two: list[float] = []
        spawn: list[float] = []
        inside: list[float] = []
        for i in range(count):
            route = wl.ROUTES[i % len(wl.ROUTES)]
            text = manifest("route", route)
            t0 = time.perf_counter()
            body = pipe.call("agent.spawn", {"manifest": text, "text": msg})
            t1 = time.perf_counter()
            if body.get("reply") != wl.agent_reply(route, msg) or body.get("spawn") != "warm":
                raise BenchFailed(f"warm agent {i} (one request): {body!r}")
            total.append((t1 - t0) * 1000)
            t0 = time.perf_counter()
            body = pipe.call("agent.spawn", {"manifest": text})
            t1 = time.perf_counter()
            reply = pipe.call("agent.send", {"agent_id": body["agent_id"], "text": msg})["reply"]
            t2 = time.perf_counter()
            if reply != wl.agent_reply(route, msg) or body.get("spawn") != "warm":
                raise BenchFailed(f"warm agent {i} (two requests): {reply!r} ({body.get('spawn')} spawn)")
            spawn.append((t1 - t0) * 1000)
            two.append((t2 - t0) * 1000)
            inside.append(float(body.get("spawn_ms", 0.0)))
    s, tw, sp, ins = wl.summarize(total), wl.summarize(two), wl.summarize(spawn), wl.summarize(inside)
    _log(
        f"warm start p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms (spawn with its first message); as two "
        f"requests p50 {tw['p50']:.2f} ms; spawn alone p50 {sp['p50']:.2f} ms (in the worker "
        f"{ins['p50']:.3f} ms)"
    )
    return [
        _metric(
            "warm_start_ms",
            s["p50"],
            "ms",
            "lower",
            1,
            p50=s["p50"],
            p99=s["p99"],
            notes=f"{count} agents spawned and answered one by one over the control socket, all kept; one "
            f"request each: agent.spawn with its first message (text), the reply carrying the agent's "
            f"answer; p99 {s['p99']:.2f} ms",
        ),
        _metric(
            "warm_start_two_requests_ms",
            tw["p50"],
            "ms",
            "lower",
            1,
            p50=tw["p50"],
            p99=tw["p99"],
            notes=f"{count} more agents, alternating with the above: agent.spawn, then agent.send of the "
            f"same message; p99 {tw['p99']:.2f} ms",
        ),
        _metric(
            "warm_spawn_ms",
            sp["p50"],
            "ms",
            "lower",
            1,
            p50=sp["p50"],
            p99=sp["p99"],
            notes=f"agent.spawn round trip alone (the two-request way's first request); inside the worker "
            f"p50 {ins['p50']:.3f} ms p99 {ins['p99']:.3f} ms",
        ),
    ]


# --- 3. idle memory -----------------------------------------------------------------------------------------


def bench_memory(counts: tuple[int, ...]) -> list[dict[str, Any]]:
    """PSS/RSS of the whole tree holding N idle agents (one answered once), a fresh system per N."""
    msg = wl.routing_messages(1)[0]
    out: list[dict[str, Any]] = []
    idle_pss: float | None = None
    per_agent_s = 0.0
    for count in counts:
        name = "idle_pss_mb" if count == 1 else f"agents_{count}_pss_mb"
        target = None
        if count == 1:
            target = 60.0
        elif idle_pss is not None and count in (100, 10_000):
            target = round(idle_pss + (5 if count == 100 else 200), 1)
        projected = per_agent_s * count
        if projected > MEMORY_BUILD_BUDGET_S:
            budget = f"budget {MEMORY_BUILD_BUDGET_S:.0f} s"
            why = f"not measured: {count} spawns would take ~{projected:.0f} s ({budget})"
            out.append(_metric(name, None, "MB", "lower", target, notes=why))
            continue
        with cluster() as (c, pipe):
            worker_ids(pipe)
            t0 = time.perf_counter()
            ids = spawn_many(pipe, manifest("route", "billing"), count)
            build_s = time.perf_counter() - t0
            reply = pipe.call("agent.send", {"agent_id": ids[0], "text": msg})["reply"]
            if reply != wl.agent_reply("billing", msg):
                raise BenchFailed(f"memory {count}: reply {reply!r}")
            time.sleep(1.5)  # a worker hello (every 1 s) and allocator settling, as the peers wait 0.5 s
            assert c.proc is not None
            pids = wl.process_tree(c.proc.pid)
            pss_kb, rss_kb = wl.memory_kb(pids)
            per_process = process_breakdown(c, pipe, pids)
            by_mapping = {name: private_by_mapping(pid) for name, pid in process_pids(c, pipe, pids).items()}
        pss, rss = pss_kb / 1024, rss_kb / 1024
        if count > 1:
            per_agent_s = max(per_agent_s, build_s / count)
        notes = (
            f"{count} agent(s) spawned in {build_s:.2f} s ({SPAWN_WINDOW} in flight); {len(pids)} processes"
        )
        extra: dict[str, Any] = {
            "rss_mb": round(rss, 2),
            "processes": len(pids),
            "per_process": per_process,
            "private_by_mapping": by_mapping,
        }
        notes += "; per process PSS/USS MB: " + describe_breakdown(per_process)
        if count == 1:
            idle_pss = pss
            idle_rss = rss
        else:
            assert idle_pss is not None
            extra["delta_pss_mb"] = round(pss - idle_pss, 2)
            extra["delta_rss_mb"] = round(rss - idle_rss, 2)
            notes += f"; +{pss - idle_pss:.1f} MB PSS (+{rss - idle_rss:.1f} MB RSS) over 1 agent"
            if target is not None:
                notes += f"; target = idle + {5 if count == 100 else 200} MB"
        notes += f"; RSS {rss:.1f} MB"
        _log(f"{count} agents: PSS {pss:.1f} MB, RSS {rss:.1f} MB, spawned in {build_s:.2f} s")
        _log(f"  per process PSS/USS/RSS MB: {describe_breakdown(per_process, rss=True)}")
        for proc, parts in by_mapping.items():
            _log(f"    {proc} private MB: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
        out.append(_metric(name, pss, "MB", "lower", target, **extra, notes=notes))
        if count == 1:
            out.append(_metric("idle_rss_mb", rss, "MB", "lower", notes="1 agent; all processes of the tree"))
    return out


def process_pids(c: BenchCluster, pipe: Pipe, pids: list[int]) -> dict[str, int]:
    """Each pid of ``pids`` by its child id in the tree (``root`` for the daemon, ``pid N`` if unknown)."""
    assert c.proc is not None
    names = {c.proc.pid: "root"}

    def label(nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            if node.get("pid"):  # an inline supervisor's pid is its host's: the first name stays
                names.setdefault(int(node["pid"]), str(node["id"]))
            label(list(node.get("children") or []))

    with suppress(BenchFailed, TimeoutError):
        label(pipe.call("tree", {})["children"])
    return {names.get(pid, f"pid {pid}"): pid for pid in pids}


def process_breakdown(c: BenchCluster, pipe: Pipe, pids: list[int]) -> dict[str, dict[str, float]]:
    """Each process of the tree by its child id (``root`` for the daemon): PSS, USS and RSS in MB.

    USS (private pages) is what each process costs on its own; PSS shares every shared page out among the
    processes that map it, so the PSS column adds up to the system figure.
    """
    out: dict[str, dict[str, float]] = {}
    for name, pid in process_pids(c, pipe, pids).items():
        kb = wl.process_memory_kb(pid)
        if kb:
            out[name] = {k: round(v / 1024, 2) for k, v in kb.items()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["pss"]))


def private_by_mapping(pid: int, top: int = 6) -> dict[str, float]:
    """Where a process's private pages (its USS) are, in MB, largest first: ``heap`` (malloc's main arena),
    ``anon`` (Python's arenas, other malloc arenas, thread stacks, wasm memory), each file by name (``.so``
    code and data, with `` rw`` for its writable mappings); the ``top`` largest and ``other``."""
    kb: dict[str, int] = {}
    name = "anon"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(maxsplit=5)
                if head and "-" in head[0] and not line[0].isupper():
                    path = head[5].strip() if len(head) > 5 else ""
                    if path.startswith("/"):
                        name = os.path.basename(path).partition(".so")[0] + (".so" if ".so" in path else "")
                        name += " rw" if head[1].startswith("rw") else ""
                    else:
                        name = {"": "anon", "[heap]": "heap"}.get(path, path)
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    kb[name] = kb.get(name, 0) + int(head[1])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    ranked = sorted(kb.items(), key=lambda kv: -kv[1])
    out = {k: round(v / 1024, 2) for k, v in ranked[:top]}
    if len(ranked) > top:
        out["other"] = round(sum(v for _, v in ranked[top:]) / 1024, 2)
    return out


def describe_breakdown(per_process: dict[str, dict[str, float]], rss: bool = False) -> str:
    """``"workers-0 20.1/12.3, root 15.0/6.1, ..."`` (PSS/USS, and RSS with ``rss``), largest PSS first."""
    return ", ".join(
        f"{name} {m['pss']:.1f}/{m['uss']:.1f}" + (f"/{m['rss']:.1f}" if rss else "")
        for name, m in per_process.items()
    )


# --- 4. routing (and 7. its scaling) ------------------------------------------------------------------------


def run_tasks(pipe: Pipe, count: int, window: int, start: Callable[[int, Callable[[], None]], None]) -> float:
    """Run tasks 0..count-1 with ``window`` in flight (``start(i, done)``); wall seconds."""
    started = done = 0

    def finished() -> None:
        nonlocal started, done
        done += 1
        if started < count:
            started += 1
            start(started - 1, finished)

    t0 = time.perf_counter()
    for _ in range(min(window, count)):
        started += 1
        start(started - 1, finished)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    pump = pipe.pump
    while done < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {count} tasks done after {PHASE_TIMEOUT_S:.0f} s")
        pump()
    return time.perf_counter() - t0


def grow_pool(pipe: Pipe, run: Callable[[int], float]) -> int:
    """The warm-up of an elastic pool: ``run(n)`` tasks (the load itself, full window) until the pool runs
    all its workers and no agent is moving onto them, at most GROW_TASKS_MAX tasks; the tasks run. A fixed
    pool runs none. Steady throughput is measured after it (the growth's own figures are in the log)."""
    done = 0
    t0 = time.perf_counter()
    while done < GROW_TASKS_MAX:
        pools = pipe.call("status", {}).get("pools") or {}
        if all(p["running"] == p["max"] and not (p["moving"] or p["starting"]) for p in pools.values()):
            break
        run(GROW_STEP)
        done += GROW_STEP
    if done:
        grown_s = time.perf_counter() - t0
        run(GROW_STEP)  # the new worker's warm-up, as the others had theirs: its agents' first messages
        done += GROW_STEP
        _log(f"elastic pool grown: {done - GROW_STEP} warm-up tasks, {grown_s:.2f} s (+{GROW_STEP} after)")
    return done


def _check(t: str, b: dict[str, Any], want: str | None, what: str) -> str:
    if t == "error":
        raise BenchFailed(f"{what}: {b.get('code')}: {b.get('message')}")
    reply = str(b.get("reply"))
    if want is not None and reply != want:
        raise BenchFailed(f"{what}: expected {want!r}, got {reply!r}")
    return reply


class CpuMeter:
    """CPU seconds spent by each role of the tree (workers, gateway, supervisors) and by this client."""

    def __init__(self, c: BenchCluster, pipe: Pipe) -> None:
        assert c.proc is not None
        roles: dict[int, str] = {c.proc.pid: "supervisors"}

        def walk(nodes: list[dict[str, Any]]) -> None:
            for n in nodes:
                if isinstance(n.get("pid"), int):
                    kind = "workers" if n.get("cpu") is not None else "supervisors"
                    roles[n["pid"]] = "gateway" if n["id"] == "control" else kind
                walk(n.get("children") or [])

        walk(pipe.call("tree", {})["children"])
        self.roles = roles
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        out: dict[str, float] = {"client": sum(os.times()[:2])}
        for pid, role in self.roles.items():
            out[role] = out.get(role, 0.0) + _process_cpu(pid)
        return out

    def per_task_us(self, tasks: int) -> dict[str, float]:
        """CPU microseconds per task of each role since this meter was made."""
        now = self._now()
        return {role: (now[role] - self.start.get(role, 0.0)) / tasks * 1e6 for role in now}

    @staticmethod
    def describe(per_task: dict[str, float]) -> str:
        total = sum(per_task.values())
        parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(per_task.items(), key=lambda kv: -kv[1]))
        return f"CPU per task {total:.0f} us ({parts})"


_SEND_OK = "agent.send.ok"


def routing_start(pipe: Pipe, msgs: list[str]) -> Callable[[int, Callable[[], None]], None]:
    """Routing task ``i`` for :func:`run_tasks`: ``msgs[i]`` to the service ``router``, then to the class
    service the router named; each reply checked in full (an ``agent.send.ok`` whose text is the expected
    one, computed from the workload's rules during the run, as the peers' driver does). A reply that passes
    costs no message text (:func:`_refuse` builds it for one that does not)."""
    send = pipe.send

    def start(i: int, done: Callable[[], None]) -> None:
        msg = msgs[i]
        route = wl.classify(msg)

        def answered(t: str, b: dict[str, Any]) -> None:
            want = wl.agent_reply(route, msg)
            if t != _SEND_OK or b.get("reply") != want:
                _refuse(t, b, want, f"task {i} agent")
            done()

        def classified(t: str, b: dict[str, Any]) -> None:
            if t != _SEND_OK or b.get("reply") != route:
                _refuse(t, b, route, f"task {i} router")
            send("agent.send", {"service": route, "text": msg}, answered)

        send("agent.send", {"service": "router", "text": msg}, classified)

    return start


def _refuse(t: str, b: dict[str, Any], want: str, what: str) -> NoReturn:
    """A reply that is not the expected ``agent.send.ok``: BenchFailed naming what came instead."""
    _check(t, b, want, what)  # an error, or the wrong text
    raise BenchFailed(f"{what}: expected an {_SEND_OK} reply, got {t!r}")


def routing_rate(
    workers: int | str, count: int, window: int = ROUTING_WINDOW, rounds: int = ROUTING_ROUNDS
) -> tuple[float, int, dict[str, float], list[float]]:
    """tasks/s of router-then-class-agent over ``rounds`` x ``count`` distinct messages (tasks / wall seconds
    of all rounds), every reply checked; the worker count; CPU us per task by role; each round's tasks/s."""
    msgs = wl.routing_messages(count * rounds + 5 + GROW_TASKS_MAX + GROW_STEP)  # grow_pool's run after
    with cluster(workers) as (c, pipe):
        running = worker_ids(pipe)
        ids = pool_members(pipe)
        for wid in ids:  # per worker: one router and one agent per class (an elastic pool's: spread later)
            where = wid if wid in running else None
            spawn_many(pipe, manifest("router"), 1, worker=where)
            for route in wl.ROUTES:
                spawn_many(pipe, manifest("route", route), 1, worker=where)

        run_tasks(pipe, 5, 5, routing_start(pipe, msgs))  # warm-up
        msgs = msgs[5:]
        msgs = msgs[grow_pool(pipe, lambda n: run_tasks(pipe, n, window, routing_start(pipe, msgs))) :]
        meter = CpuMeter(c, pipe)
        took = [
            run_tasks(pipe, count, window, routing_start(pipe, msgs[r * count : (r + 1) * count]))
            for r in range(rounds)
        ]
        cpu = meter.per_task_us(count * rounds)
    return count * rounds / sum(took), len(ids), cpu, [count / t for t in took]


def _rounds(rates: list[float]) -> str:
    return " / ".join(f"{r:,.0f}" for r in rates)


def bench_routing(count: int, max_workers: int) -> list[dict[str, Any]]:
    """routing_tasks_per_s with the default pool (one worker per CPU), and the 1..N scaling points."""
    out: list[dict[str, Any]] = []
    rates: dict[int, float] = {}
    for k in range(1, max_workers + 1):
        rate, _, cpu, each = routing_rate(k, count)
        rates[k] = rate
        _log(f"routing with {k} worker(s): {rate:.0f} tasks/s (rounds {_rounds(each)})")
        out.append(
            _metric(
                "routing_tasks_per_s",
                rate,
                "tasks/s",
                "higher",
                15_000,
                workers=k,
                notes=f"{ROUTING_ROUNDS} x {count} tasks (rounds {_rounds(each)} tasks/s), "
                f"{ROUTING_WINDOW} in flight, {k} worker(s); {CpuMeter.describe(cpu)}",
            )
        )
    rate, n, cpu, each = routing_rate("auto", count)
    _log(f"routing (count = auto, {n} workers): {rate:.0f} tasks/s (rounds {_rounds(each)})")
    out.insert(
        0,
        _metric(
            "routing_tasks_per_s",
            rate,
            "tasks/s",
            "higher",
            15_000,
            notes=f"{ROUTING_ROUNDS} rounds of {count} tasks after 5 warm-up (tasks / wall seconds of all "
            f"rounds; each round's tasks/s: {_rounds(each)}); one client, {ROUTING_WINDOW} tasks in flight "
            f"on one DEALER; per task agent.send to service router, then to service <class>; {n} workers, "
            f"each with 1 router + 4 class agents; every reply checked; {CpuMeter.describe(cpu)}",
        ),
    )
    return out


# --- 5. tool chain ------------------------------------------------------------------------------------------


def bench_toolchain(count: int) -> list[dict[str, Any]]:
    """tasks/s of the 4-model-call, 3-tool-call chain inside one agent per task, every answer checked."""
    tasks = wl.toolchain_tasks(count + 5 + GROW_TASKS_MAX + GROW_STEP)  # grow_pool's run after
    with cluster(extra=pool_args(tools=True)) as (_c, pipe):
        running = worker_ids(pipe)
        ids = pool_members(pipe)
        try:
            for wid in ids:
                where = wid if wid in running else None  # an elastic pool's: spread when it grows
                spawn_many(pipe, manifest("toolchain"), TOOLCHAIN_AGENTS_PER_WORKER, worker=where)
        except BenchFailed as exc:
            if "chain" not in str(exc):
                raise
            why = (
                "not measured: the worker refuses the scripted model's chain rule: workers/llm/providers.py "
                "validate_model_config does not know the 'chain' key yet (see the bench_system report)"
            )
            _log(why + f" [{exc}]")
            return [_metric("toolchain_tasks_per_s", None, "tasks/s", "higher", 3_000, notes=why)]

        def start(i: int, done: Callable[[], None]) -> None:
            task = tasks[i]

            def answered(t: str, b: dict[str, Any]) -> None:
                _check(t, b, wl.toolchain_expected(task), f"tool-chain task {i}")
                calls = (b.get("usage") or {}).get("tool_calls")
                if calls is not None and calls != wl.TOOL_CALLS_PER_TOOLCHAIN_TASK:
                    raise BenchFailed(f"tool-chain task {i}: {calls} tool calls")
                done()

            pipe.send("agent.send", {"service": "toolchain", "text": task}, answered)

        run_tasks(pipe, 5, 5, start)
        tasks = tasks[5:]
        tasks = tasks[grow_pool(pipe, lambda n: run_tasks(pipe, n, TOOLCHAIN_WINDOW, start)) :]
        meter = CpuMeter(_c, pipe)
        elapsed = run_tasks(pipe, count, TOOLCHAIN_WINDOW, start)
        cpu = meter.per_task_us(count)
    rate = count / elapsed
    _log(f"tool chain: {rate:.0f} tasks/s")
    return [
        _metric(
            "toolchain_tasks_per_s",
            rate,
            "tasks/s",
            "higher",
            3_000,
            notes=f"{count} tasks after 5 warm-up, {TOOLCHAIN_WINDOW} in flight; {len(ids)} workers x "
            f"{TOOLCHAIN_AGENTS_PER_WORKER} agents (service toolchain); per task 4 llm_invoke + 3 tool_call "
            f"inside one agent; every answer checked; {CpuMeter.describe(cpu)}",
        )
    ]


# --- 6. install footprint -----------------------------------------------------------------------------------


def bench_venv() -> list[dict[str, Any]]:
    """Size of a fresh venv with ``pip install .`` (no dev extras), built from a copy of the tracked tree."""
    tmp = Path(tempfile.mkdtemp(prefix="ofb-venv-", dir="/tmp"))
    try:
        src, venv = tmp / "src", tmp / "venv"
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
        for rel in filter(None, files.decode().split("\0")):
            if (REPO / rel).is_file():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / rel)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        t0 = time.perf_counter()
        pip = subprocess.run(
            [str(venv / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(src)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if pip.returncode != 0:
            raise BenchFailed(f"pip install . failed:\n{pip.stdout}\n{pip.stderr}")
        install_s = time.perf_counter() - t0
        size = wl.dir_size_bytes(str(venv)) / (1 << 20)
        site = next((venv / "lib").glob("python*/site-packages"))
        sizes: dict[str, float] = {}
        for entry in site.iterdir():
            if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
                continue
            key = entry.name.split(".")[0].split("-")[0]
            b = wl.dir_size_bytes(str(entry)) if entry.is_dir() else entry.stat().st_size
            sizes[key] = sizes.get(key, 0) + b / (1 << 20)
        top = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
        biggest = ", ".join(f"{k} {v:.1f}" for k, v in top)
        _log(f"venv {size:.1f} MB (install {install_s:.0f} s); biggest: {biggest}")
        return [
            _metric(
                "venv_mb",
                size,
                "MB",
                "lower",
                80,
                notes=f"fresh venv + pip install . (no dev extras; pip/setuptools included); "
                f"biggest MB: {biggest}",
            )
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- where the time goes -----------------------------------------------------------------------------------


def cpu_split(phase: str, count: int, pyspy_dir: str | None = None) -> dict[str, float]:
    """Run the routing or tool-chain load and print CPU seconds per process of the tree (and the client).

    With ``pyspy_dir``, also records every process with py-spy (``py-spy record --format raw``) into that
    folder, one collapsed-stack file per process, for ``python -m perf.bench_system --profile``.
    """
    import psutil

    # A fixed pool: the split is by process of a tree that does not change during the run.
    with cluster(extra=pool_args(tools=phase == "toolchain"), min_running=None) as (c, pipe):
        wids = worker_ids(pipe)
        tasks = wl.toolchain_tasks(count) if phase == "toolchain" else wl.routing_messages(count)
        for wid in wids:
            if phase == "toolchain":
                spawn_many(pipe, manifest("toolchain"), TOOLCHAIN_AGENTS_PER_WORKER, worker=wid)
            else:
                spawn_many(pipe, manifest("router"), 1, worker=wid)
                for route in wl.ROUTES:
                    spawn_many(pipe, manifest("route", route), 1, worker=wid)
        assert c.proc is not None
        procs = {p.pid: p for p in map(psutil.Process, wl.process_tree(c.proc.pid))}
        names = {pid: " ".join(p.cmdline()[-1:]) or p.name() for pid, p in procs.items()}
        tree = pipe.call("tree", {})

        def label(nodes: list[dict[str, Any]]) -> None:
            for n in nodes:
                if n.get("pid") in names:
                    names[n["pid"]] = str(n["id"])
                label(n.get("children") or [])

        label(tree["children"])
        names[c.proc.pid] = "root supervisor"
        me = psutil.Process()
        before = {pid: sum(p.cpu_times()[:2]) for pid, p in procs.items()}
        threads_before = {pid: _thread_times(pid) for pid in procs}
        mine = sum(me.cpu_times()[:2])
        spies = []
        if pyspy_dir:
            os.makedirs(pyspy_dir, exist_ok=True)
            spy = str(Path(sys.executable).parent / "py-spy")
            for pid, name in names.items():
                out = os.path.join(pyspy_dir, f"{name}.txt")
                spies.append(
                    subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--pid",
                            str(pid),
                            "--format",
                            "raw",
                            "--rate",
                            "200",
                            "--nonblocking",
                            "--output",
                            out,
                            "--duration",
                            "30",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1.0)

        def start(i: int, done: Callable[[], None]) -> None:
            task = tasks[i]
            route = "toolchain" if phase == "toolchain" else wl.classify(task)

            def answered(t: str, b: dict[str, Any]) -> None:
                want = wl.toolchain_expected(task) if phase == "toolchain" else wl.agent_reply(route, task)
                _check(t, b, want, f"task {i}")
                done()

            def classified(t: str, b: dict[str, Any]) -> None:
                _check(t, b, route, f"task {i} router")
                pipe.send("agent.send", {"service": route, "text": task}, answered)

            first = answered if phase == "toolchain" else classified
            pipe.send(
                "agent.send",
                {"service": "toolchain" if phase == "toolchain" else "router", "text": task},
                first,
            )

        window = TOOLCHAIN_WINDOW if phase == "toolchain" else ROUTING_WINDOW
        run = start if phase == "toolchain" else routing_start(pipe, tasks)  # routing: routing_rate's task
        elapsed = run_tasks(pipe, count, window, run)
        split = {names[pid]: sum(p.cpu_times()[:2]) - before[pid] for pid, p in procs.items()}
        split["client (this process)"] = sum(me.cpu_times()[:2]) - mine
        by_thread: dict[str, dict[str, float]] = {}
        for pid in procs:
            now_t = _thread_times(pid)
            per: dict[str, float] = {}
            for tid, (comm, secs) in now_t.items():
                prev = threads_before[pid].get(tid, (comm, 0.0))[1]
                kind = "main" if tid == pid else comm
                per[kind] = per.get(kind, 0.0) + secs - prev
            by_thread[names[pid]] = per
        for spy_proc in spies:
            spy_proc.send_signal(2)
        for spy_proc in spies:
            try:
                spy_proc.wait(20)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
                spy_proc.wait()
    print(
        f"{phase}: {count} tasks in {elapsed:.2f} s = {count / elapsed:.0f} tasks/s; CPU seconds per process:"
    )
    for name, secs in sorted(split.items(), key=lambda kv: -kv[1]):
        ranked = sorted(by_thread.get(name, {}).items(), key=lambda kv: -kv[1])
        threads = ", ".join(f"{k} {v:.2f}" for k, v in ranked if v >= 0.01)
        print(
            f"  {name:<24} {secs:6.2f} s {secs / elapsed * 100:4.0f} % of a core "
            f"{secs / count * 1e6:6.0f} us/task" + (f"  [threads: {threads}]" if threads else "")
        )
    return split


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of ``pid`` so far, from /proc; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of ``pid``, with the thread's name, from /proc."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode(errors="replace")
        fields = stat[stat.rfind(b")") + 2 :].split()
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


# --- the run ------------------------------------------------------------------------------------------------

PHASES = ("cold", "warm", "memory", "routing", "toolchain", "venv")


def run(quick: bool = False, only: tuple[str, ...] = PHASES) -> list[dict[str, Any]]:
    # Workers load perf.bench_tools: the daemon (and the workers it forks) must find the perf package.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    out: list[dict[str, Any]] = []
    cpus = os.cpu_count() or 1
    steps: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "cold": lambda: bench_cold(COLD_ROUNDS_QUICK if quick else COLD_ROUNDS),
        "warm": lambda: bench_warm(WARM_SPAWNS_QUICK if quick else WARM_SPAWNS),
        "memory": lambda: bench_memory(AGENT_COUNTS[:3] if quick else AGENT_COUNTS),
        "routing": lambda: bench_routing(
            wl.ROUTING_MESSAGES_QUICK if quick else wl.ROUTING_MESSAGES_DEFAULT, cpus
        ),
        "toolchain": lambda: bench_toolchain(
            wl.TOOLCHAIN_TASKS_QUICK if quick else wl.TOOLCHAIN_TASKS_DEFAULT
        ),
        "venv": bench_venv,
    }
    for phase in only:
        print(f"[bench_system] {phase}", flush=True)
        t0 = time.perf_counter()
        out += steps[phase]()
        print(f"[bench_system] {phase} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument(
        "--cpu-split",
        choices=("routing", "toolchain"),
        help="no metrics: run that load and print CPU seconds per process",
    )
    parser.add_argument("--count", type=int, default=20_000, help="tasks for --cpu-split")
    parser.add_argument("--profile", metavar="DIR", help="with --cpu-split: py-spy every process into DIR")
    args = parser.parse_args()
    if args.cpu_split:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        cpu_split(args.cpu_split, args.count, args.profile)
        sys.exit(0)
    print(json.dumps(run(quick=args.quick, only=tuple(args.only)), indent=2))
