"""The scripted provider, the fallback chain, and building providers from [agent.model] tables."""

from __future__ import annotations

import socket
import tomllib
import zlib

import pytest

from openfang.protocol.errors import ConfigError
from openfang.workers.llm.providers import (
    AnthropicProvider,
    ChatMessage,
    ChatRequest,
    FallbackProvider,
    LLMError,
    OpenAIProvider,
    ScriptedProvider,
    make_provider,
    validate_model_config,
)

MANIFEST = r"""
[agent.model]
provider = "scripted"
default = "I cannot help with that."
script = [
  {match = "(?i)^hello", reply = "Hi {input}!"},
  {match = 'time in (?P<tz>[\w/]+)', tool = "time_now", args = {tz = "{tz}"}, then = "In {tz}: {result}"},
  {match = "outage", error = "simulated outage for {input}"},
  {match = "json", reply = '{"braces": "stay"}'},
]
"""


def scripted() -> ScriptedProvider:
    provider = make_provider(tomllib.loads(MANIFEST)["agent"]["model"])
    assert isinstance(provider, ScriptedProvider)
    return provider


def user(text: str, *, stream: bool = False) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage.system("sys"), ChatMessage.user(text)], stream=stream)


def test_scripted_reply_rule_fills_the_template() -> None:
    """The first matching rule answers; {input} is the user's message."""
    resp = scripted().complete(user("Hello there"))
    assert (resp.content, resp.tool_calls, resp.finish_reason) == ("Hi Hello there!", [], "stop")
    assert (resp.provider, resp.model) == ("scripted", "script")
    assert resp.usage.prompt_tokens == 3 and resp.usage.completion_tokens == 3


def test_scripted_tool_rule_calls_then_replies_with_the_result() -> None:
    """A tool rule asks for the tool with templated args; given the result, it answers `then`."""
    p = scripted()
    first = p.complete(user("what is the time in Europe/Oslo"))
    assert first.finish_reason == "tool_calls" and first.content is None
    (call,) = first.tool_calls
    assert (call.name, call.arguments) == ("time_now", {"tz": "Europe/Oslo"})
    convo = [
        ChatMessage.user("what is the time in Europe/Oslo"),
        first.to_message(),
        ChatMessage.tool(call.id, "12:00", name="time_now"),
    ]
    second = p.complete(ChatRequest(messages=convo))
    assert (second.content, second.tool_calls) == ("In Europe/Oslo: 12:00", [])


def test_scripted_tool_call_ids_are_unique() -> None:
    """Each tool call gets a fresh id, so results pair with the right call."""
    p = scripted()
    ids = {p.complete(user("time in UTC")).tool_calls[0].id for _ in range(5)}
    assert len(ids) == 5


def test_scripted_error_rule_raises_llm_error() -> None:
    """An error rule raises LLMError naming the provider."""
    with pytest.raises(LLMError, match="scripted: simulated outage for outage now"):
        scripted().complete(user("outage now"))


def test_scripted_default_and_echo_modes() -> None:
    """Without a match the default answers; echo=true repeats the user's text instead."""
    assert scripted().complete(user("something else")).content == "I cannot help with that."
    echo = ScriptedProvider(echo=True)
    assert echo.complete(user("repeat me")).content == "repeat me"


def test_scripted_template_leaves_unknown_braces_alone() -> None:
    """JSON braces in a reply are not mistaken for placeholders."""
    assert scripted().complete(user("json please")).content == '{"braces": "stay"}'


def test_scripted_streams_words_to_on_delta() -> None:
    """With stream=true the reply is delivered in word pieces that join to the content."""
    pieces: list[str] = []
    resp = scripted().complete(user("hello big world", stream=True), on_delta=pieces.append)
    assert len(pieces) == 4 and "".join(pieces) == resp.content


def test_scripted_result_of_a_foreign_tool_call_is_reported() -> None:
    """A tool result this script did not ask for (e.g. after a fallback) is answered with the result."""
    convo = [ChatMessage.user("hi"), ChatMessage.tool("call_other", "42")]
    assert ScriptedProvider().complete(ChatRequest(messages=convo)).content == "42"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_fallback_moves_on_after_a_failing_provider_and_records_who_answered() -> None:
    """A dead HTTP provider fails (connection refused), the next answers, and the counter says so."""
    cfg = {
        "provider": "openai",
        "name": "gpt-x",
        "base_url": f"http://127.0.0.1:{_closed_port()}/v1",
        "max_retries": 0,
        "fallback": [{"provider": "scripted", "label": "backup", "echo": True}],
    }
    p = make_provider(cfg)
    assert isinstance(p, FallbackProvider)
    resp = p.complete(user("are you there?"))
    assert (resp.content, resp.provider) == ("are you there?", "backup")
    assert p.answered == {"backup": 1}


def test_fallback_reports_every_failure_when_all_fail() -> None:
    """When every provider fails the error lists each one's reason."""
    failing = {"provider": "scripted", "script": [{"match": "", "error": "down A"}]}
    cfg = {
        "provider": "fallback",
        "fallback": [failing, {**failing, "label": "b", "script": [{"match": "", "error": "down B"}]}],
    }
    p = make_provider(cfg)
    with pytest.raises(
        LLMError, match=r"every provider failed \(fallback tried, 2 in all\): scripted: down A; b: down B"
    ):
        p.complete(user("x"))


def test_make_provider_builds_each_http_kind_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """openai/ollama/vllm/llamacpp build OpenAIProvider, anthropic AnthropicProvider, with default URLs."""
    monkeypatch.setenv("MY_KEY", "sk-secret-value-123")
    o = make_provider(
        {"provider": "openai", "name": "gpt-4o-mini", "api_key_env": "MY_KEY", "temperature": 0.5}
    )
    assert isinstance(o, OpenAIProvider) and "api.openai.com/v1" in repr(o) and "sk-secret" not in repr(o)
    assert o.temperature == 0.5
    ollama = make_provider({"provider": "ollama", "name": "llama3.2"})
    assert (
        isinstance(ollama, OpenAIProvider)
        and "127.0.0.1:11434/v1" in repr(ollama)
        and ollama.name == "ollama"
    )
    a = make_provider({"provider": "anthropic", "name": "claude-x", "max_tokens": 300, "label": "claude"})
    assert isinstance(a, AnthropicProvider) and a.max_tokens == 300 and a.name == "claude"


def test_make_provider_refuses_an_unset_api_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An api_key_env naming an unset variable is a ConfigError naming the key and the variable."""
    monkeypatch.delenv("OPENFANG_TEST_UNSET_KEY", raising=False)
    with pytest.raises(
        ConfigError, match=r"\[agent.model\] key 'api_key_env': .*OPENFANG_TEST_UNSET_KEY is not set"
    ):
        make_provider({"provider": "openai", "name": "m", "api_key_env": "OPENFANG_TEST_UNSET_KEY"})


def test_validate_model_config_reports_every_problem_with_its_place() -> None:
    """All problems come back at once, each naming the table and key."""
    cfg = {
        "provider": "openai",
        "temperature": 7,
        "max_tokens": 0,
        "base_url": "ftp://x",
        "api_key_env": "sk-live-oops",
        "max_retries": 99,
        "colour": "blue",
        "fallback": [{"provider": "scripted", "script": [{"match": "(", "reply": "x"}, {"match": "a"}]}],
    }
    problems = {
        (p.where, p.what.split(",")[0].split(" (")[0])
        for p in validate_model_config(cfg, "a.toml: [agent.model]")
    }
    w = "a.toml: [agent.model]"
    expected_places = {
        f"{w} key 'name'",
        f"{w} key 'temperature'",
        f"{w} key 'max_tokens'",
        f"{w} key 'base_url'",
        f"{w} key 'api_key_env'",
        f"{w} key 'max_retries'",
        f"{w} key 'colour'",
        f"{w} fallback[0] key 'script[0].match'",
        f"{w} fallback[0] key 'script[1]'",
    }
    assert {where for where, _ in problems} == expected_places


def test_validate_model_config_accepts_a_full_valid_table() -> None:
    """A valid table with a fallback chain has no problems."""
    cfg = tomllib.loads(MANIFEST)["agent"]["model"]
    assert validate_model_config(cfg) == []
    full = {
        "provider": "vllm",
        "name": "qwen",
        "base_url": "http://10.0.0.2:8000/v1",
        "timeout": 30,
        "max_retries": 1,
        "fallback": [cfg],
    }
    assert validate_model_config(full) == []


def test_validate_model_config_rejects_unknown_provider_and_non_tables() -> None:
    """An unknown provider or a non-table is reported, not raised."""
    assert "must be one of" in validate_model_config({"provider": "gpt"})[0].what
    assert "must be a table" in validate_model_config(["x"])[0].what


CHAIN_MODEL = r"""
provider = "scripted"
script = [
  {match = '^(?P<tid>[^:]*):.*key=(?P<key>\S+)', chain = [
    {tool = "lookup", args = {value = "{key}"}},
    {tool = "compute", args = {value = "{result}", task = "{tid}"}},
    {tool = "render", args = {value = "{result}"}},
  ], then = "{tid} {result}"},
  {match = "sum", reply = "{input} -> {crc16}"},
]
default = "{crc16}"
"""


def chain_provider() -> ScriptedProvider:
    return ScriptedProvider.from_config(tomllib.loads(CHAIN_MODEL))


def run_chain(p: ScriptedProvider, task: str, tools: dict[str, object]) -> tuple[str, list[tuple[str, dict]]]:
    """Drive the provider like the agent loop does: call tools until it answers; return answer and calls."""
    convo = [ChatMessage.system("sys"), ChatMessage.user(task)]
    calls: list[tuple[str, dict]] = []
    for _ in range(10):
        resp = p.complete(ChatRequest(messages=convo))
        if not resp.tool_calls:
            assert resp.content is not None
            return resp.content, calls
        convo.append(resp.to_message())
        for call in resp.tool_calls:
            calls.append((call.name, dict(call.arguments)))
            result = tools[call.name](call.arguments["value"])  # type: ignore[operator]
            convo.append(ChatMessage.tool(call.id, str(result), name=call.name))
    raise AssertionError("the chain did not end")


def test_scripted_chain_calls_each_tool_in_order_with_the_previous_result() -> None:
    """A chain rule makes one call per step, each templated with the previous result, then answers `then`."""
    tools = {"lookup": lambda v: f"<{v}>", "compute": lambda v: v + "!", "render": lambda v: f"[{v}]"}
    answer, calls = run_chain(chain_provider(), "t7: key=k7", tools)
    assert calls == [
        ("lookup", {"value": "k7"}),
        ("compute", {"value": "<k7>", "task": "t7"}),
        ("render", {"value": "<k7>!"}),
    ]
    assert answer == "t7 [<k7>!]"


def test_scripted_chain_step_restarts_with_each_user_message() -> None:
    """The step counts tool results since the latest user message, so a second task starts at step one."""
    p = chain_provider()
    tools = {"lookup": lambda v: v * 2, "compute": lambda v: v.upper(), "render": lambda v: v[::-1]}
    first, _ = run_chain(p, "a: key=xy", tools)
    convo = [ChatMessage.user("a: key=xy"), ChatMessage.assistant(first), ChatMessage.user("b: key=zz")]
    again = p.complete(ChatRequest(messages=convo))
    assert [(c.name, c.arguments) for c in again.tool_calls] == [("lookup", {"value": "zz"})]
    assert first == "a YXYX"


def test_scripted_crc16_template_is_the_low_16_bits_of_the_inputs_crc32() -> None:
    """{crc16} is zlib.crc32 of the user's text & 0xFFFF as 4 hex digits, in rules and the default."""
    import zlib

    p = chain_provider()
    text = "please sum this"
    assert p.complete(user(text)).content == f"{text} -> {zlib.crc32(text.encode()) & 0xFFFF:04x}"
    assert p.complete(user("nothing")).content == f"{zlib.crc32(b'nothing') & 0xFFFF:04x}"


def test_check_chain_reports_every_problem_with_its_place() -> None:
    """A malformed chain is described step by step; a valid one has no problems."""
    from openfang.workers.llm.scripted import check_chain

    chain = [{"tool": ""}, "x", {"tool": "a", "args": 3, "extra": 1}]
    problems = check_chain(chain, "[agent.model]", "script[0].chain")
    wheres = [p.where for p in problems]
    assert wheres == [
        "[agent.model] key 'script[0].chain[0].tool'",
        "[agent.model] key 'script[0].chain[1]'",
        "[agent.model] key 'script[0].chain[2]'",
        "[agent.model] key 'script[0].chain[2].args'",
    ]
    assert check_chain([], "m") and not check_chain([{"tool": "a", "args": {"v": "{result}"}}], "m")


def test_scripted_history_template_holds_the_earlier_user_messages() -> None:
    """{history} is the conversation's earlier user messages (not the latest), joined by ' | '."""
    provider = make_provider(
        {"provider": "scripted", "script": [{"match": "recall", "reply": "you said: {history}"}]}
    )
    convo = [
        ChatMessage.user("my name is Ada"),
        ChatMessage.assistant("hi", []),
        ChatMessage.user("I like tea"),
        ChatMessage.user("recall"),
    ]
    assert provider.complete(ChatRequest(messages=convo)).content == "you said: my name is Ada | I like tea"
    assert provider.complete(user("recall")).content == "you said: "


def test_render_fills_known_placeholders_like_a_regex_substitution() -> None:
    """render (templates split once and cached) gives what one regex substitution per call gave: known
    names filled, unknown ``{...}`` and stray braces kept, backslashes and group syntax left alone."""
    import random

    from openfang.workers.llm.scripted import _VAR, render

    env = {"input": "a{b}", "crc16": "00ff", "1": "x", "result": "{input}"}

    def oracle(template: str) -> str:
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), template)

    fixed = [
        "plain",
        "{input}",
        "x {crc16} y {unknown} {1}{result}",
        "{",
        "{}",
        "{{input}}",
        "\\1 \\g<0> {input",
    ]
    rng = random.Random(7)
    alphabet = ["{", "}", "input", "crc16", "x", " ", "1", "result", "unknown", "_", "\\"]
    fuzzed = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(5000)]
    for template in fixed + fuzzed:
        assert render(template, env) == oracle(template), template


def test_scripted_plain_and_templated_answers() -> None:
    """Replies and defaults without placeholders come back as written; with placeholders they are filled."""
    p = ScriptedProvider.from_config(
        {
            "script": [
                {"match": "(?i)invoice", "reply": "billing"},
                {"match": "n(\\d+)", "reply": "n={1} {crc16}"},
            ],
            "default": "general",
        }
    )
    assert p.complete(user("my invoice")).content == "billing"
    assert p.complete(user("hello")).content == "general"
    assert p.complete(user("n42")).content == f"n=42 {zlib.crc32(b'n42') & 0xFFFF:04x}"
    q = ScriptedProvider.from_config({"default": "{input}: {crc16} {nope}"})
    assert q.complete(user("hi")).content == f"hi: {zlib.crc32(b'hi') & 0xFFFF:04x} {{nope}}"


EVERY_PLACEHOLDER = r"""
[agent.model]
provider = "scripted"
default = "default {input} {crc16} {history} {nope}"
script = [
  {match = '^(?P<tid>[^:]*):.*key=(?P<key>\S*)', chain = [
    {tool = "lookup", args = {value = "{key}", seen = ["{history}", "{crc16}"]}},
    {tool = "compute", args = {value = "{result}", n = 3}},
  ], then = "{tid} {result} {input} {crc16}"},
  {match = '(?i)sum (\d+)', tool = "calc", args = {x = "{1}"}, then = "= {result} ({history})"},
  {match = "(?i)fail", error = "failed on {input} / {crc16}"},
  {match = "(?P<crc16>crc)", reply = "group beats base: {crc16} {input}"},
  {match = "(?i)plain", reply = "nothing to fill"},
  {match = "(?i)echo", reply = "{input}|{history}|{crc16}|{unknown}"},
]
"""


def _converse(provider: ScriptedProvider, texts: list[str]) -> list[object]:
    """Each text as a user turn, its tool calls answered, the whole conversation kept: every response."""
    from openfang.workers.llm.types import ChatMessage as Msg

    msgs: list[ChatMessage] = []
    out: list[object] = []
    for i, text in enumerate(texts):
        msgs.append(Msg.user(text))
        for _ in range(4):
            try:
                resp = provider.complete(ChatRequest(messages=tuple(msgs)))
            except LLMError as exc:
                out.append(("error", exc.message))
                break
            out.append((resp.content, [(c.name, c.arguments) for c in resp.tool_calls], resp.usage))
            if not resp.tool_calls:
                msgs.append(Msg.assistant(resp.content))
                break
            msgs.append(Msg.assistant(resp.content, resp.tool_calls))
            msgs.extend(Msg.tool(c.id, f"r{i} {c.name}  x\tend", c.name) for c in resp.tool_calls)
    return out


def test_scripted_fills_only_the_placeholders_its_templates_name_with_the_same_results() -> None:
    """Working out {crc16} and {history} only for the rules that name them gives every answer, tool call
    and usage that working out everything for every rule gives (the reference provider below)."""
    import random

    cfg = tomllib.loads(EVERY_PLACEHOLDER)["agent"]["model"]
    lazy, full = ScriptedProvider.from_config(cfg), ScriptedProvider.from_config(cfg)
    everything = frozenset({"input", "crc16", "history"})
    full._needs = tuple(everything for _ in full.rules)
    full._default_needs = everything
    assert lazy._needs[4] == frozenset() and lazy._needs[0] == everything
    rng = random.Random(5)
    words = [
        "t1: key=k9",
        "sum 12",
        "fail now",
        "crc",
        "plain",
        "echo",
        "hello",
        "é ü",
        "  spaced\u3000out  ",
    ]
    for _ in range(150):
        texts = [" ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(rng.randint(1, 5))]
        assert _converse(lazy, texts) == _converse(full, texts), texts


def test_scripted_prompt_word_count_equals_the_sum_per_message() -> None:
    """The prompt's word count (one split of the joined texts) is the sum of each message's word count."""
    import random

    from openfang.workers.llm.scripted import _words, _words_in

    rng = random.Random(9)
    pieces = ["a", "bc", " ", "\t", "\n", "\u3000", "\u00a0", "é", "", "x y", "\u2028"]
    for _ in range(3000):
        texts = [
            "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 6))
        ]
        texts = [t for t in texts if t]
        assert _words_in(texts) == sum(_words(t) for t in texts), texts


def test_scripted_match_memo_gives_the_answers_of_searching_every_time() -> None:
    """The memo of rule matches per (rule, text) gives every answer, tool call and usage that searching
    every rule on every call gives, over conversations interleaved through one provider (texts longer
    than the memo's limit included)."""
    import random

    from openfang.workers.llm import scripted as mod

    cfg = tomllib.loads(EVERY_PLACEHOLDER)["agent"]["model"]
    memo, fresh = ScriptedProvider.from_config(cfg), ScriptedProvider.from_config(cfg)
    fresh._memo_size = 0  # never remembers: searches every rule on every call
    rng = random.Random(11)
    words = ["t1: key=k9", "t2: key=k7 ", "sum 12", "sum 3", "fail now", "crc", "plain", "echo", "é ü"]
    long_text = "t9: key=" + "z" * mod._MEMO_TEXT
    for _ in range(150):
        texts = [" ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.1:
            texts.append(long_text)
        assert _converse(memo, texts) == _converse(fresh, texts), texts
    assert memo._memo and not fresh._memo
    assert all(len(text) <= mod._MEMO_TEXT for _, text in memo._memo)


def test_scripted_match_memo_stays_bounded() -> None:
    """The memo holds at most its number of entries (it is cleared when full), and only the matches of
    the rules that call tools (a reply rule is searched once per message anyway)."""
    from openfang.workers.llm import scripted as mod

    p = scripted()
    for i in range(3 * mod._MEMO_ENTRIES):
        (call,) = p.complete(user(f"time in Zone/{i}")).tool_calls
        assert call.arguments == {"tz": f"Zone/{i}"}
        assert p.complete(user(f"hello {i}")).content == f"Hi hello {i}!"
        assert 0 < len(p._memo) <= mod._MEMO_ENTRIES
    assert {index for index, _ in p._memo} == {1}


class _ReferenceScan(ScriptedProvider):
    """The provider as it was before its one reverse scan: the trailing tool results, the latest user
    message and the chain's step each found by a scan of their own."""

    def complete(self, req: ChatRequest, *, on_delta: object = None) -> object:  # type: ignore[override]
        from openfang.workers.llm import scripted as s

        msgs = req.messages
        user = next((m.content or "" for m in reversed(msgs) if m.role == "user"), "")
        if msgs and msgs[-1].role == "tool":
            start = len(msgs)
            while start and msgs[start - 1].role == "tool":
                start -= 1
            step = 0
            for m in reversed(msgs):
                if m.role == "user":
                    break
                step += m.role == "tool"
            content, calls = self._after_tool(msgs, user, step, len(msgs) - start)
        else:
            content, calls = self._answer(msgs, user)
        prompt = s._words_in([m.content for m in msgs if m.content])
        usage = s.Usage.of(prompt, s._words(content) + len(calls))
        reason = "tool_calls" if calls else "stop"
        return s.ChatResponse.of(content, calls, usage, reason, self.name, req.model or self.model)


def test_scripted_one_reverse_scan_answers_as_separate_scans() -> None:
    """The latest user message, the chain's step and the trailing tool results found in one reverse scan
    give every answer of finding each by its own scan, over random conversations (several results at the
    end, results before the latest user message, none at all, foreign call ids, no user message)."""
    import random

    cfg = tomllib.loads(EVERY_PLACEHOLDER)["agent"]["model"]
    one, ref = ScriptedProvider.from_config(cfg), _ReferenceScan.from_config(cfg)
    rng = random.Random(13)
    texts = ["t1: key=k9", "sum 12", "crc", "plain", "echo", "hi"]
    ids = ["call_s0_1", "call_s1_7", "call_s9_2", "foreign", ""]
    for _ in range(3000):
        msgs: list[ChatMessage] = []
        for _ in range(rng.randint(0, 7)):
            role = rng.choice(["user", "assistant", "tool", "tool", "system"])
            if role == "tool":
                msgs.append(ChatMessage.tool(rng.choice(ids) or "x", rng.choice(["r1", "", "a b"]), "t"))
            elif role == "user":
                msgs.append(ChatMessage.user(rng.choice(texts)))
            elif role == "system":
                msgs.append(ChatMessage.system("sys"))
            else:
                msgs.append(ChatMessage.assistant(rng.choice([None, "ok"])))
        req = ChatRequest(messages=tuple(msgs))
        assert one.complete(req) == ref.complete(req), msgs


KEYWORD_RULES = r"""
[agent.model]
provider = "scripted"
default = "general"
script = [
  {match = '(?i)invoice|refund|charged', reply = "billing"},
  {match = 'Error|crash|install', reply = "tech"},
  {match = '(?i)kelvin k|long s', reply = "folded"},
  {match = '(?i)price|quote|disCount', reply = "sales"},
  {match = '(?i)(?P<w>hello)', reply = "hi {w}"},
  {match = '(?i)plan', reply = "plan {input}"},
  {match = 'key', error = "no keys"},
  {match = '(?i)a.c', reply = "dot"},
]
"""


def test_scripted_keyword_rules_answer_as_their_regex_search() -> None:
    """A rule whose regex is a plain list of words (case-insensitive or not) whose match is not used is
    decided by looking for the words, with every answer the regex search gives: over ASCII texts in any
    case and texts with characters that Unicode case folding equates with ASCII letters (Kelvin sign, long
    s, dotted I), rules with groups, placeholders, errors and other regexes left to the search."""
    import random

    from openfang.workers.llm import scripted as mod

    cfg = tomllib.loads(KEYWORD_RULES)["agent"]["model"]
    fast, ref = ScriptedProvider.from_config(cfg), ScriptedProvider.from_config(cfg)
    ref._keywords = tuple(None for _ in ref.rules)  # the oracle: every rule's regex searched
    assert [w is not None for w in fast._keywords] == [True, True, True, True, False, False, False, False]
    rng = random.Random(17)
    pieces = [
        *("INVOICE", "Refund", "charged", "error", "Error", "CRASH", "install", "price", "QUOTE"),
        *("discount", "hello", "plan", "key", "abc", "a-c", " ", "x", "\u00e9", "\u00df", "cha rged"),
        *("ke\u212alvin", "kelvin \u212a", "lon\u017f s", "long \u017f", "\u0130nvoice", "pr\u0131ce"),
    ]
    hits = set()
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        try:
            want = ref.complete(user(text)).content
        except LLMError as exc:
            with pytest.raises(LLMError, match=str(exc)):
                fast.complete(user(text))
            continue
        assert fast.complete(user(text)) == ref.complete(user(text)), text
        hits.add(want)
    assert {"billing", "tech", "folded", "sales", "general"} <= hits
    assert mod._words_of(mod.re.compile("(?i)a|b", mod.re.ASCII)) is None  # another flag: searched
