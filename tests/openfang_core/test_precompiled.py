"""Dataclass methods come from precompiled code identical to what dataclasses compiles, and only then."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import types
from typing import Any

import pytest

from openfang import _precompiled, _precompiled_data, _precompiled_gen

_SAME_PYTHON = sys.version_info[:2] == _precompiled_data.PYTHON


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _shape(code: types.CodeType) -> tuple[Any, ...]:
    """Everything about a code object that decides what it does (not where its text was: file, lines)."""
    consts = tuple(_shape(c) if isinstance(c, types.CodeType) else (type(c), c) for c in code.co_consts)
    return (
        code.co_code,
        consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_nlocals,
        code.co_stacksize,
        code.co_flags,
        code.co_name,
        code.co_qualname,
        code.co_exceptiontable,
    )


def _compiled(text: str) -> types.CodeType:
    """The ``__create_fn__`` code that ``exec(text)`` in dataclasses would make."""
    module = compile(text, "<string>", "exec", dont_inherit=True)  # dataclasses has no __future__ import
    (code,) = (c for c in module.co_consts if isinstance(c, types.CodeType))
    return code


@pytest.mark.skipif(not _SAME_PYTHON, reason="the data was generated with another Python")
def test_precompiled_data_is_what_the_generator_makes_now() -> None:
    """_precompiled_data.py holds the dataclass texts as now (python -m openfang._precompiled_gen --write)."""
    # Compared outside the assert: pytest would diff the two 1 MB texts.
    fresh = _precompiled_gen.DATA.read_text() == _precompiled_gen.render()
    assert fresh, "openfang/_precompiled_data.py is stale: run `make generate` (or _precompiled_gen --write)"


def test_precompiled_code_is_what_compiling_its_text_makes() -> None:
    """Every precompiled code object equals the one compiled from its key text, nested functions included."""
    # A fresh copy of the module (from its .pyc, as every process loads it): this process popped entries.
    spec = importlib.util.spec_from_file_location("precompiled_copy", _precompiled_gen.DATA)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    texts: dict[str, types.CodeType] = copy.CODE
    assert len(texts) > 500
    for text, code in texts.items():
        assert _shape(code) == _shape(_compiled(text)), text


def test_precompiled_changed_class_is_compiled_as_before() -> None:
    """A text the table lacks (a class changed since generation) is compiled by exec, and works."""
    before = _precompiled.hits

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Fresh:
        only_in_this_test_a: int
        only_in_this_test_b: str = "x"

    assert _precompiled.hits == before
    value = Fresh(only_in_this_test_a=1)
    assert value == Fresh(only_in_this_test_a=1, only_in_this_test_b="x")
    assert repr(value).endswith(".<locals>.Fresh(only_in_this_test_a=1, only_in_this_test_b='x')")
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.only_in_this_test_a = 2  # type: ignore[misc]


def test_precompiled_daemon_classes_come_from_the_table() -> None:
    """Importing the daemon and worker modules compiles (almost) no dataclass method of ours."""
    out = _run(
        "from openfang import _precompiled as p\n"
        "compiled = []\n"
        "real = p._real_exec\n"
        "def spy(source, g=None, l=None, /):\n"
        "    compiled.append((g or {}).get('__name__', ''))\n"
        "    real(source, g, l)\n"
        "p._real_exec = spy\n"
        "import openfang.control.daemon, openfang.workers.worker, openfang.control.gateway\n"
        "ours = [m for m in compiled if m.startswith('openfang')]\n"
        "print(p.hits, len(ours))"
    )
    hits, ours = map(int, out.split())
    # Ours compiled only for a text two classes share (the table gives each text's code once).
    assert hits > 1000
    assert ours < 10


def test_precompiled_methods_behave_as_dataclasses_makes_them() -> None:
    """A body class built from the table and the same class built by plain exec agree on every method."""
    out = _run(
        "import dataclasses\n"
        "from openfang import _precompiled as p\n"
        "from openfang.protocol import bodies\n"
        "assert p.hits > 100\n"
        "p.uninstall()\n"
        "import importlib, sys\n"
        "fast = sys.modules.pop('openfang.protocol.bodies')\n"
        "slow = importlib.import_module('openfang.protocol.bodies')\n"
        "for name in ('AgentSend', 'AgentSpawn', 'Node', 'Usage'):\n"
        "    f, s = getattr(fast, name), getattr(slow, name)\n"
        "    assert [x.name for x in dataclasses.fields(f)] == [x.name for x in dataclasses.fields(s)]\n"
        "    assert f.__slots__ == s.__slots__ and f.__match_args__ == s.__match_args__\n"
        "    for meth in ('__init__', '__repr__', '__eq__', '__hash__', '__setattr__', '__delattr__'):\n"
        "        a, b = getattr(f, meth), getattr(s, meth)\n"
        "        a, b = getattr(a, '__wrapped__', a), getattr(b, '__wrapped__', b)  # __repr__'s guard\n"
        "        assert a.__qualname__ == b.__qualname__, (name, meth)\n"
        "        assert a.__code__.co_code == b.__code__.co_code, (name, meth)\n"
        "        assert a.__annotations__ == b.__annotations__, (name, meth)\n"
        "        assert a.__defaults__ == b.__defaults__ and a.__kwdefaults__ == b.__kwdefaults__\n"
        "        assert a.__code__.co_filename != b.__code__.co_filename  # really from the table\n"
        "u = fast.Usage(prompt_tokens=3, fuel=4)\n"
        "v = fast.Usage(prompt_tokens=3, fuel=4)\n"
        "print(repr(u), u == v, hash(u) == hash(v))\n"
    )
    assert out == "Usage(prompt_tokens=3, completion_tokens=0, tool_calls=0, fuel=4) True True"


def test_precompiled_install_leaves_another_hook_in_place() -> None:
    """install() does not replace an exec someone else gave dataclasses (the generator's recorder)."""
    assert dataclasses.exec is _precompiled._exec  # type: ignore[attr-defined]
    _precompiled.uninstall()
    try:
        dataclasses.exec = print  # type: ignore[attr-defined]
        _precompiled.install()
        assert dataclasses.exec is print  # type: ignore[attr-defined]
        del dataclasses.exec  # type: ignore[attr-defined]
    finally:
        _precompiled.install()
    assert dataclasses.exec is _precompiled._exec  # type: ignore[attr-defined]
