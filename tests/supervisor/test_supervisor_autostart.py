"""autostart = false: a child kept as a spec and not started at the supervisor's start (OTP's state after
terminate_child), what an elastic pool's members past min_running are. restart_child starts it,
terminate_child stops it with no restart, a crash of it once started is a crash, a group restart and a
reload leave it as the spec says."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from supervisor_harness import Harness, child, starts

from openfang.protocol.errors import ConfigError
from openfang.supervisor.spec import Strategy, SupervisorFlags, SupervisorSpec, check_spec

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("order", ["ordered", "parallel"])
def test_autostart_false_child_is_a_kept_spec_until_restart_child(
    harness: Harness, marks: Path, order: str
) -> None:
    """At start only the autostart children run; the other is listed, not running, and restart_child starts
    it from its kept spec."""
    sup = harness.sup([child("a", marks=marks), child("b", marks=marks, autostart=False)], start_order=order)
    sup.start()
    assert {c["id"]: c["state"] for c in sup.which_children()} == {"a": "running", "b": "undefined"}
    assert sup.count_children() == {"specs": 2, "active": 1, "supervisors": 0, "workers": 2}
    assert starts(marks) == ["a"]
    started = sup.restart_child("b")
    assert psutil.pid_exists(started["pid"]) and starts(marks) == ["a", "b"]
    assert {c["id"]: c["state"] for c in sup.which_children()} == {"a": "running", "b": "running"}


def test_autostart_false_child_once_started_crashes_into_a_restart_and_stops_without_one(
    harness: Harness, marks: Path
) -> None:
    """Started, it is an ordinary child: a kill -9 is restarted (counted); terminate_child stops it for good
    (an exit the supervisor asked for: no restart, no intensity spent)."""
    sup = harness.sup([child("a", marks=marks), child("b", marks=marks, autostart=False)], intensity=5)
    sup.start()
    pid = sup.restart_child("b")["pid"]
    os.kill(pid, signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/b")) == 1)
    sup.terminate_child("b")
    harness.settle(0.3)
    assert {c["id"]: c["state"] for c in sup.which_children()} == {"a": "running", "b": "stopped"}
    assert len(harness.kinds("child.restarted", "root/b")) == 1 and len(sup.window) == 1
    assert harness.terminated == []


def test_autostart_false_child_stays_stopped_through_a_group_restart(harness: Harness, marks: Path) -> None:
    """one_for_all restarts the running children only: a kept spec is not started by a sibling's crash."""
    sup = harness.sup(
        [child("a", marks=marks), child("b", marks=marks, autostart=False)], strategy=Strategy.ONE_FOR_ALL
    )
    sup.start()
    os.kill(sup.which_children()[0]["pid"], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/a")) == 1)
    assert starts(marks) == ["a", "a"]
    assert sup.which_children()[1]["state"] == "undefined"


def test_autostart_reload_changes_start_a_kept_spec_and_leave_a_running_one_running(
    harness: Harness, marks: Path
) -> None:
    """A reload that flips autostart only: true starts a stopped child, false leaves a running one running
    (no restart); a new child with autostart = false is recorded, not started."""
    sup = harness.sup([child("a", marks=marks), child("b", marks=marks, autostart=False)])
    sup.start()
    a_pid = sup.which_children()[0]["pid"]
    diff = sup.reconfigure(SupervisorSpec(children=(child("a", marks=marks), child("b", marks=marks))))
    assert diff["started"] == ["b"] and diff["replaced"] == []
    b_pid = sup.which_children()[1]["pid"]
    diff = sup.reconfigure(
        SupervisorSpec(
            children=(
                child("a", marks=marks, autostart=False),
                child("b", marks=marks),
                child("c", marks=marks, autostart=False),
            )
        )
    )
    assert diff["started"] == [] and diff["replaced"] == [] and sorted(diff["unchanged"]) == ["a", "b", "c"]
    assert [c["pid"] for c in sup.which_children()[:2]] == [a_pid, b_pid]
    assert sup.which_children()[2]["state"] == "undefined" and starts(marks) == ["a", "b"]


def test_autostart_false_is_refused_under_simple_one_for_one() -> None:
    """A dynamic supervisor keeps no stopped child: autostart = false on its template is a named problem."""
    spec = SupervisorSpec(
        flags=SupervisorFlags(strategy=Strategy.SIMPLE_ONE_FOR_ONE), children=(child("t", autostart=False),)
    )
    problems = check_spec(spec)
    assert [p.where for p in problems] == ["supervisor.children.0 key 'autostart'"]
    with pytest.raises(ConfigError):
        raise ConfigError(problems)


def test_terminate_child_request_with_a_pid_stops_only_that_incarnation(
    harness: Harness, marks: Path
) -> None:
    """terminate_child {id, pid}: refused (nothing stopped) when the child was restarted since; stops it when
    the pid is the running one (an elastic pool's shrink after a drain)."""
    sup = harness.sup([child("a", marks=marks), child("b", marks=marks, autostart=False)], intensity=5)
    sup.start()
    old = sup.restart_child("b")["pid"]
    os.kill(old, signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/b")) == 1)
    new = sup.which_children()[1]["pid"]
    answers: list[tuple[bool, object]] = []
    sup.request("root", "terminate_child", {"id": "b", "pid": old}, lambda ok, r: answers.append((ok, r)))
    harness.wait(lambda: len(answers) == 1)
    assert answers[0][0] is False and "restarted since" in str(answers[0][1])
    assert sup.which_children()[1]["pid"] == new
    sup.request("root", "terminate_child", {"id": "b", "pid": new}, lambda ok, r: answers.append((ok, r)))
    harness.wait(lambda: len(answers) == 2)
    assert answers[1][0] is True and sup.which_children()[1]["state"] == "stopped"
