"""The on-disk cache of compiled modules: real wasmtime, real files; every fault ends in a compile, never a
failed spawn, and nothing unverified is ever loaded."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import wasmtime
from sandbox_helpers import SPIN_DIGEST, SPIN_SPECS, SPIN_WAT, in_child, run_spin

from openfang.workers.sandbox._module_cache import MAGIC, TRAILER_BYTES
from openfang.workers.sandbox._wasmtime import Runtime


def _compile(folder: Path) -> tuple[bool, int]:
    """(was_cached, spin(1000)) for SPIN_WAT compiled or loaded by a new runtime on ``folder``."""
    rt = Runtime(SPIN_SPECS, cache_dir=folder)
    try:
        module, cached = rt.compile(SPIN_WAT.encode(), digest=SPIN_DIGEST, what="t")
        return cached, run_spin(rt, module)
    finally:
        rt.close()


def _artifact(folder: Path) -> Path:
    (path,) = folder.glob("*.cwasm")
    return path


def _events(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in logs]


@pytest.fixture
def warm(tmp_path: Path) -> Path:
    """A cache folder holding SPIN_WAT's artifact, written by a first compile."""
    folder = tmp_path / "modules"
    assert _compile(folder) == (False, 1000)
    return folder


def test_module_cache_artifact_ends_with_its_checksum_and_loads_warm(warm: Path) -> None:
    """The file is the artifact, its sha256 and the tag; wasmtime maps it with the trailer, and the loaded
    code runs: a second runtime on the folder spawns warm."""
    data = _artifact(warm).read_bytes()
    body, trailer = data[:-TRAILER_BYTES], data[-TRAILER_BYTES:]
    assert trailer == hashlib.sha256(body).digest() + MAGIC and body[:4] == b"\x7fELF"
    assert _compile(warm) == (True, 1000)
    assert not list(warm.glob(".*.tmp"))


@pytest.mark.parametrize("keep", [0, 7, 64, 4096, -(TRAILER_BYTES + 1), -TRAILER_BYTES, -1])
def test_module_cache_truncated_file_is_discarded_and_recompiled(warm: Path, keep: int) -> None:
    """A file cut anywhere (a torn write, a full disk) is removed with a log line, the module compiled
    again and the file written whole."""
    path = _artifact(warm)
    whole = path.read_bytes()
    path.write_bytes(whole[:keep])
    with structlog.testing.capture_logs() as logs:
        assert _compile(warm) == (False, 1000)
    assert "module_cache_discarded" in _events(logs)
    assert path.read_bytes() == whole
    assert _compile(warm) == (True, 1000)


def test_module_cache_flipped_code_byte_is_caught_by_the_checksum(warm: Path, tmp_path: Path) -> None:
    """wasmtime itself loads an artifact with a byte of machine code flipped (it checks the layout, not the
    code): the cache's checksum refuses the file, logs why, and compiles again."""
    path = _artifact(warm)
    whole = path.read_bytes()
    body = bytearray(whole[:-TRAILER_BYTES])
    rt = Runtime(SPIN_SPECS)
    try:  # find a byte wasmtime does not notice: what only a checksum can catch
        for at in range(len(body) // 4, len(body), 97):
            body[at] ^= 0xFF
            probe = tmp_path / "probe.cwasm"
            probe.write_bytes(bytes(body))
            try:
                wasmtime.Module.deserialize_file(rt.engine, str(probe)).close()
                break
            except wasmtime.WasmtimeError:
                body[at] ^= 0xFF
        else:
            pytest.fail("wasmtime noticed every flipped byte")
    finally:
        rt.close()
    path.write_bytes(bytes(body) + whole[-TRAILER_BYTES:])
    with structlog.testing.capture_logs() as logs:
        assert _compile(warm) == (False, 1000)
    assert any("checksum mismatch" in str(e.get("reason")) for e in logs)
    assert path.read_bytes() == whole


def test_module_cache_file_of_another_engine_is_discarded(warm: Path) -> None:
    """A file with a good checksum that wasmtime refuses (another version or engine settings under the
    same name) is removed with wasmtime's reason and the module compiled."""
    path = _artifact(warm)
    junk = b"\x7fELF" + b"\0" * 200
    path.write_bytes(junk + hashlib.sha256(junk).digest() + MAGIC)
    with structlog.testing.capture_logs() as logs:
        assert _compile(warm) == (False, 1000)
    assert any("wasmtime refused it" in str(e.get("reason")) for e in logs)
    assert _compile(warm) == (True, 1000)


def test_module_cache_symlink_is_not_followed(warm: Path, tmp_path: Path) -> None:
    """A symlink where the artifact belongs is never loaded through (even to a valid artifact): the module
    is compiled and a real private file replaces the link."""
    path = _artifact(warm)
    elsewhere = tmp_path / "elsewhere.cwasm"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    with structlog.testing.capture_logs() as logs:
        assert _compile(warm) == (False, 1000)
    assert "module_cache_unreadable" in _events(logs)
    assert not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` unwritable for this process: immutable (root ignores modes), else mode 0500."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot make a folder read-only as root here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)


def test_module_cache_read_only_folder_loads_what_it_has_and_compiles_the_rest_in_memory(warm: Path) -> None:
    """A read-only data dir: the artifact already there loads warm; a new module is compiled in memory
    and runs, the failed write is logged, and nothing is left in the folder."""
    other = SPIN_WAT.replace(
        "(local.get $i))\n)", '(local.get $i))\n  (func (export "two") (result i32) (i32.const 2))\n)'
    )
    other_digest = hashlib.sha256(other.encode()).hexdigest()
    before = sorted(p.name for p in warm.iterdir())
    with _read_only(warm):
        probe = warm / "probe"
        with pytest.raises(OSError):
            probe.write_bytes(b"x")
        assert _compile(warm) == (True, 1000)
        rt = Runtime(SPIN_SPECS, cache_dir=warm)
        try:
            assert rt.cache_refused is None
            with structlog.testing.capture_logs() as logs:
                module, cached = rt.compile(other.encode(), digest=other_digest, what="t")
            assert not cached and "two" in rt.module_exports(module)
            assert "module_cache_write_failed" in _events(logs)
        finally:
            rt.close()
    assert sorted(p.name for p in warm.iterdir()) == before


def test_module_cache_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    """A write that runs out of room (here a 4 KiB file size limit: EFBIG, as a full disk gives ENOSPC)
    removes its partial file, logs, and the module compiled in memory runs."""
    folder = tmp_path / "modules"

    def work() -> Any:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the failing write returns an error instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        with structlog.testing.capture_logs() as logs:
            result = _compile(folder)
        return [result, _events(logs), sorted(p.name for p in folder.iterdir())]

    (cached, spun), events, left = in_child(work)
    assert (cached, spun) == (False, 1000)
    assert "module_cache_write_failed" in events and left == []
    assert _compile(folder) == (False, 1000)  # without the limit the next compile writes it
    assert _compile(folder) == (True, 1000)


def test_module_cache_two_processes_compiling_one_module_leave_one_good_file(tmp_path: Path) -> None:
    """Two workers compiling the same module at the same moment (released together, three rounds): both
    get a module that runs, the folder holds one whole artifact and no partial file, and a third runtime
    loads it warm."""
    folder = tmp_path / "modules"
    for _ in range(3):
        gate_r, gate_w = os.pipe()
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(gate_w)
                    os.read(gate_r, 1)  # both wait here until the parent closes the gate
                    code = 0 if _compile(folder)[1] == 1000 else 2
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(gate_r)
        time.sleep(0.05)
        os.close(gate_w)  # EOF: both children go at once
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        assert codes == [0, 0]
        assert [p.name for p in folder.iterdir()] == [_artifact(folder).name]
        assert _compile(folder) == (True, 1000)
        _artifact(folder).unlink()


def test_module_cache_partial_file_of_a_dead_writer_is_removed_once_old(warm: Path) -> None:
    """A partial file left by a writer killed mid-write is removed by the next cache opened on the folder
    once it is older than any write takes; a fresh one (a writer at work) and the artifact are kept."""
    from openfang.workers.sandbox._module_cache import STALE_WRITE_S, ModuleCache

    artifact = _artifact(warm)
    old = warm / f".{artifact.name}.4242.1.tmp"
    fresh = warm / f".{artifact.name}.4343.1.tmp"
    old.write_bytes(b"half an artifact")
    fresh.write_bytes(b"a write in progress")
    past = time.time() - STALE_WRITE_S - 5
    os.utime(old, (past, past))
    assert ModuleCache(warm).enabled
    assert not old.exists() and fresh.exists() and artifact.exists()
    assert _compile(warm) == (True, 1000)


def test_prepare_module_checks_exports_and_keeps_nothing_it_refuses(tmp_path: Path) -> None:
    """A module compiled ahead (a worker's warm-up) passes the export checks a first spawn makes: one that
    lacks the guest ABI's exports is refused, naming them, and is not kept for a later spawn to find."""
    from openfang.protocol.errors import SandboxError
    from openfang.workers.host.spawner import HOST_SPECS
    from openfang.workers.manifest import load_manifest
    from openfang.workers.sandbox._wasmtime import Runtime
    from openfang.workers.sandbox.instance import load_code, prepare_module

    (tmp_path / "bare.wat").write_text('(module (memory (export "memory") 1))')
    bare = load_manifest('[agent]\nname = "bare"\nmodule = "bare.wat"\n', base_dir=tmp_path)
    good = load_manifest('[agent]\nname = "echo"\nmodule = "builtin:echo"\n')
    runtime = Runtime(HOST_SPECS, cache_dir=tmp_path / "modules")
    try:
        with pytest.raises(SandboxError, match=r"lacks exports \['alloc', 'agent_handle'\]"):
            prepare_module(runtime, bare)
        assert runtime.cached_pre(load_code(bare)[1]) is None
        assert prepare_module(runtime, good) is True
        assert runtime.cached_pre(load_code(good)[1]) is not None
        assert prepare_module(runtime, good) is False  # kept: not compiled again
    finally:
        runtime.close()
