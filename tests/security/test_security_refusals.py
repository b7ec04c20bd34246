"""Refusal aggregation (layer 12 under flood): bounded writes, exact counts, a chain that still verifies."""

from __future__ import annotations

from pathlib import Path

from _security_clock import FakeClock

from openfang.security.audit import AuditLog, verify
from openfang.security.refusals import SUMMARY_KIND, RefusalAudit, RefusalAuditConfig


def _counted(log: AuditLog) -> int:
    return sum(
        sum(e["count"] for e in r.fields["entries"]) + r.fields["others"] for r in log.records(SUMMARY_KIND)
    )


def test_refusals_first_of_each_kind_in_full_then_one_summary_per_window(
    clock: FakeClock, audit: AuditLog, tmp_path: Path
) -> None:
    """1000 refusals from one source: two full records (one per kind), one summary with the other 998."""
    sink = RefusalAudit(audit, RefusalAuditConfig(window_s=10), clock=clock)
    sink.source = "uid:1000"
    for i in range(500):
        sink.append("signing.unsigned", id=f"r{i}")
        sink.append("signing.forged", id=f"f{i}")
    assert [r.kind for r in audit.records()] == ["signing.unsigned", "signing.forged"]
    assert audit.records()[0].fields["source"] == "uid:1000"
    clock.advance(10)
    sink.flush()
    summary = audit.records(SUMMARY_KIND)
    assert len(summary) == 1 and _counted(audit) == 998
    assert {(e["source"], e["kind"], e["count"]) for e in summary[0].fields["entries"]} == {
        ("uid:1000", "signing.unsigned", 499),
        ("uid:1000", "signing.forged", 499),
    }
    sink.append("signing.unsigned", id="next")  # a new window: the first is written in full again
    assert audit.records()[-1].fields["id"] == "next"
    assert verify(tmp_path / "audit.db").ok


def test_refusals_from_many_sources_are_bounded_by_the_write_bucket(
    clock: FakeClock, audit: AuditLog
) -> None:
    """10,000 distinct sources at once write at most burst full records; the rest are counted."""
    sink = RefusalAudit(audit, RefusalAuditConfig(window_s=60, max_writes_per_s=1, burst=20), clock=clock)
    for i in range(10_000):
        sink.source = f"conn:{i}"
        sink.append("validation.rejected", field="body.x")
    assert len(audit.records()) == 20
    sink.flush(force=True)
    assert _counted(audit) == 10_000 - 20


def test_refusals_track_a_bounded_number_of_sources(clock: FakeClock, audit: AuditLog) -> None:
    """Past max_sources pairs, counts go to the '*' source; the summary lists at most max_summary_entries."""
    cfg = RefusalAuditConfig(window_s=60, burst=1, max_sources=100, max_summary_entries=10)
    sink = RefusalAudit(audit, cfg, clock=clock)
    for i in range(5000):
        sink.source = f"conn:{i}"
        sink.append("ratelimit.limited", key="k")
    assert len(sink._first) + len(sink._counts) <= 101
    sink.flush(force=True)
    summary = audit.records(SUMMARY_KIND)[0].fields
    assert len(summary["entries"]) == 10 and summary["entries"][0]["source"] == "*"
    assert summary["total"] == 4999 and _counted(audit) == 4999
