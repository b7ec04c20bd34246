"""Agent manifests: full parse, every problem reported at once with its place, module resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfang.protocol.errors import ConfigError, Problem
from openfang.workers.manifest import load_manifest

FULL = """
[agent]
name = "research-analyst"
description = "Finds things out"
module = "builtin:llm-agent"
version = 3
system_prompt = "You are careful."
tools = ["time_now", "memory_recall"]
restart = "transient"
service = "classifier"
max_calls_per_message = 8
call_timeout_ms = 20000

[agent.model]
provider = "openai"
name = "gpt-4o-mini"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "OPENAI_API_KEY"
temperature = 0.2
max_tokens = 1024

[sandbox]
agent_id = "research-analyst-01"

[sandbox.fuel]
max_fuel = 500_000_000
refuel_interval_ms = 1000

[sandbox.memory]
max_heap_mb = 64
stack_size_kb = 512

[sandbox.permissions]
allowed_host_functions = ["net_fetch", "fs_read_scoped", "llm_invoke"]
denied_host_functions = ["fs_write_global", "process_spawn", "raw_socket"]
"""


def _problems(text: str, **kw: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_manifest(text, **kw)  # type: ignore[arg-type]
    return {p.where: p.what for p in info.value.problems}


def test_manifest_full_example_parses_into_frozen_dataclasses() -> None:
    """Every documented key lands in its typed field."""
    m = load_manifest(FULL, source="analyst.toml")
    assert (m.name, m.version, m.restart, m.service) == ("research-analyst", 3, "transient", "classifier")
    assert m.tools == ("time_now", "memory_recall") and m.max_calls_per_message == 8
    assert m.model is not None and m.model.provider == "openai" and m.model.raw["temperature"] == 0.2
    assert m.sandbox.agent_id == "research-analyst-01"
    assert m.sandbox.fuel.max_fuel == 500_000_000 and m.sandbox.memory.stack_size_kb == 512
    assert "process_spawn" in m.sandbox.permissions.denied_host_functions
    assert m.granted_imports() >= {"llm_invoke", "tool_call", "net_fetch", "fs_read_scoped", "host_result"}
    with pytest.raises(AttributeError):
        m.name = "other"  # type: ignore[misc]


def test_manifest_defaults_follow_otp() -> None:
    """A minimal manifest gets permanent restart, intensity 1 in 5 s, and the documented limits."""
    m = load_manifest('[agent]\nname = "echo"\nmodule = "builtin:echo"\n')
    assert (m.restart, m.restart_intensity, m.restart_period_ms) == ("permanent", 1, 5000)
    assert m.sandbox.memory.max_heap_mb == 64 and m.call_timeout_ms == 30_000
    assert m.granted_imports() == {"host_result", "log", "time_now_ms"}


def test_manifest_reports_every_problem_with_file_table_and_key() -> None:
    """All problems come back in one ConfigError, each naming file, table and key."""
    text = """
[agent]
name = "Not Valid"
restart = "sometimes"
tools = "time_now"
surprise = true
[agent.model]
temperature = 0.5
[sandbox.fuel]
max_fuel = "lots"
refuel_interval_ms = 0
[sandbox.memory]
max_heap_mb = 100000
[sandbox.permissions]
allowed_host_functions = ["teleport", "net_fetch"]
denied_host_functions = ["net_fetch"]
[extra]
"""
    got = _problems(text, source="bad.toml")
    for where in (
        "bad.toml: [agent] key 'name'",
        "bad.toml: [agent] key 'restart'",
        "bad.toml: [agent] key 'tools'",
        "bad.toml: [agent] key 'surprise'",
        "bad.toml: [agent.model] key 'provider'",
        "bad.toml: [sandbox.fuel] key 'max_fuel'",
        "bad.toml: [sandbox.fuel] key 'refuel_interval_ms'",
        "bad.toml: [sandbox.memory] key 'max_heap_mb'",
        "bad.toml: [sandbox.permissions] key 'allowed_host_functions'",
        "bad.toml: [sandbox.permissions] key 'denied_host_functions'",
        "bad.toml: [extra]",
    ):
        assert where in got, (where, got)
    assert "unknown key" in got["bad.toml: [agent] key 'surprise'"]
    assert "teleport" in got["bad.toml: [sandbox.permissions] key 'allowed_host_functions'"]


def test_manifest_invalid_toml_is_one_problem_naming_the_source() -> None:
    """Broken TOML is reported as such, with the source name."""
    got = _problems("[agent\nname=", source="x.toml")
    assert list(got) == ["x.toml"] and "not valid TOML" in got["x.toml"]


def test_manifest_module_path_resolves_next_to_the_manifest_file(tmp_path: Path) -> None:
    """A relative module path is relative to the manifest file; a missing file is a problem."""
    (tmp_path / "agent.wat").write_text("(module)")
    (tmp_path / "a.toml").write_text('[agent]\nname = "a"\nmodule = "agent.wat"\n')
    m = load_manifest(tmp_path / "a.toml")
    assert m.module_path() == tmp_path / "agent.wat" and m.source == "a.toml"
    (tmp_path / "b.toml").write_text('[agent]\nname = "b"\nmodule = "missing.wasm"\n')
    got = _problems(tmp_path / "b.toml")  # type: ignore[arg-type]
    assert "file not found" in got["b.toml: [agent] key 'module'"]
    got = _problems('[agent]\nname = "c"\nmodule = "rel.wasm"\n')
    assert "needs the manifest's file location" in got["agent.toml: [agent] key 'module'"]
    got = _problems('[agent]\nname = "d"\nmodule = "/x/agent.py"\n')
    assert ".wasm or .wat" in got["agent.toml: [agent] key 'module'"]


def test_manifest_builtin_modules_are_checked() -> None:
    """Unknown builtins are refused; the LLM agent needs a model table."""
    got = _problems('[agent]\nname = "a"\nmodule = "builtin:nope"\n')
    assert "unknown built-in" in got["agent.toml: [agent] key 'module'"]
    got = _problems('[agent]\nname = "a"\n')
    assert "agent.toml: [agent.model]" in got


def test_manifest_tools_checked_against_registry_and_model_validator() -> None:
    """When a tool registry and model validator are given, their verdicts join the problem list."""

    def validate(cfg: object, where: str) -> list[Problem]:
        return [Problem(f"{where} key 'temperature'", "must be <= 2")]

    text = '[agent]\nname = "a"\ntools = ["time_now", "nuke"]\n'
    text += '[agent.model]\nprovider = "custom"\ntemperature = 9\n'
    got = _problems(text, tool_names={"time_now"}, validate_model=validate)
    assert "unknown tool 'nuke'" in got["agent.toml: [agent] key 'tools'"]
    assert got["agent.toml: [agent.model] key 'temperature'"] == "must be <= 2"
    assert "agent.toml: [agent.model] key 'provider'" not in got  # the validator owns provider names


def test_manifest_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A manifest path that cannot be read is reported with its path."""
    with pytest.raises(ConfigError) as info:
        load_manifest(tmp_path / "nope.toml")
    assert "cannot read manifest" in str(info.value)


def test_manifest_shell_table_parses_limits_and_reports_bad_entries() -> None:
    """[agent.shell] gives shell_exec its allow list and limits; paths, unknown keys, bounds: problems."""
    head, model = '[agent]\nname = "sh"\n', '[agent.model]\nprovider = "scripted"\n'
    m = load_manifest(head + '[agent.shell]\nallow = ["jq"]\ntimeout_s = 5\n' + model)
    assert m.shell is not None and m.shell.allow == ("jq",) and m.shell.timeout_s == 5.0
    assert load_manifest(head + model).shell is None
    with pytest.raises(ConfigError) as exc:
        load_manifest(head + '[agent.shell]\nallow = ["/bin/sh"]\ncpu_s = 0\nshells = 1\n' + model)
    text = str(exc.value)
    assert "[agent.shell] key 'allow'" in text and "not a path" in text
    assert "[agent.shell] key 'cpu_s'" in text and "'shells'" in text


def test_manifest_hibernation_keys_default_to_cluster_default_and_fresh() -> None:
    """Without the keys an agent takes the cluster's idle_hibernate_s (None) and restarts fresh."""
    m = load_manifest('[agent]\nname = "e"\nmodule = "builtin:echo"\n')
    assert (m.idle_hibernate_s, m.restore) == (None, "fresh")
    m = load_manifest(
        '[agent]\nname = "e"\nmodule = "builtin:echo"\nidle_hibernate_s = 0.5\nrestore = "snapshot"\n'
    )
    assert (m.idle_hibernate_s, m.restore) == (0.5, "snapshot")
    assert (
        load_manifest('[agent]\nname = "e"\nmodule = "builtin:echo"\nidle_hibernate_s = 0\n').idle_hibernate_s
        == 0
    )


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('idle_hibernate_s = "5m"', "must be a number from 0 to 2592000, got '5m'"),
        ("idle_hibernate_s = true", "must be a number from 0 to 2592000, got True"),
        ("idle_hibernate_s = -1", "must be a number from 0 to 2592000, got -1"),
        ("idle_hibernate_s = nan", "must be a number from 0 to 2592000, got nan"),
        ('restore = "latest"', "must be one of fresh, snapshot, got 'latest'"),
        ("restore = 1", "must be one of fresh, snapshot, got 1"),
    ],
)
def test_manifest_hibernation_keys_bad_values_are_reported_with_their_place(line: str, what: str) -> None:
    """A bad idle_hibernate_s or restore names the key and says what is allowed."""
    key = line.split(" = ")[0]
    problems = _problems(f'[agent]\nname = "e"\nmodule = "builtin:echo"\n{line}\n')
    assert problems == {f"agent.toml: [agent] key '{key}'": what}


def test_manifest_table_limits_default_and_bounds() -> None:
    """[sandbox.memory] max_table_elements / max_tables default to 10,000 / 4 and are range-checked."""
    m = load_manifest('[agent]\nname = "echo"\nmodule = "builtin:echo"\n')
    assert (m.sandbox.memory.max_table_elements, m.sandbox.memory.max_tables) == (10_000, 4)
    m = load_manifest(
        '[agent]\nname = "e"\nmodule = "builtin:echo"\n'
        "[sandbox.memory]\nmax_table_elements = 0\nmax_tables = 1\n"
    )
    assert (m.sandbox.memory.max_table_elements, m.sandbox.memory.max_tables) == (0, 1)
    got = _problems(
        '[agent]\nname = "e"\nmodule = "builtin:echo"\n'
        "[sandbox.memory]\nmax_table_elements = 1_000_000_000\nmax_tables = 65\n",
        source="t.toml",
    )
    assert (
        "must be an integer from 0 to 134217728" in got["t.toml: [sandbox.memory] key 'max_table_elements'"]
    )
    assert "must be an integer from 0 to 64" in got["t.toml: [sandbox.memory] key 'max_tables'"]
