"""Prompt-injection detector cost: microseconds per scan of 1 KB messages, short messages and a long text.

``run(quick=False) -> list[dict]`` (see perf/run.py). The messages are built from the labelled corpus
(``tests/security/data/injection_corpus.jsonl``): corpus texts are joined, in a fixed shuffled order, into
messages of 1,024 characters. The benign texts make the traffic a worker mostly carries (prose, code, tool
output, other scripts, security and prompt talk: denser in trigger words than real traffic); the whole
corpus, half of it attacks, makes an attack-dense worst case. Figures, one core:

- ``injection_scan_us_per_kb``: p50 over the benign 1 KB messages of the time of one
  ``InjectionDetector.scan`` (target 20 us);
- ``injection_scan_ascii_us_per_kb`` / ``injection_scan_unicode_us_per_kb``: the same for the benign
  messages that are pure ASCII and those that are not (accents, typographic quotes, Cyrillic, CJK);
- ``injection_scan_attack_dense_us_per_kb``: p50 over 1 KB messages from the whole corpus;
- ``injection_scan_plain_us_per_kb``: p50 over 1 KB messages of the system benchmarks' own traffic
  (:func:`perf.workloads.routing_messages` and :func:`~perf.workloads.toolchain_tasks`), which has few cues;
- ``injection_scan_short_us``: p50 of one scan of a single corpus text (about 100 characters);
- ``injection_scan_100kb_us_per_kb``: one 100 KB text of benign corpus texts, per KB.

Each message is scanned ``REPEAT`` times in a row and the mean of those is its sample, so timer resolution
does not dominate; samples are collected over three passes and the p50 taken over all of them. Time is the
process's CPU time, not the wall clock: on a shared machine a wall-clock figure measures the neighbours.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from openfang.security.injection import InjectionDetector

from perf import workloads
from perf.workloads import metric, percentile

TIMEOUT_S = 300
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "security" / "data" / "injection_corpus.jsonl"
KB = 1024
REPEAT = 20


def corpus_texts(label: str | None = None) -> list[str]:
    """The corpus texts with ``label`` (``attack`` or ``benign``; None: all), in file order."""
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line]
    return [r["text"] for r in rows if label is None or r["label"] == label]


def messages(texts: list[str], size: int, *, count: int = 0, seed: int = 7) -> list[str]:
    """Corpus texts joined (blank line between) into ``size``-character messages: ``count`` of them, or as
    many as one pass over the texts makes."""
    order = list(texts)
    random.Random(seed).shuffle(order)
    out, cur, i = [], "", 0
    while (len(out) < count) if count else (i < len(order)):
        text = order[i % len(order)]
        i += 1
        cur = f"{cur}\n\n{text}" if cur else text
        if len(cur) >= size:
            out.append(cur[:size])
            cur = ""
    return out


def per_scan_us(det: InjectionDetector, texts: list[str], passes: int) -> list[float]:
    """One sample per text and pass: the mean microseconds of ``REPEAT`` scans of that text."""
    samples = []
    for _ in range(passes):
        for text in texts:
            t0 = time.process_time()
            for _ in range(REPEAT):
                det.scan(text)
            samples.append((time.process_time() - t0) / REPEAT * 1e6)
    return samples


def _p50_per_kb(det: InjectionDetector, texts: list[str], passes: int) -> list[float]:
    samples = per_scan_us(det, texts, passes)
    return [s * KB / len(t) for s, t in zip(samples, texts * passes, strict=True)]


def run(quick: bool = False) -> list[dict[str, Any]]:
    det = InjectionDetector()
    benign = corpus_texts("benign")
    everything = corpus_texts()
    kb = messages(benign, KB)
    dense = messages(everything, KB)
    plain = messages(workloads.routing_messages(400) + workloads.toolchain_tasks(200), KB)
    passes = 1 if quick else 3
    per_kb = _p50_per_kb(det, kb, passes)
    ascii_kb = [m for m in kb if m.isascii()]
    other_kb = [m for m in kb if not m.isascii()]
    short = per_scan_us(det, everything, passes)
    long_text = messages(benign, 100 * KB, count=1, seed=11)[0]
    t0 = time.process_time()
    det.scan(long_text)
    long_us = (time.process_time() - t0) * 1e6
    notes = f"{len(kb)} benign messages of 1,024 chars from the injection corpus, {REPEAT} scans each, 1 core"
    return [
        metric(
            "injection_scan_us_per_kb",
            percentile(per_kb, 50),
            "us/KB",
            "lower",
            target=20,
            p50=percentile(per_kb, 50),
            p99=percentile(per_kb, 99),
            samples=len(per_kb),
            notes=notes,
        ),
        metric(
            "injection_scan_ascii_us_per_kb",
            percentile(_p50_per_kb(det, ascii_kb, passes), 50),
            "us/KB",
            "lower",
            samples=len(ascii_kb) * passes,
            notes="the pure-ASCII benign 1 KB messages",
        ),
        metric(
            "injection_scan_unicode_us_per_kb",
            percentile(_p50_per_kb(det, other_kb, passes), 50),
            "us/KB",
            "lower",
            samples=len(other_kb) * passes,
            notes="the benign 1 KB messages with non-ASCII characters",
        ),
        metric(
            "injection_scan_attack_dense_us_per_kb",
            percentile(_p50_per_kb(det, dense, passes), 50),
            "us/KB",
            "lower",
            samples=len(dense) * passes,
            notes="1 KB messages from the whole corpus (about half attacks)",
        ),
        metric(
            "injection_scan_plain_us_per_kb",
            percentile(_p50_per_kb(det, plain, passes), 50),
            "us/KB",
            "lower",
            samples=len(plain) * passes,
            notes="1 KB messages of the routing and tool-chain workloads (perf/workloads.py)",
        ),
        metric(
            "injection_scan_short_us",
            percentile(short, 50),
            "us",
            "lower",
            p50=percentile(short, 50),
            p99=percentile(short, 99),
            samples=len(short),
            notes=f"one corpus text per scan (mean {sum(map(len, everything)) / len(everything):.0f} chars)",
        ),
        metric(
            "injection_scan_100kb_us_per_kb",
            long_us * KB / len(long_text),
            "us/KB",
            "lower",
            notes=f"one scan of a {len(long_text):,}-char text of benign corpus texts",
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
