"""Dataclass methods come from precompiled code identical to what dataclasses makes, and only then."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest

from openfang import _precompiled, _precompiled_data, _precompiled_gen

_SAME_PYTHON = tuple(sys.version_info[:3]) == _precompiled_data.PYTHON


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# Prints, as JSON, everything @dataclass decided about every dataclass of the package and of the libraries
# whose methods _precompiled_extra.py holds (structlog's that the package imports): the fields and their
# settings, the params, the class dict's names, and each method's code (all but where its text was: file,
# lines), qualname, defaults, annotations and closure values. PLAIN makes dataclasses' own builders do all.
_DESCRIBE = """
import builtins, dataclasses, importlib, json, pkgutil, re, sys, types
if PLAIN:
    dataclasses.exec = builtins.exec  # openfang's install() then leaves dataclasses' builders in place
import openfang
from openfang import _precompiled, _precompiled_gen
names = [m.name for m in pkgutil.iter_modules(openfang.__path__, "openfang.")]
for name in names:
    module = importlib.import_module(name)
    if hasattr(module, "__path__"):
        names += [m.name for m in pkgutil.walk_packages(module.__path__, name + ".")]
for name in list(names):
    importlib.import_module(name)
names += [name for name in sys.modules if name.partition(".")[0] in _precompiled_gen.THIRD_PARTY]
def text(value):
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))
def shape(code):
    consts = [shape(c) if isinstance(c, types.CodeType) else text(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
            code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals,
            code.co_stacksize, code.co_flags, code.co_name, code.co_qualname, code.co_exceptiontable.hex()]
def method(fn):
    wrapped = getattr(fn, "__wrapped__", None)  # __repr__'s recursion guard
    fn = wrapped or fn
    cells = [text(c.cell_contents) for c in fn.__closure__ or ()]
    return [wrapped is not None, fn.__name__, fn.__qualname__, fn.__module__, text(fn.__defaults__),
            text(fn.__kwdefaults__), text(fn.__annotations__), cells, shape(fn.__code__)]
def field(f):
    factory = f.default_factory
    return [f.name, text(f.type), text(f.default), getattr(factory, "__qualname__", text(factory)), f.init,
            f.repr, f.hash, f.compare, text(f.metadata), f.kw_only, f._field_type.name]
out = {}
for name in sorted(set(names)):
    module = importlib.import_module(name)
    for value in list(vars(module).values()):
        if not (isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == name):
            continue
        d = value.__dict__
        out[name + ":" + value.__qualname__] = {
            "params": text(d["__dataclass_params__"]),
            "fields": [field(f) for f in d["__dataclass_fields__"].values()],
            "dict": sorted(d),
            "doc": value.__doc__,
            "match_args": d.get("__match_args__"),
            "slots": d.get("__slots__"),
            "hash": None if d.get("__hash__", 0) is None else "__hash__" in d,
            "methods": {k: method(v) for k, v in d.items() if isinstance(v, types.FunctionType)},
        }
print(json.dumps({"hits": _precompiled.hits, "classes": out}))
"""


def _describe(plain: bool) -> dict[str, Any]:
    described: dict[str, Any] = json.loads(_run(f"PLAIN = {plain}\n" + _DESCRIBE))
    return described


@pytest.mark.skipif(not _SAME_PYTHON, reason="the data was generated with another Python")
def test_precompiled_data_is_what_the_generator_makes_now() -> None:
    """_precompiled_data.py holds the dataclass methods as now (`python -m openfang._precompiled_gen`)."""
    # Compared outside the assert: pytest would diff the two long texts.
    fresh = _precompiled_gen.DATA.read_text() == _precompiled_gen.render()
    assert fresh, "openfang/_precompiled_data.py is stale: run `make generate` (or _precompiled_gen --write)"


@pytest.mark.skipif(not _SAME_PYTHON, reason="the data was generated with another Python")
def test_precompiled_every_class_is_what_dataclasses_makes() -> None:
    """Every dataclass of the package, built with the table, equals the one dataclasses' own builders make:
    fields, params, class dict, doc, __match_args__, __slots__, __hash__, each method's code and values."""
    fast, plain = _describe(plain=False), _describe(plain=True)
    assert plain["hits"] == 0
    assert fast["hits"] > 1000
    assert len(fast["classes"]) > 200
    assert fast["classes"].keys() == plain["classes"].keys()
    for name, built in fast["classes"].items():
        assert built == plain["classes"][name], name


def test_precompiled_changed_class_is_compiled_as_before() -> None:
    """A class whose key the table lacks (changed since generation) is built by dataclasses, and works."""
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


@pytest.mark.skipif(not _SAME_PYTHON, reason="the data was generated with another Python")
def test_precompiled_daemon_classes_come_from_the_table() -> None:
    """Importing the daemon, worker and gateway modules builds no method of ours (or of structlog's, which
    they import) with the stdlib's builders."""
    out = _run(
        "from openfang import _precompiled as p\n"
        "ours = []\n"
        "def spy(name, build):\n"
        "    def call(*args, **kwargs):\n"
        "        g = kwargs.get('globals', args[-1] if name != '_init_fn' else args[6])\n"
        "        if g.get('__name__', '').partition('.')[0] in ('openfang', 'structlog'):\n"
        "            ours.append(g['__name__'])\n"
        "        return build(*args, **kwargs)\n"
        "    return call\n"
        "p._STDLIB = {name: spy(name, build) for name, build in p._STDLIB.items()}\n"
        "import openfang.control.daemon, openfang.workers.worker, openfang.control.gateway\n"
        "print(p.hits, len(ours))"
    )
    hits, ours = map(int, out.split())
    assert hits > 1000
    assert ours == 0


def test_precompiled_methods_behave_as_dataclasses_makes_them() -> None:
    """A body class built from the table and the same class built by dataclasses agree when used."""
    out = _run(
        "import dataclasses, importlib, sys\n"
        "from openfang import _precompiled as p\n"
        "from openfang.protocol import bodies\n"
        "assert p.hits > 100\n"
        "p.uninstall()\n"
        "fast = sys.modules.pop('openfang.protocol.bodies')\n"
        "slow = importlib.import_module('openfang.protocol.bodies')\n"
        "for name in ('AgentSend', 'AgentSpawn', 'Node', 'Usage'):\n"
        "    f, s = getattr(fast, name), getattr(slow, name)\n"
        "    for meth in ('__init__', '__repr__', '__eq__', '__hash__', '__setattr__', '__delattr__'):\n"
        "        a, b = getattr(f, meth), getattr(s, meth)\n"
        "        a, b = getattr(a, '__wrapped__', a), getattr(b, '__wrapped__', b)  # __repr__'s guard\n"
        "        assert a.__code__.co_filename != b.__code__.co_filename  # really from the table\n"
        "results = []\n"
        "for m in (fast, slow):\n"
        "    u = m.Usage(prompt_tokens=3, fuel=4)\n"
        "    v = dataclasses.replace(u, fuel=5)\n"
        "    try:\n"
        "        u.fuel = 1\n"
        "    except dataclasses.FrozenInstanceError as exc:\n"
        "        frozen = str(exc)\n"
        "    match u:\n"
        "        case m.Usage(prompt_tokens=p_):\n"
        "            matched = p_\n"
        "    w = m.Usage(prompt_tokens=3, fuel=4)\n"
        "    results.append((repr(u), u == w, u == v, hash(u) == hash(w), dataclasses.asdict(v), frozen,\n"
        "                    matched, m.Usage.__match_args__))\n"
        "assert results[0] == results[1], results\n"
        "print(results[0][0])\n"
    )
    assert out == "Usage(prompt_tokens=3, completion_tokens=0, tool_calls=0, fuel=4)"


def test_precompiled_keys_tell_apart_what_changes_the_text() -> None:
    """Two field lists whose __init__ texts differ (a default, a factory, init=False, kw-only, an InitVar,
    frozen, __post_init__, slots) never share a key."""

    def made(**settings: Any) -> dataclasses.Field[Any]:
        f: dataclasses.Field[Any] = dataclasses.field(**settings)
        f.name = "a"
        f._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
        f.kw_only = settings.get("kw_only", False)
        return f

    def key(f: dataclasses.Field[Any], **flags: Any) -> tuple[Any, ...]:
        std = [f] if f.init and not f.kw_only else []
        kw = [f] if f.init and f.kw_only else []
        args: dict[str, Any] = {"frozen": False, "has_post_init": False, "self_name": "self", "slots": False}
        return _precompiled.init_key([f], std, kw, **(args | flags))

    initvar = made()
    initvar._field_type = dataclasses._FIELD_INITVAR  # type: ignore[attr-defined]
    keys = [
        key(made()),
        key(made(default=1)),
        key(made(default_factory=list)),
        key(made(init=False, default=1)),
        key(made(init=False, default=1), slots=True),
        key(made(kw_only=True)),
        key(initvar),
        key(made(), frozen=True),
        key(made(), has_post_init=True),
        key(made(), self_name="__dataclass_self__"),
    ]
    assert len(set(keys)) == len(keys)
    assert _precompiled.repr_key([made()]) != _precompiled.hash_key([made()])


def test_precompiled_other_python_uses_no_table() -> None:
    """Data generated under another Python version is not used: every class is built by dataclasses."""
    out = _run(
        "import sys\n"
        "from openfang import _precompiled_data, _precompiled_extra\n"  # openfang's own classes used them
        "from openfang import _precompiled as p\n"
        "_precompiled_data.PYTHON = _precompiled_extra.PYTHON = (3, 11, -1)\n"
        "p._codes = None\n"
        "before = p.hits\n"
        "import openfang.control.daemon\n"
        "print(p.hits - before, p._codes)"
    )
    assert out == "0 {}"


def test_precompiled_install_leaves_a_recorder_in_place() -> None:
    """install() does nothing when dataclasses' exec is hooked (the generator's recorder records then)."""
    assert dataclasses._init_fn is _precompiled._init_fn  # type: ignore[attr-defined]
    _precompiled.uninstall()
    try:
        assert dataclasses._init_fn is _precompiled._STDLIB["_init_fn"]  # type: ignore[attr-defined]
        dataclasses.exec = print  # type: ignore[attr-defined]
        _precompiled.install()
        assert dataclasses._init_fn is _precompiled._STDLIB["_init_fn"]  # type: ignore[attr-defined]
    finally:
        if hasattr(dataclasses, "exec"):
            del dataclasses.exec  # type: ignore[attr-defined]
        _precompiled.install()
    assert dataclasses._init_fn is _precompiled._init_fn  # type: ignore[attr-defined]


def test_precompiled_dataclasses_loads_without_inspect() -> None:
    """The daemon's, gateway's and worker's imports leave inspect out (each of their dataclasses has a
    docstring); a class without one still gets dataclasses' own, which imports inspect then."""
    out = _run(
        "import sys\n"
        "import openfang.control.daemon, openfang.control.gateway, openfang.workers.worker\n"
        "print('inspect' in sys.modules)\n"
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class C:\n"
        "    a: int\n"
        "    b: str = 'x'\n"
        "print(C.__doc__, 'inspect' in sys.modules, type(sys.modules['inspect']).__name__)"
    )
    # True first: a dataclass of the start without a docstring (dataclasses writes one with inspect, ~4 ms)
    assert out.splitlines() == ["False", "C(a: int, b: str = 'x') True module"]


def test_precompiled_is_type_answers_as_dataclasses_does() -> None:
    """_is_type (ClassVar, InitVar, KW_ONLY by a string annotation) gives the stdlib's answer for every
    spelling and binding, the first time and from its parse cache."""
    import types
    import typing

    module = types.ModuleType("precompiled_is_type_probe")
    module.__dict__.update(
        ClassVar=int,
        CV=typing.ClassVar,
        typing=typing,
        t=typing,
        dataclasses=dataclasses,
        dc=dataclasses,
        InitVar=dataclasses.InitVar,
        KW_ONLY=dataclasses.KW_ONLY,
        Other=int,
    )
    sys.modules[module.__name__] = module
    try:
        cls = type("Probe", (), {"__module__": module.__name__})
        texts = [
            "int",
            "list[int]",
            "ClassVar",
            "ClassVar[int]",
            "CV[str]",
            "typing.ClassVar[int]",
            "t.ClassVar",
            " typing . ClassVar",
            "InitVar[int]",
            "dataclasses.InitVar[int]",
            "dc.InitVar",
            "KW_ONLY",
            "dataclasses.KW_ONLY",
            "Other",
            "os.ClassVar",
            "Missing",
            "",
            "1abc",
            "a.b.c",
            "ClassVar|None",
        ]
        checks = [
            (typing, typing.ClassVar, dataclasses._is_classvar),  # type: ignore[attr-defined]
            (dataclasses, dataclasses.InitVar, dataclasses._is_initvar),  # type: ignore[attr-defined]
            (dataclasses, dataclasses.KW_ONLY, dataclasses._is_kw_only),  # type: ignore[attr-defined]
        ]
        stdlib = _precompiled._STDLIB["_is_type"]
        for _ in range(2):
            for text in texts:
                for a_module, a_type, predicate in checks:
                    want = stdlib(text, cls, a_module, a_type, predicate)
                    assert _precompiled._is_type(text, cls, a_module, a_type, predicate) == want, (
                        text,
                        a_type,
                    )
        # The probe's own ClassVar is not typing's; typing's, reached through its module, is.
        assert stdlib("CV[str]", cls, *checks[0]) and stdlib("t.ClassVar", cls, *checks[0])
        assert not stdlib("ClassVar[int]", cls, *checks[0]) and not stdlib("Other", cls, *checks[0])
    finally:
        del sys.modules[module.__name__]
