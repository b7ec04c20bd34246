"""The accumulators processes report their figures with: le-bucket histograms and bounded counters."""

from __future__ import annotations

import pytest

from openfang.protocol.stats import LATENCY_BUCKETS, Counts, Histogram


def test_histogram_counts_le_buckets_cumulatively() -> None:
    """A value on a bound falls in that bucket; counts are cumulative; +Inf and the sum take everything."""
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.to_wire() == {"bounds": [0.1, 1.0], "counts": [2, 3], "count": 4, "sum": pytest.approx(3.65)}
    assert Histogram().to_wire()["bounds"][0] == 0.0001 and LATENCY_BUCKETS[-1] == 30.0


def test_counts_keep_a_bounded_key_set() -> None:
    """Past max_keys, new keys add up under 'other': a surprising label value cannot grow the series."""
    c = Counts(max_keys=2)
    for key in ("a", "b", "c", "d", "a"):
        c.add(key)
    assert c.to_wire() == {"a": 2, "b": 1, "other": 2}


def test_histogram_wire_form_is_a_valid_histogram_body() -> None:
    """to_wire() passes the catalogue's HistogramBody schema (what status/agent.list replies carry)."""
    from openfang.protocol import _schema
    from openfang.protocol.bodies import HistogramBody

    h = Histogram()
    h.observe(0.2)
    compiled = _schema.compile_dataclass(HistogramBody, open_fields=True)
    assert _schema.body_validator(compiled)(h.to_wire()) == []


def test_histogram_observe_all_counts_as_observe_of_each_in_order() -> None:
    """observe_all of a batch gives the same buckets, count and bit-identical sum as observe of each."""
    import random

    rng = random.Random(7)
    values = [*LATENCY_BUCKETS, 0.0, 31.0, *(rng.uniform(0, 40) for _ in range(200)), 0.1 + 1e-12]
    one, batch = Histogram(), Histogram()
    one.observe(0.3)
    batch.observe(0.3)
    for v in values:
        one.observe(v)
    batch.observe_all(values[:50])
    batch.observe_all([])
    batch.observe_all(values[50:])
    assert batch.to_wire() == one.to_wire()
    assert batch.count == len(values) + 1


def test_histogram_with_an_owners_lock_guards_its_figures_with_that_lock() -> None:
    """A histogram given an owner's lock takes that lock (not one of its own) to count and to report, so an
    owner holding it may count into ``per_bucket`` and ``total`` itself; without one it has its own."""
    import threading

    owner = threading.Lock()
    shared, alone = Histogram((0.1, 1.0), lock=owner), Histogram((0.1, 1.0))
    assert shared.lock is owner and alone.lock is not owner
    with owner:  # the owner counting itself, as HostStats.llm_answer does
        shared.per_bucket[1] += 1
        shared.total += 0.5
        counter = threading.Thread(target=shared.observe, args=(0.05,))
        counter.start()
        counter.join(0.2)
        assert counter.is_alive() and shared.per_bucket[0] == 0  # observe waits for the owner's lock
    counter.join()
    assert shared.to_wire() == {"bounds": [0.1, 1.0], "counts": [1, 2], "count": 2, "sum": 0.55}
