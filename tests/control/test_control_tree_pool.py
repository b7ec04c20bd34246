"""[supervisor.children.pool] as an elastic pool: min_running members start, the others are kept specs
(autostart = false) the gateway's policy receives as an ElasticPool; every bad key is named; the shipped
example is elastic."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfang.control.config import load_config, parse_config
from openfang.control.tree_config import ElasticPool
from openfang.protocol.errors import ConfigError

BASE = '[cluster]\nname = "t"\ndata_dir = "data"\n'
POOL = """
[[supervisor.children]]
id = "workers"
type = "supervisor"
inline = true
[supervisor.children.pool]
count = 3
start = "openfang.workers.worker:main"
"""


def _members(text: str, tmp_path: Path) -> list[tuple[str, bool]]:
    cfg = parse_config(BASE + POOL + text, source="c.toml", base_dir=tmp_path)
    workers = next(c for c in cfg.tree.children if c.id == "workers")
    assert workers.supervisor is not None
    return [(c.id, c.autostart) for c in workers.supervisor.children]


def test_tree_pool_min_running_starts_the_first_members_and_keeps_the_rest_as_specs(tmp_path: Path) -> None:
    """min_running = 1 of 3: workers-0 starts, workers-1 and -2 are kept specs; the gateway's pool says so."""
    assert _members("min_running = 1\n", tmp_path) == [
        ("workers-0", True),
        ("workers-1", False),
        ("workers-2", False),
    ]
    cfg = parse_config(
        BASE + POOL + "min_running = 1\nshrink_after_s = 2\n", source="c.toml", base_dir=tmp_path
    )
    assert cfg.pools == (
        ElasticPool(
            path="root/workers",
            members=("workers-0", "workers-1", "workers-2"),
            min_running=1,
            shrink_after_s=2.0,
        ),
    )
    assert ElasticPool.from_wire(cfg.pools[0].to_wire()) == cfg.pools[0]


def test_tree_pool_without_min_running_runs_every_member_and_is_not_elastic(tmp_path: Path) -> None:
    """No min_running (or min_running = count): today's fixed pool, no policy."""
    assert all(auto for _, auto in _members("", tmp_path))
    assert all(auto for _, auto in _members("min_running = 3\n", tmp_path))
    assert parse_config(BASE + POOL + "min_running = 3\n", source="c.toml", base_dir=tmp_path).pools == ()


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("min_running = 4", "must be <= count (3: the pool's maximum), got 4"),
        ("min_running = 0", "must be an integer >= 1, got 0"),
        ('min_running = "one"', "got 'one'"),
        ("min_running = true", "got True"),
        ("grow_in_flight = 0", "got 0"),
        ("grow_after_ms = -5", "got -5"),
        ("shrink_after_s = 0", "got 0"),
    ],
)
def test_tree_pool_bad_elastic_keys_are_named_with_their_table(tmp_path: Path, line: str, says: str) -> None:
    """Each bad value is one problem naming the file, the pool's table and the key."""
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + POOL + line + "\n", source="c.toml", base_dir=tmp_path)
    key = line.split(" =")[0]
    where = f"c.toml: [supervisor.children.0.pool] key {key!r}"
    assert any(p.where == where and says in p.what for p in err.value.problems), err.value.problems


def test_tree_pool_shipped_example_is_elastic_with_one_running_worker() -> None:
    """examples/cluster.toml (what `make run` uses) runs one worker and grows up to one per CPU."""
    cfg = load_config(Path(__file__).parents[2] / "examples" / "cluster.toml")
    assert [p.path for p in cfg.pools] in ([], ["root/workers"])  # [] on a 1-CPU machine (count = 1)
    for pool in cfg.pools:
        assert pool.min_running == 1 and len(pool.members) >= 2
