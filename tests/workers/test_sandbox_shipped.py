"""The built-in guests compiled at install time (workers/sandbox/shipped.py): a fresh data dir's first spawn
maps them instead of compiling, and a file or folder another user could write, a changed file or one wasmtime
refuses is never loaded (the module is compiled, the file left in place: it is not the worker's)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from openfang.workers.host.spawner import HOST_SPECS
from openfang.workers.sandbox import shipped
from openfang.workers.sandbox._module_cache import MAGIC, TRAILER_BYTES, write_artifact
from openfang.workers.sandbox._wasmtime import Runtime
from openfang.workers.sandbox.builtin_guests import BUILTINS, builtin_digest, builtin_source


def _load(folder: Path, data_dir: Path) -> tuple[bool, list[str]]:
    """(was_cached, log events) of compiling builtin:llm-agent in a runtime on a fresh data dir and
    ``folder``; the module is instantiated through the runtime to prove it loads."""
    rt = Runtime(HOST_SPECS, cache_dir=data_dir / "modules", shipped_dir=folder)
    try:
        with structlog.testing.capture_logs() as logs:
            digest = builtin_digest("llm-agent")
            module, cached = rt.compile(builtin_source("llm-agent"), digest=digest, what="builtin:llm-agent")
            rt.instance_pre(module, digest=digest, what="builtin:llm-agent")
        _LOGS[:] = logs
        return cached, [str(e["event"]) for e in logs]
    finally:
        rt.close()


_LOGS: list[dict[str, Any]] = []  # the last _load's log entries


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "share" / "modules"
    assert len(shipped.ship(made)) == len(BUILTINS)
    return made


def _llm_file(folder: Path) -> Path:
    (path,) = folder.glob(f"{builtin_digest('llm-agent')}-*.cwasm")
    return path


def test_shipped_main_writes_each_builtin_readable_and_drops_other_engines(tmp_path: Path) -> None:
    """The command writes one file per built-in guest (0644 in a 0755 folder, with the cache's trailer) and
    removes what an earlier wasmtime or engine setting left there."""
    target = tmp_path / "m"
    target.mkdir()
    (target / f"{'0' * 64}-oldengine.cwasm").write_bytes(b"old")
    assert shipped.main([str(target)]) == 0
    files = sorted(target.iterdir())
    assert len(files) == len(BUILTINS) and all(f.stat().st_mode & 0o777 == 0o644 for f in files)
    assert target.stat().st_mode & 0o777 == 0o755
    data = files[0].read_bytes()
    assert data[-TRAILER_BYTES:] == hashlib.sha256(data[:-TRAILER_BYTES]).digest() + MAGIC
    assert shipped.main(["-x"]) == 2


def test_shipped_module_makes_a_fresh_data_dirs_first_compile_a_load(folder: Path, tmp_path: Path) -> None:
    """With the folder, the first compile in a fresh data dir maps the shipped file; without it, compiles."""
    assert _load(folder, tmp_path / "d1") == (True, [])
    assert _load(tmp_path / "missing", tmp_path / "d2")[0] is False


def test_shipped_module_is_used_in_a_worker_and_answers(folder: Path, tmp_path: Path) -> None:
    """A host given the folder spawns its first llm-agent warm, and the agent answers."""
    from sandbox_helpers import make_host, manifest

    d = make_host(module_cache_dir=tmp_path / "modules", shipped_module_dir=folder)
    try:
        reply = d.call("agent.spawn", manifest=manifest("first"))
        assert not reply.is_error, reply.body
        agent = d.host._agents[reply.body["agent_id"]]
        assert agent.sandbox.spawn_kind == "warm"
        answer = d.call("agent.send", agent_id=agent.agent_id, text="what is the weather?")
        assert not answer.is_error, answer.body
    finally:
        d.host.close()


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_shipped_file_others_may_write_is_never_loaded(folder: Path, tmp_path: Path, mode: int) -> None:
    """A shipped file group- or world-writable is not loaded (logged, left in place): the module compiles."""
    path = _llm_file(folder)
    path.chmod(mode)
    cached, events = _load(folder, tmp_path / "d")
    assert cached is False and "module_cache_shipped_ignored" in events
    assert path.exists()


def test_shipped_folder_others_may_write_is_not_used(folder: Path, tmp_path: Path) -> None:
    """A shipped folder others may write is refused as a whole, with the reason; the module compiles."""
    folder.chmod(0o777)
    rt = Runtime(HOST_SPECS, shipped_dir=folder)
    try:
        assert rt.shipped_refused is not None and "another user may write it" in rt.shipped_refused
    finally:
        rt.close()
    assert _load(folder, tmp_path / "d")[0] is False


def test_shipped_file_changed_after_install_is_not_loaded(folder: Path, tmp_path: Path) -> None:
    """A shipped file whose bytes no longer match its checksum is not loaded, and is left in place."""
    path = _llm_file(folder)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    cached, events = _load(folder, tmp_path / "d")
    assert cached is False and "module_cache_shipped_ignored" in events
    assert path.read_bytes() == bytes(data)


def test_shipped_file_wasmtime_refuses_is_compiled_over(folder: Path, tmp_path: Path) -> None:
    """A shipped file with a good checksum that wasmtime refuses (another version, engine setting or CPU)
    is logged with wasmtime's reason and left; the module is compiled."""
    path = _llm_file(folder)
    assert write_artifact(path, b"\x7fELF" + b"\0" * 200, mode=0o644)
    cached, _ = _load(folder, tmp_path / "d")
    assert cached is False
    reasons = [e.get("reason") for e in _LOGS if e["event"] == "module_cache_shipped_ignored"]
    assert reasons and "wasmtime refused it" in str(reasons[0])
    assert path.exists()


def test_shipped_symlink_is_not_followed(folder: Path, tmp_path: Path) -> None:
    """A shipped name that is a symlink (to a good artifact) is not followed: the module compiles."""
    path = _llm_file(folder)
    real = tmp_path / "real.cwasm"
    path.rename(real)
    path.symlink_to(real)
    assert _load(folder, tmp_path / "d")[0] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_shipped_file_of_another_user_is_never_loaded(folder: Path, tmp_path: Path) -> None:
    """A shipped file (or folder) owned by a user who is neither root nor this one is not loaded, even when
    no one else may write it: that user could change it."""
    path = _llm_file(folder)
    os.chown(path, 12345, 12345)
    cached, events = _load(folder, tmp_path / "d1")
    assert cached is False and "module_cache_shipped_ignored" in events
    os.chown(path, 0, 0)
    os.chown(folder, 12345, 12345)
    assert _load(folder, tmp_path / "d2")[0] is False
