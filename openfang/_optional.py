"""Import libraries without the optional extras they pick up by themselves and we never use.

``structlog`` imports ``rich`` (pretty tracebacks for its console renderer) whenever rich is installed, and
rich is installed with the ``tui`` extra (textual needs it): ~25 ms and ~400 modules more in every daemon
process (they fork from the root, which imports structlog first), for a renderer that production (JSON)
never uses. structlog falls back cleanly when the import fails (``except ImportError``).

:func:`install` puts a finder at the head of ``sys.meta_path``: when one of :data:`HIDDEN_DURING` is first
imported, its extras are made unimportable (``sys.modules[name] = None``) while that library's own modules
execute, then visible again, so a later ``import rich`` (``openfang top``) works as usual. An extra
already imported is left alone; the finder removes itself once every library in the table has been
imported. Rendering on a terminal stays colourful; only exceptions are printed by structlog's plain
formatter instead of rich's.

``structlog.stdlib`` and ``structlog._native`` also import ``asyncio`` at their top (with ``ssl`` under it:
~15 ms in the root, before anything forks) for their ``async`` logging methods, which we never call. While
structlog loads, :data:`DEFERRED_DURING` modules are stand-ins (:class:`_Deferred`): the real module is
imported on the first attribute read through structlog's reference, and anyone else's ``import asyncio``
later imports it as usual (the stand-in never stays in ``sys.modules``). :mod:`dataclasses` is imported the
same way with an ``inspect`` stand-in (:data:`STDLIB_DEFERRED`, :func:`deferring`): the daemon's classes all
have a docstring, and only a class without one makes dataclasses import inspect, to write one.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

# library -> the optional modules it must not import (each is imported by it inside try/except ImportError)
# (colorama, greenlet and twisted are not installed here: hidden, each is one ImportError instead of a search
# of every sys.path entry, ~60 us each)
HIDDEN_DURING: dict[str, tuple[str, ...]] = {
    "structlog": ("rich", "better_exceptions", "colorama", "greenlet", "twisted"),
    "zmq": (),  # none: listed for DEFERRED_DURING
    "wasmtime": (),  # none: listed for DEFERRED_DURING
}
# library -> modules it imports at its top but uses only inside functions we never (or later) call
DEFERRED_DURING: dict[str, tuple[str, ...]] = {
    # uuid (and platform under it, ~3 ms): structlog.threadlocal's; linecache (and tokenize under it, ~1 ms)
    # and textwrap (~0.7 ms): traceback's (imported under structlog by logging and structlog._frames), read
    # only to print a traceback
    # pickle (~1 ms: its pure-Python pickler classes): structlog reads only PicklingError at import (a
    # KNOWN answer), pyzmq only DEFAULT_PROTOCOL (Socket.send_pyobj's default)
    "structlog": ("asyncio", "uuid", "linecache", "textwrap", "pickle"),
    # random: Socket.bind_to_random_port's (~0.8 ms: random, bisect, _sha512); platform (~2 ms: a dozen
    # regexes compiled at its import): the backend's choice reads python_implementation() (a KNOWN answer)
    "zmq": ("random", "platform", "pickle"),
    "wasmtime": ("platform",),  # _ffi reads platform.machine() (a KNOWN answer)
}

# standard module -> modules it imports at its top for a rare path, imported by install() with stand-ins:
# dataclasses reads inspect only to write a docstring for a class without one (``inspect.signature``);
# inspect, ast and dis are ~4 ms of the root's start, and no module of the daemon's start needs them
STDLIB_DEFERRED: dict[str, tuple[str, ...]] = {
    "dataclasses": ("inspect",),
}


def _python_implementation() -> str:
    """``platform.python_implementation()`` under CPython (the only interpreter :data:`KNOWN` answers for)."""
    return "CPython"


def _machine() -> str:
    """``platform.machine()`` on a POSIX system: ``os.uname().machine``, as platform reads it."""
    return os.uname().machine


def _known() -> dict[str, dict[str, Any]]:
    """Answers a stand-in gives itself, without importing the real module, for what the libraries above read
    at their import (a test compares each with the real module's). Only under the CPython 3.11 on POSIX
    these were checked for: anywhere else the stand-in imports the real module on that first read."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11) or os.name != "posix":
        return {}
    import _pickle  # the C pickler's classes, which pickle re-exports (~0.5 ms, pickle itself ~1.5)

    return {
        "platform": {"python_implementation": _python_implementation, "machine": _machine},
        "pickle": {"PicklingError": _pickle.PicklingError, "DEFAULT_PROTOCOL": 4, "HIGHEST_PROTOCOL": 5},
    }


KNOWN_MODULES = ("platform", "pickle")  # those _known() answers for


class _Deferred(ModuleType):
    """Stands for a module a library imported but has not used yet: the first attribute read imports the
    real module (the import lock makes that safe from any thread) and every read is answered from it."""

    def __getattr__(self, attr: str) -> Any:
        if attr == "__path__" and self.__name__ in KNOWN_MODULES:
            # ``from pickle import X`` asks whether the module is a package first: these are plain modules
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:  # read while the library is still loading
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


@contextlib.contextmanager
def deferring(*names: str) -> Iterator[None]:
    """While in the block, ``import name`` gives a :class:`_Deferred` stand-in for each of ``names`` not yet
    imported (the module importing it in the block keeps the stand-in; nobody else sees it afterwards)."""
    stand_ins = {name: _Deferred(name) for name in names if name not in sys.modules}
    known = _known() if any(name in KNOWN_MODULES for name in stand_ins) else {}
    for name, stand_in in stand_ins.items():
        stand_in.__dict__.update(known.get(name, {}))
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


class _Hiding:
    """The library's own loader, run with its extras unimportable (every other attribute delegated).

    (Plain classes here and below, not ``importlib.abc``'s: importing that module imports
    ``importlib.resources`` and ``tempfile``, ~8 ms before the daemon's first line.)"""

    def __init__(self, loader: Any, extras: tuple[str, ...], deferred: tuple[str, ...] = ()) -> None:
        self._loader = loader
        self._extras = extras
        self._deferred = deferred

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        hidden = [name for name in self._extras if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError
        try:
            with deferring(*self._deferred):
                self._loader.exec_module(module)
        finally:
            for name in hidden:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]

    def __getattr__(self, name: str) -> Any:  # get_data, get_resource_reader, is_package...
        return getattr(self._loader, name)


class _Finder:
    def __init__(self) -> None:
        self.pending = {lib for lib in HIDDEN_DURING if lib not in sys.modules}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        extras = HIDDEN_DURING.get(fullname)
        if extras is None or fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            self.remove()
        for finder in sys.meta_path:  # the finders after us find the library as they would have
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    hiding = _Hiding(spec.loader, extras, DEFERRED_DURING.get(fullname, ()))
                    spec.loader = cast("Loader", hiding)
                return spec
        return None

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Import :mod:`dataclasses` without ``inspect`` and put the finder in place, once per process (a no-op
    when every library is already imported)."""
    if "dataclasses" not in sys.modules:
        with deferring(*STDLIB_DEFERRED["dataclasses"]):
            import dataclasses  # noqa: F401  (here, for the stand-in)
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    finder = _Finder()
    if finder.pending:
        sys.meta_path.insert(0, finder)
