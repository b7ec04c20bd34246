"""``calc`` and ``datetime``: arithmetic without ``eval``, and dates across time zones.

``calc`` parses the expression with :mod:`ast` and walks only the node kinds it knows (numbers, the
arithmetic and comparison operators, ``and``/``or``/``not``, conditional expressions, and calls of a fixed
table of :mod:`math` functions). Anything else (names that are not constants, attributes, subscripts,
lambdas, comprehensions) is refused before anything runs. Powers and integer sizes are bounded, so
``9**9**9`` is an error rather than a worker stuck building a number with millions of digits.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import object_schema as _obj

MAX_EXPR = 2000
MAX_INT_BITS = 4096  # results and operands beyond this are refused (about 1,233 decimal digits)
MAX_DEPTH = 64

_BIN: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}
_CMP: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS: dict[str, Callable[..., Any]] = {
    **{
        name: getattr(math, name)
        for name in [
            "sqrt",
            "cbrt",
            "exp",
            "log",
            "log2",
            "log10",
            "sin",
            "cos",
            "tan",
            "asin",
            "acos",
            "atan",
            "atan2",
            "sinh",
            "cosh",
            "tanh",
            "degrees",
            "radians",
            "floor",
            "ceil",
            "trunc",
            "fabs",
            "factorial",
            "gcd",
            "lcm",
            "hypot",
            "isqrt",
            "comb",
            "perm",
        ]
    },
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}
_CONSTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result too large (more than {MAX_INT_BITS} bits)", code="bad_args")
    return value


def _pow(base: Any, exp: Any) -> Any:
    # Estimate the size before computing it: |base|**exp has about exp*log2|base| bits.
    big = isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1
    if big and exp * math.log2(abs(base)) > MAX_INT_BITS:
        raise ToolError(f"result too large (more than {MAX_INT_BITS} bits)", code="bad_args")
    return base**exp


class _Evaluator:
    def __init__(self) -> None:
        self.depth = 0

    def eval(self, node: ast.AST) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ToolError(f"expression nested deeper than {MAX_DEPTH}", code="bad_args")
        try:
            return _bounded(self._eval(node))
        finally:
            self.depth -= 1

    def _eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in _CONSTS:
                return _CONSTS[node.id]
            raise ToolError(f"unknown name {node.id!r}", code="bad_args")
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            left, right = self.eval(node.left), self.eval(node.right)
            if isinstance(node.op, ast.Pow):
                return _pow(left, right)
            ints = isinstance(left, int) and isinstance(right, int)
            if (
                isinstance(node.op, ast.Mult)
                and ints
                and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1
            ):
                raise ToolError(f"result too large (more than {MAX_INT_BITS} bits)", code="bad_args")
            return _BIN[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.eval(node.operand))
        if isinstance(node, ast.BoolOp):
            values = [self.eval(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare):
            left = self.eval(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                if type(op) not in _CMP:
                    raise ToolError(f"operator {type(op).__name__} is not allowed", code="bad_args")
                right = self.eval(comparator)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            fn = _FUNCS.get(node.func.id)
            if fn is None:
                raise ToolError(f"unknown function {node.func.id!r}", code="bad_args")
            args = [self.eval(a) for a in node.args]
            if node.func.id == "factorial" and args and isinstance(args[0], int) and args[0] > 500:
                raise ToolError("factorial argument above 500", code="bad_args")
            return fn(*args)
        raise ToolError(f"{type(node).__name__} is not allowed in an expression", code="bad_args")


def evaluate(expr: str) -> Any:
    """The value of an arithmetic expression (ToolError naming the problem otherwise)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an expression: {exc.msg} at column {exc.offset}", code="bad_args") from None
    try:
        return _Evaluator().eval(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero", code="bad_args") from None
    except (OverflowError, ValueError, TypeError) as exc:
        raise ToolError(f"cannot compute: {exc}", code="bad_args") from None


def calc(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    value = evaluate(args["expression"])
    if isinstance(value, float) and not math.isfinite(value):
        return {"value": str(value)}
    return {"value": value}


# ---- datetime -------------------------------------------------------------------------------------------

_UNITS = ("weeks", "days", "hours", "minutes", "seconds")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Paris)", code="bad_args"
        ) from None


def _parse(text: str, tz: ZoneInfo) -> datetime:
    raw = text.strip()
    if raw.lower() == "now":
        return datetime.now(UTC).astimezone(tz)
    try:
        if raw.lstrip("-").replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(raw), UTC).astimezone(tz)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except (ValueError, OverflowError, OSError):
        msg = f"cannot parse {text!r}: give ISO 8601 (2026-12-05T10:00:00+01:00), a unix time, or 'now'"
        raise ToolError(msg, code="bad_args") from None
    return parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed


def _describe(moment: datetime) -> dict[str, Any]:
    return {
        "iso": moment.isoformat(),
        "unix": moment.timestamp(),
        "tz": str(moment.tzinfo),
        "weekday": moment.strftime("%A"),
        "utc_offset_minutes": int((moment.utcoffset() or timedelta()).total_seconds() // 60),
    }


def datetime_tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    tz = _zone(args["tz"])
    moment = _parse(args["value"], tz)
    op = args["op"]
    try:
        if op == "shift":
            delta = timedelta(**{u: args["by"].get(u, 0) for u in _UNITS})
            moment = moment + delta
        elif op == "diff":
            if "other" not in args:
                raise ToolError("op 'diff' needs 'other' (the second date)", code="bad_args")
            seconds = (_parse(args["other"], tz) - moment).total_seconds()
            return {"seconds": seconds, "days": seconds / 86400}
        if "to_tz" in args:
            moment = moment.astimezone(_zone(args["to_tz"]))
        if "format" in args:
            return {**_describe(moment), "formatted": moment.strftime(args["format"])}
    except OverflowError:
        raise ToolError("date out of range", code="bad_args") from None
    return _describe(moment)


CALC_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="calc",
        description=(
            "Evaluate arithmetic safely: + - * / // % **, comparisons, and/or/not, x if c else y,"
            " math functions (sqrt, log, sin, floor, gcd, ...) and pi, e, tau."
        ),
        schema=_obj(
            {"expression": {"type": "string", "minLength": 1, "maxLength": MAX_EXPR}}, ["expression"]
        ),
        permission="math",
        call=calc,
        blocking=False,
    ),
    Tool(
        name="datetime",
        description=(
            "Dates: parse (ISO 8601, unix time or 'now'), shift by weeks/days/hours/minutes/seconds,"
            " convert between IANA time zones, format (strftime), or diff two dates."
        ),
        schema=_obj(
            {
                "value": {"type": "string", "minLength": 1, "maxLength": 100},
                "op": {"enum": ["parse", "shift", "diff"], "default": "parse"},
                "tz": {
                    "type": "string",
                    "default": "UTC",
                    "maxLength": 64,
                    "description": "zone of naive input",
                },
                "to_tz": {"type": "string", "maxLength": 64},
                "by": {
                    "type": "object",
                    "properties": {u: {"type": "number"} for u in _UNITS},
                    "additionalProperties": False,
                    "default": {},
                },
                "other": {"type": "string", "maxLength": 100},
                "format": {"type": "string", "maxLength": 200},
            },
            ["value"],
        ),
        permission="time",
        call=datetime_tool,
        blocking=False,
    ),
)
