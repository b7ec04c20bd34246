"""wasmtime's C functions are made on first call (workers/sandbox/_lazy_bindings), with the types the
bindings declare."""

from __future__ import annotations

import json
import subprocess
import sys

_DUMP = (
    "import ctypes, json, sys\n"
    "b = sys.modules['wasmtime._bindings']\n"
    "def name(t):\n"
    "    return None if t is None else getattr(t, '__qualname__', repr(t))\n"
    "out = {}\n"
    "for key, fn in sorted(vars(b).items()):\n"
    "    if key.startswith('_w') and callable(fn):\n"
    "        kind = type(fn).__name__\n"
    "        out[key] = [kind, name(fn.restype), [name(t) for t in fn.argtypes or ()]]\n"
    "print(json.dumps(out))\n"
)
# _wasmtime declares this one again (the bindings' result type is wrong for wasmtime 50.0.1)
_REDECLARED = "_wasmtime_context_epoch_deadline_async_yield_and_update"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_lazy_bindings_made_on_first_call_with_the_declared_types() -> None:
    """Importing the sandbox leaves nearly every function pending; once all are made, each binding is a
    ctypes function with the restype and argtypes a plain ``import wasmtime`` gives it."""
    plain = json.loads(_run("import wasmtime\n" + _DUMP))
    lazy_out = _run(
        "from openfang.workers.sandbox import _lazy_bindings, _wasmtime\n"
        "print(_lazy_bindings.pending() > 700)\n"
        "_lazy_bindings.resolve_all()\n"
        "print(_lazy_bindings.pending())\n" + _DUMP
    )
    first, second, dump = lazy_out.split("\n", 2)
    assert (first, second) == ("True", "0")
    lazy = json.loads(dump)
    assert len(plain) > 700
    assert set(lazy) == set(plain)
    for key, (kind, restype, argtypes) in plain.items():
        if key == _REDECLARED:
            continue
        assert lazy[key] == [kind, restype, argtypes], key


def test_lazy_bindings_a_call_makes_the_function_and_replaces_the_record() -> None:
    """A wrapper's first call makes its function (a store and its fuel work through it); ``dll.NAME`` read
    afterwards is the same configured object the wrapper now calls."""
    out = _run(
        "from openfang.workers.sandbox import _lazy_bindings, _wasmtime\n"
        "import wasmtime\n"
        "from wasmtime import _bindings as b, _ffi as ffi\n"
        "before = type(b._wasmtime_store_new).__name__\n"
        "store = wasmtime.Store(wasmtime.Engine(wasmtime.Config()))\n"
        "after = b._wasmtime_store_new\n"
        "same = ffi.dll.wasmtime_store_new is after\n"
        "print(before, type(after).__name__, same, after.argtypes is not None)"
    )
    assert out == "_Binding _FuncPtr True True"


def test_lazy_bindings_unknown_name_still_raises() -> None:
    """A name the library does not have is an AttributeError, as from ctypes."""
    out = _run(
        "from openfang.workers.sandbox import _wasmtime\n"
        "try:\n"
        "    _wasmtime.ffi.dll.no_such_function_here\n"
        "except AttributeError as exc:\n"
        "    print('AttributeError', 'no_such_function_here' in str(exc))"
    )
    assert out == "AttributeError True"
