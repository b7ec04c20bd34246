"""Structured-data tools: yaml_parse, xml_query, csv_query, json_schema_validate, sql_query.

Parsers are the safe variants: YAML through ``safe_load`` with a cap on aliases (a "billion laughs" of
nested aliases is refused before it is expanded), XML through ``defusedxml`` (no entity expansion, no
external entities or DTD fetches). ``sql_query`` runs on the agent's own SQLite database
(``<data_dir>/agents/<id>/sql.sqlite``, beside its scoped files) with an authorizer that refuses ATTACH,
extension loading and PRAGMAs that change the file, a progress handler that stops a query after
``SQL_TIMEOUT_S``, and a cap on the rows returned. Parsers beyond the standard library come with the
``tools`` extra; without it the tool answers ``unavailable`` naming what to install.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import object_schema as _obj

MAX_TEXT = 1_000_000
MAX_YAML_ALIASES = 100
MAX_ROWS = 10_000
SQL_TIMEOUT_S = 2.0
SQL_MAX_BYTES = 64 << 20


def _need(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ToolError(
            f"this tool needs {package}: pip install 'openfang[tools]'", code="unavailable"
        ) from None


_TEXT = {"type": "string", "maxLength": MAX_TEXT}


# ---- yaml ------------------------------------------------------------------------------------------------


def yaml_parse(ctx: ToolContext, args: dict[str, Any]) -> Any:
    yaml = _need("yaml", "PyYAML")
    try:
        aliases = sum(
            1 for ev in yaml.parse(args["text"], Loader=yaml.SafeLoader) if isinstance(ev, yaml.AliasEvent)
        )
        if aliases > MAX_YAML_ALIASES:
            raise ToolError(f"YAML uses {aliases} aliases (at most {MAX_YAML_ALIASES})", code="bad_args")
        docs = list(yaml.safe_load_all(args["text"]))
    except yaml.YAMLError as exc:
        raise ToolError(f"not valid YAML: {exc}", code="bad_args") from None
    value = docs if args["all_documents"] else (docs[0] if docs else None)
    return {"value": _jsonable(value)}


def _jsonable(value: Any) -> Any:
    """YAML has dates, sets and non-string keys; JSON (what the model sees) has not."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# ---- xml -------------------------------------------------------------------------------------------------


def _element(el: Any) -> dict[str, Any]:
    return {
        "tag": el.tag,
        "attrib": dict(el.attrib),
        "text": (el.text or "").strip(),
        "children": len(el),
    }


def xml_query(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    det = _need("defusedxml.ElementTree", "defusedxml")
    from defusedxml import DefusedXmlException

    try:
        root = det.fromstring(args["text"])
    except DefusedXmlException as exc:
        raise ToolError(
            f"XML refused: {type(exc).__name__} (entities and DTDs are not allowed)", code="denied"
        ) from None
    except det.ParseError as exc:
        raise ToolError(f"not valid XML: {exc}", code="bad_args") from None
    try:
        found = root.findall(args["path"], args["namespaces"])
    except (SyntaxError, KeyError, TypeError, ValueError) as exc:  # ElementPath fails in several ways
        raise ToolError(
            f"bad path {args['path']!r}: {exc} (ElementTree XPath subset)", code="bad_args"
        ) from None
    limit = args["max_results"]
    return {
        "matches": [_element(el) for el in found[:limit]],
        "count": len(found),
        "truncated": len(found) > limit,
    }


# ---- csv -------------------------------------------------------------------------------------------------

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "contains": lambda a, b: str(b).lower() in str(a).lower(),
}


def _num(v: str) -> float | str:
    try:
        return float(v)
    except ValueError:
        return v


def _matches(row: dict[str, str], cond: dict[str, Any]) -> bool:
    cell = row.get(cond["column"])
    if cell is None:
        return False
    left: Any = cell
    right: Any = cond["value"]
    if cond["op"] != "contains" and isinstance(right, int | float):
        left = _num(cell)
        if isinstance(left, str):
            return False
    return bool(_OPS[cond["op"]](left, right if not isinstance(right, str) else str(right)))


def csv_query(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        reader = csv.DictReader(io.StringIO(args["text"]), delimiter=args["delimiter"])
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as exc:
        raise ToolError(f"not valid CSV: {exc}", code="bad_args") from None
    wanted = [*(c["column"] for c in args["where"]), *args["columns"]]
    if "order_by" in args:
        wanted.append(args["order_by"])
    missing = sorted({c for c in wanted if c not in columns})
    if missing:
        raise ToolError(f"no column {', '.join(map(repr, missing))} (columns: {columns})", code="bad_args")
    rows = [r for r in rows if all(_matches(r, c) for c in args["where"])]
    if "order_by" in args:
        key = args["order_by"]
        numeric = all(not isinstance(_num(r[key] or ""), str) for r in rows)
        rows.sort(key=lambda r: _num(r[key] or "") if numeric else (r[key] or ""), reverse=args["descending"])
    matched = len(rows)
    rows = rows[: args["limit"]]
    if args["columns"]:
        rows = [{c: r.get(c) for c in args["columns"]} for r in rows]
    return {"columns": args["columns"] or columns, "rows": rows, "matched": matched}


# ---- json schema -----------------------------------------------------------------------------------------


def json_schema_validate(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    jsonschema = _need("jsonschema", "jsonschema")
    schema = args["schema"]
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ToolError(f"the schema itself is invalid: {exc.message}", code="bad_args") from None
    validator = cls(schema)
    errors = sorted(validator.iter_errors(args["instance"]), key=lambda e: list(e.absolute_path))
    return {
        "valid": not errors,
        "errors": [
            {"path": "$" + "".join(f"[{p!r}]" for p in e.absolute_path), "message": e.message}
            for e in errors[:50]
        ],
    }


# ---- sql -------------------------------------------------------------------------------------------------

_DENIED_ACTIONS = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}
_SAFE_PRAGMAS = {"table_info", "table_list", "index_list", "index_info", "foreign_key_list", "user_version"}


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in _DENIED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _SAFE_PRAGMAS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def sql_query(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.fs_root is None:
        raise ToolError(
            "sql_query is not available in this host (the agent has no data directory)", code="unavailable"
        )
    home = ctx.fs_root.parent
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / "sql.sqlite"
    deadline = time.monotonic() + SQL_TIMEOUT_S
    conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        conn.execute(f"PRAGMA max_page_count = {SQL_MAX_BYTES // 4096}")
        conn.set_authorizer(_authorizer)
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cur = conn.execute(args["sql"], args["params"])
            rows = cur.fetchmany(args["limit"] + 1)
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if text == "interrupted":
                raise ToolError(f"query stopped after {SQL_TIMEOUT_S:g}s", code="timeout") from None
            code = "denied" if "not authorized" in text else "bad_args"
            raise ToolError(f"SQL error: {text}", code=code) from None
        except sqlite3.ProgrammingError as exc:  # e.g. two statements, or a wrong number of parameters
            raise ToolError(f"SQL error: {exc}", code="bad_args") from None
        columns = [d[0] for d in cur.description or []]
        truncated = len(rows) > args["limit"]
        return {
            "columns": columns,
            "rows": [[_cell(v) for v in r] for r in rows[: args["limit"]]],
            "truncated": truncated,
            "changes": conn.total_changes,
        }
    finally:
        conn.close()


def _cell(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else v


DATA_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="yaml_parse",
        description="Parse YAML text (safe loader) into JSON; all_documents for multi-document streams.",
        schema=_obj({"text": _TEXT, "all_documents": {"type": "boolean", "default": False}}, ["text"]),
        permission="data",
        call=yaml_parse,
    ),
    Tool(
        name="xml_query",
        description="Find elements in XML with an ElementTree path (.//item, ./a/b[@id='x']); no DTDs.",
        schema=_obj(
            {
                "text": _TEXT,
                "path": {"type": "string", "minLength": 1, "maxLength": 1000},
                "namespaces": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            },
            ["text", "path"],
        ),
        permission="data",
        call=xml_query,
    ),
    Tool(
        name="csv_query",
        description="Filter, sort and select rows of CSV text (header row first): where column op value.",
        schema=_obj(
            {
                "text": _TEXT,
                "delimiter": {"type": "string", "minLength": 1, "maxLength": 1, "default": ","},
                "where": {
                    "type": "array",
                    "maxItems": 20,
                    "default": [],
                    "items": _obj(
                        {
                            "column": {"type": "string", "maxLength": 200},
                            "op": {"enum": sorted(_OPS), "default": "eq"},
                            "value": {"type": ["string", "number"]},
                        },
                        ["column", "value"],
                    ),
                },
                "columns": {"type": "array", "items": {"type": "string"}, "maxItems": 200, "default": []},
                "order_by": {"type": "string", "maxLength": 200},
                "descending": {"type": "boolean", "default": False},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": 100},
            },
            ["text"],
        ),
        permission="data",
        call=csv_query,
    ),
    Tool(
        name="json_schema_validate",
        description="Validate a JSON value against a JSON Schema (draft from $schema or 2020-12).",
        schema=_obj(
            {"instance": {"description": "the JSON value"}, "schema": {"type": ["object", "boolean"]}},
            ["instance", "schema"],
        ),
        permission="data",
        call=json_schema_validate,
    ),
    Tool(
        name="sql_query",
        description="Run one SQL statement on this agent's own SQLite database (create, insert, select).",
        schema=_obj(
            {
                "sql": {"type": "string", "minLength": 1, "maxLength": 100_000},
                "params": {
                    "type": "array",
                    "items": {"type": ["string", "number", "boolean", "null"]},
                    "default": [],
                },
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": 200},
            },
            ["sql"],
        ),
        permission="sql",
        call=sql_query,
    ),
)
