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

Before/after on a noisy machine: ``python -m perf.bench_injection --against main`` loads the detector of
another git revision (its ``security/_injection*.py`` and ``injection.py``, from ``git show``, as a throwaway
package) and times both on the same messages, interleaved message by message, so both see the same load.
It prints, per workload, each detector's p50 and the p50 of the per-message ratio new/old.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

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
    out: list[str] = []
    cur, i = "", 0
    while (len(out) < count) if count else (i < len(order)):
        text = order[i % len(order)]
        i += 1
        cur = f"{cur}\n\n{text}" if cur else text
        if len(cur) >= size:
            out.append(cur[:size])
            cur = ""
    return out


class Scanner(Protocol):
    def scan(self, text: str) -> object: ...


def per_scan_us(det: Scanner, texts: list[str], passes: int) -> list[float]:
    """One sample per text and pass: the mean microseconds of ``REPEAT`` scans of that text."""
    samples = []
    for _ in range(passes):
        for text in texts:
            t0 = time.process_time()
            for _ in range(REPEAT):
                det.scan(text)
            samples.append((time.process_time() - t0) / REPEAT * 1e6)
    return samples


def _p50_per_kb(det: Scanner, texts: list[str], passes: int) -> list[float]:
    samples = per_scan_us(det, texts, passes)
    return [s * KB / len(t) for s, t in zip(samples, texts * passes, strict=True)]


def fresh_detector() -> InjectionDetector:
    """A detector without its verdict memo: each scan here repeats a text, and what is measured is the cost
    of scanning a text, not of remembering one (a memo hit is ~0.3 us whatever the text)."""
    det = InjectionDetector()
    det.memo_entries = 0  # type: ignore[misc]  # the class default; this instance remembers nothing
    return det


def run(quick: bool = False) -> list[dict[str, Any]]:
    det = fresh_detector()
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


def workloads_kb() -> dict[str, list[str]]:
    """The 1 KB message sets of :func:`run`, by workload name."""
    benign = messages(corpus_texts("benign"), KB)
    return {
        "plain": messages(workloads.routing_messages(400) + workloads.toolchain_tasks(200), KB),
        "benign_ascii": [m for m in benign if m.isascii()],
        "benign_unicode": [m for m in benign if not m.isascii()],
        "benign": benign,
        "attack_dense": messages(corpus_texts(), KB),
    }


def baseline_detector(ref: str) -> Scanner:
    """The ``InjectionDetector`` of git revision ``ref``, imported from a throwaway package."""
    root = Path(__file__).resolve().parent.parent
    names = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "--name-only", ref, "security/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    files = [n for n in names if Path(n).name == "injection.py" or Path(n).name.startswith("_injection")]
    pkg = Path(tempfile.mkdtemp(prefix="bench_injection_")) / "baseline_injection"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in files:
        src = subprocess.run(
            ["git", "-C", str(root), "show", f"{ref}:{name}"], check=True, capture_output=True, text=True
        ).stdout
        src = src.replace("openfang.security._injection", "baseline_injection._injection")
        src = src.replace("openfang.security.injection", "baseline_injection.injection")
        (pkg / Path(name).name).write_text(src)
    sys.path.insert(0, str(pkg.parent))
    module = importlib.import_module("baseline_injection.injection")
    detector: Scanner = module.InjectionDetector()
    detector.memo_entries = 0  # type: ignore[attr-defined]  # as fresh_detector: scans, not memo hits
    return detector


def compare(ref: str, rounds: int) -> None:
    """Time ``ref``'s detector and this one on the same messages, interleaved; print p50s and ratios."""
    old, new = baseline_detector(ref), fresh_detector()
    for name, texts in workloads_kb().items():
        t_old: list[float] = []
        t_new: list[float] = []
        for _ in range(rounds):
            for text in texts:
                for det, out in ((old, t_old), (new, t_new)):
                    t0 = time.process_time()
                    for _ in range(REPEAT):
                        det.scan(text)
                    out.append((time.process_time() - t0) / REPEAT * 1e6 * KB / len(text))
        ratio = statistics.median(n / o for n, o in zip(t_new, t_old, strict=True) if o > 0)
        print(
            f"{name:15} {ref}: p50 {statistics.median(t_old):6.1f} us/KB   this tree: p50 "
            f"{statistics.median(t_new):6.1f} us/KB   per-message ratio p50 {ratio:.2f}   "
            f"({len(texts)} messages x {rounds} rounds, CPU time)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Prompt-injection detector cost.")
    parser.add_argument("--against", metavar="REF", help="also time the detector of this git revision")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the messages with --against")
    args = parser.parse_args()
    if args.against:
        compare(args.against, args.rounds)
    else:
        print(json.dumps(run(quick=True), indent=2))
