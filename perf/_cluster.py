"""Start a real daemon for a benchmark, talk to it with raw sockets, and stop it. Not a test helper."""

from __future__ import annotations

import compileall
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from openfang.control.config import default_control
from openfang.protocol.envelope import Envelope, decode, encode

CONFIG = """
[cluster]
name = "bench"
data_dir = "{data_dir}"
[control]
queue_limit = 100000
hwm = 100000
{control_extra}
[logging]
level = "warning"
format = "json"
[supervisor]
strategy = "one_for_one"
intensity = 1000
period = 1
[[supervisor.children]]
id = "workers"
type = "supervisor"
# Inline: the pool's supervisor runs in the daemon's process, not a forked one (one Python process less:
# idle PSS 70.5 -> 66.0 MB, RSS 178.9 -> 146.5 MB; perf/PROFILE.md "Idle memory").
inline = true
strategy = "one_for_one"
intensity = 100000
period = 1
start_order = "parallel"
[supervisor.children.pool]
count = {workers}
{elastic}pin = true
start = "openfang.workers.worker:main"
restart = "permanent"
shutdown = 2000
heartbeat_ms = 5000
"""


REPO = Path(__file__).resolve().parent.parent
# The package's own folders (openfang/ links the others, and compileall does not follow links).
SOURCE_DIRS = ("openfang", "supervisor", "control", "workers", "protocol", "memory", "security")


@functools.cache
def ensure_bytecode() -> None:
    """Compile the package's modules to .pyc, as a wheel install does (`make install` does it too).

    An editable install has no bytecode until an import writes it, and with PYTHONDONTWRITEBYTECODE set no
    import ever does: every daemon exec would then compile ~80 modules (~150 ms of a cold start) that the
    peers, installed from wheels, never compile. Up to date, this only reads the files' times."""
    for name in SOURCE_DIRS:
        if not compileall.compile_dir(REPO / name, quiet=1):
            raise RuntimeError(f"compiling {REPO / name} failed (a syntax error?)")


# The headline benchmarks (perf/bench_system.py) run the pool elastic, as the shipped tree does
# (examples/cluster.toml): one worker runs while idle, the others start under load (perf/PROFILE.md "Idle
# memory"). OPENFANG_BENCH_MIN_RUNNING=all runs every worker all the time (the fixed pool, for A/B figures).
# The other benchmarks keep a fixed pool (min_running=None): they place agents on named workers.
SYSTEM_MIN_RUNNING: int | None = (
    None
    if os.environ.get("OPENFANG_BENCH_MIN_RUNNING", "1") == "all"
    else int(os.environ.get("OPENFANG_BENCH_MIN_RUNNING", "1"))
)


def _elastic(workers: int | str, min_running: int | None) -> str:
    if min_running is None or (isinstance(workers, int) and workers <= min_running):
        return ""
    return f"min_running = {min_running}\n"


class BenchCluster:
    def __init__(
        self,
        workers: int | str = "auto",
        control_extra: str = "",
        extra: str = "",
        *,
        min_running: int | None = None,
    ) -> None:
        ensure_bytecode()
        self.dir = Path(tempfile.mkdtemp(prefix="ofb-", dir="/tmp"))
        self.data_dir = self.dir / "d"
        self.config = self.dir / "cluster.toml"
        count = f'"{workers}"' if isinstance(workers, str) else str(workers)
        self.config.write_text(
            CONFIG.format(
                data_dir=self.data_dir,
                workers=count,
                control_extra=control_extra,
                elastic=_elastic(workers, min_running),
            )
            + extra
        )
        self.notify_path = str(self.dir / "n.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)

        self._endpoint = default_control(self.data_dir).endpoint

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def use_tcp(self) -> None:
        """Switch the control endpoint to tcp:// on a free loopback port, with CURVE keys (required)."""
        import socket as _socket

        from openfang.protocol.curve import CurveClient, generate_keys

        keys = self.dir / "keys"
        generate_keys(keys, "bench")
        with _socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        text = self.config.read_text().replace(
            "[control]\n", f'[control]\nendpoint = "tcp://127.0.0.1:{port}"\nkeys_dir = "{keys}"\n'
        )
        self.config.write_text(text)
        self._endpoint = f"tcp://127.0.0.1:{port}"
        CurveClient(keys, name="bench").apply(self.sock)

    def start(self, timeout: float = 60) -> float:
        """Exec the daemon; seconds from exec to READY=1 on the notify socket."""
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        t0 = time.perf_counter()
        log = (self.dir / "log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openfang.control.daemon", "--config", str(self.config)],
            stdout=log,  # the processes log JSON lines to stdout (level warning): why a run failed
            stderr=log,
            env=env,
        )
        log.close()  # the child holds its own copy
        self.notify.settimeout(timeout)
        while True:
            data = self.notify.recv(4096).decode()
            if "READY=1" in data.split("\n"):
                ready = time.perf_counter() - t0
                break
        self.sock.connect(self.endpoint)
        return ready

    def call(self, msg_type: str, body: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        env = Envelope(type=msg_type, body=body or {})
        self.sock.send(encode(env))
        while True:
            if not self.sock.poll(int(timeout * 1000)):
                raise TimeoutError(msg_type)
            reply = decode(self.sock.recv())
            if reply.id == env.id:
                if reply.is_error:
                    raise RuntimeError(f"{msg_type}: {reply.body}")
                return reply.body

    def pids(self) -> list[int]:
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        return [proc.pid, *(p.pid for p in proc.children(recursive=True))]

    def memory(self) -> tuple[int, int]:
        """(PSS, RSS) summed over the daemon and all its descendants, in bytes."""
        pss = rss = 0
        for pid in self.pids():
            try:
                info = psutil.Process(pid).memory_full_info()
            except psutil.Error:
                continue
            pss += info.pss
            rss += info.rss
        return pss, rss

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()
        self.zctx.term()
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BenchCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The load generator is one client: unlimited (rate = 0) buckets, still checked on every request; the
# global ceiling (all clients together) is lifted too.
UNLIMITED_CLIENT = (
    "\n[security.ratelimit.client_requests]\nrate = 0\nburst = 0\n"
    "\n[security.ratelimit.global_requests]\nrate = 0\nburst = 0\n"
)
