"""Where a running daemon says it listens: one small JSON file per cluster name, for ``openfang`` to find it.

A daemon's endpoints depend on its data dir, and the data dir on how it was started (``--data-dir``,
``OPENFANG_DATA_DIR``, or ``[cluster] data_dir`` relative to the config file). ``make run`` starts the
example cluster with a data dir of its own, so a client reading ``examples/cluster.toml`` alone would look
in the wrong place. Each daemon therefore writes ``<runtime dir>/<cluster name>.json`` once its tree is up
(pid, start time, config, data dir, endpoints) and removes it when it stops; the client falls back on it
when the socket its config names is absent, and uses it when it is given no config and no endpoint.

The runtime dir is ``$OPENFANG_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/openfang``, else
``/tmp/openfang-<uid>`` (created 0700; a directory owned by someone else is not used). Readers also look in
``/run/openfang``, where the systemd unit (``examples/openfang.service``) has the daemon write its record.
A record whose process is gone (or whose pid was reused: the start time differs) is stale and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
SYSTEM_RUNTIME_DIR = Path("/run/openfang")  # the systemd unit's RuntimeDirectory


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """What one running daemon publishes about itself."""

    name: str
    pid: int
    started: float  # the process's start time (start_time), to tell a reused pid apart
    config: str
    data_dir: str
    endpoint: str
    events: str

    def alive(self) -> bool:
        started = start_time(self.pid)
        return started is not None and abs(started - self.started) < 0.01


def start_time(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (None: there is no such process).

    Computed as psutil's ``create_time`` computes it on Linux, from the same two numbers: the process's
    start in clock ticks after boot (``/proc/<pid>/stat``) plus the boot time (``btime`` in ``/proc/stat``).
    Read here rather than through psutil, whose import (~13 ms) the daemon would otherwise pay before it is
    ready, only to write its run record.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/stat", "rb") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
        ticks = float(stat[stat.rfind(b")") + 2 :].split()[19])  # field 22, starttime
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK") + boot


def runtime_dir() -> Path:
    """The directory holding the run records of this user's daemons (see the module docstring)."""
    if os.environ.get("OPENFANG_RUNTIME_DIR"):
        return Path(os.environ["OPENFANG_RUNTIME_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "openfang"
    return Path(temp_dir()) / f"openfang-{os.getuid()}"


def temp_dir() -> str:
    """The directory ``tempfile.gettempdir()`` would choose, found without importing tempfile.

    tempfile imports shutil, random, bz2 and lzma, and its probe writes a file in each candidate: ~3 ms
    before READY when neither runtime dir variable is set. The candidates are tempfile's, in its order
    (``$TMPDIR``, ``$TEMP``, ``$TMP``, ``/tmp``, ``/var/tmp``, ``/usr/tmp``); the first that is a directory
    this process may write in is taken (``os.access``, which knows a read-only mount), made absolute as
    tempfile makes it. With none usable tempfile is asked (it falls back on the working directory or fails).
    """
    candidates = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for d in [*candidates, "/tmp", "/var/tmp", "/usr/tmp"]:
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return os.path.abspath(d)
    import tempfile

    return tempfile.gettempdir()


def _path(name: str, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / (_SAFE.sub("_", name) + ".json")


def publish(record: RunRecord, directory: Path | None = None) -> Path | None:
    """Write ``record`` atomically; None (and nothing written) when the runtime dir is not usable."""
    d = directory or runtime_dir()
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if d.stat().st_uid != os.getuid():
            return None
        path = _path(record.name, d)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(record), sort_keys=True))
        os.replace(tmp, path)
        return path
    except OSError:
        return None


def withdraw(name: str, pid: int, directory: Path | None = None) -> None:
    """Remove the record of cluster ``name`` if it is still the one process ``pid`` wrote."""
    path = _path(name, directory)
    record = _read(path)
    if record is not None and record.pid == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def _search(directory: Path | None) -> list[Path]:
    if directory is not None:
        return [directory]
    own = runtime_dir()
    return [own] if own == SYSTEM_RUNTIME_DIR else [own, SYSTEM_RUNTIME_DIR]


def find(name: str, directory: Path | None = None) -> RunRecord | None:
    """The live record of cluster ``name`` (this user's first, then the system service's), or None."""
    for d in _search(directory):
        record = _read(_path(name, d))
        if record is not None and record.alive():
            return record
    return None


def running(directory: Path | None = None) -> list[RunRecord]:
    """Every live record in the runtime dirs, by name."""
    out: list[RunRecord] = []
    for d in _search(directory):
        try:
            paths = sorted(d.glob("*.json"))
        except OSError:
            continue
        out += [r for r in (_read(p) for p in paths) if r is not None and r.alive()]
    return out


def _read(path: Path) -> RunRecord | None:
    try:
        raw: Any = json.loads(path.read_text())
        return RunRecord(**{k: raw[k] for k in RunRecord.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError):
        return None
