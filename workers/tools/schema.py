"""A small JSON-schema validator for tool arguments: the subset our tool schemas use, checked strictly.

Supported keywords: ``type`` (a name or a list of names: object, array, string, integer, number, boolean,
null), ``properties``, ``required``, ``additionalProperties`` (true/false or a schema), ``items``,
``enum``, ``const``, ``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``minItems``, ``maxItems``,
``pattern``, ``default`` (filled in for absent properties), and ``description``/``title`` (ignored).
A schema that uses anything else is rejected when the tool is registered (:func:`check_schema`), so a
schema can never silently mean less than it says. Validation reports every problem, each with its path
(``args.headers.accept: must be a string``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

KNOWN_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "default",
        "description",
        "title",
        "examples",
    }
)
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, Mapping)
    if name == "array":
        return isinstance(value, list | tuple)
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "boolean":
        return isinstance(value, bool)
    return value is None  # "null"


def check_schema(schema: Any, path: str = "schema") -> list[str]:
    """Problems with ``schema`` itself: unknown keywords, unknown types, malformed keyword values."""
    if not isinstance(schema, Mapping):
        return [f"{path}: must be an object, got {type(schema).__name__}"]
    problems = [f"{path}: unsupported keyword {k!r}" for k in schema if k not in KNOWN_KEYWORDS]
    types = schema.get("type")
    names = types if isinstance(types, list) else [types] if types is not None else []
    for name in names:
        if name not in TYPES:
            problems.append(f"{path}.type: unknown type {name!r}")
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        problems.append(f"{path}.properties: must be an object")
    else:
        for key, sub in props.items():
            problems.extend(check_schema(sub, f"{path}.properties.{key}"))
    req = schema.get("required", [])
    if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
        problems.append(f"{path}.required: must be a list of property names")
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        problems.extend(check_schema(extra, f"{path}.additionalProperties"))
    if "items" in schema:
        problems.extend(check_schema(schema["items"], f"{path}.items"))
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            problems.append(f"{path}.pattern: invalid regex: {exc}")
    if "enum" in schema and not isinstance(schema["enum"], list):
        problems.append(f"{path}.enum: must be a list")
    return problems


def validate(value: Any, schema: Mapping[str, Any], path: str = "args") -> tuple[Any, list[str]]:
    """``value`` with defaults filled in, and every problem found (empty when valid).

    The input is not mutated: objects and arrays the schema describes are rebuilt; values it does not
    describe (a property without a schema) are shared with the input, not copied.
    """
    problems: list[str] = []
    out = _validate(value, schema, path, problems)
    return out, problems


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validate(value: Any, schema: Mapping[str, Any], path: str, problems: list[str]) -> Any:
    types = schema.get("type")
    names = types if isinstance(types, list) else [types] if types is not None else []
    if names and not any(_is_type(value, n) for n in names):
        problems.append(
            f"{path}: must be {' or '.join(names)}, got {type(value).__name__} {_describe(value)}"
        )
        return value
    if "const" in schema and value != schema["const"]:
        problems.append(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(
            f"{path}: must be one of {', '.join(map(repr, schema['enum']))}, got {_describe(value)}"
        )
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{path}: must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path}: must be at most {schema['maxLength']} characters, got {len(value)}")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            problems.append(f"{path}: must match {schema['pattern']!r}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: must be >= {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: must be <= {schema['maximum']}, got {value}")
    if isinstance(value, list | tuple):
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(f"{path}: must have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{path}: must have at most {schema['maxItems']} items, got {len(value)}")
        if "items" in schema:
            value = [_validate(v, schema["items"], f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        value = dict(value)
        props: Mapping[str, Any] = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}.{key}: required")
        extra = schema.get("additionalProperties", True)
        for key in list(value):
            if key in props:
                value[key] = _validate(value[key], props[key], f"{path}.{key}", problems)
            elif extra is False:
                problems.append(f"{path}.{key}: unknown property (known: {', '.join(props) or 'none'})")
            elif isinstance(extra, Mapping):
                value[key] = _validate(value[key], extra, f"{path}.{key}", problems)
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
    return value


def object_schema(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A closed object schema (no properties beyond ``props``), as every built-in tool's arguments are."""
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


Check = Callable[[Any, str, list[str]], Any]


def _type_test(name: Any) -> Callable[[Any], bool]:
    """``_is_type(value, name)`` as a one-argument test (str and object spelled out: the usual ones)."""
    if name == "string":
        return lambda v: isinstance(v, str)
    if name == "object":
        return lambda v: isinstance(v, Mapping)
    return lambda v: _is_type(v, name)


def compile_validator(schema: Mapping[str, Any]) -> Callable[..., tuple[Any, list[str]]]:
    """:func:`validate` for one schema, with the schema's keywords read once: the same value and the same
    problems, in the same order (``tests/workers/test_tools_schema_compiled.py``). The schema is read now:
    a schema changed afterwards needs a new validator (tool schemas are fixed once registered)."""
    check = _compile(schema)
    flat = _flat_valid(schema)

    def run(value: Any, path: str = "args") -> tuple[Any, list[str]]:
        if flat is not None and flat(value):
            return dict(value), []  # what check gives a valid flat object: a copy, every value as it was
        problems: list[str] = []
        out = check(value, path, problems)
        return out, problems

    return run


_FLAT_TOP = frozenset({"type", "properties", "required", "additionalProperties", "description", "title"})
_FLAT_PROP = frozenset({"type", "description", "title", "minLength", "maxLength", "pattern", "enum"})
_FLAT_NUMBER = frozenset({"type", "description", "title", "minimum", "maximum", "enum"})


def _flat_valid(schema: Mapping[str, Any]) -> Callable[[Any], bool] | None:
    """For a flat object schema (``type = "object"``, scalar properties with simple bounds, no defaults,
    ``additionalProperties`` a bool: most tools' arguments), a test that is true only for a plain dict that
    the compiled check passes without a problem and returns as a copy with every value as it was; None for
    any other schema. False means "not decided here": the full check runs."""
    if schema.get("type") != "object" or not set(schema) <= _FLAT_TOP:
        return None
    extra = schema.get("additionalProperties", True)
    props = schema.get("properties", {})
    if type(extra) is not bool or not isinstance(props, Mapping):
        return None
    tests: dict[str, Callable[[Any], bool]] = {}
    for key, sub in props.items():
        test = _scalar_test(sub)
        if test is None:
            return None
        tests[key] = test
    required = tuple(schema.get("required", ()))
    closed = extra is False

    def valid(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for key in required:
            if key not in value:
                return False
        for key, v in value.items():
            test = tests.get(key)
            if test is None:
                if closed:
                    return False
            elif not test(v):
                return False
        return True

    return valid


def _scalar_test(sub: Any) -> Callable[[Any], bool] | None:
    """A property schema's test for :func:`_flat_valid` (exact str, int or float values, the bounds read as
    the compiled check reads them), or None when the property is not that simple."""
    if not isinstance(sub, Mapping):
        return None
    get: Callable[[str], Any] = sub.get  # keyword values are whatever the (checked) schema holds
    name = get("type")
    has_enum, enum = "enum" in sub, get("enum")
    if name == "string" and set(sub) <= _FLAT_PROP:
        has_lo, lo = "minLength" in sub, get("minLength")
        has_hi, hi = "maxLength" in sub, get("maxLength")
        has_pattern, pattern = "pattern" in sub, get("pattern")

        def text(v: Any) -> bool:
            return (
                type(v) is str
                and not (has_enum and v not in enum)
                and not (has_lo and len(v) < lo)
                and not (has_hi and len(v) > hi)
                and not (has_pattern and re.search(pattern, v) is None)
            )

        return text
    if name in ("integer", "number") and set(sub) <= _FLAT_NUMBER:
        kinds = (int,) if name == "integer" else (int, float)
        has_min, minimum = "minimum" in sub, get("minimum")
        has_max, maximum = "maximum" in sub, get("maximum")

        def number(v: Any) -> bool:
            return (
                type(v) in kinds
                and not (has_enum and v not in enum)
                and not (has_min and v < minimum)
                and not (has_max and v > maximum)
            )

        return number
    return None


def _compile(schema: Mapping[str, Any]) -> Check:
    """The checks of :func:`_validate` for ``schema``, in its order, each only when its keyword is there."""
    get: Callable[[str], Any] = schema.get  # keyword values are whatever the (checked) schema holds
    types = schema.get("type")
    names = types if isinstance(types, list) else [types] if types is not None else []
    tests = [_type_test(n) for n in names]
    one_test = tests[0] if len(tests) == 1 else None
    has_const, const = "const" in schema, get("const")
    has_enum, enum = "enum" in schema, get("enum")
    min_len, max_len = get("minLength"), get("maxLength")
    has_min_len, has_max_len = "minLength" in schema, "maxLength" in schema
    has_pattern, pattern = "pattern" in schema, get("pattern")
    string_checks = has_min_len or has_max_len or has_pattern
    has_minimum, minimum = "minimum" in schema, get("minimum")
    has_maximum, maximum = "maximum" in schema, get("maximum")
    number_checks = has_minimum or has_maximum
    has_min_items, min_items = "minItems" in schema, get("minItems")
    has_max_items, max_items = "maxItems" in schema, get("maxItems")
    items = _compile(schema["items"]) if "items" in schema else None
    array_checks = has_min_items or has_max_items or items is not None
    props: Mapping[str, Any] = schema.get("properties", {})
    prop_checks = {key: _compile(sub) for key, sub in props.items()}
    required = list(schema.get("required", []))
    extra = schema.get("additionalProperties", True)
    extra_check = _compile(extra) if isinstance(extra, Mapping) else None
    closed = extra is False
    known = ", ".join(props) or "none"
    defaults = [(key, sub["default"]) for key, sub in props.items() if "default" in sub]

    def check(value: Any, path: str, problems: list[str]) -> Any:
        if tests and not (one_test(value) if one_test is not None else any(t(value) for t in tests)):
            problems.append(
                f"{path}: must be {' or '.join(names)}, got {type(value).__name__} {_describe(value)}"
            )
            return value
        if has_const and value != const:
            problems.append(f"{path}: must be {const!r}")
        if has_enum and value not in enum:
            problems.append(f"{path}: must be one of {', '.join(map(repr, enum))}, got {_describe(value)}")
        if string_checks and isinstance(value, str):
            if has_min_len and len(value) < min_len:
                problems.append(f"{path}: must be at least {min_len} characters")
            if has_max_len and len(value) > max_len:
                problems.append(f"{path}: must be at most {max_len} characters, got {len(value)}")
            if has_pattern and re.search(pattern, value) is None:
                problems.append(f"{path}: must match {pattern!r}")
        if number_checks and _is_type(value, "number"):
            if has_minimum and value < minimum:
                problems.append(f"{path}: must be >= {minimum}, got {value}")
            if has_maximum and value > maximum:
                problems.append(f"{path}: must be <= {maximum}, got {value}")
        if array_checks and isinstance(value, list | tuple):
            if has_min_items and len(value) < min_items:
                problems.append(f"{path}: must have at least {min_items} items")
            if has_max_items and len(value) > max_items:
                problems.append(f"{path}: must have at most {max_items} items, got {len(value)}")
            if items is not None:
                value = [items(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            value = dict(value)
            for key in required:
                if key not in value:
                    problems.append(f"{path}.{key}: required")
            for key in list(value):
                sub = prop_checks.get(key)
                if sub is not None:
                    value[key] = sub(value[key], f"{path}.{key}", problems)
                elif closed:
                    problems.append(f"{path}.{key}: unknown property (known: {known})")
                elif extra_check is not None:
                    value[key] = extra_check(value[key], f"{path}.{key}", problems)
            for key, default in defaults:
                if key not in value:
                    value[key] = copy.deepcopy(default)
        return value

    return check
