"""Named provider presets: each reaches its service's URL with its key variable and quirks, over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_llm_providers import FakeServer, Reply

from openfang.protocol.errors import ConfigError
from openfang.workers.llm.presets import PRESETS
from openfang.workers.llm.providers import ChatMessage, ChatRequest, make_provider, validate_model_config

ANSWER = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


def ask() -> ChatRequest:
    return ChatRequest(messages=[ChatMessage.user("Hi")])


@pytest.mark.parametrize(
    "preset", [p for p in PRESETS if p.protocol == "openai" and p.base_url], ids=lambda p: p.name
)
def test_every_openai_protocol_preset_validates_with_just_a_model_name(preset: object) -> None:
    """A preset needs only provider and name; its base URL and key variable come from the table."""
    assert validate_model_config({"provider": preset.name, "name": "m"}) == []  # type: ignore[attr-defined]


def test_preset_sends_its_key_variable_as_a_bearer_token(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """groq reads GROQ_API_KEY and speaks chat completions at its base URL (here a local one)."""
    monkeypatch.setenv("GROQ_API_KEY", "gsk-test")
    server.replies.append(Reply(body=ANSWER))
    p = make_provider({"provider": "groq", "name": "llama-3.3-70b", "base_url": server.url + "/openai/v1"})
    assert p.complete(ask()).content == "hi" and p.name == "groq"
    req = server.requests[0]
    assert (
        req["path"] == "/openai/v1/chat/completions" and req["headers"]["authorization"] == "Bearer gsk-test"
    )
    assert req["body"]["model"] == "llama-3.3-70b"


def test_azure_preset_uses_the_api_key_header_and_api_version(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure OpenAI: the key goes in `api-key` (no bearer), and every request carries `api-version`."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-key")
    server.replies.append(Reply(body=ANSWER))
    p = make_provider(
        {"provider": "azure", "name": "gpt-4o", "base_url": server.url + "/openai/deployments/d1"}
    )
    assert p.complete(ask()).content == "hi"
    req = server.requests[0]
    assert req["path"] == "/openai/deployments/d1/chat/completions?api-version=2024-10-21"
    assert req["headers"]["api-key"] == "az-key" and "authorization" not in req["headers"]


def test_azure_preset_without_base_url_names_what_to_give() -> None:
    """A preset with no default URL is a config problem that says which URL to give."""
    with pytest.raises(ConfigError) as exc:
        make_provider({"provider": "azure", "name": "gpt-4o"})
    assert "key 'base_url'" in str(exc.value) and "deployments" in str(exc.value)


def test_unknown_provider_lists_the_presets() -> None:
    """A misspelt provider is refused with the list of known presets."""
    problems = validate_model_config({"provider": "groqq", "name": "m"})
    assert len(problems) == 1 and "groq" in problems[0].what and "openrouter" in problems[0].what


def test_models_list_cli_shows_every_preset() -> None:
    """`openfang models list --json` prints each preset's protocol, URL and key variable, with no daemon."""
    out = subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", "models", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = {r["provider"]: r for r in json.loads(out)}
    assert len(rows) == len(PRESETS) >= 15
    assert rows["mistral"]["api_key_env"] == "MISTRAL_API_KEY" and rows["ollama"]["local"] is True


def test_price_for_knows_a_few_models_and_their_dated_names() -> None:
    """Priced models match exactly, by a dated or -latest version, or as vendor/model; others: no price."""
    from openfang.workers.llm.presets import PRICES, cost_usd, price_for

    assert price_for("gpt-4o-mini") is PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-mini-2024-07-18") is PRICES["gpt-4o-mini"]
    assert price_for("claude-sonnet-4-20250514") is PRICES["claude-sonnet-4"]
    assert price_for("openai/gpt-4o") is PRICES["gpt-4o"]
    assert price_for("gpt-4o-audio-preview") is None, "a different model is not priced as gpt-4o"
    assert price_for("llama3.1:8b") is None and cost_usd("llama3.1:8b", 10, 10) is None
    assert cost_usd("gpt-4o-mini", 1_000_000, 1_000_000) == 0.75
    assert cost_usd("claude-sonnet-4", 2000, 500) == 0.0135
    assert all(p.source.startswith("https://") for p in PRICES.values())
