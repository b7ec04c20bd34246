"""The offline built-in tools (math, dates, text, encodings, data, SQL): success, denial, bad input."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from openfang.workers.tools.registry import KVStore, ToolContext, default_registry

REG = default_registry()


def ctx(*allowed: str, **kw: Any) -> ToolContext:
    return ToolContext(agent_id="agent-1", allowed=frozenset(allowed or ("*",)), **kw)


def ok(name: str, args: dict[str, Any], c: ToolContext | None = None) -> Any:
    res = REG.invoke(c or ctx(), name, args)
    assert res.ok, res
    return res.value


def fails(name: str, args: dict[str, Any], code: str, c: ToolContext | None = None) -> str:
    res = REG.invoke(c or ctx(), name, args)
    assert (res.ok, res.code) == (False, code), res
    return res.error or ""


# Every new tool, with arguments that succeed and the permission that unlocks it.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("calc", "math", {"expression": "2 + 3 * 4"}),
    ("datetime", "time", {"value": "2026-12-05T10:00:00+00:00"}),
    ("text_chunk", "text", {"text": "one two three " * 20, "size": 50, "overlap": 10}),
    ("text_diff", "text", {"old": "a\nb\n", "new": "a\nc\n"}),
    ("template_render", "text", {"template": "hi {{ name }}", "data": {"name": "x"}}),
    ("hash", "encoding", {"text": "abc"}),
    ("base64", "encoding", {"text": "abc"}),
    ("uuid", "encoding", {}),
    ("url_parse", "text", {"url": "https://a.example:8443/p?q=1#f"}),
    ("yaml_parse", "data", {"text": "a: [1, 2]"}),
    ("xml_query", "data", {"text": "<r><i id='1'/></r>", "path": ".//i"}),
    ("csv_query", "data", {"text": "a,b\n1,2\n"}),
    ("json_schema_validate", "data", {"instance": 1, "schema": {"type": "integer"}}),
    ("kv_list", "kv", {}),
    ("kv_delete", "kv", {"key": "k"}),
]


@pytest.mark.parametrize(("name", "permission", "args"), CASES, ids=[c[0] for c in CASES])
def test_new_tool_runs_with_its_permission_and_is_denied_without(
    name: str, permission: str, args: dict[str, Any]
) -> None:
    """Each tool runs when its permission is granted and is refused (denied) for an agent without it."""
    kv = KVStore().namespace("agent-1")
    assert REG.invoke(ctx(permission, kv=kv), name, args).ok
    assert REG.invoke(ctx("time_now", kv=kv), name, args).code == "denied"


@pytest.mark.parametrize(("name", "permission", "args"), CASES, ids=[c[0] for c in CASES])
def test_new_tool_refuses_unknown_arguments(name: str, permission: str, args: dict[str, Any]) -> None:
    """An argument the schema does not name is a bad_args error naming it, not a crash."""
    assert "surprise" in fails(name, {**args, "surprise": 1}, "bad_args", ctx(kv=KVStore().namespace("a")))


def test_registry_has_at_least_33_tools_each_with_a_permission_and_description() -> None:
    """The built-in set grew, and every tool says what it does and which permission unlocks it."""
    names = REG.names()
    assert len(names) >= 33
    for n in names:
        tool = REG.get(n)
        assert tool is not None and tool.permission and len(tool.description) > 20


# ---- calc ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("2 ** 10", 1024),
        ("7 // 2 + 7 % 2", 4),
        ("sqrt(16) + floor(2.7)", 6.0),
        ("1 < 2 < 3", True),
        ("max(1, 5, 3)", 5),
        ("10 if 1 > 2 else 20", 20),
        ("-pi < 0 and not 0", True),
    ],
)
def test_calc_evaluates_arithmetic(expr: str, value: Any) -> None:
    """calc computes arithmetic, comparisons, conditionals and math functions."""
    assert ok("calc", {"expression": expr})["value"] == value


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("__import__('os').system('id')", "not allowed"),
        ("__import__('os')", "unknown function"),
        ("(1).__class__", "Attribute is not allowed"),
        ("[x for x in range(9)]", "ListComp is not allowed"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 100000", "too large"),
        ("factorial(100000)", "factorial"),
        ("1 / 0", "division by zero"),
        ("open", "unknown name"),
        ("2 +", "not an expression"),
        ("lambda: 1", "Lambda is not allowed"),
        ("'a' * 10", "Constant is not allowed"),
    ],
)
def test_calc_refuses_code_huge_numbers_and_nonsense(expr: str, needle: str) -> None:
    """Anything beyond arithmetic is refused before it runs, and huge powers are refused before computing."""
    assert needle in fails("calc", {"expression": expr}, "bad_args")


def test_calc_refuses_deep_nesting() -> None:
    """A deeply nested expression is an error, not a recursion crash."""
    deep = "-" * 200 + "1"
    assert "nested deeper" in fails("calc", {"expression": deep}, "bad_args")


# ---- datetime -----------------------------------------------------------------------------------------


def test_datetime_converts_shifts_formats_and_diffs() -> None:
    """datetime converts zones (with DST), shifts, formats and measures the distance between dates."""
    v = ok("datetime", {"value": "2026-07-01T12:00:00Z", "to_tz": "Europe/Paris"})
    assert v["iso"] == "2026-07-01T14:00:00+02:00" and v["utc_offset_minutes"] == 120
    v = ok("datetime", {"value": "2026-12-05", "tz": "Asia/Tokyo", "op": "shift", "by": {"days": 30}})
    assert v["iso"].startswith("2027-01-04T00:00:00+09:00")
    v = ok("datetime", {"value": "2026-12-05T00:00:00Z", "format": "%d/%m/%Y"})
    assert v["formatted"] == "05/12/2026" and v["weekday"] == "Saturday"
    v = ok("datetime", {"value": "2026-01-01T00:00:00Z", "op": "diff", "other": "2026-01-02T12:00:00Z"})
    assert v["days"] == 1.5
    assert ok("datetime", {"value": "0"})["iso"] == "1970-01-01T00:00:00+00:00"


def test_datetime_names_bad_dates_and_zones() -> None:
    """Unparseable dates, unknown zones and a diff without its second date are clear bad_args errors."""
    assert "cannot parse" in fails("datetime", {"value": "next tuesday"}, "bad_args")
    assert "unknown time zone" in fails("datetime", {"value": "now", "to_tz": "Mars/Olympus"}, "bad_args")
    assert "needs 'other'" in fails("datetime", {"value": "now", "op": "diff"}, "bad_args")
    assert "out of range" in fails(
        "datetime", {"value": "9999-12-31T00:00:00Z", "op": "shift", "by": {"days": 5}}, "bad_args"
    )


# ---- text and encodings ------------------------------------------------------------------------------


def test_text_chunk_covers_the_text_within_size_with_overlap() -> None:
    """Chunks are at most `size` long, cut at word breaks, overlap, and together cover every word."""
    words = [f"w{i}" for i in range(300)]
    v = ok("text_chunk", {"text": " ".join(words), "size": 100, "overlap": 20})
    assert v["count"] == len(v["chunks"]) > 5
    assert all(len(c) <= 100 for c in v["chunks"])
    seen = {w for c in v["chunks"] for w in c.split()}
    assert seen == set(words)
    assert v["chunks"][0].split()[-1] in v["chunks"][1]
    assert "smaller than size" in fails("text_chunk", {"text": "x", "size": 100, "overlap": 100}, "bad_args")


def test_text_diff_gives_a_unified_diff_that_patch_understands() -> None:
    """The diff is unified format with file names and counts."""
    v = ok("text_diff", {"old": "a\nb\nc\n", "new": "a\nB\nc\nd", "old_name": "x.txt", "new_name": "x.txt"})
    assert v["diff"].startswith("--- x.txt\n+++ x.txt\n@@")
    assert (v["added"], v["removed"]) == (2, 1)
    assert "No newline at end of file" in v["diff"]


def test_template_render_fills_data_and_blocks_python_internals() -> None:
    """Templates render loops and filters; reaching Python internals is denied; undefined names are errors."""
    v = ok(
        "template_render",
        {"template": "{% for i in xs %}{{ i|upper }},{% endfor %}", "data": {"xs": ["a", "b"]}},
    )
    assert v["text"] == "A,B,"
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    assert "sandbox" in fails("template_render", {"template": escape}, "denied")
    assert "undefined" in fails("template_render", {"template": "{{ nope }}"}, "bad_args")
    assert "line" in fails("template_render", {"template": "{% for %}"}, "bad_args")
    bomb = "{% for a in range(10000) %}{% for b in range(10000) %}xxxxxxxxxx{% endfor %}{% endfor %}"
    assert "longer than" in fails("template_render", {"template": bomb}, "too_large")


def test_hash_matches_hashlib_and_hmac() -> None:
    """Digests equal hashlib's, for text, hex and base64 input; HMAC is keyed."""
    assert ok("hash", {"text": "abc"})["hex"] == hashlib.sha256(b"abc").hexdigest()
    assert (
        ok("hash", {"text": "616263", "input": "hex", "algorithm": "md5"})["hex"]
        == hashlib.md5(b"abc").hexdigest()
    )
    keyed = ok("hash", {"text": "abc", "hmac_key": "k"})
    assert keyed["algorithm"] == "hmac-sha256" and keyed["hex"] != hashlib.sha256(b"abc").hexdigest()
    assert "not valid hex" in fails("hash", {"text": "zz", "input": "hex"}, "bad_args")
    assert fails("hash", {"text": "abc", "algorithm": "crc32"}, "bad_args")


def test_base64_round_trips_and_reports_binary_as_hex() -> None:
    """Encode/decode round-trips text; bytes that are not UTF-8 come back as hex; garbage is an error."""
    enc = ok("base64", {"text": "héllo"})["text"]
    assert ok("base64", {"text": enc, "op": "decode"})["text"] == "héllo"
    binary = base64.b64encode(b"\xff\xfe").decode()
    assert ok("base64", {"text": binary, "op": "decode"})["hex"] == "fffe"
    assert ok("base64", {"text": "aGk", "op": "decode", "urlsafe": True})["text"] == "hi"
    assert "not valid base64" in fails("base64", {"text": "!!!!", "op": "decode"}, "bad_args")


def test_uuid_random_and_name_based() -> None:
    """Version 4 gives distinct UUIDs; version 5 is stable for a name."""
    v = ok("uuid", {"count": 3})["uuids"]
    assert len(set(v)) == 3
    a = ok("uuid", {"version": 5, "name": "example.com", "namespace": "dns"})["uuids"]
    assert a == ["cfbff0d1-9375-5685-968c-48ce8b15ae17"]
    assert "needs 'name'" in fails("uuid", {"version": 5}, "bad_args")
    assert "namespace" in fails("uuid", {"version": 5, "name": "x", "namespace": "nope"}, "bad_args")


def test_url_parse_splits_joins_and_sets_query() -> None:
    """URLs split into parts, resolve against a base, and take new query parameters."""
    v = ok("url_parse", {"url": "https://u@a.example:8443/p/q?x=1&x=2&y=#frag"})
    assert (v["host"], v["port"], v["path"], v["username"]) == ("a.example", 8443, "/p/q", "u")
    assert v["query"] == {"x": ["1", "2"], "y": [""]} and v["fragment"] == "frag"
    assert ok("url_parse", {"url": "../z", "base": "https://a.example/p/q"})["url"] == "https://a.example/z"
    assert "page=2" in ok("url_parse", {"url": "https://a.example/?page=1", "set_query": {"page": 2}})["url"]
    assert "not a valid URL" in fails("url_parse", {"url": "http://a.example:99999/"}, "bad_args")


# ---- data -----------------------------------------------------------------------------------------------


def test_yaml_parse_is_safe_and_refuses_alias_bombs() -> None:
    """YAML parses to JSON values; python tags are refused; a billion-laughs alias tree is refused."""
    assert ok("yaml_parse", {"text": "a: 1\nb: [x, y]\nd: 2026-01-01"})["value"] == {
        "a": 1,
        "b": ["x", "y"],
        "d": "2026-01-01",
    }
    assert ok("yaml_parse", {"text": "a: 1\n---\nb: 2", "all_documents": True})["value"] == [
        {"a": 1},
        {"b": 2},
    ]
    assert "not valid YAML" in fails(
        "yaml_parse", {"text": "!!python/object/apply:os.system ['id']"}, "bad_args"
    )
    lol = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(12)
    )
    assert "aliases" in fails("yaml_parse", {"text": lol}, "bad_args")
    assert "not valid YAML" in fails("yaml_parse", {"text": "a: [1, 2"}, "bad_args")


def test_xml_query_finds_elements_and_refuses_entities() -> None:
    """ElementTree paths find elements; entity declarations (billion laughs, XXE) are denied."""
    xml = "<lib><book id='1'><t>A</t></book><book id='2'><t>B</t></book></lib>"
    v = ok("xml_query", {"text": xml, "path": ".//book[@id='2']/t"})
    assert v["matches"] == [{"tag": "t", "attrib": {}, "text": "B", "children": 0}] and v["count"] == 1
    xxe = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    assert "entities" in fails("xml_query", {"text": xxe, "path": "."}, "denied")
    assert "not valid XML" in fails("xml_query", {"text": "<a><b></a>", "path": "."}, "bad_args")
    assert "bad path" in fails("xml_query", {"text": xml, "path": ".//book[@"}, "bad_args")


def test_csv_query_filters_sorts_and_selects() -> None:
    """Rows are filtered by numeric or text conditions, sorted numerically, projected and limited."""
    text = "name,age,city\nann,31,Paris\nbob,9,Oslo\ncid,45,paris\ndee,27,Rome\n"
    v = ok(
        "csv_query",
        {
            "text": text,
            "where": [
                {"column": "age", "op": "gt", "value": 10},
                {"column": "city", "op": "contains", "value": "par"},
            ],
            "order_by": "age",
            "descending": True,
            "columns": ["name"],
        },
    )
    assert v == {"columns": ["name"], "rows": [{"name": "cid"}, {"name": "ann"}], "matched": 2}
    assert ok("csv_query", {"text": text, "order_by": "age", "limit": 1})["rows"][0]["name"] == "bob"
    assert "no column 'zip'" in fails("csv_query", {"text": text, "columns": ["zip"]}, "bad_args")


def test_json_schema_validate_lists_every_error_with_its_path() -> None:
    """A full JSON Schema validator: each error has a path; an invalid schema is itself an error."""
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["n"],
    }
    assert ok("json_schema_validate", {"instance": {"n": 1, "tags": ["a"]}, "schema": schema}) == {
        "valid": True,
        "errors": [],
    }
    v = ok("json_schema_validate", {"instance": {"n": -1, "tags": ["a", 2]}, "schema": schema})
    assert v["valid"] is False and {e["path"] for e in v["errors"]} == {"$['n']", "$['tags'][1]"}
    assert "schema itself" in fails(
        "json_schema_validate", {"instance": 1, "schema": {"type": 5}}, "bad_args"
    )


# ---- sql ------------------------------------------------------------------------------------------------


def test_sql_query_keeps_an_agent_scoped_database(tmp_path: Path) -> None:
    """Tables persist between calls in the agent's own file; parameters bind; rows are capped."""
    c = ctx("sql", fs_root=tmp_path / "agents" / "a1" / "files")
    ok("sql_query", {"sql": "CREATE TABLE t (k TEXT, v INTEGER)"}, c)
    for i in range(5):
        ok("sql_query", {"sql": "INSERT INTO t VALUES (?, ?)", "params": [f"k{i}", i]}, c)
    v = ok("sql_query", {"sql": "SELECT k, v FROM t WHERE v >= ? ORDER BY v", "params": [2], "limit": 2}, c)
    assert v["columns"] == ["k", "v"] and v["rows"] == [["k2", 2], ["k3", 3]] and v["truncated"] is True
    assert (tmp_path / "agents" / "a1" / "sql.sqlite").is_file()
    other = ctx("sql", fs_root=tmp_path / "agents" / "a2" / "files")
    assert "no such table" in fails("sql_query", {"sql": "SELECT * FROM t"}, "bad_args", other)


def test_sql_query_refuses_attach_extensions_pragmas_and_runaway_queries(tmp_path: Path) -> None:
    """ATTACH (reading another agent's file), load_extension and writing PRAGMAs are denied; a query that
    runs past its time limit is stopped."""
    c = ctx("sql", fs_root=tmp_path / "a" / "files")
    victim = tmp_path / "b" / "sql.sqlite"
    assert "not authorized" in fails("sql_query", {"sql": f"ATTACH DATABASE '{victim}' AS v"}, "denied", c)
    assert fails("sql_query", {"sql": "SELECT load_extension('x')"}, "denied", c)
    assert fails("sql_query", {"sql": "PRAGMA journal_mode = OFF"}, "denied", c)
    assert ok("sql_query", {"sql": "PRAGMA table_list"}, c)["columns"]
    forever = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
    assert "stopped after" in fails("sql_query", {"sql": forever}, "timeout", c)
    assert "SQL error" in fails("sql_query", {"sql": "SELEC 1"}, "bad_args", c)
    assert "not available" in fails("sql_query", {"sql": "SELECT 1"}, "unavailable", ctx("sql"))


# ---- kv ---------------------------------------------------------------------------------------------------


def test_kv_list_and_delete_stay_in_the_agents_namespace() -> None:
    """kv_list lists only this agent's keys (by prefix); kv_delete removes one and says if it existed."""
    store = KVStore()
    mine, theirs = ctx(kv=store.namespace("a1")), ctx(kv=store.namespace("a2"))
    for k in ("user:1", "user:2", "cfg"):
        ok("kv_set", {"key": k, "value": 1}, mine)
    ok("kv_set", {"key": "user:9", "value": 1}, theirs)
    assert ok("kv_list", {"prefix": "user:"}, mine) == {
        "keys": ["user:1", "user:2"],
        "count": 2,
        "truncated": False,
    }
    assert ok("kv_delete", {"key": "cfg"}, mine) == {"deleted": True}
    assert ok("kv_delete", {"key": "cfg"}, mine) == {"deleted": False}
    assert ok("kv_list", {}, theirs)["keys"] == ["user:9"]
