"""Writes ``_precompiled_data.py``: every dataclass of this package as :mod:`._precompiled` replays it (and
``_precompiled_extra.py``: the same for the libraries in :data:`THIRD_PARTY`, structlog).

python -m openfang._precompiled_gen --write     # after adding or changing a dataclass
python -m openfang._precompiled_gen --check     # exit 1 when _precompiled_data.py is stale

A fresh interpreter imports every module of the package with :mod:`dataclasses`' own ``_process_class``,
wrapped to note each class's key (:func:`._precompiled.key_of`) and the method texts it compiles (the
recorder is in place before ``openfang`` would install its replay, which it then leaves out). A class's
texts become the inner ``def``\\ s of one ``__create_fn__`` of the data module (their code checked here to
be what the stdlib compiles, but for file and lines), so Python byte-compiles them with the module and the
daemon never writes nor compiles them at start. Two classes with one key must get the same texts (the key is
all the texts depend on): the generator fails otherwise. A stale table is only slower, never wrong: a
changed class has a new key, which does not match, and the stdlib builds it as before.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

from openfang import _precompiled
from openfang.protocol._generated import generator_main

DATA = Path(__file__).with_name("_precompiled_data.py")
# Libraries whose dataclasses the daemon's start builds (structlog's console renderer and tracebacks, at its
# import): they go to _precompiled_extra.py, which no test checks (the libraries' versions are not pinned: a
# class changed by an upgrade only has a new key, which does not match, and is built as before).
EXTRA = Path(__file__).with_name("_precompiled_extra.py")
THIRD_PARTY = ("structlog",)
SUBPACKAGES = ("protocol", "supervisor", "control", "workers", "memory", "security")

# Run in a fresh interpreter: prints [[group, module, qualname, key, [text, ...], [init free name, ...]], ...]
# for every dataclass of the package (group "openfang") and THIRD_PARTY's (group "extra"); key: repr of the
# _precompiled key; texts: what its _process_class compiled, in order; a class made twice differently: null.
_RECORD = """
import builtins, dataclasses, importlib, importlib.util, json, pkgutil, sys
THIRD_PARTY = tuple(sys.argv[1:])
spec = importlib.util.spec_from_file_location("_precompiled_keys", "_precompiled.py")
keys = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keys)  # its key functions, without importing openfang (which would make classes)
seen = {}  # (group, module, qualname) -> [key, texts, free] or None
current = []  # the texts of the _process_class call running
def record(source, globals=None, locals=None, /):
    if current and isinstance(source, str):
        current[-1].append(source)
    builtins.exec(source, globals, locals)
process = dataclasses._process_class
def recording(cls, init, repr, eq, order, unsafe_hash, frozen, match_args, kw_only, slots, weakref_slot):
    args = (cls, init, repr, eq, order, unsafe_hash, frozen, match_args, kw_only, slots, weakref_slot)
    top = cls.__module__.partition(".")[0]
    if (top != "openfang" and top not in THIRD_PARTY) or weakref_slot or not cls.__doc__:
        return process(*args)  # not ours, or not replayed (weakref_slot; the doc written by inspect)
    d = cls.__dict__
    class_hash = d.get("__hash__", dataclasses.MISSING)
    explicit = not (class_hash is dataclasses.MISSING or (class_hash is None and "__eq__" in d))
    action = dataclasses._hash_action[bool(unsafe_hash), bool(eq), bool(frozen), explicit]
    post_init = bool(init) and hasattr(cls, "__post_init__")
    where = ("openfang" if top == "openfang" else "extra", cls.__module__, cls.__qualname__)
    current.append([])
    try:
        made = process(*args)
    finally:
        texts = current.pop()
    hash_add = action is dataclasses._hash_add
    key = keys.key_of(made, (init, repr, eq, order, frozen, slots, post_init, hash_add))
    fields = made.__dataclass_fields__.values()
    fields = [f for f in fields if f._field_type is not dataclasses._FIELD_CLASSVAR]
    free = [name for name, _ in keys.init_free(fields, slots)] if init else []
    entry = [builtins.repr(key), texts, free]
    if seen.setdefault(where, entry) != entry:
        seen[where] = None
    return made
dataclasses._process_class = recording
dataclasses.exec = record  # before "import openfang": its install() leaves dataclasses alone then
import openfang
names = [m.name for m in pkgutil.iter_modules(openfang.__path__, "openfang.")]
for name in names:
    module = importlib.import_module(name)
    if hasattr(module, "__path__"):
        names += [m.name for m in pkgutil.walk_packages(module.__path__, name + ".")]
for name in names:
    importlib.import_module(name)
json.dump(sorted([*where, *entry] for where, entry in seen.items() if entry is not None), sys.stdout)
"""

_HEADER = '''\
# mypy: ignore-errors
# ruff: noqa
# fmt: off
"""Generated by `python -m openfang._precompiled_gen --write`: do not edit.

Every dataclass of {what}, as :mod:`openfang._precompiled` replays it: ``CLASSES[module, qualname]`` is the
class's key and the code of a ``__create_fn__`` whose inner ``def``\\\\ s are the method texts
:mod:`dataclasses` writes for it, byte-compiled with this module. Read by :mod:`openfang._precompiled`,
under this Python only. No ``__future__`` import here: the texts must compile exactly as ``exec`` in
:mod:`dataclasses` compiles them.
"""

import types

PYTHON = {python}
CLASSES: dict[tuple[str, str], tuple[tuple, types.CodeType]] = {{}}
'''

Entry = tuple[str, str, str, list[str], list[str]]  # module, qualname, key, texts, init's free names


@functools.cache
def record() -> dict[str, list[Entry]]:
    """Group ("openfang", "extra") -> (module, qualname, key, texts, free) for every dataclass of the package
    and of THIRD_PARTY, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _RECORD, *THIRD_PARTY],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout
    groups: dict[str, list[Entry]] = {"openfang": [], "extra": []}
    for group, module, qualname, key, texts, free in json.loads(out):
        groups[group].append((module, qualname, key, texts, free))
    return groups


def render() -> str:
    """The text of ``_precompiled_data.py`` for the package as it is now."""
    return _render(record()["openfang"], "this package")


def render_extra() -> str:
    """The text of ``_precompiled_extra.py``: THIRD_PARTY's dataclasses."""
    libraries = ", ".join(THIRD_PARTY)
    return _render(record()["extra"], f"the libraries the daemon's start imports ({libraries})")


def _params(header: str, where: str) -> list[str]:
    if not (header.startswith("def __create_fn__(") and header.endswith("):")):
        raise ValueError(f"{where}: dataclasses compiled {header[:40]!r}, not a __create_fn__ text")
    inside = header[len("def __create_fn__(") : -2]
    return inside.split(", ") if inside else []


def shape(code: types.CodeType) -> tuple[Any, ...]:
    """Everything of a method's code but where its text was (file, lines)."""
    consts = tuple(shape(c) if isinstance(c, types.CodeType) else (type(c), c) for c in code.co_consts)
    return (
        *(code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars),
        *(code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals),
        *(code.co_stacksize, code.co_flags, code.co_name, code.co_qualname, code.co_exceptiontable),
    )


def _inner(text: str) -> list[types.CodeType]:
    outer = compile(text, "<string>", "exec").co_consts[0]
    return [c for c in outer.co_consts if isinstance(c, types.CodeType)]


def merge(where: str, key: str, texts: list[str], free: list[str]) -> str:
    """One ``__create_fn__`` text for a class: :data:`._precompiled.FREE` and ``free`` as parameters, the
    inner ``def``\\ s of ``texts``, returning them; checked to compile to the stdlib's methods."""
    names = _precompiled.method_names(ast.literal_eval(key))
    allowed = set(_precompiled.FREE) | set(free)
    lines = [f"def __create_fn__({', '.join([*_precompiled.FREE, *free])}):"]
    made = []
    for text in texts:
        header, *body, last = text.split("\n")
        params = _params(header, where)
        if not set(params) <= allowed:
            raise ValueError(f"{where}: {header}: replay does not pass {set(params) - allowed}")
        if last == " return __init__" and [p for p in params if p.startswith(("_type_", "_dflt_"))] != free:
            raise ValueError(f"{where}: __init__'s free names {params} are not {free}")
        made.append(last.removeprefix(" return "))
        lines += body
    if made != list(names):
        raise ValueError(f"{where}: dataclasses wrote {made}, replay expects {names}")
    lines.append(f" return ({', '.join(made)},)" if made else " return ()")
    merged = "\n".join(lines)
    want = [shape(code) for text in texts for code in _inner(text)]
    if [shape(code) for code in _inner(merged)] != want:
        raise ValueError(f"{where}: the merged methods do not compile to what dataclasses compiles")
    return merged


def _render(entries: list[Entry], what: str) -> str:
    lines = [_HEADER.format(python=tuple(sys.version_info[:3]), what=what)]
    by_key: dict[str, tuple[str, str]] = {}
    for module, qualname, key, texts, free in entries:
        where = f"{module}.{qualname}"
        merged = merge(where, key, texts, free)
        if by_key.setdefault(key, (merged, where))[0] != merged:
            raise ValueError(f"{where} and {by_key[key][1]}: one key {key} for different texts")
        lines.append(f"# {where}")
        lines.append(merged)
        lines.append(f"CLASSES[{(module, qualname)!r}] = ({key}, __create_fn__.__code__)")
    lines.append("del __create_fn__")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    code = generator_main(__doc__, DATA, render, "python -m openfang._precompiled_gen", argv)
    if code == 0 and "--write" in (sys.argv[1:] if argv is None else argv):
        EXTRA.write_text(render_extra())  # --check leaves it alone: see EXTRA
    return code


if __name__ == "__main__":
    sys.exit(main())
