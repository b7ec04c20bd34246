"""A worker imports only what its cluster uses: no memory client without a memory writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WATCHED = ["openfang.memory.api", "openfang.memory.client", "openfang.memory.reader", "zmq.asyncio"]
WATCHED += ["openfang.memory.messages", "openfang.memory.procedural"]  # the host's, only with memory


def _modules_after(code: str, data_dir: Path) -> dict[str, list[str]]:
    script = (
        "import json, os, sys\n"
        f"os.environ['OPENFANG_DATA_DIR'] = {str(data_dir)!r}\n"
        f"watched = {WATCHED!r}\n"
        "import openfang.workers.worker as w\n"
        "before = [m for m in watched if m in sys.modules]\n"
        f"{code}\n"
        "print(json.dumps({'before': before, 'after': [m for m in watched if m in sys.modules]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_worker_without_memory_writer_never_loads_the_memory_client(tmp_path: Path) -> None:
    """No memory database (no memory child): the worker module and its memory check load no memory client."""
    seen = _modules_after("assert w._open_memory([]) is None", tmp_path)
    assert seen == {"before": [], "after": []}


def test_worker_with_a_memory_database_opens_its_memory(tmp_path: Path) -> None:
    """A migrated database in the data dir: the worker opens the memory API (client and reader) on demand."""
    from openfang.memory import schema

    schema.migrate(str(tmp_path / "memory.db"))
    seen = _modules_after("api = w._open_memory([])\nassert api is not None\napi.close()", tmp_path)
    assert seen["before"] == []
    assert {"openfang.memory.api", "openfang.memory.client", "openfang.memory.reader"} <= set(seen["after"])


def test_worker_module_builds_the_injection_matcher_at_import(tmp_path: Path) -> None:
    """Importing the worker module (what its supervisor does before forking) builds the injection matcher,
    so forked workers inherit it instead of building it on their first message."""
    script = (
        "import openfang.security.injection as inj\n"
        "before = inj._matcher.cache_info().currsize\n"
        "import openfang.workers.worker\n"
        "print(before, inj._matcher.cache_info().currsize)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]


def test_worker_module_import_leaves_no_wasmtime_code_resident() -> None:
    """Importing the worker module (in a supervisor, before its forks) has the libwasmtime code pages that
    importing wasmtime touched dropped right after the supervisor's next fork (while the worker starts, not
    on the cold start's path before it): the supervisor never runs them and a worker maps them again on
    use."""
    script = (
        "def code_kb():\n"
        "    kb, inside = 0, False\n"
        "    for line in open('/proc/self/smaps'):\n"
        "        head = line.split()\n"
        "        if head and '-' in head[0] and len(head) >= 5 and not line[0].isupper():\n"
        "            inside = head[1] == 'r-xp' and line.rstrip().endswith('/_libwasmtime.so')\n"
        "        elif inside and line.startswith('Rss:'):\n"
        "            kb += int(head[1])\n"
        "    return kb\n"
        "import openfang.workers.sandbox._wasmtime\n"
        "before = code_kb()\n"
        "import os, openfang.workers.worker\n"
        "imported = code_kb()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(before, imported, code_kb())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, imported, forked = (int(x) for x in done.stdout.split())
    assert before > 0  # importing wasmtime did touch its code
    assert imported >= before / 4  # not dropped in the import (the root's path before the workers' fork)
    assert forked < before / 4
