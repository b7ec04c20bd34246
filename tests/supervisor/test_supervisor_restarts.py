"""Restart types x exit kinds, strategies, intensity and escalation, heartbeats, significant children
(OTP supervisor_SUITE: the termination matrix, restart group, significant group)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from supervisor_harness import Harness, child, starts

from openfang.supervisor.spec import AutoShutdown, Restart, Strategy

pytestmark = pytest.mark.integration

EXITS = {
    "normal": ("exit_after", {"code": 0, "ms": 100}),
    "abnormal": ("crash_after", {"ms": 100}),
    "exit_code": ("exit_after", {"code": 7, "ms": 100}),
}


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
@pytest.mark.parametrize("how", ["normal", "abnormal", "exit_code", "killed"])
def test_restart_matrix(harness: Harness, marks: Path, restart: str, how: str) -> None:
    """OTP supervisor_SUITE:{permanent,transient,temporary}_{normal,abnormal,shutdown} — who is restarted.

    permanent: always; transient: only after an abnormal exit; temporary: never, and its spec is forgotten.
    """
    if how == "killed":
        spec = child("x", marks=marks, restart=Restart(restart))
    else:
        func, args = EXITS[how]
        spec = child("x", func, marks=marks, restart=Restart(restart), args={**args, "ms": 100})
    sup = harness.sup(
        [spec], intensity=1, period=60
    )  # one restart allowed: the second exit must not escalate here
    sup.start()
    if how == "killed":
        os.kill(sup.tree()[0]["pid"], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.exited")) >= 1)
    expected = restart == "permanent" or (restart == "transient" and how != "normal")
    if expected:
        harness.wait(lambda: len(harness.kinds("child.restarted")) == 1)
    else:
        harness.settle(0.3)
        assert harness.kinds("child.restarted") == []
    exited = harness.kinds("child.exited")[0]
    assert exited["reason"] == ("normal" if how == "normal" else "abnormal")
    ids = [c["id"] for c in sup.which_children()]
    assert ids == ([] if restart == "temporary" else ["x"])
    sup.terminate_child("x") if ids else None


def _pids(sup: object) -> dict[str, int]:
    return {n["id"]: n["pid"] for n in sup.tree()}  # type: ignore[attr-defined]


def _kill_and_settle(harness: Harness, sup: object, cid: str, restarts: int) -> None:
    os.kill(_pids(sup)[cid], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted")) >= restarts)
    harness.settle(0.1)


def test_one_for_one_restarts_only_the_failed_child(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:one_for_one — only the crashed child is restarted."""
    sup = harness.sup([child(c, marks=marks) for c in "abc"])
    sup.start()
    before = _pids(sup)
    _kill_and_settle(harness, sup, "b", 1)
    after = _pids(sup)
    assert after["a"] == before["a"] and after["c"] == before["c"] and after["b"] != before["b"]
    assert starts(marks) == ["a", "b", "c", "b"]
    assert sup.tree()[1]["restarts"] == 1


def test_one_for_all_restarts_siblings_in_start_order(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:one_for_all — all others are stopped (reverse order) and all restart in order."""
    sup = harness.sup([child(c, marks=marks) for c in "abc"], strategy=Strategy.ONE_FOR_ALL)
    sup.start()
    before = _pids(sup)
    _kill_and_settle(harness, sup, "b", 3)
    after = _pids(sup)
    assert all(after[c] != before[c] for c in "abc")
    assert starts(marks) == ["a", "b", "c", "a", "b", "c"]
    shutdowns = [e["id"] for e in harness.kinds("child.exited") if e["reason"] == "shutdown"]
    assert shutdowns == ["c", "a"]


def test_rest_for_one_restarts_the_failed_and_later_children(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:rest_for_one — the crashed child and those started after it restart."""
    sup = harness.sup([child(c, marks=marks) for c in "abc"], strategy=Strategy.REST_FOR_ONE)
    sup.start()
    before = _pids(sup)
    _kill_and_settle(harness, sup, "b", 2)
    after = _pids(sup)
    assert after["a"] == before["a"] and after["b"] != before["b"] and after["c"] != before["c"]
    assert starts(marks) == ["a", "b", "c", "b", "c"]


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one"])
def test_escalation_when_intensity_is_exceeded(harness: Harness, marks: Path, strategy: str) -> None:
    """OTP supervisor_SUITE:*_escalation — more than intensity restarts in period: stop all, terminate."""
    strat = Strategy(strategy)
    if strat == Strategy.SIMPLE_ONE_FOR_ONE:
        sup = harness.sup(
            [child("w", "crash_after", marks=marks, args={"ms": 50})], strategy=strat, intensity=2
        )
        sup.start()
        sup.start_child({})
        bystanders: list[int] = [sup.start_child({"ms": 60_000})["pid"]]
    else:
        sup = harness.sup(
            [child("ok", marks=marks), child("bad", "crash_after", marks=marks, args={"ms": 50})],
            strategy=strat,
            intensity=2,
        )
        sup.start()
        bystanders = [_pids(sup)["ok"]]
    harness.wait(lambda: harness.terminated == ["shutdown"])
    assert len(harness.kinds("supervisor.escalated")) == 1
    assert sup.count_children()["active"] == 0
    assert all(not psutil.pid_exists(p) for p in bystanders)


def test_intensity_zero_terminates_on_the_first_crash(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_flags — intensity 0: any restart terminates the supervisor."""
    sup = harness.sup([child("bad", "crash_after", marks=marks, args={"ms": 50})], intensity=0)
    sup.start()
    harness.wait(lambda: harness.terminated == ["shutdown"])
    assert starts(marks) == ["bad"]


def test_restarts_outside_the_period_do_not_escalate(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:multiple_restarts — restarts spread wider than period never add up."""
    sup = harness.sup([child("bad", "crash_after", marks=marks, args={"ms": 250})], intensity=1, period=0.2)
    sup.start()
    harness.wait(lambda: len(harness.kinds("child.restarted")) >= 3)
    assert harness.terminated == []
    sup.shutdown()


def test_one_for_all_other_child_fails_restart_is_retried_and_counted(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:one_for_all_other_child_fails_restart — failed restarts retry until escalation."""
    flag = marks / "flag"
    sup = harness.sup(
        [child("a", marks=marks), child("c", "fail_start_if_file", marks=marks, args={"flag": str(flag)})],
        strategy=Strategy.ONE_FOR_ALL,
        intensity=3,
    )
    sup.start()
    flag.write_text("x")
    os.kill(_pids(sup)["a"], signal.SIGKILL)
    harness.wait(lambda: harness.terminated == ["shutdown"])
    assert starts(marks).count("c") >= 3  # the first start and every retry
    assert sup.count_children()["active"] == 0


def test_failed_restart_retries_until_the_child_starts_again(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:restart_child_returns_error — a restart that fails is retried (and counts)."""
    flag = marks / "flag"
    sup = harness.sup(
        [child("c", "fail_start_if_file", marks=marks, args={"flag": str(flag)})], intensity=1000, period=60
    )
    sup.start()
    flag.write_text("x")
    os.kill(_pids(sup)["c"], signal.SIGKILL)
    harness.wait(lambda: starts(marks).count("c") >= 4)
    assert sup.which_children()[0]["state"] in ("restarting", "running")
    flag.unlink()
    harness.wait(lambda: len(harness.kinds("child.restarted")) == 1)
    assert sup.which_children()[0]["state"] == "running"
    assert harness.terminated == []


def test_heartbeat_silence_kills_and_restarts_a_hung_child(harness: Harness, marks: Path) -> None:
    """A child that stops beating is killed (child.hung) and restarted as an abnormal exit."""
    sup = harness.sup(
        [child("hb", "serve_hb", marks=marks, heartbeat_ms=300, args={"every_ms": 50, "hang_after": 4})],
        intensity=5,
    )
    sup.start()
    harness.wait(lambda: len(harness.kinds("child.restarted")) == 1)
    (hung,) = harness.kinds("child.hung")[:1]
    assert hung["heartbeat_ms"] == 300 and hung["silent_ms"] >= 300
    exited = harness.kinds("child.exited")[0]
    assert exited["reason"] == "abnormal" and exited["exit"]["detail"] == "hung"


def test_heartbeating_child_is_left_alone(harness: Harness, marks: Path) -> None:
    """A child that beats more often than heartbeat_ms is never considered hung."""
    sup = harness.sup([child("hb", "serve_hb", marks=marks, heartbeat_ms=1000, args={"every_ms": 50})])
    sup.start()
    harness.settle(1.0)
    assert harness.kinds("child.hung") == [] and harness.kinds("child.exited") == []


def test_temporary_bystander_is_not_restarted_in_a_group_restart(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:temporary_bystander — one_for_all stops a temporary sibling and forgets it."""
    sup = harness.sup(
        [
            child("a", marks=marks),
            child("tmp", marks=marks, restart=Restart.TEMPORARY),
            child("c", marks=marks),
        ],
        strategy=Strategy.ONE_FOR_ALL,
    )
    sup.start()
    _kill_and_settle(harness, sup, "a", 2)
    assert [c["id"] for c in sup.which_children()] == ["a", "c"]
    assert starts(marks) == ["a", "tmp", "c", "a", "c"]


def test_significant_transient_normal_exit_shuts_the_supervisor_down(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:significant_transient — any_significant: its own exit ends all."""
    sig = child(
        "sig", "exit_after", marks=marks, restart=Restart.TRANSIENT, significant=True, args={"ms": 200}
    )
    sup = harness.sup([child("a", marks=marks), sig], auto_shutdown=AutoShutdown.ANY_SIGNIFICANT)
    sup.start()
    harness.wait(lambda: harness.terminated == ["auto_shutdown"])
    assert sup.count_children()["active"] == 0
    assert harness.kinds("supervisor.escalated") == []


def test_significant_abnormal_exit_is_restarted_not_shut_down(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:significant_bystander — a restarted significant child ends nothing."""
    sig = child(
        "sig", "crash_after", marks=marks, restart=Restart.TRANSIENT, significant=True, args={"ms": 200}
    )
    sup = harness.sup([sig], auto_shutdown=AutoShutdown.ANY_SIGNIFICANT, intensity=5)
    sup.start()
    harness.wait(lambda: len(harness.kinds("child.restarted")) == 1)
    assert harness.terminated == []


def test_all_significant_waits_for_the_last_significant_child(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:significant_temporary — all_significant shuts down after the last one exits."""
    quick = child(
        "s1", "exit_after", marks=marks, restart=Restart.TEMPORARY, significant=True, args={"ms": 100}
    )
    slow = child(
        "s2", "exit_after", marks=marks, restart=Restart.TEMPORARY, significant=True, args={"ms": 800}
    )
    sup = harness.sup([child("a", marks=marks), quick, slow], auto_shutdown=AutoShutdown.ALL_SIGNIFICANT)
    sup.start()
    harness.wait(lambda: len(harness.kinds("child.exited")) == 1)
    harness.settle(0.1)
    assert harness.terminated == []
    harness.wait(lambda: harness.terminated == ["auto_shutdown"])


def test_simple_one_for_one_restarts_a_crashed_permanent_child(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:simple_one_for_one — a dynamic permanent child is restarted with its args."""
    sup = harness.sup([child("w", marks=marks)], strategy=Strategy.SIMPLE_ONE_FOR_ONE)
    sup.start()
    first = sup.start_child({"info": {"n": 1}})
    sup.start_child({"info": {"n": 2}})
    os.kill(first["pid"], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted")) == 1)
    node = next(n for n in sup.tree() if n["id"] == first["id"])
    assert node["info"]["n"] == 1 and node["pid"] != first["pid"]
