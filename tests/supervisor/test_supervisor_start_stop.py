"""Ordered start, failed-start rollback and shutdown policies (OTP supervisor_SUITE sup_start / sup_stop)."""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
from supervisor_harness import Harness, child, starts, stops

from openfang.protocol.errors import SupervisorError
from openfang.supervisor.spec import ChildSpec, Restart, StartOrder, Strategy

pytestmark = pytest.mark.integration


def test_start_normal_starts_children_in_order_and_stops_them_in_reverse(
    harness: Harness, marks: Path
) -> None:
    """OTP supervisor_SUITE:sup_start_normal — children start one at a time in order, stop in reverse."""
    sup = harness.sup([child(c, marks=marks) for c in ("a", "b", "c")])
    sup.start()
    assert starts(marks) == ["a", "b", "c"]
    assert [e["id"] for e in harness.kinds("child.started")] == ["a", "b", "c"]
    pids = [n["pid"] for n in sup.tree()]
    assert all(psutil.pid_exists(p) for p in pids)
    assert [n["state"] for n in sup.tree()] == ["running"] * 3
    sup.shutdown()
    assert stops(marks) == ["c", "b", "a"]
    assert [e["id"] for e in harness.kinds("child.exited")] == ["c", "b", "a"]
    assert all(e["reason"] == "shutdown" for e in harness.kinds("child.exited"))
    assert sup.count_children()["active"] == 0


def test_start_child_info_from_ready_is_in_the_tree(harness: Harness, marks: Path) -> None:
    """The info a child passes to ready() is shown in tree()."""
    sup = harness.sup([child("a", marks=marks, args={"info": {"port": 7}})])
    sup.start()
    node = sup.tree()[0]
    assert node["info"] == {"role": "serve", "port": 7}
    assert node["path"] == "root/a" and node["started_at"] > 0 and node["restarts"] == 0


def test_start_ignore_child_is_not_started_and_not_an_error(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_start_ignore_child — an ignoring child is kept as a spec, not started."""
    sup = harness.sup([child("a", marks=marks), child("ign", "ignore", marks=marks), child("c", marks=marks)])
    sup.start()
    states = {c["id"]: c["state"] for c in sup.which_children()}
    assert states == {"a": "running", "ign": "undefined", "c": "running"}
    assert sup.count_children() == {"specs": 3, "active": 2, "supervisors": 0, "workers": 3}


def test_start_ignore_temporary_child_forgets_its_spec(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_start_ignore_temporary_child — an ignoring temporary child is dropped."""
    sup = harness.sup([child("a", marks=marks)])
    sup.start()
    result = sup.start_child(child("t", "ignore", marks=marks, restart=Restart.TEMPORARY))
    assert result["pid"] is None
    assert [c["id"] for c in sup.which_children()] == ["a"]


def test_start_fail_rolls_back_started_children_and_names_the_child(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_start_fail — a child failing before ready stops the started ones."""
    sup = harness.sup(
        [child("a", marks=marks), child("b", marks=marks), child("bad", "fail_start", marks=marks)]
    )
    with pytest.raises(SupervisorError, match="'bad'"):
        sup.start()
    assert stops(marks) == ["b", "a"]
    assert sup.which_children() == []
    failed = harness.kinds("child.start_failed")
    assert [e["id"] for e in failed] == ["bad"]


def test_start_parallel_forks_every_child_before_waiting_for_any(harness: Harness, marks: Path) -> None:
    """start_order = parallel: each child is ready only once all have started, and the start succeeds;
    events still come in spec order, and shutdown is still in reverse order."""
    ids = ("a", "b", "c")
    kids = [child(c, "wait_for_siblings", marks=marks, args={"siblings": list(ids)}) for c in ids]
    sup = harness.sup(kids, start_order=StartOrder.PARALLEL)
    sup.start()
    assert [n["state"] for n in sup.tree()] == ["running"] * 3
    assert [e["id"] for e in harness.kinds("child.started")] == ["a", "b", "c"]
    sup.shutdown()
    assert [e["id"] for e in harness.kinds("child.exited")] == ["c", "b", "a"]


def test_start_ordered_waits_for_each_ready_before_the_next_fork(harness: Harness, marks: Path) -> None:
    """The default (OTP's ordered start): a child waiting for a later sibling never sees it start."""
    kids = [
        child("a", "wait_for_siblings", marks=marks, args={"siblings": ["a", "b"]}, start_timeout_ms=500),
        child("b", marks=marks),
    ]
    sup = harness.sup(kids)
    with pytest.raises(SupervisorError, match="'a'"):
        sup.start()
    assert starts(marks) == ["a"]


def test_start_parallel_failure_rolls_back_every_child_and_names_it(harness: Harness, marks: Path) -> None:
    """A parallel start where one child fails: every other child (ready or still starting) is stopped, in
    reverse order, and the error names the failed one."""
    sup = harness.sup(
        [child("a", marks=marks), child("bad", "fail_start", marks=marks), child("c", marks=marks)],
        start_order=StartOrder.PARALLEL,
    )
    with pytest.raises(SupervisorError, match="'bad'"):
        sup.start()
    # c may be stopped before its code runs (then it marks nothing): it is forked before bad is judged.
    assert stops(marks) in (["c", "a"], ["a"])
    assert sup.which_children() == [] and sup.count_children()["active"] == 0
    assert [e["id"] for e in harness.kinds("child.start_failed")] == ["bad"]


def test_start_error_return_for_unimportable_start(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_start_error_return — a start that cannot be imported fails the start."""
    spec = child("a", marks=marks)
    bad = child("nomod", marks=marks).__class__(id="nomod", start="no_such_module_xyz:main", shutdown=100)
    sup = harness.sup([spec, bad])
    with pytest.raises(SupervisorError, match="nomod"):
        sup.start()
    assert stops(marks) == ["a"]


def test_start_timeout_kills_a_child_that_never_reports_ready(harness: Harness, marks: Path) -> None:
    """A child silent past start_timeout_ms is killed and the start fails naming it."""
    sup = harness.sup([child("slow", "never_ready", marks=marks, start_timeout_ms=300)])
    with pytest.raises(SupervisorError, match="start_timeout_ms=300"):
        sup.start()


def test_stop_infinity_waits_for_the_child_to_finish(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_stop_infinity — SIGTERM, then wait however long it takes."""
    sup = harness.sup([child("slow", "slow_stop", marks=marks, shutdown="infinity", args={"stop_ms": 400})])
    sup.start()
    sup.shutdown()
    (exited,) = harness.kinds("child.exited")
    assert exited["exit"]["kind"] == "normal"  # it finished its own stop: not killed


def test_stop_timeout_kills_a_child_that_ignores_sigterm(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_stop_timeout — after shutdown ms, a child ignoring SIGTERM gets SIGKILL."""
    sup = harness.sup([child("stubborn", "ignore_term", marks=marks, shutdown=200)])
    sup.start()
    sup.shutdown()
    (exited,) = harness.kinds("child.exited")
    assert exited["reason"] == "shutdown"
    assert exited["exit"]["signal"] == signal.SIGKILL
    assert exited["status"] == -signal.SIGKILL  # the wire's form: minus the signal number


def test_stop_brutal_kill_sends_sigkill_at_once(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_stop_brutal_kill — brutal_kill is SIGKILL, with no SIGTERM first."""
    sup = harness.sup([child("a", "slow_stop", marks=marks, shutdown="brutal_kill", args={"stop_ms": 5000})])
    sup.start()
    sup.shutdown()
    (exited,) = harness.kinds("child.exited")
    assert exited["exit"]["signal"] == signal.SIGKILL
    assert stops(marks) == []


def test_stop_timeout_dynamic_kills_all_in_parallel(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_stop_timeout_dynamic — dynamic children stop together, one timer."""
    sup = harness.sup(
        [child("w", "record_term", marks=marks, shutdown=300)], strategy=Strategy.SIMPLE_ONE_FOR_ONE
    )
    sup.start()
    for _ in range(3):
        sup.start_child({})
    assert sup.count_children()["active"] == 3
    terms_at_first_exit: list[int] = []

    def on_event(event: dict[str, object]) -> None:
        if event["kind"] == "child.exited" and not terms_at_first_exit:
            terms_at_first_exit.append((marks / "log").read_text().count("term "))
        harness.events.append(event)  # type: ignore[arg-type]

    sup.on_event = on_event
    sup.shutdown()
    exits = harness.kinds("child.exited")
    assert len(exits) == 3 and all(e["exit"]["signal"] == signal.SIGKILL for e in exits)
    # In parallel: every child had its SIGTERM before the first one was killed (one after the other, the
    # second would get SIGTERM only after the first is gone).
    assert terms_at_first_exit == [3]


def test_stop_brutal_kill_dynamic(harness: Harness, marks: Path) -> None:
    """OTP supervisor_SUITE:sup_stop_brutal_kill_dynamic — dynamic brutal_kill children are all SIGKILLed."""
    sup = harness.sup([child("w", marks=marks, shutdown="brutal_kill")], strategy=Strategy.SIMPLE_ONE_FOR_ONE)
    sup.start()
    pids = [sup.start_child({})["pid"] for _ in range(3)]
    sup.shutdown()
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() != "running" for p in pids)
    assert all(e["exit"]["signal"] == signal.SIGKILL for e in harness.kinds("child.exited"))


def test_stop_leaves_no_zombies(harness: Harness, marks: Path) -> None:
    """After shutdown no child of ours is left in Z state in /proc."""
    sup = harness.sup([child(c, marks=marks) for c in ("a", "b")])
    sup.start()
    os.kill(sup.tree()[0]["pid"], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted")) == 1)
    sup.shutdown()
    me = os.getpid()
    zombies = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            zombies.append(pid)
    assert zombies == []


def test_no_file_descriptors_leak_across_starts_restarts_and_shutdown(marks: Path) -> None:
    """Every pidfd, uplink and loop fd is closed again: the process ends with the fds it began with."""
    before = set(os.listdir("/proc/self/fd"))
    h = Harness()
    sup = h.sup([child(c, marks=marks) for c in "abc"], strategy=Strategy.ONE_FOR_ALL, intensity=10)
    sup.start()
    os.kill(sup.tree()[1]["pid"], signal.SIGKILL)
    h.wait(lambda: len(h.kinds("child.restarted")) == 3)
    sup.start_child(child("d", marks=marks))
    sup.terminate_child("d")
    h.close()
    after = set(os.listdir("/proc/self/fd"))
    assert after <= before and len(after) <= len(before)


def test_child_is_pinned_to_its_cpu(harness: Harness, marks: Path) -> None:
    """A child with cpu set runs on that CPU only (sched_setaffinity in the child before its start)."""
    cpu = max(os.sched_getaffinity(0))
    sup = harness.sup(
        [child("p", "cpu_report", marks=marks, cpu=cpu), child("free", "cpu_report", marks=marks)]
    )
    sup.start()
    pinned, free = sup.tree()
    assert pinned["info"]["cpus"] == [cpu] and pinned["cpu"] == cpu
    assert free["info"]["cpus"] == sorted(os.sched_getaffinity(0))


def test_start_freezes_the_parent_heap_before_the_fork(harness: Harness, marks: Path) -> None:
    """A child starts with the parent's heap frozen (gc.freeze): neither side's GC writes to shared pages."""
    sup = harness.sup([child("g", "gc_report", marks=marks)])
    sup.start()
    (node,) = sup.tree()
    assert node["info"]["frozen"] > 1000  # the parent's imports, at least
    assert gc.get_freeze_count() > 1000  # and still frozen here, after the fork


def test_start_preimport_false_child_imports_its_own_module_while_the_supervisor_imports_the_rest(
    harness: Harness,
) -> None:
    """A first child with preimport=False is forked before its supervisor imports anything: it imports its
    own module after the fork (the supervisor never does), and the later children's modules are imported
    by the supervisor only after that fork (while the first child starts)."""
    lazy, later = "supervisor_children_lazy", "supervisor_children_later"
    assert lazy not in sys.modules and later not in sys.modules
    first = ChildSpec(id="a", start=f"{lazy}:report", args={"watch": [lazy, later]}, preimport=False)
    sup = harness.sup([first, ChildSpec(id="b", start=f"{later}:serve", shutdown=2000)])
    sup.start()
    info = {n["id"]: n for n in sup.tree()}["a"]["info"]
    assert info["loaded"] == [lazy], "the first child saw its own module only"
    assert lazy not in sys.modules, "the supervisor never imported the preimport=false child's module"
    assert later in sys.modules, "the supervisor imported the next child's module (after the first fork)"
    sup.shutdown()
