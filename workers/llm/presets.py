"""Named model presets: the base URL, key variable, wire protocol and quirks of the common LLM services.

An agent names a preset as its provider (``provider = "groq"``) and gives the model ``name``; every other
key keeps its meaning and may override the preset (``base_url``, ``api_key_env``...). Most services speak
the OpenAI chat-completions protocol; Anthropic speaks its own. Quirks are data, applied where the request
is built: Azure OpenAI authenticates with an ``api-key`` header and versions its API with a query
parameter, and its base URL names the resource and the deployment, so it has no default and must be given.
``openfang models list`` prints this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """One service: how to reach it and what is peculiar about it."""

    name: str
    protocol: str  # "openai", "anthropic", "scripted" or "fallback"
    base_url: str = ""  # empty: the manifest must give base_url
    key_env: str | None = None  # the default environment variable holding the API key
    key_header: str | None = None  # send the key in this header instead of "Authorization: Bearer"
    query: dict[str, str] = field(default_factory=dict)  # added to every request URL
    local: bool = False  # runs on the operator's machine; no key needed
    notes: str = ""


PRESETS: tuple[Preset, ...] = (
    Preset(name="openai", protocol="openai", base_url="https://api.openai.com/v1", key_env="OPENAI_API_KEY"),
    Preset(
        name="azure",
        protocol="openai",
        key_env="AZURE_OPENAI_API_KEY",
        key_header="api-key",
        query={"api-version": "2024-10-21"},
        notes="base_url = https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT; api-key header",
    ),
    Preset(name="groq", protocol="openai", base_url="https://api.groq.com/openai/v1", key_env="GROQ_API_KEY"),
    Preset(
        name="together", protocol="openai", base_url="https://api.together.xyz/v1", key_env="TOGETHER_API_KEY"
    ),
    Preset(
        name="deepseek", protocol="openai", base_url="https://api.deepseek.com/v1", key_env="DEEPSEEK_API_KEY"
    ),
    Preset(
        name="mistral", protocol="openai", base_url="https://api.mistral.ai/v1", key_env="MISTRAL_API_KEY"
    ),
    Preset(
        name="openrouter",
        protocol="openai",
        base_url="https://openrouter.ai/api/v1",
        key_env="OPENROUTER_API_KEY",
        notes="model names are vendor/model, e.g. anthropic/claude-sonnet-4",
    ),
    Preset(
        name="fireworks",
        protocol="openai",
        base_url="https://api.fireworks.ai/inference/v1",
        key_env="FIREWORKS_API_KEY",
        notes="model names are accounts/fireworks/models/NAME",
    ),
    Preset(
        name="gemini",
        protocol="openai",
        base_url="https://generativelanguage.googleapis.com/v1beta/openai",
        key_env="GEMINI_API_KEY",
        notes="Google's OpenAI-compatible endpoint",
    ),
    Preset(name="xai", protocol="openai", base_url="https://api.x.ai/v1", key_env="XAI_API_KEY"),
    Preset(
        name="perplexity",
        protocol="openai",
        base_url="https://api.perplexity.ai",
        key_env="PERPLEXITY_API_KEY",
    ),
    Preset(
        name="cerebras", protocol="openai", base_url="https://api.cerebras.ai/v1", key_env="CEREBRAS_API_KEY"
    ),
    Preset(name="vllm", protocol="openai", base_url="http://127.0.0.1:8000/v1", local=True),
    Preset(name="ollama", protocol="openai", base_url="http://127.0.0.1:11434/v1", local=True),
    Preset(name="lmstudio", protocol="openai", base_url="http://127.0.0.1:1234/v1", local=True),
    Preset(name="llamacpp", protocol="openai", base_url="http://127.0.0.1:8080/v1", local=True),
    Preset(
        name="anthropic",
        protocol="anthropic",
        base_url="https://api.anthropic.com",
        key_env="ANTHROPIC_API_KEY",
    ),
    Preset(
        name="scripted", protocol="scripted", local=True, notes="deterministic rules, no I/O (tests, demos)"
    ),
    Preset(
        name="fallback", protocol="fallback", local=True, notes="only a chain: every model is in `fallback`"
    ),
)

BY_NAME: dict[str, Preset] = {p.name: p for p in PRESETS}


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens, as the vendor lists them (input = prompt, output = completion)."""

    input_per_m: float
    output_per_m: float
    source: str


# Only a few well-known models, with their vendor's public price page as the source. Prices change: these
# are the list prices as of 2025 (standard tier, no batch or cache discounts). Any other model records its
# tokens with ``cost_usd = null``.
_OPENAI = "https://openai.com/api/pricing (2025)"
_ANTHROPIC = "https://www.anthropic.com/pricing (2025)"
PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, _OPENAI),
    "gpt-4o-mini": Price(0.15, 0.60, _OPENAI),
    "claude-sonnet-4": Price(3.00, 15.00, _ANTHROPIC),
    "claude-3-5-haiku": Price(0.80, 4.00, _ANTHROPIC),
}
# A dated or aliased name of a priced model: gpt-4o-mini-2024-07-18, claude-sonnet-4-20250514, ...-latest.
_VERSION_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def price_for(model: str) -> Price | None:
    """The price of ``model`` (its exact name, or a dated/``-latest`` version of a priced name), else None.

    An OpenRouter-style ``vendor/model`` name is looked up by its model part.
    """
    name = model.rpartition("/")[2].strip().lower()
    found = PRICES.get(name)
    if found is None:
        found = PRICES.get(_VERSION_SUFFIX.sub("", name))
    return found


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What one call cost in US dollars by the PRICES table (None for a model not in it)."""
    price = price_for(model)
    if price is None:
        return None
    cost = (prompt_tokens * price.input_per_m + completion_tokens * price.output_per_m) / 1_000_000
    return round(cost, 8)
