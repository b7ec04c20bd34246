"""cluster.toml: [cluster], [control] and [logging], their one defaults, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfang.control.config import (
    GATEWAY_ID,
    ControlConfig,
    LoggingConfig,
    default_control,
    parse_config,
)
from openfang.protocol.config_kit import describe
from openfang.protocol.errors import ConfigError
from openfang.security.config import SecurityConfig

BASE = '[cluster]\nname = "t"\ndata_dir = "data"\n'


def test_control_config_defaults_are_the_dataclass_defaults(tmp_path: Path) -> None:
    """An empty [control] is ControlConfig's defaults, endpoints under the resolved data dir."""
    cfg = parse_config(BASE, source="c.toml", base_dir=tmp_path)
    data = tmp_path / "data"
    assert cfg.data_dir == data and cfg.name == "t"
    assert cfg.control == default_control(data)
    assert cfg.control.endpoint == f"ipc://{data}/run/control.sock"
    assert (cfg.control.queue_limit, cfg.control.socket_mode) == (ControlConfig().queue_limit, 0o600)
    assert cfg.logging == LoggingConfig()


def test_control_config_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    """Bad values, an unknown key and a misspelt table are all reported at once, each naming its place."""
    text = BASE + (
        '[control]\nsocket_mode = "0777"\nqueue_limit = 0\nendpoint = "udp://x"\nhwn = 5\n'
        '[logging]\nlevel = "loud"\n[contrl]\nx = 1\n'
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.toml", base_dir=tmp_path)
    got = {p.where: p.what for p in err.value.problems}
    assert got["c.toml: [control] key 'socket_mode'"] == 'must be "0600" or "0660", got \'0777\''
    assert got["c.toml: [control] key 'queue_limit'"] == "must be an integer >= 1, got 0"
    assert got["c.toml: [control] key 'endpoint'"] == "must start with ipc:// or tcp://, got 'udp://x'"
    assert got["c.toml: [control] key 'hwn'"].startswith("unknown key (did you mean 'hwm'?")
    assert got["c.toml: [logging] key 'level'"] == "must be one of debug, info, warning, error, got 'loud'"
    assert got["c.toml: [contrl]"].startswith("unknown table (did you mean 'control'?")


def test_control_config_tcp_needs_keys_dir(tmp_path: Path) -> None:
    """A tcp:// endpoint without [control] keys_dir is refused, naming the endpoint's key."""
    with pytest.raises(ConfigError, match=r"\[control\] key 'events': tcp:// endpoints require CURVE"):
        parse_config(
            BASE + '[control]\nevents = "tcp://127.0.0.1:5555"\n', source="c.toml", base_dir=tmp_path
        )


def test_control_config_gateway_gets_typed_configs(tmp_path: Path) -> None:
    """The gateway child's args are the typed [control] and [security] configs, not dicts to re-parse."""
    cfg = parse_config(BASE + "[control]\nqueue_limit = 7\n", source="c.toml", base_dir=tmp_path)
    gateway = cfg.tree.children[0]
    assert gateway.id == GATEWAY_ID
    assert gateway.args["control"] is cfg.control and gateway.args["control"].queue_limit == 7
    assert isinstance(gateway.args["security"], SecurityConfig) and gateway.args["security"] is cfg.security


def test_control_config_same_text_gives_equal_trees(tmp_path: Path) -> None:
    """Parsing the same file twice gives equal specs (a reload of an unchanged file restarts nothing)."""
    text = BASE + "[control]\nhwm = 10\n[security.injection]\nthreshold = 0.4\n"
    first = parse_config(text, source="c.toml", base_dir=tmp_path)
    second = parse_config(text, source="c.toml", base_dir=tmp_path)
    assert first.tree == second.tree
    changed = parse_config(text.replace("hwm = 10", "hwm = 11"), source="c.toml", base_dir=tmp_path)
    assert changed.tree.children[0] != first.tree.children[0]


def _doc_rows(table: str) -> dict[str, str]:
    """{key: default} from the table under ``## [table]`` in docs/config.md."""
    text = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    section = text.split(f"## [{table}]\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[2].strip("`")
    return rows


def test_control_config_docs_list_every_key_with_its_one_default() -> None:
    """docs/config.md's [control] and [logging] tables list exactly the sections' keys and defaults."""
    for table, section in (("control", ControlConfig), ("logging", LoggingConfig)):
        rows = _doc_rows(table)
        keys = describe(section)
        assert set(rows) == {k.key for k in keys}, table
        for k in keys:
            if isinstance(k.default, int) and k.key != "socket_mode":
                assert rows[k.key] == str(k.default), (table, k.key)
            elif isinstance(k.default, str) and "{data_dir}" not in k.default:
                assert rows[k.key] == k.default, (table, k.key)
