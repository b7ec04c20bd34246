"""LLM providers for agents: the public face of ``workers/llm_*.py``, and providers built from manifests.

    Provider (protocol: name, complete(req, on_delta=None) -> ChatResponse)
    ├── OpenAIProvider     /v1/chat/completions: OpenAI, vLLM, Ollama, llama.cpp   (llm_openai)
    ├── AnthropicProvider  /v1/messages                                            (llm_anthropic)
    ├── ScriptedProvider   rules from the manifest, zero I/O                       (llm_scripted)
    └── FallbackProvider   first of several that answers                           (llm_scripted)

Every failure is an :class:`LLMError` (code ``llm_error``) naming the provider, the HTTP status and the
server's message. :func:`make_provider` builds a provider from an agent manifest's ``[agent.model]`` table
after :func:`validate_model_config` has reported every problem in it at once; keys are documented in
``docs/llm-and-tools.md``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from openfang.protocol.errors import ConfigError, Problem
from openfang.workers.llm.presets import BY_NAME, PRESETS
from openfang.workers.llm.scripted import FallbackProvider, ScriptedProvider, ScriptRule, check_chain
from openfang.workers.llm.types import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DeltaSink,
    LLMError,
    Provider,
    ToolCall,
    ToolSpec,
    Usage,
)

if TYPE_CHECKING:
    from openfang.workers.llm.anthropic_messages import AnthropicProvider
    from openfang.workers.llm.openai_chat import OpenAIProvider
    from openfang.workers.llm.transport import HttpSettings

# The HTTP providers (and http.client under them) are imported when a manifest first uses one, so a worker
# whose agents are scripted, or have no model, never loads them; the names stay importable from here.
_LAZY = {
    "AnthropicProvider": "openfang.workers.llm.anthropic_messages",
    "OpenAIProvider": "openfang.workers.llm.openai_chat",
    "HttpSettings": "openfang.workers.llm.transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AnthropicProvider",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "DeltaSink",
    "FallbackProvider",
    "HttpSettings",
    "LLMError",
    "OpenAIProvider",
    "Provider",
    "ScriptRule",
    "ScriptedProvider",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "check_model_environment",
    "make_provider",
    "validate_model_config",
]

# provider kind -> (protocol, default base_url, default api key variable), from the named presets.
KINDS: dict[str, tuple[str, str, str | None]] = {p.name: (p.protocol, p.base_url, p.key_env) for p in PRESETS}
_COMMON = {"provider", "name", "label", "temperature", "max_tokens", "fallback", "stream"}
_HTTP_KEYS = {"base_url", "api_key_env", "timeout", "connect_timeout", "max_retries", "retry_backoff"}
_SCRIPT_KEYS = {"script", "default", "echo"}
_RULE_KEYS = {"match", "reply", "tool", "args", "chain", "then", "error"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate_model_config(cfg: Any, where: str = "[agent.model]") -> list[Problem]:
    """Every problem in an ``[agent.model]`` table, each placed as ``<where> key '<key>'``."""
    if not isinstance(cfg, Mapping):
        return [Problem(where, f"must be a table, got {type(cfg).__name__}")]
    problems: list[Problem] = []

    def bad(key: str, what: str) -> None:
        problems.append(Problem(f"{where} key {key!r}", what))

    kind = cfg.get("provider")
    if kind not in KINDS:
        bad("provider", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        return problems
    proto = KINDS[str(kind)][0]
    if proto == "fallback":
        known = {"provider", "label", "fallback"}
        if "fallback" not in cfg:
            bad("fallback", "provider 'fallback' needs a fallback array of model tables")
    else:
        known = _COMMON | (_SCRIPT_KEYS if proto == "scripted" else _HTTP_KEYS)
    for key in cfg:
        if key not in known:
            bad(str(key), f"unknown key for provider {kind!r} (known: {', '.join(sorted(known))})")
    if proto in ("openai", "anthropic") and not KINDS[str(kind)][1] and "base_url" not in cfg:
        bad("base_url", f"provider {kind!r} has no default URL: give base_url ({BY_NAME[str(kind)].notes})")
    name = cfg.get("name")
    if proto in ("openai", "anthropic") and (not isinstance(name, str) or not name):
        bad("name", f"the model name is required for provider {kind!r}, got {name!r}")
    elif name is not None and not isinstance(name, str):
        bad("name", f"must be a string, got {name!r}")
    if "label" in cfg and (not isinstance(cfg["label"], str) or not cfg["label"]):
        bad("label", f"must be a non-empty string, got {cfg['label']!r}")
    t = cfg.get("temperature")
    if t is not None and (not _num(t) or not 0 <= t <= 2):
        bad("temperature", f"must be a number from 0 to 2, got {t!r}")
    if "stream" in cfg and not isinstance(cfg["stream"], bool):
        bad("stream", f"must be true or false, got {cfg['stream']!r}")
    mt = cfg.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
        bad("max_tokens", f"must be an integer >= 1, got {mt!r}")
    url = cfg.get("base_url")
    if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url)):
        bad("base_url", f"must be an http:// or https:// URL, got {url!r}")
    env = cfg.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not _ENV_NAME.match(env)):
        bad("api_key_env", f"must be the NAME of an environment variable (not the key), got {env!r}")
    for key in ("timeout", "connect_timeout", "retry_backoff"):
        v = cfg.get(key)
        if v is not None and (not _num(v) or v <= 0 or v > 3600):
            bad(key, f"must be a number of seconds > 0 and <= 3600, got {v!r}")
    r = cfg.get("max_retries")
    if r is not None and (not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= 10):
        bad("max_retries", f"must be an integer from 0 to 10, got {r!r}")
    if proto == "scripted":
        problems.extend(_check_script(cfg, where))
    fb = cfg.get("fallback")
    if fb is not None:
        if not isinstance(fb, list) or not fb:
            bad("fallback", "must be a non-empty array of model tables")
        else:
            for i, sub in enumerate(fb):
                if isinstance(sub, Mapping) and "fallback" in sub:
                    bad(f"fallback[{i}].fallback", "nested fallbacks are not allowed: list them all here")
                    continue
                problems.extend(validate_model_config(sub, f"{where} fallback[{i}]"))
    return problems


def _check_script(cfg: Mapping[str, Any], where: str) -> list[Problem]:
    problems: list[Problem] = []
    if "default" in cfg and not isinstance(cfg["default"], str):
        problems.append(Problem(f"{where} key 'default'", f"must be a string, got {cfg['default']!r}"))
    if "echo" in cfg and not isinstance(cfg["echo"], bool):
        problems.append(Problem(f"{where} key 'echo'", f"must be true or false, got {cfg['echo']!r}"))
    script = cfg.get("script", [])
    if not isinstance(script, list):
        return [*problems, Problem(f"{where} key 'script'", "must be an array of rule tables")]
    for i, rule in enumerate(script):
        at = f"{where} key 'script[{i}]'"
        if not isinstance(rule, Mapping):
            problems.append(Problem(at, f"must be a table, got {type(rule).__name__}"))
            continue

        def bad(key: str, what: str, i: int = i) -> None:
            problems.append(Problem(f"{where} key 'script[{i}].{key}'", what))

        unknown = sorted(set(rule) - _RULE_KEYS)
        if unknown:
            problems.append(Problem(at, f"unknown keys {unknown} (known: {', '.join(sorted(_RULE_KEYS))})"))
        match = rule.get("match", "")
        if not isinstance(match, str):
            bad("match", f"must be a regex string, got {match!r}")
        else:
            try:
                re.compile(match)
            except re.error as exc:
                bad("match", f"invalid regex {match!r}: {exc}")
        actions = [k for k in ("reply", "tool", "chain", "error") if k in rule]
        if len(actions) != 1:
            problems.append(
                Problem(at, f"needs exactly one of reply, tool, chain, error (has {actions or 'none'})")
            )
        if "chain" in rule:
            problems.extend(check_chain(rule["chain"], where, f"script[{i}].chain"))
        for key in ("reply", "tool", "error", "then"):
            if key in rule and not isinstance(rule[key], str):
                bad(key, f"must be a string, got {rule[key]!r}")
        if "args" in rule and not isinstance(rule["args"], Mapping):
            bad("args", f"must be a table, got {rule['args']!r}")
        if "args" in rule and "tool" not in rule:
            problems.append(Problem(at, "args only apply to a tool rule (a chain step has its own args)"))
        if "then" in rule and "tool" not in rule and "chain" not in rule:
            problems.append(Problem(at, "then only applies to a tool or chain rule"))
    return problems


DAEMON_ENV_HINT = (
    "it must be set in the daemon's environment (workers read it when the agent spawns): export it where "
    "openfang-supervisor starts, or Environment= / EnvironmentFile= in its systemd unit"
)


def _api_key(cfg: Mapping[str, Any], default_env: str | None, where: str) -> str | None:
    name = cfg.get("api_key_env")
    if name is None:
        return os.environ.get(default_env) or None if default_env else None
    value = os.environ.get(str(name))
    if not value:
        raise ConfigError(
            Problem(
                f"{where} key 'api_key_env'", f"environment variable {name} is not set: {DAEMON_ENV_HINT}"
            )
        )
    return value


def _missing_key_hint(cfg: Mapping[str, Any], default_env: str | None) -> str | None:
    """What to say when a server refuses us for want of a key we did not send (None: a key is sent)."""
    if cfg.get("api_key_env") is not None or not default_env or os.environ.get(default_env):
        return None
    return f"no API key was sent: {default_env} is not set; {DAEMON_ENV_HINT}"


def check_model_environment(cfg: Mapping[str, Any], where: str = "[agent.model]") -> list[Problem]:
    """API-key variables an ``[agent.model]`` table needs that are not set in *this* process's environment
    (for ``openfang agent check``: the daemon's environment is what counts at spawn)."""
    out: list[Problem] = []
    tables = [(cfg, where)] + [
        (sub, f"{where} fallback[{i}]")
        for i, sub in enumerate(cfg.get("fallback") or [])
        if isinstance(sub, Mapping)
    ]
    for table, at in tables:
        kind = KINDS.get(str(table.get("provider")))
        if kind is None or kind[0] not in ("openai", "anthropic"):
            continue
        name = table.get("api_key_env")
        if isinstance(name, str) and not os.environ.get(name):
            out.append(Problem(f"{at} key 'api_key_env'", f"{name} is not set here; {DAEMON_ENV_HINT}"))
        elif name is None and kind[2] and not table.get("base_url") and not os.environ.get(kind[2]):
            out.append(
                Problem(
                    at,
                    f"the {table.get('provider')} API needs a key: {kind[2]} is not set here; "
                    f"{DAEMON_ENV_HINT}",
                )
            )
    return out


def _single(cfg: Mapping[str, Any], where: str) -> Provider:
    kind = str(cfg["provider"])
    proto, default_url, default_env = KINDS[kind]
    if proto == "scripted":
        return ScriptedProvider.from_config(cfg)
    from openfang.workers.llm.transport import HttpSettings

    settings = HttpSettings(
        timeout_s=float(cfg.get("timeout", 120.0)),
        connect_timeout_s=float(cfg.get("connect_timeout", 10.0)),
        max_retries=int(cfg.get("max_retries", 2)),
        backoff_s=float(cfg.get("retry_backoff", 0.5)),
    )
    common: dict[str, Any] = {
        "model": str(cfg["name"]),
        "base_url": str(cfg.get("base_url") or default_url),
        "api_key": _api_key(cfg, default_env, where),
        "missing_key_hint": _missing_key_hint(cfg, default_env),
        "temperature": cfg.get("temperature"),
        "max_tokens": cfg.get("max_tokens"),
        "settings": settings,
        "name": str(cfg.get("label") or kind),
    }
    if proto == "anthropic":
        from openfang.workers.llm.anthropic_messages import AnthropicProvider

        return AnthropicProvider(**common)
    preset = BY_NAME[kind]
    if preset.key_header is not None:  # e.g. Azure: the key goes in its own header, not a bearer token
        key = common.pop("api_key")
        common["extra_headers"] = {preset.key_header: key} if key else {}
    from openfang.workers.llm.openai_chat import OpenAIProvider

    return OpenAIProvider(**common, query=preset.query)


def make_provider(cfg: Mapping[str, Any], *, where: str = "[agent.model]") -> Provider:
    """The provider an ``[agent.model]`` table describes (a FallbackProvider when it lists ``fallback``).

    Raises :class:`ConfigError` listing every problem, including an ``api_key_env`` naming an unset
    variable. The key itself is read here, kept out of every repr and log line.
    """
    problems = validate_model_config(cfg, where)
    if problems:
        raise ConfigError(problems)
    subs = [_single(sub, f"{where} fallback[{i}]") for i, sub in enumerate(cfg.get("fallback") or [])]
    if cfg["provider"] == "fallback":
        return FallbackProvider(subs, name=str(cfg.get("label") or "fallback"))
    primary = _single(cfg, where)
    return FallbackProvider([primary, *subs]) if subs else primary
