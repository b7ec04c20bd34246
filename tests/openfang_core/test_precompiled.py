"""Dataclasses replayed from generated data are identical to what dataclasses makes, and only then."""

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


# How a dataclass is described for the comparisons (in a fresh interpreter): its fields with every attribute
# the stdlib sets (and whether a field is a base class's object), the params, the class dict in its order
# (values but methods as text), name, qualname, metaclass, bases, abstract methods, doc, __match_args__,
# __slots__, __hash__, and each method's code (all but where its text was: file, lines), qualname,
# defaults, annotations and closure values.
_DESCRIBE_CLASS = """
import dataclasses, re, types
def text(value):
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))
def shape(code):
    consts = [shape(c) if isinstance(c, types.CodeType) else text(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
            code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals,
            code.co_stacksize, code.co_flags, code.co_name, code.co_qualname, code.co_exceptiontable.hex()]
def method(fn):
    wrapped = getattr(fn, "__wrapped__", None)  # __repr__'s recursion guard
    outer = [fn.__name__, fn.__qualname__, fn.__module__, text(fn.__doc__), list(vars(fn))]
    if wrapped is not None:  # the guard: its code, globals, cells and annotations (the wrapped's dict)
        cells = [type(c.cell_contents).__name__ for c in fn.__closure__]
        inner = fn.__closure__[1].cell_contents is wrapped
        outer += [shape(fn.__code__), fn.__globals__ is vars(dataclasses), cells, inner]
        outer += [fn.__annotations__ is wrapped.__annotations__, fn.__defaults__, fn.__kwdefaults__]
    fn = wrapped or fn
    cells = [text(c.cell_contents) for c in fn.__closure__ or ()]
    return [wrapped is not None, outer, fn.__name__, fn.__qualname__, fn.__module__, text(fn.__defaults__),
            text(fn.__kwdefaults__), text(fn.__annotations__), cells, shape(fn.__code__),
            fn.__globals__ is vars(__import__("sys").modules[fn.__module__])]
def field(f, cls):
    factory = f.default_factory
    shared = any(f is g for b in cls.__mro__[1:] for g in getattr(b, "__dataclass_fields__", {}).values())
    factory = getattr(factory, "__qualname__", text(factory))
    return [type(f).__name__, f.name, text(f.type), text(f.default), factory,
            f.init, f.repr, f.hash, f.compare, text(f.metadata), f.kw_only, f._field_type.name, shared]
def describe(cls):
    d = cls.__dict__
    return {
        "params": text(d["__dataclass_params__"]),
        "fields": [field(f, cls) for f in d["__dataclass_fields__"].values()],
        "dict": [[k, method(v) if isinstance(v, types.FunctionType) else text(v)] for k, v in d.items()],
        "name": [cls.__name__, cls.__qualname__, cls.__module__, type(cls).__name__],
        "bases": [b.__qualname__ for b in cls.__mro__],
        "abstract": sorted(getattr(cls, "__abstractmethods__", ())),
        "doc": cls.__doc__,
        "match_args": d.get("__match_args__"),
        "slots": d.get("__slots__"),
        "hash": None if d.get("__hash__", 0) is None else "__hash__" in d,
        "fields()": [f.name for f in dataclasses.fields(cls)],
    }
"""

# Prints, as JSON, every dataclass of the package and of the libraries whose classes _precompiled_extra.py
# holds (structlog's that the package imports), described. PLAIN makes dataclasses' own walk do all.
_DESCRIBE = (
    _DESCRIBE_CLASS
    + """
import builtins, importlib, json, pkgutil, sys
if PLAIN:
    dataclasses.exec = builtins.exec  # openfang's install() then leaves dataclasses in place
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
out = {}
for name in sorted(set(names)):
    module = importlib.import_module(name)
    for value in list(vars(module).values()):
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == name:
            out[name + ":" + value.__qualname__] = describe(value)
print(json.dumps({"hits": _precompiled.hits, "classes": out}))
"""
)


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
    """Every dataclass of the package, replayed from the table, equals the one dataclasses' own walk makes:
    each Field's attributes, params, class dict (order, values), names, bases, doc, __match_args__,
    __slots__, __hash__, each method's code and values."""
    fast, plain = _describe(plain=False), _describe(plain=True)
    assert plain["hits"] == 0
    assert fast["hits"] > 230  # all but the few without a docstring (the stdlib writes theirs)
    assert len(fast["classes"]) > 200
    assert fast["classes"].keys() == plain["classes"].keys()
    for name, built in fast["classes"].items():
        assert built == plain["classes"][name], name


def test_precompiled_class_not_in_the_table_is_built_as_before() -> None:
    """A class the table lacks (new since generation) is built by dataclasses, and works."""
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
    """Importing the daemon, worker and gateway modules walks no dataclass of ours (or of structlog's, which
    they import) with the stdlib's _process_class: each is replayed."""
    out = _run(
        "from openfang import _precompiled as p\n"
        "ours = []\n"
        "stdlib = p._STDLIB['_process_class']\n"
        "def spy(cls, *args):\n"
        "    if cls.__module__.partition('.')[0] in ('openfang', 'structlog'):\n"
        "        ours.append(cls.__qualname__)\n"
        "    return stdlib(cls, *args)\n"
        "p._STDLIB['_process_class'] = spy\n"
        "import openfang.control.daemon, openfang.workers.worker, openfang.control.gateway\n"
        "print(p.hits, ours)"
    )
    hits, ours = out.split(" ", 1)
    assert int(hits) > 200
    assert ours == "[]"


def test_precompiled_methods_behave_as_dataclasses_makes_them() -> None:
    """A body class built from the table and the same class built by dataclasses agree when used."""
    out = _run(
        "import dataclasses, importlib, sys\n"
        "from openfang import _precompiled as p\n"
        "from openfang.protocol import bodies\n"
        "assert p.hits > 20\n"
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


# Usage (protocol/bodies.py) as generated, then changed: each variant is made with the table's entry for
# Usage in place, then by the stdlib's walk; prints, as JSON, {name: [replayed?, same?, error or ""]}.
_VARIANTS = (
    _DESCRIBE_CLASS
    + '''
import __future__, importlib, json, sys, typing
from openfang import _precompiled as p
from openfang.protocol import bodies
# What the stdlib looks ClassVar, InitVar and KW_ONLY annotations up in: the class's module.
bodies.ClassVar, bodies.InitVar, bodies.KW_ONLY = typing.ClassVar, dataclasses.InitVar, dataclasses.KW_ONLY
sys.modules.pop("openfang._precompiled_data")
entry = importlib.import_module("openfang._precompiled_data").CLASSES[("openfang.protocol.bodies", "Usage")]
USAGE = """
@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    'What answering one agent.send consumed: model tokens, tool calls, fuel.'

    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    tool_calls: Count = 0
    fuel: Count = 0
"""
def make(source):
    ns = dict(vars(bodies), dataclasses=dataclasses, field=dataclasses.field)
    code = compile(source, "variant", "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    try:
        exec(code, ns)
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)
    return describe(ns["Usage"])
out = {}
for name, old, new in VARIANTS:
    source = USAGE.replace(old, new, 1)
    assert source != USAGE or not old, name
    p._classes[("openfang.protocol.bodies", "Usage")] = entry
    before = p.hits
    fast = make(source)
    replayed = p.hits > before
    p.uninstall()
    plain = make(source)
    p.install()
    out[name] = [replayed, fast == plain, fast if isinstance(fast, str) else ""]
print(json.dumps(out))
'''
)

_FUEL = "    fuel: Count = 0"
_DOC = "    'What answering one agent.send consumed: model tokens, tool calls, fuel.'"
# (name, text replaced, by): what the replay must take (the key is the same)...
_SAME_KEY = [
    ("as generated", "", ""),
    ("another annotation", _FUEL, "    fuel: int = 0"),
    ("another default", _FUEL, "    fuel: Count = 7"),
    ("a field() default", _FUEL, "    fuel: Count = field(default=3, metadata={'m': 1})"),
    ("another docstring", _DOC, "    'Other.'"),
    ("its own __repr__", _FUEL, _FUEL + "\n    def __repr__(self):\n        return 'U'"),
    ("its own __eq__", _FUEL, _FUEL + "\n    def __eq__(self, other):\n        return True"),
    ("its own __match_args__", _FUEL, _FUEL + "\n    __match_args__ = ('fuel',)"),
    ("a KW_ONLY marker (all kw-only already)", "    tool_calls", "    _: KW_ONLY\n    tool_calls"),
    ("unsafe_hash (frozen: hashed anyway)", "frozen=True,", "frozen=True, unsafe_hash=True,"),
    ("a dataclass base with these fields", "class Usage:", "class Usage(Usage):"),
    ("a descriptor default", _FUEL, "    fuel: Count = staticmethod(int)"),
    ("a method", _FUEL, _FUEL + "\n    def total(self) -> int:\n        return 1"),
]
# ...and what it must leave to the stdlib (changed since the table was generated, or the stdlib raises).
_CHANGED = [
    ("one more field", _FUEL, _FUEL + "\n    more: int = 0"),
    ("a field less", _FUEL + "\n", ""),
    ("a field renamed", _FUEL, "    fuel2: Count = 0"),
    ("a field named mro", _FUEL, "    mro: Count"),
    ("no default", _FUEL, "    fuel: Count"),
    ("a factory", _FUEL, "    fuel: Count = field(default_factory=int)"),
    ("init=False", _FUEL, "    fuel: Count = field(default=0, init=False)"),
    ("repr=False", _FUEL, "    fuel: Count = field(default=0, repr=False)"),
    ("compare=False", _FUEL, "    fuel: Count = field(default=0, compare=False)"),
    ("hash=False", _FUEL, "    fuel: Count = field(default=0, hash=False)"),
    ("kw_only=False field", _FUEL, "    fuel: Count = field(default=0, kw_only=False)"),
    ("a ClassVar", _FUEL, "    fuel: ClassVar[int] = 0"),
    ("an InitVar", _FUEL, "    fuel: InitVar[int] = 0"),
    ("__post_init__", _FUEL, _FUEL + "\n    def __post_init__(self):\n        pass"),
    ("not frozen", "frozen=True, ", ""),
    ("no slots", "slots=True, ", ""),
    ("not kw_only", ", kw_only=True", ""),
    ("eq=False", "frozen=True,", "frozen=True, eq=False,"),
    ("order=True", "frozen=True,", "frozen=True, order=True,"),
    ("weakref_slot", "slots=True,", "slots=True, weakref_slot=True,"),
    ("its own __hash__", _FUEL, _FUEL + "\n    def __hash__(self):\n        return 1"),
    ("a dataclass base with other fields", "class Usage:", "class Usage(AgentSendOk):"),
    ("no docstring", _DOC, ""),
    ("a mutable default", _FUEL, "    fuel: Count = []"),
    ("KW_ONLY twice", "    prompt_tokens", "    _: KW_ONLY\n    x_: KW_ONLY\n    prompt_tokens"),
    ("a ClassVar factory", _FUEL, "    fuel: ClassVar[int] = field(default_factory=int)"),
    ("a field() without annotation", _FUEL, _FUEL + "\n    x = field(default=1)"),
    ("a dunder field", _FUEL, "    __fuel: Count = 0"),
    ("its own __setattr__", _FUEL, _FUEL + "\n    def __setattr__(self, n, v):\n        pass"),
    ("its own __slots__", _FUEL, _FUEL + "\n    __slots__ = ()"),
]


@pytest.mark.skipif(not _SAME_PYTHON, reason="the data was generated with another Python")
def test_precompiled_changed_class_is_left_to_the_stdlib() -> None:
    """A class whose key is the recorded one is replayed and one changed since generation is not (the
    stdlib walks it: the same class, or the same error); either way it equals what the stdlib makes."""
    variants = _SAME_KEY + _CHANGED
    out = json.loads(_run(f"VARIANTS = {variants!r}\n" + _VARIANTS))
    for name, _, _ in variants:
        replayed, same, _ = out[name]
        assert same, name
        assert replayed == any(name == v[0] for v in _SAME_KEY), name
    assert out["a dataclass base with other fields"][2] == ""
    assert out["a descriptor default"][2] == "" and out["a field named mro"][2] == ""
    assert out["a mutable default"][2].startswith("ValueError: mutable default")
    assert out["KW_ONLY twice"][2] == "TypeError: 'x_' is KW_ONLY, but KW_ONLY has already been specified"
    assert out["a field() without annotation"][2] == "TypeError: 'x' is a field but has no type annotation"
    assert out["its own __setattr__"][2] == "TypeError: Cannot overwrite attribute __setattr__ in class Usage"


def test_precompiled_kind_answers_as_dataclasses_does() -> None:
    """_kind (a field, ClassVar, InitVar or KW_ONLY) gives the stdlib's answer, string annotations or not."""
    import types
    import typing

    module = types.ModuleType("precompiled_kind_probe")
    module.__dict__.update(
        ClassVar=typing.ClassVar,
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
        annotations: list[Any] = ["int", "ClassVar", "ClassVar[int]", "CV[str]", "typing.ClassVar[int]"]
        annotations += ["t.ClassVar", "InitVar[int]", "dataclasses.InitVar[int]", "dc.InitVar", "KW_ONLY"]
        annotations += ["dataclasses.KW_ONLY", "dc.KW_ONLY", "Other", "os.ClassVar", "", "1abc", "t.InitVar"]
        annotations += ["dataclasses.ClassVar", int, typing.ClassVar, typing.ClassVar[int], None]
        annotations += [dataclasses.InitVar, dataclasses.InitVar[int], dataclasses.KW_ONLY]
        is_kw_only = dataclasses._is_kw_only  # type: ignore[attr-defined]
        stdlib = _precompiled._STDLIB["_is_type"]
        for a_type in annotations:
            if a_type is dataclasses.KW_ONLY or (
                isinstance(a_type, str) and stdlib(a_type, cls, dataclasses, dataclasses.KW_ONLY, is_kw_only)
            ):
                want = 3
            else:
                f = dataclasses._get_field(cls, "a", a_type, False)  # type: ignore[attr-defined]
                want = _precompiled._KIND_OF[f._field_type]
            assert _precompiled._kind(a_type, cls, module.__dict__, typing) == want, a_type
    finally:
        del sys.modules[module.__name__]


def test_precompiled_other_python_uses_no_table() -> None:
    """Data generated under another Python version is not used: every class is built by dataclasses."""
    out = _run(
        "import sys\n"
        "from openfang import _precompiled_data, _precompiled_extra\n"  # openfang's own classes used them
        "from openfang import _precompiled as p\n"
        "_precompiled_data.PYTHON = _precompiled_extra.PYTHON = (3, 11, -1)\n"
        "p._classes = None\n"
        "before = p.hits\n"
        "import openfang.control.daemon\n"
        "print(p.hits - before, p._classes)"
    )
    assert out == "0 {}"


def test_precompiled_install_leaves_a_recorder_in_place() -> None:
    """install() does nothing when dataclasses' exec is hooked (the generator's recorder records then)."""
    assert dataclasses._process_class is _precompiled._process_class  # type: ignore[attr-defined]
    _precompiled.uninstall()
    try:
        assert dataclasses._process_class is _precompiled._STDLIB["_process_class"]  # type: ignore[attr-defined]
        dataclasses.exec = print  # type: ignore[attr-defined]
        _precompiled.install()
        assert dataclasses._process_class is _precompiled._STDLIB["_process_class"]  # type: ignore[attr-defined]
    finally:
        if hasattr(dataclasses, "exec"):
            del dataclasses.exec  # type: ignore[attr-defined]
        _precompiled.install()
    assert dataclasses._process_class is _precompiled._process_class  # type: ignore[attr-defined]


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
