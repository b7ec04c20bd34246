"""Fixtures for the memory tests: real writer processes on ipc sockets under a short /tmp directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openfang.memory import _db, schema
from openfang.memory._apply import Applier
from openfang.memory.client import MemoryClient
from openfang.protocol.envelope import Envelope


@dataclass
class WriterHandle:
    """A writer process started by a test; ``restart()`` starts a new one on the same db and endpoint."""

    db: Path
    endpoint: str
    options: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> WriterHandle:
        cmd = [
            sys.executable,
            "-m",
            "openfang.memory.writer",
            "--db",
            str(self.db),
            "--endpoint",
            self.endpoint,
        ]
        for key, value in self.options.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        assert self.log is not None
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out)
        self.procs.append(self.proc)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        with MemoryClient(self.endpoint, resend_after_s=0.2) as client:
            deadline = time.monotonic() + timeout_s
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.log_text()
                try:
                    client.ping(timeout_s=0.5)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    """A short directory for ipc sockets (paths must stay under ~100 characters)."""
    d = tempfile.mkdtemp(dir="/tmp", prefix="ofm")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def writer(tmp_path: Path, ipc_dir: str) -> Iterator[Callable[..., WriterHandle]]:
    """Factory: ``writer(**options)`` starts a writer process (options are its CLI flags)."""
    handles: list[WriterHandle] = []

    def start(**options: Any) -> WriterHandle:
        n = len(handles)
        h = WriterHandle(
            db=tmp_path / f"mem{n}.db",
            endpoint=f"ipc://{ipc_dir}/w{n}.ipc",
            options=options,
            log=tmp_path / f"writer{n}.log",
        )
        handles.append(h)
        return h.start()

    yield start
    for h in handles:
        h.stop()


@dataclass
class LocalStore:
    """An in-process writer connection + applier (no socket), for fast query tests."""

    db: Path
    conn: Any
    applier: Applier
    n: int = 0

    def apply(self, msg_type: str, body: dict[str, Any]) -> Envelope:
        self.n += 1
        (reply,) = self.applier.apply_group([Envelope(type=msg_type, body=body, id=f"t{self.n}")])
        return reply

    def ok(self, msg_type: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.apply(msg_type, body)
        assert not reply.is_error, reply.body
        return reply.body


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[LocalStore]:
    db = tmp_path / "local.db"
    conn = _db.open_writer(db)
    schema.migrate_connection(conn)
    yield LocalStore(db=db, conn=conn, applier=Applier(conn))
    conn.close()
