"""structlog is imported without the optional extra it would pick up (rich)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this one has imported everything already); its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.mark.skipif(not _installed("rich"), reason="rich is not installed (the tui extra)")
def test_optional_daemon_tree_does_not_import_rich() -> None:
    """The daemon and the modules it forks its children from leave rich out, and structlog has none."""
    out = _run(
        "import sys, openfang.control.daemon, openfang.control.gateway, openfang.workers.worker\n"
        "import structlog.dev, structlog.tracebacks\n"
        "print('rich' in sys.modules, structlog.dev.rich, structlog.tracebacks.rich)"
    )
    assert out == "False None None"


@pytest.mark.skipif(not _installed("rich"), reason="rich is not installed (the tui extra)")
def test_optional_extras_importable_afterwards() -> None:
    """An extra hidden from structlog is imported as usual by whoever asks for it later (and the finder is
    gone once every library in its table has been imported)."""
    out = _run(
        "import sys, openfang, structlog, zmq, wasmtime\n"
        "import rich.console\n"
        "finders = [type(f).__name__ for f in sys.meta_path]\n"
        "print(rich.console.__name__, '_Finder' in finders)"
    )
    assert out == "rich.console False"


@pytest.mark.skipif(not _installed("rich"), reason="rich is not installed (the tui extra)")
def test_optional_extra_imported_first_is_kept() -> None:
    """A process that imported rich before structlog keeps structlog's rich tracebacks."""
    out = _run("import rich, openfang, structlog.dev\nprint(structlog.dev.rich is rich)")
    assert out == "True"


def test_optional_library_still_loads_its_files() -> None:
    """The wrapped loader hands everything else to the library's own loader (source, package data)."""
    out = _run(
        "import openfang, inspect, structlog\n"
        "source = inspect.getsource(structlog)\n"
        "print(structlog.__spec__.loader.is_package('structlog'), '__all__' in source)"
    )
    assert out == "True True"


def test_optional_daemon_tree_does_not_import_asyncio() -> None:
    """The daemon, the gateway and the worker modules load without asyncio (or ssl under it): structlog's
    reference to it is a stand-in until used, and the MCP hub imports it when it starts its loop."""
    out = _run(
        "import sys, openfang.control.daemon, openfang.control.gateway, openfang.workers.worker\n"
        "print('asyncio' in sys.modules, 'ssl' in sys.modules)"
    )
    assert out == "False False"


def test_optional_deferred_asyncio_works_on_first_use() -> None:
    """structlog's async logging methods load the real asyncio on first use, and every later
    ``import asyncio`` gets that one real module, not the stand-in."""
    out = _run(
        "import sys, types, openfang, structlog\n"
        "import structlog._native\n"
        "assert type(structlog._native.asyncio).__name__ == '_Deferred'\n"
        "import asyncio\n"
        "assert type(asyncio) is types.ModuleType and sys.modules['asyncio'] is asyncio\n"
        "async def main():\n"
        "    await structlog.get_logger().ainfo('hello_async')\n"
        "asyncio.run(main())\n"
        "print(structlog._native.asyncio.get_running_loop is asyncio.get_running_loop)"
    )
    assert out.splitlines()[-1] == "True"
    assert "hello_async" in out


def test_optional_deferred_module_read_first_through_the_stand_in() -> None:
    """When the first use of asyncio is through structlog's stand-in, the real module is imported then
    and is the one in sys.modules."""
    out = _run(
        "import sys, types, openfang, structlog.stdlib\n"
        "policy = structlog.stdlib.asyncio.get_event_loop_policy\n"
        "import asyncio\n"
        "print(type(sys.modules['asyncio']) is types.ModuleType, policy is asyncio.get_event_loop_policy)"
    )
    assert out == "True True"


def test_optional_deferred_uuid_works_on_first_use() -> None:
    """structlog's thread-local module gets a stand-in for uuid; its first use imports the real module, which
    is then the one in sys.modules."""
    out = _run(
        "import sys, types, openfang, structlog.threadlocal\n"
        "print('uuid' in sys.modules, type(structlog.threadlocal.uuid).__name__)\n"
        "value = structlog.threadlocal.uuid.uuid4()\n"
        "print(type(sys.modules['uuid']) is types.ModuleType, isinstance(value, sys.modules['uuid'].UUID))"
    )
    assert out.splitlines() == ["False _Deferred", "True True"]


def test_optional_deferred_random_works_on_first_use() -> None:
    """pyzmq's socket module gets a stand-in for random (only bind_to_random_port's, when the wildcard port
    cannot be used); the daemon's imports leave random out, and its first use imports the real module."""
    out = _run(
        "import sys, types, openfang.control.daemon, openfang.workers.worker\n"
        "import zmq.sugar.socket\n"
        "print('random' in sys.modules, type(zmq.sugar.socket.random).__name__)\n"
        "port = zmq.sugar.socket.random.randrange(49152, 65536)\n"
        "print(type(sys.modules['random']) is types.ModuleType, 49152 <= port < 65536)"
    )
    assert out.splitlines() == ["False _Deferred", "True True"]


def test_optional_deferred_linecache_works_on_first_use() -> None:
    """traceback (loaded under structlog) gets stand-ins for linecache and textwrap: the start's imports leave
    them and tokenize out, and the first traceback printed imports them and shows each frame's source line."""
    out = _run(
        "import sys, openfang.control.daemon, openfang.control.gateway, openfang.workers.worker\n"
        "import traceback\n"
        "left = sorted({'linecache', 'tokenize', 'textwrap'} & set(sys.modules))\n"
        "print(left, type(traceback.linecache).__name__, type(traceback.textwrap).__name__)\n"
        "from openfang.protocol.envelope import decode\n"
        "try:\n"
        "    decode(b'not msgpack')\n"
        "except Exception as exc:\n"
        "    last = traceback.extract_tb(exc.__traceback__)[-1]\n"
        "    text = traceback.format_exc()\n"
        "print(bool(last.line) and last.line in text, {'linecache', 'textwrap'} <= set(sys.modules))"
    )
    assert out.splitlines() == ["[] _Deferred _Deferred", "True True"]


def test_optional_known_answers_are_the_real_modules() -> None:
    """The answers the platform and pickle stand-ins give without importing them are the real modules'."""
    out = _run(
        "import platform, pickle\n"
        "from openfang._optional import KNOWN_MODULES, _known\n"
        "known = _known()\n"
        "print(sorted(known) == sorted(KNOWN_MODULES))\n"
        "real = {'platform': platform, 'pickle': pickle}\n"
        "for name, answers in sorted(known.items()):\n"
        "    for attr, value in sorted(answers.items()):\n"
        "        want = getattr(real[name], attr)\n"
        "        same = value() == want() if callable(value) and name == 'platform' else value is want\n"
        "        print(name, attr, same)"
    )
    assert out.splitlines() == [
        "True",
        "pickle DEFAULT_PROTOCOL True",
        "pickle HIGHEST_PROTOCOL True",
        "pickle PicklingError True",
        "platform machine True",
        "platform python_implementation True",
    ]


def test_optional_deferred_platform_and_pickle_work_on_first_use() -> None:
    """pyzmq and wasmtime get a platform stand-in, pyzmq and structlog a pickle one: the start's imports
    leave both out, structlog's PicklingError is pickle's, and a pickled object goes through a pyzmq pair."""
    out = _run(
        "import sys, types, openfang.control.daemon, openfang.control.gateway, openfang.workers.worker\n"
        "import structlog._output, zmq, zmq.backend, wasmtime._ffi\n"
        "left = sorted({'platform', 'pickle'} & set(sys.modules))\n"
        "stand_ins = zmq.backend.platform, wasmtime._ffi.platform, zmq.sugar.socket.pickle\n"
        "kinds = {type(m).__name__ for m in stand_ins}\n"
        "print(left, sorted(kinds))\n"
        "ctx = zmq.Context()\n"
        "a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)\n"
        "a.bind('inproc://x'); b.connect('inproc://x')\n"
        "a.send_pyobj({'k': [1, 2]}); got = b.recv_pyobj()\n"
        "a.close(); b.close(); ctx.term()\n"
        "import pickle, platform\n"
        "real = type(sys.modules['pickle']) is types.ModuleType\n"
        "same = structlog._output.PicklingError is pickle.PicklingError\n"
        "print(got, same, real, zmq.backend.platform.system() == platform.system())"
    )
    assert out.splitlines() == ["[] ['_Deferred']", "{'k': [1, 2]} True True True"]
