"""Dynamic children and reload (OTP supervisor_SUITE: child_adm, child_adm_simple, count_children,
do_not_save_child_specs_for_temporary_children, scale_start_stop_many_children, order_of_children)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from supervisor_harness import Harness, child, starts

from openfang.protocol.errors import AlreadyExists, ConfigError, NotFound, SupervisorError
from openfang.supervisor.loop import Loop
from openfang.supervisor.runtime import DynamicSupervisor, Supervisor, supervisor_for
from openfang.supervisor.spec import (
    ChildType,
    Restart,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
)

pytestmark = pytest.mark.integration


def test_child_adm_start_terminate_restart_delete(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:child_adm — the dynamic-child API and its errors."""
    sup = harness.sup([child("a", marks=marks)])
    sup.start()
    res = sup.start_child(child("b", marks=marks))
    assert res["id"] == "b" and psutil.pid_exists(res["pid"])
    with pytest.raises(AlreadyExists, match="already_started"):
        sup.start_child(child("b", marks=marks))
    with pytest.raises(SupervisorError, match="running") as running:
        sup.restart_child("b")
    assert running.value.code == "running"
    with pytest.raises(SupervisorError, match="running"):
        sup.delete_child("b")
    sup.terminate_child("b")
    assert {c["id"]: c["state"] for c in sup.which_children()} == {"a": "running", "b": "stopped"}
    with pytest.raises(AlreadyExists, match="already_present"):
        sup.start_child(child("b", marks=marks))
    again = sup.restart_child("b")
    assert again["pid"] != res["pid"]
    sup.terminate_child("b")
    sup.delete_child("b")
    assert [c["id"] for c in sup.which_children()] == ["a"]
    for op in (sup.terminate_child, sup.restart_child, sup.delete_child, sup.get_childspec):
        with pytest.raises(NotFound, match="not_found"):
            op("zz")  # type: ignore[operator]
    assert starts(marks) == ["a", "b", "b"]


def test_child_adm_rejects_an_invalid_spec_with_every_problem(harness: Harness, marks: Path) -> None:
    """start_child validates the spec like check_childspecs and names each problem."""
    sup = harness.sup([])
    sup.start()
    with pytest.raises(ConfigError) as info:
        sup.start_child({"id": "x", "start": "bad start", "shutdown": "later"})
    text = str(info.value)
    assert "key 'start'" in text and "key 'shutdown'" in text
    assert sup.which_children() == []


def test_child_adm_failed_dynamic_start_keeps_no_spec(harness: Harness, marks: Path) -> None:
    """A dynamic child that fails to start is not kept."""
    sup = harness.sup([])
    sup.start()
    with pytest.raises(SupervisorError, match="'bad'"):
        sup.start_child(child("bad", "fail_start", marks=marks))
    assert sup.which_children() == []


def test_child_adm_simple_one_for_one_restrictions(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:child_adm_simple — extra args, terminate removes, restart/delete are errors."""
    sup = harness.sup([child("w", marks=marks)], strategy=Strategy.SIMPLE_ONE_FOR_ONE)
    sup.start()
    assert sup.which_children() == []
    a = sup.start_child({"info": {"n": 1}})
    b = sup.start_child({"info": {"n": 2}})
    assert a["id"] != b["id"]
    assert sup.count_children() == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
    with pytest.raises(SupervisorError, match="simple_one_for_one"):
        sup.restart_child(a["id"])
    with pytest.raises(SupervisorError, match="simple_one_for_one"):
        sup.delete_child(a["id"])
    sup.terminate_child(a["id"])
    assert [c["id"] for c in sup.which_children()] == [b["id"]]


def test_temporary_child_spec_is_not_saved_after_exit(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:do_not_save_child_specs_for_temporary_children — temporary specs are forgotten."""
    sup = harness.sup([child("a", marks=marks)])
    sup.start()
    res = sup.start_child(child("t", marks=marks, restart=Restart.TEMPORARY))
    os.kill(res["pid"], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.exited")) == 1)
    assert [c["id"] for c in sup.which_children()] == ["a"]
    sup.start_child(child("t2", marks=marks, restart=Restart.TEMPORARY))
    sup.terminate_child("t2")
    assert [c["id"] for c in sup.which_children()] == ["a"]


def test_count_children_counts_specs_active_supervisors_and_workers(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """OTP supervisor_SUITE:count_children — specs, active, supervisors, workers."""
    nested = SupervisorSpec(flags=SupervisorFlags(), children=(child("w", marks=marks),))
    from openfang.supervisor.spec import ChildSpec

    sup = harness.sup(
        [
            child("a", marks=marks),
            child("i", "ignore", marks=marks),
            ChildSpec(id="s", type=ChildType.SUPERVISOR, supervisor=nested, inline=inline),
        ]
    )
    sup.start()
    assert sup.count_children() == {"specs": 3, "active": 2, "supervisors": 1, "workers": 2}


def test_scale_start_stop_many_temporary_children(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:simple_one_for_one_scale_many_temporary_children — many start and stop cleanly."""
    sup = harness.sup(
        [child("w", marks=marks, restart=Restart.TEMPORARY, shutdown="brutal_kill")],
        strategy=Strategy.SIMPLE_ONE_FOR_ONE,
    )
    sup.start()
    pids = [sup.start_child({})["pid"] for _ in range(20)]
    assert sup.count_children()["active"] == 20
    for p in pids[:10]:
        os.kill(p, signal.SIGKILL)
    harness.wait(lambda: sup.count_children()["specs"] == 10)
    assert harness.kinds("child.restarted") == []
    sup.shutdown()
    assert sup.count_children()["active"] == 0


def test_reconfigure_starts_stops_replaces_and_keeps_children(harness: Harness, marks: Path) -> None:
    """reconfigure diffs by id: new ones start in place, removed ones stop, changed ones are replaced."""
    sup = harness.sup([child("a", marks=marks), child("b", marks=marks), child("c", marks=marks)])
    sup.start()
    before = {n["id"]: n["pid"] for n in sup.tree()}
    new = SupervisorSpec(
        flags=SupervisorFlags(intensity=7, period=9),
        children=(
            child("a", marks=marks),
            child("d", marks=marks),
            child("b", marks=marks, args={"info": {"v": 2}}),
        ),
    )
    diff = sup.reconfigure(new)
    assert diff["started"] == ["d"] and diff["stopped"] == ["c"]
    assert diff["replaced"] == ["b"] and diff["unchanged"] == ["a"]
    after = {n["id"]: n["pid"] for n in sup.tree()}
    assert list(after) == ["a", "d", "b"]
    assert after["a"] == before["a"] and after["b"] != before["b"]
    assert not psutil.pid_exists(before["c"])
    assert sup.window.intensity == 7
    assert sup.tree()[2]["info"]["v"] == 2


def test_reconfigure_rejects_an_invalid_spec_and_changes_nothing(harness: Harness, marks: Path) -> None:
    """A bad new spec is refused with every problem; the running children are left as they are."""
    sup = harness.sup([child("a", marks=marks)])
    sup.start()
    pid = sup.tree()[0]["pid"]
    bad = SupervisorSpec(children=(child("a", marks=marks), child("a", marks=marks)))
    with pytest.raises(ConfigError, match="duplicate"):
        sup.reconfigure(bad)
    assert sup.tree()[0]["pid"] == pid


def test_reconfigure_recurses_into_a_nested_supervisor_without_restarting_it(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A nested supervisor whose children alone changed gets the new spec, and keeps running."""
    from openfang.supervisor.spec import ChildSpec

    def sub(*ids: str) -> ChildSpec:
        nested = SupervisorSpec(children=tuple(child(i, marks=marks) for i in ids))
        return ChildSpec(id="sub", type=ChildType.SUPERVISOR, supervisor=nested, inline=inline)

    sup = harness.sup([sub("w1")])
    sup.start()
    sub_pid = sup.tree()[0]["pid"]
    diff = sup.reconfigure(SupervisorSpec(children=(sub("w1", "w2"),)))
    assert diff["reconfigured"] == ["sub"]
    harness.wait(lambda: [c["id"] for c in sup.tree()[0]["children"]] == ["w1", "w2"])
    assert sup.tree()[0]["pid"] == sub_pid and harness.kinds("child.exited", "root/sub") == []
    assert starts(marks) == ["w1", "w2"]


def test_supervisor_for_makes_simple_one_for_one_a_dynamic_supervisor() -> None:
    """The strategy picks the class; a static Supervisor refuses simple_one_for_one and vice versa."""
    loop = Loop()
    template = child("w")
    dynamic = SupervisorSpec(
        flags=SupervisorFlags(strategy=Strategy.SIMPLE_ONE_FOR_ONE), children=(template,)
    )
    static = SupervisorSpec(children=(template,))
    assert isinstance(supervisor_for(dynamic, loop=loop, subreaper=False), DynamicSupervisor)
    assert isinstance(supervisor_for(static, loop=loop, subreaper=False), Supervisor)
    with pytest.raises(ConfigError, match="DynamicSupervisor"):
        Supervisor(dynamic, loop=loop, subreaper=False)
    with pytest.raises(ConfigError, match="simple_one_for_one"):
        DynamicSupervisor(static, loop=loop, subreaper=False)
    loop.close()
