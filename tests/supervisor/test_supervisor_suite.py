"""More OTP supervisor_SUITE cases: stop races, restarts that ignore or hang, counting, order, scale."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from supervisor_harness import Harness, child, starts

from openfang.supervisor.spec import AutoShutdown, Restart, Strategy

pytestmark = pytest.mark.integration


def test_sup_stop_race_child_exiting_during_shutdown_is_not_restarted(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_stop_race — a child dying while the tree stops is reaped, never restarted."""
    sup = harness.sup([child("a", marks=marks), child("b", "exit_after", marks=marks, args={"ms": 150})])
    sup.start()
    harness.settle(0.1)
    sup.shutdown()
    harness.settle(0.2)
    assert harness.kinds("child.restarted") == []
    assert sup.count_children()["active"] == 0


def test_non_shutdown_exit_dynamic_is_still_a_shutdown(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_stop_non_shutdown_exit_dynamic — exiting 5 on SIGTERM is just stopped."""
    sup = harness.sup([child("w", "crash_on_term", marks=marks)], strategy=Strategy.SIMPLE_ONE_FOR_ONE)
    sup.start()
    sup.start_child({})
    sup.start_child({})
    sup.shutdown()
    exits = harness.kinds("child.exited")
    assert [e["reason"] for e in exits] == ["shutdown", "shutdown"]
    assert all(e["status"] == 5 for e in exits)
    assert harness.kinds("child.restarted") == []


def test_rest_for_one_other_child_fails_restart_escalates(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:rest_for_one_other_child_fails_restart — a failing later child escalates."""
    flag = marks / "flag"
    sup = harness.sup(
        [
            child("a", marks=marks),
            child("b", marks=marks),
            child("c", "fail_start_if_file", marks=marks, args={"flag": str(flag)}),
        ],
        strategy=Strategy.REST_FOR_ONE,
        intensity=2,
    )
    sup.start()
    a_pid = sup.tree()[0]["pid"]
    flag.write_text("x")
    os.kill(sup.tree()[1]["pid"], signal.SIGKILL)
    harness.wait(lambda: harness.terminated == ["shutdown"])
    assert starts(marks).count("a") == 1  # 'a' is before the failure: never restarted
    assert a_pid not in [n["pid"] for n in sup.tree()]


def test_simple_one_for_one_restart_ignore_drops_the_child(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:simple_one_for_one_restart_ignore — ignoring its restart drops it."""
    flag = marks / "flag"
    sup = harness.sup(
        [child("w", "ignore_if_file", marks=marks, args={"flag": str(flag)})],
        strategy=Strategy.SIMPLE_ONE_FOR_ONE,
    )
    sup.start()
    res = sup.start_child({})
    flag.write_text("x")
    os.kill(res["pid"], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.ignored")) == 1)
    harness.settle(0.1)
    assert sup.which_children() == []
    assert harness.kinds("child.restarted") == []


def test_significant_escalation_restarts_count_and_escalate(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:significant_escalation — a crashing significant transient escalates normally."""
    sig = child("s", "crash_after", marks=marks, restart=Restart.TRANSIENT, significant=True, args={"ms": 50})
    sup = harness.sup([sig], auto_shutdown=AutoShutdown.ANY_SIGNIFICANT, intensity=1)
    sup.start()
    harness.wait(lambda: bool(harness.terminated))
    assert harness.terminated == ["shutdown"]


def test_count_restarting_children(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:count_restarting_children — failing restarts show 'restarting'."""
    flag = marks / "flag"
    sup = harness.sup(
        [child("a", marks=marks), child("c", "fail_start_if_file", marks=marks, args={"flag": str(flag)})],
        intensity=1000,
        period=60,
    )
    sup.start()
    flag.write_text("x")
    os.kill(sup.tree()[1]["pid"], signal.SIGKILL)
    harness.wait(lambda: starts(marks).count("c") >= 3)
    assert sup.which_children()[1]["state"] == "restarting"
    assert sup.count_children() == {"specs": 2, "active": 1, "supervisors": 0, "workers": 2}
    flag.unlink()
    harness.wait(lambda: sup.which_children()[1]["state"] == "running")


@pytest.mark.parametrize("strategy", ["one_for_one", "rest_for_one", "simple_one_for_one"])
def test_hanging_restart_loop_escalates_through_start_timeouts(
    harness: Harness, marks: Path, strategy: str
) -> None:
    """OTP supervisor_SUITE:hanging_restart_loop(_rest_for_one, _simple) — hanging restarts time out, count,
    and escalate."""
    flag = marks / "flag"
    hanger = child("h", "hang_if_file", marks=marks, start_timeout_ms=200, args={"flag": str(flag)})
    if strategy == "simple_one_for_one":
        sup = harness.sup([hanger], strategy=Strategy.SIMPLE_ONE_FOR_ONE, intensity=2)
        sup.start()
        pid = sup.start_child({})["pid"]
    else:
        sup = harness.sup([child("a", marks=marks), hanger], strategy=Strategy(strategy), intensity=2)
        sup.start()
        pid = sup.tree()[1]["pid"]
    flag.write_text("x")
    os.kill(pid, signal.SIGKILL)
    harness.wait(lambda: harness.terminated == ["shutdown"], timeout=20)
    failed = harness.kinds("child.start_failed")
    assert len(failed) >= 2 and all("start_timeout_ms=200" in e["reason"] for e in failed)
    assert sup.count_children()["active"] == 0


def test_order_of_children_survives_restarts(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:order_of_children — which_children keeps start order across restarts."""
    sup = harness.sup([child(c, marks=marks) for c in "abcd"], strategy=Strategy.REST_FOR_ONE, intensity=10)
    sup.start()
    for victim in (2, 0, 3):
        n = len(harness.kinds("child.restarted"))
        os.kill(sup.tree()[victim]["pid"], signal.SIGKILL)
        harness.wait(lambda n=n, v=victim: len(harness.kinds("child.restarted")) >= n + 4 - v)
    assert [c["id"] for c in sup.which_children()] == ["a", "b", "c", "d"]
    assert all(c["state"] == "running" for c in sup.which_children())


def test_scale_start_stop_many_children(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:scale_start_stop_many_children — many static children start and stop in order."""
    ids = [f"c{i:02d}" for i in range(30)]
    sup = harness.sup([child(i, marks=marks, shutdown="brutal_kill") for i in ids])
    sup.start()
    assert starts(marks) == ids
    assert sup.count_children()["active"] == 30
    sup.shutdown()
    assert [e["id"] for e in harness.kinds("child.exited")] == ids[::-1]


def test_which_children_reports_state_type_and_pid(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:which_children — id, pid, type, state of every child."""
    sup = harness.sup([child("a", marks=marks), child("i", "ignore", marks=marks), child("b", marks=marks)])
    sup.start()
    sup.terminate_child("b")
    rows = sup.which_children()
    assert [(r["id"], r["type"], r["state"]) for r in rows] == [
        ("a", "worker", "running"),
        ("i", "worker", "undefined"),
        ("b", "worker", "stopped"),
    ]
    assert rows[0]["pid"] and rows[1]["pid"] is None and rows[2]["pid"] is None
