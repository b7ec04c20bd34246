"""Packages only import what docs/architecture.md allows them to."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "protocol": "openfang.protocol",
    "supervisor": "openfang.supervisor",
    "control": "openfang.control",
    "workers": "openfang.workers",
    "memory": "openfang.memory",
    "security": "openfang.security",
}
# Which of our packages each package may import (besides itself and the root package's plain modules).
ALLOWED = {
    "openfang.protocol": set(),
    "openfang.security": {"openfang.protocol"},
    "openfang.memory": {"openfang.protocol", "openfang.supervisor.child"},
    "openfang.supervisor": {"openfang.protocol"},
    "openfang.control": {"openfang.protocol", "openfang.security", "openfang.memory", "openfang.supervisor"},
    "openfang.workers": {
        "openfang.protocol",
        "openfang.security",
        "openfang.memory",
        "openfang.supervisor.child",
        "openfang.supervisor.restart",
        "openfang.supervisor.spec",  # the Restart policy the restart rules take (pure data)
    },
}
ROOT_MODULES = {"openfang", "openfang.logs"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "openfang" or n.startswith("openfang.")}


def test_packages_import_only_allowed_packages() -> None:
    """No package reaches into one it must not depend on (protocol depends on nothing of ours)."""
    bad = []
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                if name.startswith(package) or name in ROOT_MODULES:
                    continue
                if any(name == a or name.startswith(a + ".") for a in ALLOWED[package]):
                    continue
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_only_one_module_imports_wasmtime() -> None:
    """wasmtime is touched by workers/sandbox/_wasmtime.py alone (its private async API is pinned there)."""
    users = []
    for folder in [*FOLDERS, "openfang"]:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                mods = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                )
                if any(m == "wasmtime" or m.startswith("wasmtime.") for m in mods):
                    users.append(str(path.relative_to(ROOT)))
    assert set(users) <= {"workers/sandbox/_wasmtime.py"}, users
