"""The schedule store: validation, claiming a run exactly once, and the misfire policies after downtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfang.control.schedules import ScheduleStore, next_after, parse_when
from openfang.protocol.errors import ConfigError, NotFound

T0 = 1_796_000_000.0  # a fixed "now" (2026-11-29): every test injects the clock


@pytest.fixture
def store(tmp_path: Path) -> ScheduleStore:
    return ScheduleStore(tmp_path / "schedules.db")


def test_add_reports_every_problem_at_once(store: ScheduleStore) -> None:
    """Both or neither of at/cron, a bad cron, an unknown zone, an empty text: one error listing them."""
    with pytest.raises(ConfigError) as exc:
        store.add(target="a", text="", created_by="op", at=T0 + 60, cron="* * * * *", now=T0)
    assert "exactly one of at" in str(exc.value) and "1 to" in str(exc.value)
    with pytest.raises(ConfigError, match="bad cron expression"):
        store.add(target="a", text="x", created_by="op", cron="61 * * * *", now=T0)
    with pytest.raises(ConfigError, match="unknown time zone"):
        store.add(target="a", text="x", created_by="op", cron="* * * * *", tz="Mars/Base", now=T0)
    with pytest.raises(ConfigError, match="in the past"):
        store.add(target="a", text="x", created_by="op", at=T0 - 3600, now=T0)
    assert store.all() == []


def test_once_schedule_is_claimed_exactly_once_even_by_two_schedulers(
    store: ScheduleStore, tmp_path: Path
) -> None:
    """A due run is claimed by one scheduler only; a second one (or a restarted one) gets nothing."""
    s = store.add(target="agent-1", text="wake up", created_by="op", at=T0 + 10, now=T0)
    assert store.claim_due(now=T0 + 5) == []
    other = ScheduleStore(tmp_path / "schedules.db")
    (due,) = store.claim_due(now=T0 + 11)
    assert (due.target, due.text, due.due) == ("agent-1", "wake up", T0 + 10)
    assert other.claim_due(now=T0 + 12) == []
    store.record(due, "delivered", {"reply": "ok"})
    assert store.get(s.id).last_status == "delivered" and store.get(s.id).next_run is None
    assert [r["status"] for r in other.runs(s.id)] == ["delivered"]


def test_cron_schedule_moves_to_its_next_occurrence_in_its_time_zone(store: ScheduleStore) -> None:
    """A cron schedule fires at each occurrence, computed in its own time zone (DST included)."""
    s = store.add(target="a", text="x", created_by="op", cron="0 9 * * *", tz="Europe/Paris", now=T0)
    first = s.next_run
    assert first is not None and s.to_wire()["next_run_iso"].endswith("09:00:00+01:00")
    (due,) = store.claim_due(now=first + 1)
    assert due.due == first and store.get(s.id).next_run == next_after("0 9 * * *", "Europe/Paris", first)


@pytest.mark.parametrize(("policy", "fired", "missed"), [("once", 1, 4), ("skip", 0, 5), ("all", 5, 0)])
def test_misfire_policy_after_downtime(store: ScheduleStore, policy: str, fired: int, missed: int) -> None:
    """Five occurrences missed while down: `once` fires one, `skip` none, `all` each; misses are recorded."""
    s = store.add(target="a", text="x", created_by="op", cron="*/10 * * * *", misfire=policy, now=T0)
    assert s.next_run is not None
    back = s.next_run + 4 * 600 + 300  # the daemon was down for five occurrences
    dues = store.claim_due(now=back)
    assert len(dues) == fired
    statuses = [r["status"] for r in store.runs(s.id, limit=50)]
    assert statuses.count("claimed") == fired and statuses.count("missed") == missed
    assert store.get(s.id).next_run == next_after("*/10 * * * *", "UTC", back)
    assert store.claim_due(now=back + 1) == []


def test_remove_by_owner_only_removes_its_own(store: ScheduleStore) -> None:
    """An agent may remove only schedules it created; the operator removes any."""
    s = store.add(target="a", text="x", created_by="agent-9", at=T0 + 60, now=T0)
    with pytest.raises(NotFound):
        store.remove(s.id, owner="agent-1")
    store.remove(s.id, owner="agent-9")
    assert store.all() == []
    with pytest.raises(NotFound):
        store.remove(s.id)


def test_parse_when_reads_delays_and_iso_times() -> None:
    """`10m`, `2h`, `1d` are delays; ISO times without a zone are in the given zone; nonsense is named."""
    assert parse_when("10m", now=T0) == T0 + 600 and parse_when("1.5h", now=T0) == T0 + 5400
    assert parse_when("2026-12-24T09:00:00+00:00") == parse_when("2026-12-24T10:00", tz="Europe/Paris")
    with pytest.raises(Exception, match="cannot read time"):
        parse_when("tomorrow-ish")


def test_seconds_field_cron_is_supported(store: ScheduleStore) -> None:
    """Six fields put seconds first (for fine-grained schedules and tests)."""
    s = store.add(target="a", text="x", created_by="op", cron="*/5 * * * * *", now=T0)
    assert s.next_run is not None and 0 < s.next_run - T0 <= 5
