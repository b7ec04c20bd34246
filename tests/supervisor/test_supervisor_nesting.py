"""Nested supervisors as processes and inline (the tests taking the ``inline`` fixture run both ways): tree
snapshots, kill -9 without orphans, two-level escalation, requests routed through the tree (OTP
supervisor_SUITE: tree, hanging_restart_loop-like escalation)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from supervisor_harness import Harness, child, starts, stops

from openfang.supervisor.spec import ChildSpec, ChildType, Strategy, SupervisorFlags, SupervisorSpec

pytestmark = pytest.mark.integration


def nested(cid: str, children: list[ChildSpec], inline: bool = False, **flags: Any) -> ChildSpec:
    flags.setdefault("intensity", 3)
    return ChildSpec(
        id=cid,
        type=ChildType.SUPERVISOR,
        inline=inline,
        supervisor=SupervisorSpec(flags=SupervisorFlags(**flags), children=tuple(children)),
    )


def _node(tree: list[dict[str, Any]], path: str) -> dict[str, Any]:
    for n in tree:
        if n["path"] == path:
            return n
        if path.startswith(n["path"] + "/"):
            return _node(n["children"], path)
    raise KeyError(path)


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_tree_shows_nested_children_with_pids(harness: Harness, marks: Path, inline: bool) -> None:
    """OTP supervisor_SUITE:tree — the root sees the whole tree through subtree snapshots."""
    sup = harness.sup(
        [
            child("a", marks=marks),
            nested("sub", [child("w1", marks=marks), child("w2", marks=marks)], inline=inline),
        ]
    )
    sup.start()
    harness.wait(lambda: len(_node(sup.tree(), "root/sub")["children"]) == 2)
    sub = _node(sup.tree(), "root/sub")
    assert sub["type"] == "supervisor" and sub["state"] == "running"
    assert (sub["pid"] == os.getpid()) is inline  # inline: hosted by this process, which forks its children
    w1 = _node(sup.tree(), "root/sub/w1")
    assert w1["state"] == "running" and psutil.Process(w1["pid"]).ppid() == sub["pid"]
    assert starts(marks) == ["a", "w1", "w2"]
    started = [e["path"] for e in harness.kinds("child.started")]
    assert started == ["root/a", "root/sub/w1", "root/sub/w2", "root/sub"]


def test_kill_9_of_nested_supervisor_kills_its_children_and_is_restarted(
    harness: Harness, marks: Path
) -> None:
    """kill -9 of a nested supervisor: its children die by PDEATHSIG (no orphans), its parent restarts it."""
    sup = harness.sup([nested("sub", [child("w1", marks=marks), child("w2", marks=marks)])])
    sup.start()
    harness.wait(lambda: len(_node(sup.tree(), "root/sub")["children"]) == 2)
    sub_pid = _node(sup.tree(), "root/sub")["pid"]
    old = [_node(sup.tree(), f"root/sub/{w}")["pid"] for w in ("w1", "w2")]
    os.kill(sub_pid, signal.SIGKILL)
    assert _gone(old), "grandchildren outlived their supervisor"
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/sub")) == 1)
    harness.wait(lambda: all(n["pid"] not in old for n in _node(sup.tree(), "root/sub")["children"]))
    harness.wait(lambda: len(_node(sup.tree(), "root/sub")["children"]) == 2)
    # The root (a subreaper) reaps the orphans, so no zombie stays either.
    assert all(not psutil.pid_exists(p) for p in old)


def test_kill_9_of_a_grandchild_is_handled_by_the_nested_supervisor(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A crash deep in the tree is restarted by its own supervisor; the events reach the root."""
    sup = harness.sup([nested("sub", [child("w1", marks=marks)], inline=inline)])
    sup.start()
    harness.wait(lambda: len(_node(sup.tree(), "root/sub")["children"]) == 1)
    sub_pid = _node(sup.tree(), "root/sub")["pid"]
    os.kill(_node(sup.tree(), "root/sub/w1")["pid"], signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/sub/w1")) == 1)
    assert _node(sup.tree(), "root/sub")["pid"] == sub_pid
    exited = harness.kinds("child.exited", "root/sub/w1")[0]
    assert exited["reason"] == "abnormal" and exited["supervisor"] == "root/sub"


def test_restart_storm_escalates_through_two_levels(harness: Harness, marks: Path, inline: bool) -> None:
    """OTP supervisor_SUITE:one_for_one_escalation, two levels — the nested one gives up, then the root."""
    crasher = child("w", "crash_after", marks=marks, args={"ms": 50})
    sup = harness.sup(
        [child("a", marks=marks), nested("sub", [crasher], inline=inline, intensity=1)], intensity=1
    )
    sup.start()
    harness.wait(lambda: harness.terminated == ["shutdown"], timeout=20)
    escalated = [e["path"] for e in harness.kinds("supervisor.escalated")]
    assert escalated.count("root/sub") == 2 and escalated[-1] == "root"
    sub_exits = harness.kinds("child.exited", "root/sub")
    assert sub_exits[0]["exit"]["detail"] == "escalated"
    assert sup.count_children()["active"] == 0


def test_nested_supervisor_stops_its_children_in_reverse_order_on_shutdown(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """SIGTERM to a nested supervisor stops its children in reverse order, then it exits 0."""
    sup = harness.sup([nested("sub", [child(c, marks=marks) for c in ("x", "y", "z")], inline=inline)])
    sup.start()
    sup.shutdown()
    log = (marks / "log").read_text().split()
    stops = [log[i + 1] for i in range(0, len(log), 3) if log[i] == "stop"]
    assert stops == ["z", "y", "x"]
    (exited,) = harness.kinds("child.exited", "root/sub")
    assert exited["exit"]["kind"] == "normal"


def test_failed_start_inside_a_nested_supervisor_fails_the_parent_start(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A nested supervisor whose child fails to start exits before ready: its parent's start fails too."""
    from openfang.protocol.errors import SupervisorError

    sup = harness.sup(
        [child("a", marks=marks), nested("sub", [child("bad", "fail_start", marks=marks)], inline=inline)]
    )
    with pytest.raises(SupervisorError, match="'sub'"):
        sup.start()
    assert sup.which_children() == []


def _call(harness: Harness, sup: Any, path: str, op: str, args: dict[str, Any]) -> tuple[bool, Any]:
    out: list[tuple[bool, Any]] = []
    sup.request(path, op, args, lambda ok, result: out.append((ok, result)))
    harness.wait(lambda: bool(out))
    return out[0]


def test_requests_are_routed_to_nested_supervisors(harness: Harness, marks: Path, inline: bool) -> None:
    """request(path, op) runs start_child / which_children / terminate_child on the supervisor at path."""
    sup = harness.sup([nested("sub", [child("w1", marks=marks)], inline=inline)])
    sup.start()
    ok, result = _call(
        harness, sup, "root/sub", "start_child", {"spec": {"id": "w2", "start": "supervisor_children:serve"}}
    )
    assert ok and result["id"] == "w2" and result["pid"]
    ok, result = _call(harness, sup, "root/sub", "which_children", {})
    assert ok and [c["id"] for c in result["children"]] == ["w1", "w2"]
    harness.wait(lambda: len(_node(sup.tree(), "root/sub")["children"]) == 2)
    ok, result = _call(
        harness, sup, "root/sub", "start_child", {"spec": {"id": "w2", "start": "supervisor_children:serve"}}
    )
    assert not ok and result["code"] == "already_exists" and "already_started" in result["message"]
    ok, result = _call(harness, sup, "root/sub", "terminate_child", {"id": "w2"})
    assert ok
    ok, result = _call(harness, sup, "root/sub", "count_children", {})
    assert ok and result == {"specs": 2, "active": 1, "supervisors": 0, "workers": 2}
    ok, result = _call(harness, sup, "root/nope", "which_children", {})
    assert not ok and result["code"] == "not_found"
    ok, result = _call(harness, sup, "root", "get_childspec", {"id": "sub"})
    assert ok and result["type"] == "supervisor"


def test_child_requests_go_up_to_on_request_even_from_deep_in_the_tree(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A child's request reaches the root's on_request and the reply comes back down."""
    asker = child("asker", "ask_parent", marks=marks, args={"op": "tree", "req_args": {"x": 1}})
    sup = harness.sup([nested("sub", [asker], inline=inline)])
    sup.start()
    harness.wait(lambda: (marks / "answer").exists())
    harness.settle(0.05)
    answer = (marks / "answer").read_text()
    assert "'op': 'tree'" in answer and "'from': 'sub'" in answer
    assert harness.requests[0][1] == "tree" and harness.requests[0][2] == {"x": 1}


def test_child_events_are_forwarded_unchanged(harness: Harness, marks: Path, inline: bool) -> None:
    """Events a child emits on its uplink reach on_event as they were sent, from any depth."""
    sup = harness.sup([nested("sub", [child("e", "emit_events", marks=marks)], inline=inline)])
    sup.start()
    harness.wait(lambda: bool(harness.kinds("test.hello")))
    (hello,) = harness.kinds("test.hello")
    assert hello["path"] == "root/sub/e" and hello["n"] == 1


def test_send_to_child_delivers_a_message_down_the_uplink(harness: Harness, marks: Path) -> None:
    """send_to_child puts one message on a running child's uplink; an unknown child gets False."""
    sup = harness.sup([child("echo", "echo_down", marks=marks)])
    sup.start()
    assert sup.send_to_child("echo", {"t": "event", "event": {"kind": "x"}})
    assert not sup.send_to_child("nobody", {"t": "event"})
    harness.wait(lambda: (marks / "down").exists() and "'kind': 'x'" in (marks / "down").read_text())


def test_simple_one_for_one_nested_supervisor_takes_dynamic_children(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """OTP supervisor_SUITE:simple_one_for_one_extra — extra args reach the dynamic child in a nested sup."""
    sofo = nested("pool", [child("w", marks=marks)], inline=inline, strategy=Strategy.SIMPLE_ONE_FOR_ONE)
    sup = harness.sup([sofo])
    sup.start()
    ok, result = _call(harness, sup, "root/pool", "start_child", {"args": {"info": {"extra": True}}})
    assert ok, result
    harness.wait(lambda: len(_node(sup.tree(), "root/pool")["children"]) == 1)
    assert _node(sup.tree(), "root/pool")["children"][0]["info"]["extra"] is True
    ok, result = _call(harness, sup, "root/pool", "restart_child", {"id": result["id"]})
    assert not ok and "simple_one_for_one" in result["message"]


def test_nested_supervisor_start_may_outlast_its_timeout_while_it_makes_progress(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A nested supervisor's start_timeout_ms restarts on each child it starts (supervisors: OTP infinity)."""
    slow = [child(f"w{i}", "slow_ready", marks=marks, args={"ms": 250}) for i in range(4)]
    sub = nested("sub", slow, inline=inline)
    sup = harness.sup(
        [
            ChildSpec(
                id="sub",
                type=ChildType.SUPERVISOR,
                supervisor=sub.supervisor,
                start_timeout_ms=600,
                inline=inline,
            )
        ]
    )
    sup.start()
    assert sup.tree()[0]["state"] == "running"
    stuck = nested(
        "stuck", [child("never", "never_ready", marks=marks, start_timeout_ms=5000)], inline=inline
    )
    from openfang.protocol.errors import SupervisorError

    with pytest.raises(SupervisorError, match="start_timeout_ms=600"):
        sup.start_child(
            ChildSpec(
                id="stuck",
                type=ChildType.SUPERVISOR,
                supervisor=stuck.supervisor,
                start_timeout_ms=600,
                inline=inline,
            )
        )


def test_requests_arriving_during_a_start_are_queued_and_answered_in_order(
    harness: Harness, marks: Path
) -> None:
    """OTP's one-message-at-a-time: a request that arrives while a child starts waits, then is answered."""
    sup = harness.sup([child("a", marks=marks)])
    sup.start()
    answers: list[tuple[str, bool, Any]] = []
    slow = {"spec": {"id": "slow", "start": "supervisor_children:slow_ready", "args": {"ms": 300}}}

    def ask_count() -> None:
        sup.request("root", "count_children", {}, lambda ok, r: answers.append(("count", ok, r)))

    harness.loop.call_later(0.05, ask_count)  # lands while 'slow' is starting
    sup.request("root", "start_child", slow, lambda ok, r: answers.append(("start", ok, r)))
    harness.wait(lambda: len(answers) == 2)
    assert [a[0] for a in answers] == ["start", "count"]
    assert answers[1][2]["active"] == 2  # the count saw the started child


def test_requests_route_through_three_levels(harness: Harness, marks: Path, inline: bool) -> None:
    """A request for root/mid/leaf travels down two uplinks and its reply back up."""
    leaf = nested("leaf", [child("w", marks=marks)], inline=inline)
    sup = harness.sup([nested("mid", [leaf], inline=inline)])
    sup.start()
    ok, result = _call(harness, sup, "root/mid/leaf", "which_children", {})
    assert ok and [c["id"] for c in result["children"]] == ["w"]
    harness.wait(lambda: len(_node(sup.tree(), "root/mid/leaf")["children"]) == 1)
    assert _node(sup.tree(), "root/mid/leaf/w")["state"] == "running"


def test_subtree_too_big_for_a_packet_is_sent_trimmed() -> None:
    """A nested supervisor whose snapshot does not fit one uplink packet sends it without the lower levels."""
    import socket

    from openfang.supervisor.child import ChildContext, unpack
    from openfang.supervisor.nested import _push_subtree

    parent, mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a tiny packet limit
    try:
        ctx = ChildContext(id="sub", path="root/sub", uplink=mine)
        deep = [{"id": f"g{i}", "info": {"blob": "x" * 200}, "children": []} for i in range(100)]
        children = [{"id": "w", "path": "root/sub/w", "info": {"big": "y" * 5000}, "children": deep}]
        _push_subtree(ctx, children)
        msg = unpack(parent.recv(1 << 20))
        assert msg["t"] == "subtree" and msg["truncated"] is True
        assert msg["children"][0]["id"] == "w" and msg["children"][0]["children"] == []
    finally:
        parent.close()
        mine.close()


def test_nested_children_start_modules_are_imported_by_the_top_supervisor(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A supervisor imports the start modules of its whole subtree before it forks (so every process below
    shares those pages with it): a module named only by a nested supervisor's child is imported here."""
    sys.modules.pop("supervisor_children_nested", None)
    leaf = ChildSpec(
        id="w", start="supervisor_children_nested:serve", args={"marks": str(marks)}, shutdown=2000
    )
    sup = harness.sup(
        [
            ChildSpec(
                id="n", type=ChildType.SUPERVISOR, supervisor=SupervisorSpec(children=(leaf,)), inline=inline
            )
        ]
    )
    sup.start()
    assert "supervisor_children_nested" in sys.modules
    assert starts(marks) == ["w"]


def test_shutdown_during_a_nested_supervisors_start_stops_everything(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A shutdown that lands while a nested supervisor is still starting its children interrupts the start
    (SupervisorError naming the child) and leaves no child running."""
    from openfang.protocol.errors import SupervisorError

    slow = [child(f"w{i}", "slow_ready", marks=marks, args={"ms": 200}) for i in range(4)]
    sup = harness.sup([nested("sub", slow, inline=inline)])

    def shutdown_once_the_start_is_under_way() -> None:
        # Not a fixed delay: under load a forked "sub" can take longer than that to start its first child.
        if any(e["kind"] == "child.started" and e["supervisor"] == "root/sub" for e in harness.events):
            sup.shutdown()
        else:
            harness.loop.call_later(0.01, shutdown_once_the_start_is_under_way)

    harness.loop.call_later(0.01, shutdown_once_the_start_is_under_way)
    with pytest.raises(SupervisorError, match="'sub'"):
        sup.start()
    assert sup.count_children()["active"] == 0
    started = [e["id"] for e in harness.kinds("child.started") if e["supervisor"] == "root/sub"]
    exited = [e["id"] for e in harness.kinds("child.exited") if e["supervisor"] == "root/sub"]
    assert started and exited[-len(started) :] == list(reversed(started))


def test_reconfigure_switching_a_nested_supervisor_between_fork_and_inline_replaces_it(
    harness: Harness, marks: Path, inline: bool
) -> None:
    """A reload that changes ``inline`` replaces the nested supervisor (stop, then start the other way)."""
    import dataclasses

    before = nested("sub", [child("w", marks=marks)], inline=inline)
    sup = harness.sup([before])
    sup.start()
    harness.wait(lambda: len(_node(sup.tree(), "root/sub")["children"]) == 1)
    after = dataclasses.replace(before, inline=not inline)
    diff = sup.reconfigure(SupervisorSpec(flags=sup.spec.flags, children=(after,)))
    assert diff["replaced"] == ["sub"]
    harness.wait(lambda: len(_node(sup.tree(), "root/sub")["children"]) == 1)
    assert (_node(sup.tree(), "root/sub")["pid"] == os.getpid()) is not inline
    assert starts(marks) == ["w", "w"] and stops(marks) == ["w"]


def test_fork_and_inline_supervisors_mix_in_one_tree(harness: Harness, marks: Path, inline: bool) -> None:
    """A forked supervisor hosting an inline one, and an inline one hosting a forked one: requests route
    through both, the tree shows both, a grandchild's kill -9 is handled by its own supervisor."""
    leaf = nested("leaf", [child("w", marks=marks)], inline=not inline)
    sup = harness.sup([nested("mid", [leaf], inline=inline)])
    sup.start()
    harness.wait(lambda: len(_node(sup.tree(), "root/mid/leaf")["children"]) == 1)
    mid, leaf_node = _node(sup.tree(), "root/mid"), _node(sup.tree(), "root/mid/leaf")
    assert (mid["pid"] == os.getpid()) is inline
    assert (leaf_node["pid"] == mid["pid"]) is (not inline)  # an inline leaf runs in mid's process
    w_pid = _node(sup.tree(), "root/mid/leaf/w")["pid"]
    assert psutil.Process(w_pid).ppid() == leaf_node["pid"]
    ok, result = _call(harness, sup, "root/mid/leaf", "count_children", {})
    assert ok and result == {"specs": 1, "active": 1, "supervisors": 0, "workers": 1}
    os.kill(w_pid, signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/mid/leaf/w")) == 1)
    assert harness.kinds("child.exited", "root/mid/leaf") == []
