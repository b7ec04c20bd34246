"""``openfang agent check``: manifests validated offline, every problem with its file, table and key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openfang.protocol.errors import ConfigError
from openfang.workers.host.wiring import _provider_for
from openfang.workers.llm.providers import KINDS, make_provider
from openfang.workers.manifest import PROVIDERS, load_manifest

ROOT = Path(__file__).resolve().parents[2]

BAD = """
[agent]
name = "Bad Name"
restart = "sometimes"
tools = ["no_such_tool"]

[agent.model]
provider = "openai"
name = "gpt-x"
base_url = "ftp://nowhere"
temperature = 7

[sandbox.fuel]
max_fuel = -1
"""


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OPENFANG_", "OPENAI_", "ANTHROPIC_"))}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "agent", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
    )


def test_agent_check_reports_every_problem_with_file_and_key(tmp_path: Path) -> None:
    """A bad manifest: exit 1 and one line per problem, each naming the file, the table and the key."""
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    res = _ctl(str(path))
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    for where in (
        "[agent] key 'name'",
        "[agent] key 'restart'",
        "[agent] key 'tools'",
        "[agent.model] key 'base_url'",
        "[agent.model] key 'temperature'",
        "[sandbox.fuel] key 'max_fuel'",
    ):
        assert any(line.startswith(f"{path}: {where}") for line in lines), (where, lines)
    assert not any(line.endswith(": ok") for line in lines)


def test_agent_check_passes_the_shipped_agents_and_needs_no_daemon() -> None:
    """The demo and example manifests are valid; no daemon is asked (nothing runs, no endpoint given)."""
    shipped = [
        *(ROOT / "openfang" / "data" / "agents").glob("*.toml"),
        *(ROOT / "examples").rglob("agent.toml"),
    ]
    files = sorted(os.path.relpath(p) for p in shipped)  # relative paths: modules resolve from the file
    res = _ctl(*files, "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert set(body) == set(files) and all(not r["problems"] for r in body.values())


def test_agent_check_warns_when_the_key_variable_is_not_set_here(tmp_path: Path) -> None:
    """A model whose API key variable is unset here: a warning saying the daemon's environment needs it."""
    path = tmp_path / "needs-key.toml"
    path.write_text(
        '[agent]\nname = "k"\n[agent.model]\nprovider = "openai"\nname = "m"\napi_key_env = "MY_KEY"\n'
    )
    res = _ctl(str(path))
    assert res.returncode == 0
    assert "MY_KEY is not set here" in res.stdout and "daemon's environment" in res.stdout
    ok = _ctl(str(path), env={"MY_KEY": "sk-test-1234567890"})
    assert ok.returncode == 0 and "warning" not in ok.stdout


def test_missing_api_key_variable_says_it_must_be_set_in_the_daemons_environment() -> None:
    """At spawn, an unset api_key_env names the variable and where it must be set."""
    with pytest.raises(ConfigError) as info:
        make_provider({"provider": "openai", "name": "m", "api_key_env": "OPENFANG_TEST_UNSET_KEY_2"})
    assert "OPENFANG_TEST_UNSET_KEY_2 is not set" in str(info.value)
    assert "daemon's environment" in str(info.value)


def test_model_table_problems_at_spawn_name_the_manifest_file(tmp_path: Path) -> None:
    """The worker's provider factory reports model problems with the manifest's file name."""
    path = tmp_path / "ollama-agent.toml"
    path.write_text(
        '[agent]\nname = "o"\n[agent.model]\nprovider = "ollama"\nname = "llama3"\ntemperature = 9\n'
    )
    manifest = load_manifest(path)  # ollama is a provider the worker accepts
    with pytest.raises(ConfigError) as info:
        _provider_for(manifest.model)  # type: ignore[arg-type]
    assert str(info.value).startswith("ollama-agent.toml: [agent.model] key 'temperature'"), str(info.value)


def test_manifest_providers_are_the_llm_kinds() -> None:
    """The manifest accepts exactly the provider kinds the LLM layer can build."""
    assert set(PROVIDERS) == set(KINDS)
