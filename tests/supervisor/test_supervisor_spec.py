"""Child/supervisor specs, their checks (OTP check_childspecs) and the [supervisor] TOML parser."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from openfang.control.tree_config import parse_supervisor
from openfang.protocol.errors import ConfigError
from openfang.supervisor.spec import (
    NESTED_START,
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    StartOrder,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    check_spec,
    child_from_dict,
    spec_from_dict,
    spec_to_dict,
)


def _whats(problems: list) -> str:  # type: ignore[type-arg]
    return "\n".join(str(p) for p in problems)


def test_spec_defaults_follow_otp() -> None:
    """OTP supervisor_SUITE:child_specs — defaults: permanent, 5000 ms workers, infinity for supervisors."""
    w = ChildSpec(id="w", start="m:f")
    assert (w.restart, w.shutdown, w.type) == (Restart.PERMANENT, 5000, ChildType.WORKER)
    s = ChildSpec(id="s", type=ChildType.SUPERVISOR, supervisor=SupervisorSpec())
    assert s.shutdown == "infinity" and s.start == NESTED_START
    f = SupervisorFlags()
    assert (f.strategy, f.intensity, f.period, f.auto_shutdown) == (
        Strategy.ONE_FOR_ONE,
        1,
        5,
        AutoShutdown.NEVER,
    )


def test_check_spec_reports_every_problem_with_its_place() -> None:
    """OTP supervisor_SUITE:child_specs / sup_flags — all problems at once, each naming child and key."""
    spec = SupervisorSpec(
        flags=SupervisorFlags(intensity=-1, period=0),
        children=(
            ChildSpec(id="a", start="m:f"),
            ChildSpec(id="a", start="not a start"),
            ChildSpec(id="b", start="m:f", shutdown=-5),  # type: ignore[arg-type]
            ChildSpec(id="c", start="m:f", significant=True),
            ChildSpec(id="d", start="m:f", heartbeat_ms=0, cpu=-1),
            ChildSpec(id="e", type=ChildType.SUPERVISOR),
        ),
    )
    text = _whats(check_spec(spec))
    for expected in (
        "supervisor key 'intensity'",
        "supervisor key 'period'",
        "supervisor.children.1 key 'id': duplicate child id 'a'",
        "supervisor.children.1 key 'start'",
        "supervisor.children.2 key 'shutdown'",
        "supervisor.children.3 key 'significant': a permanent child cannot be significant",
        "significant children need auto_shutdown",
        "supervisor.children.4 key 'heartbeat_ms'",
        "supervisor.children.4 key 'cpu'",
        "supervisor.children.5 key 'supervisor'",
    ):
        assert expected in text


def test_check_spec_simple_one_for_one_needs_one_template_and_no_significant() -> None:
    """simple_one_for_one: exactly one template child; significant children are not allowed."""
    flags = SupervisorFlags(strategy=Strategy.SIMPLE_ONE_FOR_ONE)
    two = SupervisorSpec(
        flags=flags, children=(ChildSpec(id="a", start="m:f"), ChildSpec(id="b", start="m:f"))
    )
    assert "exactly 1 template child, got 2" in _whats(check_spec(two))
    sig = SupervisorSpec(
        flags=flags, children=(ChildSpec(id="a", start="m:f", restart=Restart.TRANSIENT, significant=True),)
    )
    assert "not allowed with simple_one_for_one" in _whats(check_spec(sig))


def test_spec_dict_round_trip_including_nested() -> None:
    """Specs cross the fork as plain data: to_dict -> from_dict gives the same spec."""
    nested = SupervisorSpec(
        flags=SupervisorFlags(
            strategy=Strategy.REST_FOR_ONE, intensity=4, period=2.5, start_order=StartOrder.PARALLEL
        ),
        children=(
            ChildSpec(id="w", start="m:f", args={"k": [1, 2]}, cpu=1, heartbeat_ms=100, preimport=False),
        ),
    )
    spec = SupervisorSpec(
        flags=SupervisorFlags(auto_shutdown=AutoShutdown.ANY_SIGNIFICANT),
        children=(
            ChildSpec(
                id="t", start="m:g", restart=Restart.TEMPORARY, significant=True, shutdown="brutal_kill"
            ),
            ChildSpec(id="n", type=ChildType.SUPERVISOR, supervisor=nested),
        ),
    )
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_spec_from_dict_rejects_bad_data_naming_the_place() -> None:
    """Bad data from the wire becomes a ConfigError listing every problem."""
    with pytest.raises(ConfigError) as info:
        spec_from_dict(
            {"flags": {"strategy": "all_for_none"}, "children": [{"id": "x", "start": "m:f", "bogus": 1}]}
        )
    text = str(info.value)
    assert "supervisor key 'strategy'" in text and "supervisor.children.0 key 'bogus': unknown key" in text


def test_check_spec_start_order_parallel_is_refused_for_simple_one_for_one() -> None:
    """A dynamic supervisor starts no children at start: start_order parallel there is a named problem;
    a value that is neither ordered nor parallel is one too."""
    spec = SupervisorSpec(
        flags=SupervisorFlags(strategy=Strategy.SIMPLE_ONE_FOR_ONE, start_order=StartOrder.PARALLEL),
        children=(ChildSpec(id="t", start="m:f"),),
    )
    assert "supervisor key 'start_order'" in _whats(check_spec(spec))
    with pytest.raises(ConfigError, match="supervisor key 'start_order': must be one of ordered, parallel"):
        spec_from_dict({"flags": {"start_order": "random"}, "children": []})


EXAMPLE = """
[supervisor]
strategy = "one_for_one"
intensity = 3
period = 5

[[supervisor.children]]
id = "memory"
start = "pkg.mem:main"
shutdown = "brutal_kill"
args = { path = "x.db" }

[[supervisor.children]]
id = "workers"
type = "supervisor"
strategy = "one_for_one"
intensity = 10
period = 10
start_order = "parallel"

[supervisor.children.pool]
count = 3
pin = true
start = "openfang.workers.worker:main"
heartbeat_ms = 2000
args = { hwm = 5 }

[[supervisor.children.children]]
id = "extra"
start = "pkg.extra:main"
restart = "transient"
"""


def test_tree_config_parses_children_nested_supervisors_and_pools() -> None:
    """The documented TOML shape: nested supervisor with explicit children, then a pool pinned per CPU."""
    spec = parse_supervisor(tomllib.loads(EXAMPLE)["supervisor"], source="cluster.toml")
    assert spec.flags.intensity == 3
    memory, workers = spec.children
    assert memory.shutdown == "brutal_kill" and memory.args == {"path": "x.db"}
    assert workers.type == ChildType.SUPERVISOR and workers.supervisor is not None
    assert workers.supervisor.flags.intensity == 10
    assert workers.supervisor.flags.start_order == StartOrder.PARALLEL
    assert spec.flags.start_order == StartOrder.ORDERED  # OTP's, unless asked
    ids = [c.id for c in workers.supervisor.children]
    assert ids == ["extra", "workers-0", "workers-1", "workers-2"]
    allowed = sorted(os.sched_getaffinity(0))
    pool = workers.supervisor.children[1:]
    assert [c.cpu for c in pool] == [allowed[i % len(allowed)] for i in range(3)]
    assert all(c.heartbeat_ms == 2000 and c.args == {"hwm": 5} for c in pool)


def test_tree_config_pool_auto_count_is_the_allowed_cpus() -> None:
    """count = "auto" makes one child per CPU this process may run on."""
    table = {"children": [{"id": "w", "type": "supervisor", "pool": {"count": "auto", "start": "a.b:c"}}]}
    spec = parse_supervisor(table, source="c.toml")
    assert spec.children[0].supervisor is not None
    assert len(spec.children[0].supervisor.children) == len(os.sched_getaffinity(0))


def test_tree_config_reports_every_problem_with_file_table_and_key() -> None:
    """Every problem at once, each as 'file: [table] key': unknown keys, bad values, duplicates."""
    bad = """
[supervisor]
strategy = "one_for_some"
bogus = 1
[[supervisor.children]]
id = "a"
start = "nope"
restart = "sometimes"
[[supervisor.children]]
id = "a"
start = "m:f"
[[supervisor.children]]
id = "s"
type = "supervisor"
period = 0
[supervisor.children.pool]
count = 0
start = "x:y"
colour = "red"
[[supervisor.children.children]]
start = "x:y"
shutdown = "soon"
"""
    with pytest.raises(ConfigError) as info:
        parse_supervisor(tomllib.loads(bad)["supervisor"], source="cluster.toml")
    text = str(info.value)
    for expected in (
        "cluster.toml: [supervisor] key 'bogus': unknown key",
        "cluster.toml: [supervisor] key 'strategy': must be one of one_for_one",
        "[supervisor.children.0] key 'restart': must be one of permanent, transient, temporary, got 'some",
        "cluster.toml: [supervisor.children.0] key 'start': must look like 'package.module:function'",
        "cluster.toml: [supervisor.children.1] key 'id': duplicate child id 'a'",
        "cluster.toml: [supervisor.children.2] key 'period'",
        "cluster.toml: [supervisor.children.2.pool] key 'count'",
        "cluster.toml: [supervisor.children.2.pool] key 'colour': unknown key",
        "cluster.toml: [supervisor.children.2.children.0] key 'id': required",
        "cluster.toml: [supervisor.children.2.children.0] key 'shutdown'",
    ):
        assert expected in text, expected
    assert len(info.value.problems) >= 10


def test_tree_config_worker_keys_are_not_supervisor_keys() -> None:
    """A worker child may not carry supervisor keys (strategy, children)."""
    with pytest.raises(ConfigError, match=r"\[supervisor.children.0\] key 'strategy': unknown key"):
        parse_supervisor(
            {"children": [{"id": "w", "start": "a:b", "strategy": "one_for_all"}]}, source="c.toml"
        )


def test_tree_config_accepts_the_shipped_example(tmp_path: Path) -> None:
    """The example cluster.toml shipped with the package parses."""
    example = Path(__file__).parents[2] / "openfang" / "data" / "cluster.toml"
    spec = parse_supervisor(tomllib.loads(example.read_text())["supervisor"], source=str(example))
    assert [c.id for c in spec.children] == ["memory", "workers", "scheduler"]


def test_tree_config_rejects_a_cpu_this_process_cannot_use() -> None:
    """cpu must be one of os.sched_getaffinity(0): a pin that cannot work is a config error, not a crash."""
    bad_cpu = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(ConfigError, match=rf"key 'cpu': CPU {bad_cpu} is not available"):
        parse_supervisor({"children": [{"id": "w", "start": "a:b", "cpu": bad_cpu}]}, source="c.toml")


def test_child_from_dict_refuses_a_significant_that_is_not_a_boolean() -> None:
    """significant from the wire must be true or false: "yes" is a named problem, not silently True."""
    with pytest.raises(ConfigError, match=r"child key 'significant': must be true or false, got 'yes'"):
        child_from_dict({"id": "x", "start": "m:f", "restart": "transient", "significant": "yes"})


def test_tree_config_reads_preimport_and_refuses_a_non_boolean() -> None:
    """``preimport = false`` on a child is read (default true); a non-boolean is refused at its key."""
    text = '[supervisor]\n[[supervisor.children]]\nid = "a"\nstart = "m:f"\npreimport = false\n'
    text += '[[supervisor.children]]\nid = "b"\nstart = "m:g"\n'
    a, b = parse_supervisor(tomllib.loads(text)["supervisor"], source="c.toml").children
    assert (a.preimport, b.preimport) == (False, True)
    bad = text.replace("preimport = false", 'preimport = "no"')
    with pytest.raises(ConfigError) as err:
        parse_supervisor(tomllib.loads(bad)["supervisor"], source="c.toml")
    assert "c.toml: [supervisor.children.0] key 'preimport'" in str(err.value)
