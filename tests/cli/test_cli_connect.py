"""How ``openfang`` finds the daemon: no daemon fails at once, and a daemon started with its own data dir
(as ``make run`` starts it) is found from the config alone, from ``--data-dir``, or with no flag at all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OPENFANG_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "openfang.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
    )


def test_cli_no_socket_file_fails_at_once_naming_the_endpoint(tmp_path: Path) -> None:
    """An ipc endpoint without a socket file: exit 3, 'no daemon at <endpoint>', long before --timeout."""
    endpoint = f"ipc://{tmp_path}/run/control.sock"
    t0 = time.monotonic()
    res = _ctl("--endpoint", endpoint, "--timeout", "10", "tree")
    took = time.monotonic() - t0
    assert res.returncode == 3, res.stderr
    assert f"no daemon at {endpoint}" in res.stderr
    assert took < 2  # generous bound (process start included): it must not wait for the 10 s timeout


def test_cli_stale_socket_file_fails_at_once(tmp_path: Path) -> None:
    """A socket file left by a killed daemon (nobody listening): exit 3 at once, saying it is stale."""
    path = tmp_path / "control.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    t0 = time.monotonic()
    res = _ctl("--endpoint", f"ipc://{path}", "--timeout", "10", "status")
    assert res.returncode == 3 and f"no daemon at ipc://{path}" in res.stderr and "left over" in res.stderr
    assert time.monotonic() - t0 < 2


def test_cli_config_with_the_daemon_absent_fails_at_once(tmp_path: Path) -> None:
    """--config of a cluster that is not running: exit 3 with the config's endpoint, not a 10 s wait."""
    config = tmp_path / "cluster.toml"
    config.write_text('[cluster]\nname = "nobody-runs-this"\ndata_dir = "data"\n')
    res = _ctl("--config", str(config), "tree", env={"OPENFANG_RUNTIME_DIR": str(tmp_path / "rt")})
    assert res.returncode == 3
    assert f"no daemon at ipc://{tmp_path}/data/run/control.sock" in res.stderr


def test_cli_without_any_flag_says_what_to_pass(tmp_path: Path) -> None:
    """No flag, no environment, no running daemon: exit 2 naming the options, no <config> placeholder."""
    res = _ctl("status", env={"OPENFANG_RUNTIME_DIR": str(tmp_path / "rt")})
    assert res.returncode == 2 and "--endpoint, --config or --data-dir" in res.stderr
    assert "<config>" not in res.stderr


class Daemon:
    """openfang-supervisor started like `make run` starts it: the example config, its own --data-dir."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="of-cli-", dir="/tmp"))
        self.config = self.dir / "examples" / "cluster.toml"
        self.config.parent.mkdir()
        text = (ROOT / "examples" / "cluster.toml").read_text().replace('count = "auto"', "count = 1")
        text = text.replace('name = "openfang-demo"', f'name = "cli-{os.getpid()}"')
        # Not the example's fixed HTTP port: a daemon the user runs (make run) may hold it.
        example_listen = 'listen = "127.0.0.1:8470"'
        assert example_listen in text
        with socket.socket() as s:  # a port the kernel says is free now
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.config.write_text(text.replace(example_listen, f'listen = "127.0.0.1:{port}"'))
        self.data_dir = self.dir / "elsewhere"
        self.runtime = self.dir / "rt"
        self.env = {"OPENFANG_RUNTIME_DIR": str(self.runtime)}
        self.log = (self.dir / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "openfang.control.daemon", "--config", str(self.config)),
                *("--data-dir", str(self.data_dir), "--log-format", "json"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + 60
        while not list(self.runtime.glob("*.json")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close_log()
                log = (self.dir / "daemon.log").read_text(errors="replace")[-3000:]
                self.close()
                raise AssertionError(f"the daemon did not come up (exit {self.proc.returncode}):\n{log}")
            time.sleep(0.05)

    def close_log(self) -> None:
        if not self.log.closed:
            self.log.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    d.close()


@pytest.mark.integration
def test_cli_finds_a_daemon_started_with_its_own_data_dir(daemon: Daemon) -> None:
    """The README's `openfang --config examples/cluster.toml tree` works while the daemon runs with
    another --data-dir (found by its run record); so do --data-dir and no flag at all."""
    for args in (["--config", str(daemon.config)], ["--data-dir", str(daemon.data_dir)], []):
        res = _ctl(*args, "--json", "status", env=daemon.env)
        assert res.returncode == 0, (args, res.stderr)
        status = json.loads(res.stdout)
        assert status["data_dir"] == str(daemon.data_dir) and status["pid"] == daemon.proc.pid
    tree = _ctl("--config", str(daemon.config), "tree", env=daemon.env)
    assert tree.returncode == 0 and "workers-0" in tree.stdout
    # --data-dir says exactly where: a wrong one is not silently replaced by the run record.
    wrong = _ctl(
        "--config", str(daemon.config), "--data-dir", str(daemon.dir / "nope"), "tree", env=daemon.env
    )
    assert wrong.returncode == 3 and "no daemon at" in wrong.stderr


@pytest.mark.integration
def test_cli_config_of_another_cluster_with_the_same_name_is_not_redirected(daemon: Daemon) -> None:
    """A different config that shares the cluster name is not sent to the running daemon: no daemon at."""
    other = daemon.dir / "other.toml"
    other.write_text(daemon.config.read_text().replace("intensity = 3", "intensity = 4"))
    res = _ctl("--config", str(other), "tree", env=daemon.env)
    assert (
        res.returncode == 3
        and f"no daemon at ipc://{daemon.dir}/.openfang-data/run/control.sock" in res.stderr
    )


@pytest.mark.integration
def test_cli_run_record_is_removed_when_the_daemon_stops(daemon: Daemon) -> None:
    """After a clean stop the run record is gone, and the config alone fails at once again."""
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    assert not list(daemon.runtime.glob("*.json"))
    res = _ctl("--config", str(daemon.config), "tree", env=daemon.env)
    assert res.returncode == 3 and "no daemon at" in res.stderr
