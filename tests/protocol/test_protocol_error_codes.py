"""Every error code our code can put on the wire is declared in ``ERROR_CODES`` and documented in PROTOCOL.md.

The source is walked with :mod:`ast`, not grepped: a code reaches the wire as the ``code`` class attribute of
an :class:`~openfang.protocol.errors.OpenFangError` subclass, as ``code="x"`` given to such an error's
constructor, or as a ``{"code": "x", "message": ...}`` map literal (a reply built by hand). A code relayed
from a peer (``code=err.get("code")``) is not a literal and is the peer's to declare.

Tool errors are a separate vocabulary: :class:`~openfang.workers.tools.errors.ToolError` and everything raised
inside ``workers/tools/`` or ``security/fs_scope.py`` (only tools use it) becomes a tool result given to the
model (``workers/tools/core.py`` catches it), never an error reply. The CLI (``openfang/cli/``) is a client:
its own codes (``usage``, ``unreachable``) are shown to its user and never sent.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from openfang.protocol import _docgen, messages

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "supervisor", "control", "workers", "memory", "security", "openfang")
# Tool results and the CLI's own errors, not error replies (see the module docstring).
NOT_SENT = ("workers/tools/", "security/fs_scope.py", "openfang/cli/")
TOOL_ROOTS = frozenset({"ToolError"})


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _sources() -> dict[str, ast.Module]:
    trees: dict[str, ast.Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            trees[rel] = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    return trees


def _error_classes(trees: Iterable[ast.Module]) -> tuple[set[str], set[str]]:
    """Names of OpenFangError and its subclasses (by name, transitively), and of the tool-error family."""
    bases: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(n for b in node.bases if (n := _name(b)))

    def family(roots: set[str]) -> set[str]:
        found = set(roots)
        while True:
            more = {cls for cls, parents in bases.items() if parents & found} - found
            if not more:
                return found
            found |= more

    return family({"OpenFangError"}), family(set(TOOL_ROOTS))


def codes_sent(trees: dict[str, ast.Module]) -> dict[str, list[str]]:
    """``{code: [file:line, ...]}`` for every literal error code that can reach the wire."""
    errors, tool_errors = _error_classes(trees.values())
    wire_errors = errors - tool_errors
    found: dict[str, list[str]] = {}

    def add(code: ast.expr | None, where: str) -> None:
        if isinstance(code, ast.Constant) and isinstance(code.value, str):
            found.setdefault(code.value, []).append(where)

    for rel, tree in trees.items():
        if rel.startswith(NOT_SENT):
            continue
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ClassDef) and node.name in wire_errors:
                for stmt in node.body:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else []
                    if isinstance(stmt, ast.AnnAssign):
                        targets = [stmt.target]
                    if any(_name(t) == "code" for t in targets):
                        add(getattr(stmt, "value", None), f"{rel}:{stmt.lineno}")
            elif isinstance(node, ast.Call) and _name(node.func) in wire_errors:
                for kw in node.keywords:
                    if kw.arg == "code":
                        add(kw.value, where)
            elif isinstance(node, ast.Dict):
                keys = {
                    k.value: v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant)
                }
                if "code" in keys and "message" in keys:
                    add(keys["code"], where)
    return found


def test_codes_sent_finds_every_way_a_code_reaches_the_wire() -> None:
    """The walker sees a class code, a constructor's code=, a reply map literal, and skips tool errors."""
    snippet = ast.parse(
        "class OpenFangError(Exception):\n    code = 'internal'\n"
        "class Weird(OpenFangError):\n    code = 'weird_class'\n"
        "class ToolError(OpenFangError):\n    code = 'tool_only'\n"
        "def f(reply):\n"
        "    reply(False, {'code': 'weird_map', 'message': 'x'})\n"
        "    raise Weird('x', code='weird_kwarg')\n"
        "    raise ToolError('x', code='tool_kwarg')\n"
        "    raise Weird('x', code=relayed)\n"
    )
    assert set(codes_sent({"supervisor/x.py": snippet})) == {
        "internal",
        "weird_class",
        "weird_map",
        "weird_kwarg",
    }


def test_every_error_code_sent_is_declared_in_error_codes() -> None:
    """Each literal error code in the source is a key of messages.ERROR_CODES (and the walk finds some)."""
    sent = codes_sent(_sources())
    assert {"bad_request", "not_found", "restarting", "llm_error", "unknown_type"} <= set(
        sent
    )  # the walk works
    undeclared = {code: places for code, places in sent.items() if code not in messages.ERROR_CODES}
    assert not undeclared, f"error codes sent but not in protocol.messages.ERROR_CODES: {undeclared}"


def test_every_error_code_sent_is_documented_in_protocol_md() -> None:
    """Each literal error code in the source is listed under the error type of PROTOCOL.md."""
    text = _docgen.DOC.read_text(encoding="utf-8")
    missing = sorted(code for code in codes_sent(_sources()) if f"- `{code}`:" not in text)
    assert not missing, f"error codes sent but not documented in PROTOCOL.md: {missing}"
