"""Providers without a model: :class:`ScriptedProvider` (deterministic, no I/O) and :class:`FallbackProvider`.

A script is a list of rules tried in order against the latest user message (``re.search``)::

    script = [
      {match = "(?i)hello", reply = "Hi {input}!"},
      {match = "time in (?P<tz>[\\w/]+)", tool = "time_now", args = {tz = "{tz}"}, then = "It is {result}"},
      {match = "outage", error = "simulated outage"},
    ]
    default = "I cannot help with that."   # when no rule matches (or echo = true: repeat the input)

A ``tool`` rule answers with a tool call; when the conversation comes back with the tool's result the
provider answers ``then`` (default ``"{result}"``). A ``chain`` rule calls several tools strictly one
after the other, each step's args templated with the previous step's ``{result}``, then answers ``then``::

    {match = 'key=(?P<key>\\S+)', chain = [
        {tool = "lookup", args = {value = "{key}"}},
        {tool = "compute", args = {value = "{result}"}},
    ], then = "done: {result}"}

The step is the number of tool results since the latest user message, so the chain needs no state in the
provider and survives any number of conversations at once. Templates fill ``{input}``, ``{result}``,
``{crc16}`` (the low 16 bits of the CRC-32 of ``{input}``'s UTF-8 bytes, 4 hex digits: a deterministic
per-message checksum for benchmarks), ``{history}`` (the earlier user messages of the conversation the
model was sent, joined by `` | ``: what a model would remember) and the rule's regex groups (``{1}``,
``{name}``); unknown ``{...}`` stay as written, so JSON text is safe. An ``error`` rule raises
:class:`LLMError` (to test fallbacks and error paths).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import threading
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from openfang.protocol.errors import Problem, Timeout
from openfang.workers.llm.types import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DeltaSink,
    LLMError,
    Provider,
    ToolCall,
    Usage,
)

log = structlog.get_logger("openfang.llm")
_VAR = re.compile(r"\{(\w+)\}")
_CALL_ID = re.compile(r"^call_s(\d+)_\d+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainStep:
    """One tool call of a ``chain`` rule: the tool's name and its templated arguments."""

    tool: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptRule:
    """One rule: when ``match`` is found in the user's message, reply, call a tool (or a chain), or fail."""

    match: re.Pattern[str]
    reply: str | None = None
    tool: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    chain: tuple[ChainStep, ...] = ()
    then: str = "{result}"
    error: str | None = None

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> ScriptRule:
        """A rule from its manifest table (validated by ``validate_model_config`` first)."""
        return cls(
            match=re.compile(str(raw.get("match", ""))),
            reply=raw.get("reply"),
            tool=raw.get("tool"),
            args=dict(raw.get("args") or {}),
            chain=tuple(
                ChainStep(tool=str(step["tool"]), args=dict(step.get("args") or {}))
                for step in raw.get("chain") or ()
            ),
            then=str(raw.get("then", "{result}")),
            error=raw.get("error"),
        )


def check_chain(chain: Any, where: str, key: str = "chain") -> list[Problem]:
    """Every problem of a rule's ``chain`` value, placed as ``<where> key '<key>[i].tool'`` (empty: valid).

    For the model-table validator (``where`` is the table, ``key`` the path of the chain inside it, e.g.
    ``script[0].chain``): a chain is a non-empty array of ``{tool = "name", args = {...}}`` tables.
    """

    def at(suffix: str = "") -> str:
        return f"{where} key '{key}{suffix}'"

    if not isinstance(chain, list) or not chain:
        return [Problem(at(), "must be a non-empty array of {tool = ..., args = {...}} tables")]
    problems: list[Problem] = []
    for i, step in enumerate(chain):
        if not isinstance(step, Mapping):
            problems.append(Problem(at(f"[{i}]"), f"must be a table, got {type(step).__name__}"))
            continue
        unknown = sorted(set(step) - {"tool", "args"})
        if unknown:
            problems.append(Problem(at(f"[{i}]"), f"unknown keys {unknown} (known: args, tool)"))
        if not isinstance(step.get("tool"), str) or not step.get("tool"):
            problems.append(Problem(at(f"[{i}].tool"), f"must be a tool name, got {step.get('tool')!r}"))
        if "args" in step and not isinstance(step["args"], Mapping):
            problems.append(Problem(at(f"[{i}].args"), f"must be a table, got {step['args']!r}"))
    return problems


def render(template: Any, env: Mapping[str, str]) -> Any:
    """Fill ``{name}`` placeholders known to ``env`` in strings, recursively in lists and tables."""
    if isinstance(template, str):
        return _fill(template, env)
    if type(template) is dict or isinstance(template, Mapping):  # a rule's args are dicts: no ABC check
        return {k: _fill(v, env) if type(v) is str else render(v, env) for k, v in template.items()}
    if isinstance(template, list | tuple):
        return [render(v, env) for v in template]
    return template


def _fill(template: str, env: Mapping[str, str]) -> str:
    """:func:`render` of one string."""
    pieces = _pieces(template)
    if len(pieces) == 1:
        return template
    out = [pieces[0]]
    for i in range(1, len(pieces), 2):
        name = pieces[i]
        out.append(env.get(name, "{" + name + "}"))
        out.append(pieces[i + 1])
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _pieces(template: str) -> tuple[str, ...]:
    """``template`` split once: literal text at even indices, placeholder names at odd ones."""
    return tuple(_VAR.split(template))


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _words_in(texts: list[str]) -> int:
    """``sum(_words(t) for t in texts)`` in one split: a space between two texts never joins two words,
    and whitespace runs count as one separator, so the count of the joined text is the sum."""
    return len(" ".join(texts).split())


# The placeholders the provider fills from the conversation rather than from a rule's match; each is worked
# out only for a rule (or the default) whose templates name it (``{crc16}`` hashes the input, ``{history}``
# joins every earlier user message).
_CONVERSATION_NAMES = frozenset({"input", "crc16", "history"})

# The memo of rule matches (``ScriptedProvider._groups``): at most this many (rule, text) entries, and only
# texts up to this many characters (at most ~1 MB of text kept per provider).
_MEMO_ENTRIES = 256
_MEMO_TEXT = 4096


def _names(template: Any) -> set[str]:
    """The placeholder names in a template (strings, recursively in lists and tables), as render sees them."""
    if isinstance(template, str):
        return set(_pieces(template)[1::2])
    if isinstance(template, Mapping):
        return set().union(*(_names(v) for v in template.values()))
    if isinstance(template, list | tuple):
        return set().union(*(_names(v) for v in template))
    return set()


def _rule_needs(rule: ScriptRule) -> frozenset[str]:
    """The conversation placeholders any template of ``rule`` names (reply, error, args, chain, then)."""
    steps = [step.args for step in rule.chain]
    names = _names([rule.reply or "", rule.error or "", rule.args, steps, rule.then])
    return frozenset(names & _CONVERSATION_NAMES)


class ScriptedProvider:
    """Deterministic answers from a script; instant and thread-safe (tests, demos, benchmarks)."""

    blocking = False  # no I/O: the agent host may call it inline

    def __init__(
        self,
        rules: Sequence[ScriptRule] = (),
        *,
        default: str = "I have no scripted answer for that.",
        echo: bool = False,
        name: str = "scripted",
        model: str = "script",
    ) -> None:
        self.rules = tuple(rules)
        self.default = default
        self.echo = echo
        self.name = name
        self.model = model
        self._ids = itertools.count(1)
        self._needs = tuple(_rule_needs(rule) for rule in self.rules)
        self._default_needs = frozenset(_names(default) & _CONVERSATION_NAMES)
        self._memo: dict[tuple[int, str], Mapping[str, str] | None] = {}
        self._memo_size = _MEMO_ENTRIES
        self._calls_tools = tuple(rule.tool is not None or bool(rule.chain) for rule in self.rules)
        # Per rule: its words when its regex is a plain list of words and nothing of the match is used (no
        # placeholder, no error): then whether it matches is whether a word occurs (see _words_of).
        self._keywords = tuple(
            _words_of(rule.match)
            if rule.error is None and not self._calls_tools[i] and len(_pieces(rule.reply or "")) == 1
            else None
            for i, rule in enumerate(self.rules)
        )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ScriptedProvider:
        return cls(
            [ScriptRule.from_config(r) for r in cfg.get("script") or []],
            default=str(cfg.get("default", "I have no scripted answer for that.")),
            echo=bool(cfg.get("echo", False)),
            name=str(cfg.get("label") or "scripted"),
            model=str(cfg.get("name") or "script"),
        )

    def complete(self, req: ChatRequest, *, on_delta: DeltaSink | None = None) -> ChatResponse:
        """The scripted answer to the conversation so far."""
        msgs = req.messages
        user = ""
        step = 0  # how many tool results come after it: a chain's step
        tail = -1  # how many of them end the conversation (the results being answered), once known
        for m in reversed(msgs):  # the latest user message (the earlier ones only for {history})
            role = m.role
            if role == "user":
                user = m.content or ""
                break
            if role == "tool":
                step += 1
            elif tail < 0:
                tail = step
        if tail < 0:
            tail = step
        calls: list[ToolCall]
        content: str | None
        if tail:
            content, calls = self._after_tool(msgs, user, step, tail)
        else:
            content, calls = self._answer(msgs, user)
        if content and req.stream and on_delta is not None:
            for piece in re.findall(r"\S+\s*", content):
                on_delta(piece)
        prompt = _words_in([m.content for m in msgs if m.content])
        return ChatResponse.of(
            content,
            calls,
            Usage.of(prompt, _words(content) + len(calls)),
            "tool_calls" if calls else "stop",
            self.name,
            req.model or self.model,
        )

    def _groups(self, index: int, user: str) -> Mapping[str, str] | None:
        """Rule ``index``'s regex groups in ``user`` as template names (``{1}``..., then ``{name}``), or
        None when it does not match. Remembered per (rule, text) for the rules that call tools and texts up
        to ``_MEMO_TEXT`` characters: each step of a chain searches the same user message again (a bounded
        memo, cleared when full)."""
        key = (index, user)
        memo = self._memo
        if key in memo:
            return memo[key]
        m = self.rules[index].match.search(user)
        groups = None if m is None else _match_groups(m)
        if self._memo_size and self._calls_tools[index] and len(user) <= _MEMO_TEXT:
            if len(memo) >= self._memo_size:
                memo.clear()
            memo[key] = groups
        return groups

    def _env(
        self, groups: Mapping[str, str], msgs: Sequence[ChatMessage], user: str, needs: frozenset[str]
    ) -> dict[str, str]:
        env = _base_env(user, msgs, needs)
        env.update(groups)
        return env

    def _answer(self, msgs: Sequence[ChatMessage], user: str) -> tuple[str | None, list[ToolCall]]:
        lowered: str | None = None
        for i, rule in enumerate(self.rules):
            words = self._keywords[i]
            if words is not None:
                fold, listed = words
                found = False
                if not fold:  # a case-sensitive list: a substring test is the regex search
                    for w in listed:  # a loop, not any() of a generator: no frame resumed per word
                        if w in user:
                            found = True
                            break
                elif user.isascii():  # ASCII text: its lower-case form holds the words iff (?i) finds them
                    if lowered is None:
                        lowered = user.lower()
                    for w in listed:
                        if w in lowered:
                            found = True
                            break
                else:  # Unicode case folding (Kelvin sign, long s...): the regex decides
                    found = rule.match.search(user) is not None
                if found:
                    return rule.reply or "", []
                continue
            if self._calls_tools[i]:
                groups = self._groups(i, user)
                if groups is None:
                    continue
            else:
                m = rule.match.search(user)
                if m is None:
                    continue
                if rule.error is None and len(_pieces(rule.reply or "")) == 1:
                    return rule.reply or "", []  # a reply with no placeholder: nothing to fill in
                groups = _match_groups(m)
            env = self._env(groups, msgs, user, self._needs[i])
            if rule.error is not None:
                raise LLMError(self.name, render(rule.error, env))
            if rule.tool is not None:
                return None, [self._call(i, rule.tool, rule.args, env)]
            if rule.chain:
                return None, [self._call(i, rule.chain[0].tool, rule.chain[0].args, env)]
            return render(rule.reply or "", env), []
        if self.echo:
            return user, []
        if len(_pieces(self.default)) == 1:
            return self.default, []
        return render(self.default, _base_env(user, msgs, self._default_needs)), []

    def _call(self, rule_index: int, tool: str, args: Mapping[str, Any], env: Mapping[str, str]) -> ToolCall:
        # The rule's index travels in the call id, so the result finds its rule again with no state here.
        return ToolCall.of(f"call_s{rule_index}_{next(self._ids)}", tool, render(args, env))

    def _after_tool(
        self, msgs: Sequence[ChatMessage], user: str, step: int, tail: int
    ) -> tuple[str | None, list[ToolCall]]:
        """The answer to the ``tail`` tool results that end ``msgs`` (``step`` results since ``user``)."""
        first = msgs[-tail]
        result = (first.content or "") if tail == 1 else "\n".join(m.content or "" for m in msgs[-tail:])
        hit = _CALL_ID.match(first.tool_call_id or "")
        index = int(hit.group(1)) if hit else len(self.rules)
        rule = self.rules[index] if index < len(self.rules) else None
        if rule is None:  # a call this script did not make (e.g. after a fallback): report the result
            return result, []
        groups = self._groups(index, user)
        needs = self._needs[index]
        env = _base_env(user, msgs, needs)
        if groups is not None:
            env.update(groups)
        env["result"] = result
        if rule.chain and step < len(rule.chain):
            nxt = rule.chain[step]
            return None, [self._call(index, nxt.tool, nxt.args, env)]
        return str(render(rule.then, env)), []


_WORD_LIST = re.compile(r"[A-Za-z0-9 ]+(?:\|[A-Za-z0-9 ]+)*")


def _words_of(pattern: re.Pattern[str]) -> tuple[bool, tuple[str, ...]] | None:
    """``(case-insensitive, words)`` when ``pattern`` is a list of plain words (ASCII letters, digits and
    spaces) joined by ``|``, optionally after ``(?i)``, and compiled with no other flag: it then finds a match
    in a text iff one of the words occurs in it (for ``(?i)`` and an ASCII text: in its lower-case form, each
    word lower-cased). None for any other pattern (searched as written)."""
    source = pattern.pattern
    if not isinstance(source, str):
        return None
    fold = source.startswith("(?i)")
    body = source[4:] if fold else source
    flags = re.IGNORECASE | re.UNICODE if fold else re.UNICODE
    if pattern.flags != flags or not _WORD_LIST.fullmatch(body):
        return None
    words = body.split("|")
    return fold, tuple(w.lower() for w in words) if fold else tuple(words)


def _base_env(
    user: str, msgs: Sequence[ChatMessage], needs: frozenset[str] = _CONVERSATION_NAMES
) -> dict[str, str]:
    """``input`` (``user``: the latest user message of ``msgs``), and ``crc16`` and ``history`` when
    ``needs`` names them (what the templates rendered with this env can ask for)."""
    env = {"input": user}
    if "crc16" in needs:
        env["crc16"] = f"{zlib.crc32(user.encode()) & 0xFFFF:04x}"
    if "history" in needs:
        users = [m.content or "" for m in msgs if m.role == "user"]
        env["history"] = " | ".join(users[:-1])
    return env


def _match_groups(m: re.Match[str]) -> dict[str, str]:
    """A match's groups as template names: ``{1}``, ``{2}``... then the named ones (which win)."""
    groups = {str(i): g or "" for i, g in enumerate(m.groups(), start=1)}
    groups.update({k: v or "" for k, v in m.groupdict().items()})
    return groups


class FallbackProvider:
    """Tries providers in order; the first that answers wins. Counts who answered (``answered``).

    Moves on after :class:`LLMError` or :class:`Timeout`; any other error is a bug and propagates. Text
    already streamed to ``on_delta`` by a provider that then failed is not taken back.
    """

    blocking = True

    def __init__(self, providers: Sequence[Provider], *, name: str = "fallback") -> None:
        if not providers:
            raise ValueError("FallbackProvider needs at least one provider")
        self.providers = tuple(providers)
        self.name = name
        self.answered: Counter[str] = Counter()
        self._lock = threading.Lock()

    def complete(self, req: ChatRequest, *, on_delta: DeltaSink | None = None) -> ChatResponse:
        """The answer of the first provider that does not fail; LLMError listing every failure otherwise."""
        failures: list[LLMError] = []
        for i, p in enumerate(self.providers):
            try:
                resp = p.complete(req, on_delta=on_delta)
            except (LLMError, Timeout) as exc:
                err = exc if isinstance(exc, LLMError) else LLMError(p.name, exc.message, cause="timeout")
                failures.append(err)
                nxt = self.providers[i + 1].name if i + 1 < len(self.providers) else None
                log.warning("llm_fallback", failed=p.name, position=i, error=str(exc), next=nxt)
                continue
            with self._lock:
                self.answered[p.name] += 1
            if i:
                log.info("llm_fallback_answered", provider=p.name, position=i)
                return dataclasses.replace(resp, failed=(*resp.failed, *failures))
            return resp
        with self._lock:
            self.answered["<none>"] += 1
        if len(failures) == 1:
            raise failures[0]  # a chain of one: nothing else was tried
        raise LLMError(self.name, "every provider failed", cause=failures[-1].cause, attempts=failures)
