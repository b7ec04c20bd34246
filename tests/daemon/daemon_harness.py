"""Starts a real ``openfang-supervisor`` for a test and talks to it over its real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq

from openfang.protocol.envelope import Envelope, decode, encode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

BASE_CONFIG = """
[cluster]
name = "test"
data_dir = "{data_dir}"

[control]
request_timeout_ms = {request_timeout_ms}
queue_limit = {queue_limit}

[logging]
level = "debug"
format = "json"

[supervisor]
strategy = "one_for_one"
intensity = {intensity}
period = 5

{http_table}{memory_child}[[supervisor.children]]
id = "workers"
type = "supervisor"
strategy = "one_for_one"
intensity = 10
period = 10
inline = {inline}

[supervisor.children.pool]
count = {workers}
pin = true
start = "openfang.workers.worker:main"
restart = "permanent"
shutdown = 2000
heartbeat_ms = 3000
"""


# Config text that lifts the client, global and per-agent request limits: for tests that send in bursts.
UNLIMITED = "".join(
    f"\n[security.ratelimit.{bucket}]\nrate = 0\nburst = 0\n"
    for bucket in ("client_requests", "global_requests", "agent_requests")
)

MEMORY_CHILD = """[[supervisor.children]]
id = "memory"
start = "openfang.memory.writer:main"
shutdown = 5000
heartbeat_ms = 3000

"""


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Cluster:
    """One daemon process under test: config, notify socket, client socket, log file."""

    def __init__(
        self,
        workers: int = 2,
        extra: str = "",
        intensity: int = 3,
        queue_limit: int = 1000,
        request_timeout_ms: int = 10000,
        memory: bool = False,
        http: bool = False,
        inline: bool = False,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="of-", dir="/tmp"))
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "cluster.toml"
        self.settings = dict(
            data_dir=self.data_dir,
            workers=workers,
            intensity=intensity,
            queue_limit=queue_limit,
            request_timeout_ms=request_timeout_ms,
            memory_child=MEMORY_CHILD if memory else "",
            http_table="",
            inline="true" if inline else "false",  # the workers pool in the daemon's process, not forked
        )
        self.http_port = free_port() if http else 0
        if http:
            self.settings["http_table"] = f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n\n'

        self.write_config(extra)
        self.notify_path = str(self.dir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.notifications: list[str] = []
        self.log_path = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.zctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self.known_pids: dict[int, float] = {}  # pid -> create_time, so a reused pid is not mistaken

    def write_config(self, extra: str = "", **overrides: Any) -> None:
        settings = {**self.settings, **overrides}
        self.config_path.write_text(BASE_CONFIG.format(**settings) + extra)

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.data_dir}/run/control.sock"

    @property
    def http_url(self) -> str:
        """The base URL of the [http] face (the cluster was made with ``http=True``)."""
        assert self.http_port, "make the cluster with http=True"
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def events_endpoint(self) -> str:
        return f"ipc://{self.data_dir}/run/events.sock"

    def start(
        self,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        config_arg: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> Cluster:
        """Start the daemon; ``config_arg`` is what ``--config`` is given (default: the absolute path)."""
        full_env = dict(os.environ)
        full_env["NOTIFY_SOCKET"] = self.notify_path
        full_env["PYTHONPATH"] = os.pathsep.join([str(HERE), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        config = config_arg or str(self.config_path)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openfang.control.daemon", "--config", config, *extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=self.dir,
            )
        if wait_ready:
            self.wait_notification("READY=1", timeout=30)
            self.remember_pids()
        return self

    def wait_notification(self, field: str, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for fields in self.drain_notifications():
                if field in fields:
                    return fields
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        raise AssertionError(f"no {field} within {timeout}s; got {self.notifications}\n{self.log()}")

    def drain_notifications(self) -> Iterator[list[str]]:
        while True:
            try:
                data = self.notify.recv(65536).decode()
            except (TimeoutError, BlockingIOError):
                return
            self.notifications.append(data)
            yield data.split("\n")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # -- talking ----------------------------------------------------------------------------------------

    @property
    def sock(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            self._sock = self.zctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.endpoint)
        return self._sock

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv_env(self, timeout: float = 15.0) -> Envelope:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no reply within {timeout}s\n{self.log()[-4000:]}")
        return decode(self.sock.recv_multipart()[-1])

    def call(self, msg_type: str, body: dict[str, Any] | None = None, timeout: float = 15.0) -> Envelope:
        req = Envelope(type=msg_type, body=body or {})
        self.send_raw(encode(req))
        while True:
            reply = self.recv_env(timeout)
            if reply.id == req.id:
                return reply

    def ok(self, msg_type: str, body: dict[str, Any] | None = None, timeout: float = 15.0) -> dict[str, Any]:
        reply = self.call(msg_type, body, timeout)
        assert not reply.is_error, f"{msg_type} failed: {reply.body}"
        return reply.body

    def tree(self) -> list[dict[str, Any]]:
        return list(self.ok("tree")["children"])

    def node(self, *path: str) -> dict[str, Any]:
        nodes = self.tree()
        node: dict[str, Any] = {}
        for part in path:
            node = next(n for n in nodes if n["id"] == part)
            nodes = node.get("children") or []
        return node

    def wait_restarted(self, *path: str, old_pid: int) -> dict[str, Any]:
        """The node at ``path`` once it runs again in a process other than ``old_pid``."""

        def restarted() -> dict[str, Any] | None:
            node = self.node(*path)
            return node if node["pid"] not in (None, old_pid) and node["state"] == "running" else None

        node: dict[str, Any] = wait_for(restarted, what=f"{'/'.join(path)} to restart")
        return node

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def remember_pids(self) -> None:
        for proc in self.descendants():
            with contextlib.suppress(psutil.NoSuchProcess):
                self.known_pids.setdefault(proc.pid, proc.create_time())

    def subscribe(self) -> zmq.Socket[bytes]:
        sub = self.zctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.events_endpoint)
        time.sleep(0.3)  # PUB/SUB joins late: let the subscription reach the publisher
        return sub

    # -- ending ---------------------------------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.remember_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"daemon did not stop within {timeout}s\n{self.log()[-4000:]}") from None
        return self.proc.returncode

    def assert_no_survivors(self, timeout: float = 10.0) -> None:
        """Every process this daemon ever had is gone (not running, not a zombie)."""

        def survivors() -> list[int]:
            return sorted(p for p, t in self.known_pids.items() if _alive(p, t))

        wait_for(lambda: not survivors(), timeout, "every descendant to exit and be reaped")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.remember_pids()
            self.proc.kill()
            self.proc.wait(5)
        for pid, created in self.known_pids.items():
            if _alive(pid, created):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._sock is not None:
            self._sock.close()
        self.zctx.destroy(linger=0)  # also closes sockets a failed test left open (a SUB in its frame)
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    """A TCP port free on loopback right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int, created: float) -> bool:
    """Running or a zombie nobody reaped: either way a survivor."""
    try:
        return abs(psutil.Process(pid).create_time() - created) < 0.01
    except psutil.NoSuchProcess:
        return False


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)
