"""Built-in tools that need nothing from the host: time, JSON, text, and the per-agent key-value store.

Each tool is a plain function ``(ctx, args) -> JSON value`` plus its schema; the registry has already
checked the allow list and validated (and defaulted) ``args`` before the function runs.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import regex

from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import object_schema as _obj

MAX_TEXT = 1_000_000
MAX_PATTERN = 1000
REGEX_TIMEOUT_S = 1.0


# ---- time ----------------------------------------------------------------------------------------------


def time_now(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        tz = ZoneInfo(args["tz"])
    except (ZoneInfoNotFoundError, ValueError):
        msg = f"unknown time zone {args['tz']!r} (use an IANA name like Europe/Paris)"
        raise ToolError(msg, code="bad_args") from None
    now = datetime.now(UTC).astimezone(tz)
    return {
        "iso": now.isoformat(),
        "unix": round(time.time(), 3),
        "tz": args["tz"],
        "weekday": now.strftime("%A"),
    }


# ---- JSON ----------------------------------------------------------------------------------------------


def json_parse(ctx: ToolContext, args: dict[str, Any]) -> Any:
    try:
        return json.loads(args["text"])
    except ValueError as exc:
        raise ToolError(f"not valid JSON: {exc}", code="bad_args") from None


_STEP = re.compile(r"""\.?([A-Za-z_$][\w$-]*|\*)|\[(-?\d+|\*)\]|\[(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\]""")


def parse_path(path: str) -> list[str | int]:
    """``a.b[0]["c d"].*`` -> ``["a", "b", 0, "c d", "*"]`` (ToolError naming the position when invalid)."""
    steps: list[str | int] = []
    pos = 0
    path = path.strip()
    if path.startswith("$"):
        pos = 1
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None or m.end() == pos:
            raise ToolError(f"bad path {path!r} at position {pos}", code="bad_args")
        name, index, dq, sq = m.groups()
        if name is not None:
            steps.append(name)
        elif index is not None:
            steps.append("*" if index == "*" else int(index))
        else:
            steps.append(json.loads(f'"{dq}"') if dq is not None else sq)
        pos = m.end()
    return steps


def _step(cur: Any, step: str | int) -> tuple[bool, Any]:
    """(found, value) of one non-wildcard step."""
    if isinstance(step, int) and isinstance(cur, list) and -len(cur) <= step < len(cur):
        return True, cur[step]
    if isinstance(step, str) and isinstance(cur, dict) and step in cur:
        return True, cur[step]
    return False, None


def query(data: Any, steps: list[str | int]) -> Any:
    """Follow ``steps`` into ``data``; with a ``*`` step the result is the list of every match."""
    if "*" not in steps:
        cur = data
        for i, step in enumerate(steps):
            found, cur = _step(cur, step)
            if not found:
                raise ToolError(f"path step {i} ({step!r}) not found", code="not_found")
        return cur
    matches = [data]
    for step in steps:
        nxt: list[Any] = []
        for cur in matches:
            if step == "*":
                nxt.extend(cur.values() if isinstance(cur, dict) else cur if isinstance(cur, list) else [])
            else:
                found, value = _step(cur, step)
                if found:
                    nxt.append(value)
        matches = nxt
    return matches


def json_query(ctx: ToolContext, args: dict[str, Any]) -> Any:
    if ("data" in args) == ("text" in args):
        raise ToolError("give exactly one of data (a JSON value) or text (JSON text)", code="bad_args")
    data = args["data"] if "data" in args else json_parse(ctx, {"text": args["text"]})
    return query(data, parse_path(args["path"]))


# ---- text ----------------------------------------------------------------------------------------------


def text_count(ctx: ToolContext, args: dict[str, Any]) -> dict[str, int]:
    text: str = args["text"]
    return {
        "chars": len(text),
        "bytes": len(text.encode()),
        "words": len(text.split()),
        "lines": len(text.splitlines()),
    }


def text_regex(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    # The `regex` module, not `re`: a pattern with catastrophic backtracking ((a|aa)+$ on a long text)
    # must end with an error after REGEX_TIMEOUT_S instead of holding a worker thread (and the GIL)
    # forever; concurrent=True lets other threads run while it matches.
    flags = (regex.IGNORECASE if args["ignore_case"] else 0) | (regex.MULTILINE if args["multiline"] else 0)
    try:
        rx = regex.compile(args["pattern"], flags)
    except (regex.error, ValueError) as exc:
        raise ToolError(f"invalid regex {args['pattern']!r}: {exc}", code="bad_args") from None
    try:
        return _run_regex(rx, args)
    except TimeoutError:
        msg = f"regex gave up after {REGEX_TIMEOUT_S:g}s (catastrophic backtracking?): {args['pattern']!r}"
        raise ToolError(msg, code="timeout") from None


def _run_regex(rx: Any, args: dict[str, Any]) -> dict[str, Any]:
    text, mode, limit = args["text"], args["mode"], args["max_matches"]
    opts = {"timeout": REGEX_TIMEOUT_S, "concurrent": True}
    if mode == "search":
        m = rx.search(text, **opts)
        if m is None:
            return {"matched": False}
        return {
            "matched": True,
            "match": m.group(0),
            "groups": list(m.groups()),
            "named": m.groupdict(),
            "span": list(m.span()),
        }
    if mode == "findall":
        out: list[dict[str, Any]] = []
        for m in rx.finditer(text, **opts):
            if len(out) >= limit:
                return {"matches": out, "count": len(out), "truncated": True}
            out.append({"match": m.group(0), "groups": list(m.groups()), "span": list(m.span())})
        return {"matches": out, "count": len(out), "truncated": False}
    if mode == "sub":
        try:
            new, n = rx.subn(args["replacement"], text, count=limit, **opts)
        except (regex.error, IndexError) as exc:
            raise ToolError(f"bad replacement {args['replacement']!r}: {exc}", code="bad_args") from None
        return {"text": new, "count": n}
    return {"parts": rx.split(text, maxsplit=limit, **opts)}


# ---- key-value -----------------------------------------------------------------------------------------


def _kv(ctx: ToolContext) -> Any:
    if ctx.kv is None:
        raise ToolError("the key-value store is not available in this host", code="unavailable")
    return ctx.kv


def kv_get(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    found, value = _kv(ctx).get(args["key"])
    return {"found": found, "value": value}


def kv_set(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    kv = _kv(ctx)
    if args["value"] is None:  # null deletes: "forget this"
        return {"deleted": kv.delete(args["key"])}
    kv.set(args["key"], args["value"])
    return {"stored": True}


def kv_list(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    keys = sorted(_kv(ctx).keys(args["prefix"]))
    limit = args["limit"]
    return {"keys": keys[:limit], "count": len(keys), "truncated": len(keys) > limit}


def kv_delete(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"deleted": _kv(ctx).delete(args["key"])}


_KEY = {"type": "string", "minLength": 1, "maxLength": 256, "description": "key in this agent's namespace"}

BUILTIN_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="time_now",
        description="Current date and time in a time zone (IANA name, default UTC).",
        schema=_obj({"tz": {"type": "string", "default": "UTC", "maxLength": 64}}),
        permission="time",
        call=time_now,
        blocking=False,
    ),
    Tool(
        name="json_parse",
        description="Parse JSON text into a value.",
        schema=_obj({"text": {"type": "string", "maxLength": MAX_TEXT}}, ["text"]),
        permission="json",
        call=json_parse,
        blocking=False,
    ),
    Tool(
        name="json_query",
        description='Extract from JSON with a path like a.b[0]["c d"] or items[*].name (* = every item).',
        schema=_obj(
            {
                "data": {"description": "a JSON value to query"},
                "text": {"type": "string", "maxLength": MAX_TEXT, "description": "JSON text to query"},
                "path": {"type": "string", "maxLength": 1000},
            },
            ["path"],
        ),
        permission="json",
        call=json_query,
        blocking=False,
    ),
    Tool(
        name="text_count",
        description="Count characters, UTF-8 bytes, words and lines of a text.",
        schema=_obj({"text": {"type": "string", "maxLength": MAX_TEXT}}, ["text"]),
        permission="text",
        call=text_count,
        blocking=False,
    ),
    Tool(
        name="text_regex",
        description="Regular expressions (Python syntax) on a text: search, findall, sub or split (1 s cap).",
        schema=_obj(
            {
                "text": {"type": "string", "maxLength": MAX_TEXT},
                "pattern": {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN},
                "mode": {"enum": ["search", "findall", "sub", "split"], "default": "search"},
                "replacement": {"type": "string", "default": "", "maxLength": 10_000},
                "ignore_case": {"type": "boolean", "default": False},
                "multiline": {"type": "boolean", "default": False},
                "max_matches": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100},
            },
            ["text", "pattern"],
        ),
        permission="text",
        call=text_regex,
        blocking=True,  # a bad pattern may run up to REGEX_TIMEOUT_S: keep it off the loop
    ),
    Tool(
        name="kv_get",
        description="Read a value this agent stored with kv_set.",
        schema=_obj({"key": _KEY}, ["key"]),
        permission="kv",
        call=kv_get,
        blocking=False,
    ),
    Tool(
        name="kv_set",
        description="Store a JSON value under a key for this agent (null deletes); kept in worker memory.",
        schema=_obj(
            {"key": _KEY, "value": {"description": "any JSON value; null deletes the key"}}, ["key", "value"]
        ),
        permission="kv",
        call=kv_set,
        blocking=False,
    ),
    Tool(
        name="kv_list",
        description="List the keys this agent stored with kv_set (optionally those starting with a prefix).",
        schema=_obj(
            {
                "prefix": {"type": "string", "default": "", "maxLength": 256},
                "limit": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1000},
            }
        ),
        permission="kv",
        call=kv_list,
        blocking=False,
    ),
    Tool(
        name="kv_delete",
        description="Delete a key this agent stored with kv_set; says whether it existed.",
        schema=_obj({"key": _KEY}, ["key"]),
        permission="kv",
        call=kv_delete,
        blocking=False,
    ),
)
