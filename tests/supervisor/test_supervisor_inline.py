"""Inline nested supervisors (``inline = true``): what is particular to running in the parent's process.

The OTP semantics they share with nested processes are tested both ways in test_supervisor_nesting (the
``inline`` fixture); here: the parent stopping an inline supervisor (shutdown, terminate_child,
restart_child, a one_for_all group restart, brutal_kill, an expired shutdown timeout), its crash, the spec
checks, and that its children are this process's children.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from supervisor_harness import Harness, child, starts, stops

from openfang.protocol.errors import ConfigError
from openfang.supervisor.runtime import SupervisorCore
from openfang.supervisor.spec import (
    ChildSpec,
    ChildType,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    check_spec,
    child_from_dict,
    child_to_dict,
)

pytestmark = pytest.mark.integration


def inline_sup(cid: str, children: list[ChildSpec], shutdown: Any = None, **flags: Any) -> ChildSpec:
    flags.setdefault("intensity", 3)
    return ChildSpec(
        id=cid,
        type=ChildType.SUPERVISOR,
        inline=True,
        shutdown=shutdown,
        supervisor=SupervisorSpec(flags=SupervisorFlags(**flags), children=tuple(children)),
    )


def _sub(sup: SupervisorCore, cid: str = "sub") -> dict[str, Any]:
    return next(n for n in sup.tree() if n["id"] == cid)


def _pids(sup: SupervisorCore, cid: str = "sub") -> list[int]:
    return [int(n["pid"]) for n in _sub(sup, cid)["children"] if n["pid"]]


def _ready(harness: Harness, sup: SupervisorCore, count: int, cid: str = "sub") -> None:
    harness.wait(lambda: len(_pids(sup, cid)) == count)


def test_inline_children_are_children_of_the_hosting_process(harness: Harness, marks: Path) -> None:
    """An inline supervisor has no process: its pid is its host's, whose OS children its children are."""
    sup = harness.sup([inline_sup("sub", [child("w1", marks=marks), child("w2", marks=marks)])])
    sup.start()
    _ready(harness, sup, 2)
    assert _sub(sup)["pid"] == os.getpid()
    assert all(psutil.Process(p).ppid() == os.getpid() for p in _pids(sup))
    assert psutil.Process().children() and not any(
        "openfang: sub" in " ".join(p.cmdline()) for p in psutil.Process().children()
    )
    assert sup.count_children() == {"specs": 1, "active": 1, "supervisors": 1, "workers": 0}


def test_terminate_child_stops_an_inline_supervisors_children_in_reverse_order(
    harness: Harness, marks: Path
) -> None:
    """terminate_child of an inline supervisor stops its children last-first; restart_child starts it anew."""
    sup = harness.sup([inline_sup("sub", [child(c, marks=marks) for c in ("x", "y", "z")])])
    sup.start()
    _ready(harness, sup, 3)
    old = _pids(sup)
    sup.terminate_child("sub")
    assert stops(marks) == ["z", "y", "x"]
    assert _sub(sup)["state"] == "stopped" and all(not psutil.pid_exists(p) for p in old)
    (exited,) = harness.kinds("child.exited", "root/sub")
    assert exited["reason"] == "shutdown"
    sup.restart_child("sub")
    _ready(harness, sup, 3)
    assert starts(marks) == ["x", "y", "z", "x", "y", "z"]
    assert set(_pids(sup)).isdisjoint(old)


def test_one_for_all_sibling_crash_restarts_the_inline_supervisor_with_its_children(
    harness: Harness, marks: Path
) -> None:
    """one_for_all: a sibling's crash stops the inline supervisor (its children in reverse order) and starts
    a fresh one, whose children start again in order."""
    sup = harness.sup(
        [child("a", marks=marks), inline_sup("sub", [child(c, marks=marks) for c in ("x", "y")])],
        strategy=Strategy.ONE_FOR_ALL,
    )
    sup.start()
    _ready(harness, sup, 2)
    a_pid = next(n["pid"] for n in sup.tree() if n["id"] == "a")
    os.kill(a_pid, signal.SIGKILL)
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/sub")) == 1)
    _ready(harness, sup, 2)
    assert stops(marks) == ["y", "x"]
    assert starts(marks) == ["a", "x", "y", "a", "x", "y"]


def test_inline_supervisor_children_get_their_shutdown_timeout(harness: Harness, marks: Path) -> None:
    """The parent's shutdown stops an inline supervisor's children by their own policies: one that ignores
    SIGTERM is killed when its shutdown timeout expires, after the ones started after it stopped."""
    sub = inline_sup(
        "sub", [child("deaf", "ignore_term", marks=marks, shutdown=300), child("z", marks=marks)]
    )
    sup = harness.sup([sub])
    sup.start()
    _ready(harness, sup, 2)
    deaf = _pids(sup)[0]
    began = time.monotonic()
    sup.shutdown()
    took = time.monotonic() - began
    assert not psutil.pid_exists(deaf) and stops(marks) == ["z"]
    assert took >= 0.3  # the deaf child was given its 300 ms before the SIGKILL
    (exited,) = harness.kinds("child.exited", "root/sub/deaf")
    assert exited["reason"] == "shutdown"


def test_inline_supervisor_shutdown_timeout_kills_its_children_when_it_expires(
    harness: Harness, marks: Path
) -> None:
    """An inline supervisor with ``shutdown = N`` ms: children still running after N ms are killed, as its
    process would be; brutal_kill kills them at once."""
    slow = child("slow", "ignore_term", marks=marks, shutdown=10000)
    sup = harness.sup(
        [
            inline_sup("sub", [slow], shutdown=200),
            inline_sup("b", [child("w", marks=marks)], shutdown="brutal_kill"),
        ]
    )
    sup.start()
    _ready(harness, sup, 1)
    _ready(harness, sup, 1, "b")
    slow_pid, w_pid = _pids(sup)[0], _pids(sup, "b")[0]
    began = time.monotonic()
    sup.shutdown()
    assert time.monotonic() - began < 5  # not the child's own 10 s
    assert not psutil.pid_exists(slow_pid) and not psutil.pid_exists(w_pid)
    assert stops(marks) == []  # the brutally killed one never ran its stop
    assert [e["reason"] for e in harness.kinds("child.exited", "root/sub")] == ["shutdown"]


def test_an_exception_in_an_inline_supervisor_is_its_crash_and_its_parent_restarts_it(
    harness: Harness, marks: Path
) -> None:
    """An exception escaping an inline supervisor's handler (here: a request from its parent) crashes it
    alone: its children are killed, the parent sees an abnormal exit and restarts it; the root goes on."""
    sup = harness.sup([child("a", marks=marks), inline_sup("sub", [child("w", marks=marks)])])
    sup.start()
    _ready(harness, sup, 1)
    old = _pids(sup)
    a_pid = next(n["pid"] for n in sup.tree() if n["id"] == "a")
    host = sup.record.children["sub"].inline
    assert host is not None

    def broken(*args: Any) -> None:
        raise RuntimeError("bug in a handler")

    host.sup.request = broken  # type: ignore[attr-defined, method-assign]
    answers: list[tuple[bool, Any]] = []
    sup.request("root/sub", "which_children", {}, lambda ok, r: answers.append((ok, r)))
    harness.wait(lambda: len(harness.kinds("child.restarted", "root/sub")) == 1)
    (exited,) = harness.kinds("child.exited", "root/sub")
    assert exited["reason"] == "abnormal" and exited["status"] == 1
    assert answers and answers[0][0] is False
    _ready(harness, sup, 1)
    assert all(not psutil.pid_exists(p) for p in old)
    assert next(n["pid"] for n in sup.tree() if n["id"] == "a") == a_pid
    assert harness.terminated == []


def test_a_dynamic_supervisor_stops_its_inline_children(harness: Harness, marks: Path) -> None:
    """simple_one_for_one over an inline supervisor template: start_child makes inline supervisors, each
    with its children; the pool's shutdown stops them all."""
    template = inline_sup("team", [child("w", marks=marks)])
    sup = harness.sup([template], strategy=Strategy.SIMPLE_ONE_FOR_ONE)
    sup.start()
    ids = [sup.start_child({})["id"] for _ in range(2)]
    for cid in ids:
        _ready(harness, sup, 1, cid)
    pids = [p for cid in ids for p in _pids(sup, cid)]
    sup.shutdown()
    assert all(not psutil.pid_exists(p) for p in pids) and stops(marks) == ["w", "w"]


def test_spec_inline_is_for_supervisors_and_refuses_process_keys() -> None:
    """``inline`` on a worker, or ``cpu`` / ``heartbeat_ms`` on an inline supervisor, are refused by key."""
    nested = SupervisorSpec(children=(ChildSpec(id="w", start="m:f"),))
    bad = SupervisorSpec(
        children=(
            ChildSpec(id="w", start="m:f", inline=True),
            ChildSpec(id="s", type=ChildType.SUPERVISOR, supervisor=nested, inline=True, cpu=0),
        )
    )
    problems = {p.where: p.what for p in check_spec(bad, "t")}
    assert "only a child of type supervisor" in problems["t.children.0 key 'inline'"]
    assert "inline supervisor" in problems["t.children.1 key 'cpu'"]
    good = ChildSpec(id="s", type=ChildType.SUPERVISOR, supervisor=nested, inline=True)
    assert child_from_dict(child_to_dict(good)) == good
    with pytest.raises(ConfigError, match="key 'inline'"):
        child_from_dict({"id": "w", "start": "m:f", "inline": "yes"})


def test_tree_config_reads_inline_and_names_the_place_of_a_mistake() -> None:
    """``inline = true`` on a supervisor child is read (default false); on a worker it is an error naming the
    file, table and key."""
    import tomllib

    from openfang.control.tree_config import parse_supervisor

    text = (
        '[supervisor]\n[[supervisor.children]]\nid = "pool"\ntype = "supervisor"\ninline = true\n'
        '[supervisor.children.pool]\ncount = 2\npin = false\nstart = "m:f"\n'
        '[[supervisor.children]]\nid = "other"\ntype = "supervisor"\n'
        '[[supervisor.children.children]]\nid = "w"\nstart = "m:f"\n'
    )
    spec = parse_supervisor(tomllib.loads(text)["supervisor"], source="c.toml")
    assert [c.inline for c in spec.children] == [True, False]
    bad = text.replace('id = "w"\nstart = "m:f"\n', 'id = "w"\nstart = "m:f"\ninline = true\n')
    with pytest.raises(ConfigError) as err:
        parse_supervisor(tomllib.loads(bad)["supervisor"], source="c.toml")
    assert "c.toml: [supervisor.children.1.children.0] key 'inline'" in str(err.value)
