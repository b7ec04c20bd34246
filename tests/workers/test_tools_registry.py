"""The tool registry's door (allow list, schema, timing, errors as data) and the built-in tools behind it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from openfang.protocol.errors import AlreadyExists, NotFound
from openfang.workers.llm.providers import ScriptedProvider
from openfang.workers.tools.registry import (
    PERMISSIONS,
    KVLimits,
    KVStore,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    builtin_tools,
    check_schema,
    default_registry,
    validate,
)

REG = default_registry()


def ctx(*allowed: str, **kw: Any) -> ToolContext:
    return ToolContext(agent_id="agent-1", allowed=frozenset(allowed), **kw)


def ok(name: str, args: dict[str, Any], c: ToolContext | None = None) -> Any:
    res = REG.invoke(c or ctx("*"), name, args)
    assert res.ok, res
    return res.value


# ---- the door -------------------------------------------------------------------------------------------


def test_invoke_denies_by_default_and_names_what_to_allow() -> None:
    """An empty allow list denies every tool; the error says which name or permission would allow it."""
    res = REG.invoke(ctx(), "time_now", {})
    assert (res.ok, res.code) == (False, "denied")
    assert "'time_now' or 'time'" in (res.error or "")


def test_invoke_allows_by_tool_name_by_permission_or_star() -> None:
    """A tool runs when its name, its permission, or * is allowed; other tools stay denied."""
    assert REG.invoke(ctx("time_now"), "time_now", {}).ok
    assert REG.invoke(ctx("json"), "json_query", {"data": {"a": 1}, "path": "a"}).value == 1
    assert REG.invoke(ctx("*"), "text_count", {"text": "a b"}).ok
    assert REG.invoke(ctx("time_now"), "text_count", {"text": "a"}).code == "denied"


def test_specs_for_offers_only_allowed_tools() -> None:
    """The model is offered exactly the tools the agent may call, with their schemas."""
    specs = REG.specs_for(frozenset({"kv", "time_now"}))
    assert [s.name for s in specs] == ["kv_delete", "kv_get", "kv_list", "kv_set", "time_now"]
    assert specs[1].parameters["required"] == ["key"]
    assert REG.specs_for(frozenset()) == []


def test_invoke_reports_every_schema_problem_without_calling_the_tool() -> None:
    """Bad arguments come back as bad_args listing each problem with its path; the tool never runs."""
    calls: list[Any] = []
    reg = ToolRegistry(
        [
            Tool(
                name="t",
                description="d",
                permission="p",
                call=lambda c, a: calls.append(a),
                schema={
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["n", "s"],
                    "properties": {
                        "n": {"type": "integer", "minimum": 1},
                        "s": {"type": "string"},
                        "e": {"enum": ["a", "b"]},
                    },
                },
            )
        ]
    )
    res = reg.invoke(ctx("t"), "t", {"n": 0, "e": "c", "x": 1})
    assert res.code == "bad_args" and calls == []
    for piece in (
        "args.n: must be >= 1",
        "args.s: required",
        "args.e: must be one of",
        "args.x: unknown property",
    ):
        assert piece in (res.error or "")
    assert reg.invoke(ctx("t"), "t", "not an object").code == "bad_args"


def test_invoke_turns_tool_exceptions_into_error_results() -> None:
    """A crashing tool gives tool_error; an OpenFangError keeps its code; nothing is raised."""

    def crash(c: ToolContext, a: dict[str, Any]) -> Any:
        return 1 / 0

    def missing(c: ToolContext, a: dict[str, Any]) -> Any:
        raise NotFound("no such thing")

    reg = ToolRegistry(
        [
            Tool(name="crash", description="", schema={"type": "object"}, permission="x", call=crash),
            Tool(name="missing", description="", schema={"type": "object"}, permission="x", call=missing),
        ]
    )
    res = reg.invoke(ctx("x"), "crash", {})
    assert (res.ok, res.code, res.error) == (False, "tool_error", "ZeroDivisionError: division by zero")
    assert res.duration_ms >= 0
    assert reg.invoke(ctx("x"), "missing", {}).to_wire()["code"] == "not_found"
    assert reg.invoke(ctx("x"), "nope", {}).code == "not_found"


def test_register_refuses_bad_names_bad_schemas_and_duplicates() -> None:
    """Registration checks the name, the schema keywords, and uniqueness."""
    reg = ToolRegistry()
    good = Tool(name="t", description="", schema={"type": "object"}, permission="p", call=lambda c, a: None)
    reg.register(good)
    with pytest.raises(AlreadyExists):
        reg.register(good)
    with pytest.raises(ValueError, match="must match"):
        reg.register(Tool(name="bad name", description="", schema={}, permission="p", call=lambda c, a: None))
    with pytest.raises(ValueError, match="unsupported keyword 'oneOf'"):
        reg.register(
            Tool(name="u", description="", schema={"oneOf": []}, permission="p", call=lambda c, a: None)
        )


def test_result_as_text_is_ready_for_a_tool_message() -> None:
    """Values become JSON text, errors 'error (code): message'."""
    assert REG.invoke(ctx("*"), "json_parse", {"text": '{"a": [1]}'}).as_text() == '{"a": [1]}'
    assert REG.invoke(ctx(), "json_parse", {"text": "1"}).as_text().startswith("error (denied): ")


def test_every_builtin_tool_has_a_valid_schema_and_a_documented_permission() -> None:
    """Built-in schemas pass the checker and every permission maps back to its tools."""
    for name in REG.names():
        tool = REG.get(name)
        assert tool is not None and check_schema(tool.schema) == []
        assert name in PERMISSIONS[tool.permission]
    assert len(REG.names()) == len(builtin_tools())


def test_validate_fills_defaults_without_mutating_input() -> None:
    """Defaults are added to a copy; the caller's dict is untouched."""
    schema = {"type": "object", "properties": {"k": {"type": "integer", "default": 5}}}
    args: dict[str, Any] = {}
    out, problems = validate(args, schema)
    assert (out, problems, args) == ({"k": 5}, [], {})
    _, problems = validate({"k": True}, schema)
    assert problems == ["args.k: must be integer, got bool True"]


# ---- built-ins without a host ------------------------------------------------------------------------------


def test_time_now_answers_in_the_requested_zone_or_refuses_unknown_zones() -> None:
    """time_now gives ISO time in the zone; an unknown zone is bad_args."""
    v = ok("time_now", {"tz": "Asia/Tokyo"})
    assert v["iso"].endswith("+09:00") and v["tz"] == "Asia/Tokyo" and v["unix"] > 1_700_000_000
    assert REG.invoke(ctx("*"), "time_now", {"tz": "Mars/Olympus"}).code == "bad_args"


def test_json_query_follows_paths_and_wildcards() -> None:
    """Dotted keys, indexes (also negative), quoted keys and * all work; a missing step is not_found."""
    data = {"items": [{"name": "a", "n": 1}, {"name": "b"}], "odd key": {"x": True}}
    assert ok("json_query", {"data": data, "path": "items[1].name"}) == "b"
    assert ok("json_query", {"data": data, "path": "items[-1].name"}) == "b"
    assert ok("json_query", {"data": data, "path": "items[*].name"}) == ["a", "b"]
    assert ok("json_query", {"data": data, "path": "$['odd key'].x"}) is True
    assert ok("json_query", {"text": '{"a": {"b": [5, 6]}}', "path": "a.b[0]"}) == 5
    res = REG.invoke(ctx("*"), "json_query", {"data": data, "path": "items[5]"})
    assert res.code == "not_found" and "step 1" in (res.error or "")
    assert REG.invoke(ctx("*"), "json_query", {"data": 1, "text": "1", "path": "a"}).code == "bad_args"
    assert REG.invoke(ctx("*"), "json_query", {"data": {}, "path": "a..b"}).code == "bad_args"


def test_json_parse_reports_invalid_json() -> None:
    """Invalid JSON text is bad_args naming the problem."""
    res = REG.invoke(ctx("*"), "json_parse", {"text": "{nope"})
    assert res.code == "bad_args" and "not valid JSON" in (res.error or "")


def test_text_tools_count_and_match() -> None:
    """text_count counts chars/bytes/words/lines; text_regex searches, finds, substitutes and splits."""
    assert ok("text_count", {"text": "héllo wörld\nbye"}) == {
        "chars": 15,
        "bytes": 17,
        "words": 3,
        "lines": 2,
    }
    found = ok(
        "text_regex", {"text": "a1 b22 c333", "pattern": r"(\w)(\d+)", "mode": "findall", "max_matches": 2}
    )
    assert [m["match"] for m in found["matches"]] == ["a1", "b22"] and found["truncated"] is True
    s = ok("text_regex", {"text": "Hello", "pattern": "h(?P<rest>.*)", "ignore_case": True})
    assert s["matched"] and s["named"] == {"rest": "ello"}
    assert ok("text_regex", {"text": "a-b-c", "pattern": "-", "mode": "sub", "replacement": "+"}) == {
        "text": "a+b+c",
        "count": 2,
    }
    assert ok("text_regex", {"text": "a,b", "pattern": ",", "mode": "split"}) == {"parts": ["a", "b"]}
    assert REG.invoke(ctx("*"), "text_regex", {"text": "x", "pattern": "("}).code == "bad_args"


# ---- key-value -----------------------------------------------------------------------------------------


def test_kv_tools_store_per_agent_and_null_deletes() -> None:
    """Values are per agent: one agent never sees another's keys; null deletes."""
    store = KVStore()
    a = ctx("kv", kv=store.namespace("a"))
    b = ToolContext(agent_id="b", allowed=frozenset({"kv"}), kv=store.namespace("b"))
    assert ok("kv_set", {"key": "k", "value": {"x": [1, 2]}}, a) == {"stored": True}
    assert ok("kv_get", {"key": "k"}, a) == {"found": True, "value": {"x": [1, 2]}}
    assert ok("kv_get", {"key": "k"}, b) == {"found": False, "value": None}
    assert ok("kv_set", {"key": "k", "value": None}, a) == {"deleted": True}
    assert ok("kv_get", {"key": "k"}, a)["found"] is False


def test_kv_limits_refuse_and_change_nothing() -> None:
    """Over-size values, too many keys, or too many bytes are limit_exceeded and the old state stays."""
    store = KVStore(KVLimits(max_value_bytes=20, max_keys=2, max_total_bytes=30))
    c = ctx("kv", kv=store.namespace("a"))
    assert REG.invoke(c, "kv_set", {"key": "big", "value": "x" * 30}).code == "limit_exceeded"
    ok("kv_set", {"key": "k1", "value": "v" * 10}, c)
    ok("kv_set", {"key": "k2", "value": "v" * 10}, c)
    assert REG.invoke(c, "kv_set", {"key": "k3", "value": 1}).code == "limit_exceeded"
    assert REG.invoke(c, "kv_set", {"key": "k2", "value": "w" * 18}).code == "limit_exceeded"
    assert ok("kv_get", {"key": "k2"}, c)["value"] == "v" * 10
    assert store.usage("a") == (2, 28)


def test_kv_tools_without_a_store_say_not_available() -> None:
    """A host without a KV store gets 'unavailable', not a crash."""
    res = REG.invoke(ctx("kv"), "kv_get", {"key": "k"})
    assert res.code == "unavailable" and "not available in this host" in (res.error or "")


# ---- host tools ----------------------------------------------------------------------------------------


def test_fs_tools_read_write_and_list_inside_the_agent_root(tmp_path: Path) -> None:
    """fs_* tools work under fs_root and refuse escapes as denied results."""
    c = ctx("fs.read", "fs.write", fs_root=tmp_path)
    assert ok("fs_write_scoped", {"path": "d/a.txt", "content": "hi"}, c) == {
        "path": "d/a.txt",
        "bytes_written": 2,
    }
    ok("fs_write_scoped", {"path": "d/a.txt", "content": "!", "append": True}, c)
    assert ok("fs_read_scoped", {"path": "d/a.txt"}, c)["content"] == "hi!"
    assert ok("fs_list_scoped", {"path": "d"}, c)["entries"] == [{"name": "a.txt", "kind": "file", "size": 3}]
    assert REG.invoke(c, "fs_read_scoped", {"path": "../x"}).code == "denied"
    os.symlink("/etc", tmp_path / "etc")
    assert REG.invoke(c, "fs_read_scoped", {"path": "etc/hostname"}).code == "denied"
    assert REG.invoke(ctx("fs.read"), "fs_read_scoped", {"path": "a"}).code == "unavailable"
    assert (
        REG.invoke(ctx("fs.read", fs_root=tmp_path), "fs_write_scoped", {"path": "a", "content": ""}).code
        == "denied"
    )


def test_agent_and_memory_tools_call_host_callbacks_with_agent_id() -> None:
    """agent_* and memory_* hand the calling agent's id and validated args to the host's callbacks."""
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def record(kind: str) -> Any:
        def cb(agent_id: str, args: dict[str, Any]) -> Any:
            seen.append((kind, agent_id, args))
            if kind == "recall":
                return [{"text": "remembered", "score": 0.9}]
            return {"ok": kind}

        return cb

    c = ctx(
        "agent.send",
        "agent.spawn",
        "agent.list",
        "memory.store",
        "memory.recall",
        send=record("send"),
        spawn=record("spawn"),
        list_agents=record("list"),
        memory_store=record("store"),
        memory_recall=record("recall"),
    )
    assert ok("agent_send", {"to": "agent-2", "message": "hello"}, c) == {"ok": "send"}
    ok("agent_spawn", {"manifest": "[agent]\nname='x'"}, c)
    ok("agent_list", {}, c)
    ok("memory_store", {"text": "fact", "tags": ["t"]}, c)
    assert ok("memory_recall", {"query": "fact"}, c) == [{"text": "remembered", "score": 0.9}]
    assert [s[0] for s in seen] == ["send", "spawn", "list", "store", "recall"]
    assert all(s[1] == "agent-1" for s in seen)
    assert seen[3][2] == {"text": "fact", "tags": ["t"], "kind": "note"}
    assert seen[4][2] == {"query": "fact", "k": 5}


def test_host_tools_without_callbacks_are_unavailable_and_callback_errors_keep_their_code() -> None:
    """A missing callback gives 'unavailable'; a callback's ToolError code is passed on."""
    res = REG.invoke(ctx("*"), "agent_send", {"to": "x", "message": "m"})
    assert res.code == "unavailable" and res.error == "agent_send is not available in this host"

    def refuse(agent_id: str, args: dict[str, Any]) -> Any:
        raise ToolError("no agent named x", code="not_found")

    assert REG.invoke(ctx("*", send=refuse), "agent_send", {"to": "x", "message": "m"}).code == "not_found"


def test_scripted_conversation_runs_a_tool_through_the_registry() -> None:
    """A scripted model asks for a tool, the registry runs it, and the model answers with the result."""
    import re

    from openfang.workers.llm.providers import ChatMessage, ChatRequest, ScriptRule

    model = ScriptedProvider(
        [
            ScriptRule(
                match=re.compile("count (.+)"),
                tool="text_count",
                args={"text": "{1}"},
                then="words: {result}",
            )
        ]
    )
    c = ctx("text")
    convo = [ChatMessage.user("count one two three")]
    first = model.complete(ChatRequest(messages=convo, tools=tuple(REG.specs_for(c.allowed))))
    call = first.tool_calls[0]
    result = REG.invoke(c, call.name, call.arguments)
    convo += [first.to_message(), ChatMessage.tool(call.id, result.as_text(), name=call.name)]
    final = model.complete(ChatRequest(messages=convo))
    assert final.content == 'words: {"chars": 13, "bytes": 13, "words": 3, "lines": 1}'


def test_public_exports_resolve_and_docs_list_every_builtin_tool() -> None:
    """Every name in __all__ exists, and docs/llm-and-tools.md documents each built-in tool."""
    import openfang.workers.llm.providers as llm_mod
    import openfang.workers.tools.registry as tools_mod

    for mod in (llm_mod, tools_mod):
        assert [n for n in mod.__all__ if not hasattr(mod, n)] == []
    docs = (Path(__file__).resolve().parents[2] / "docs" / "llm-and-tools.md").read_text()
    assert [n for n in REG.names() if f"| `{n}` |" not in docs] == []


def test_text_regex_catastrophic_backtracking_times_out_instead_of_hanging() -> None:
    """A pathological pattern ends as a timeout error result (the worker thread is not held forever)."""
    res = REG.invoke(ctx("text"), "text_regex", {"text": "a" * 5000 + "!", "pattern": "(a|aa)+$"})
    assert res.code == "timeout" and "backtracking" in (res.error or "")
