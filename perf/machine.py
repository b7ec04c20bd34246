"""What a benchmark ran on: cores, CPU model, memory, Python, package versions, date and git revision.

Figures from a shared, noisy machine only mean something next to this record, so every results file
carries it (see perf/README.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Our runtime dependencies (pyproject.toml) whose versions shape the figures; pysqlite3-binary is the
# openfang[sqlite] extra, and which SQLite memory really runs on is recorded by memory_sqlite().
PACKAGES: tuple[str, ...] = (
    "openfang",
    "wasmtime",
    "pyzmq",
    "msgpack",
    "psutil",
    "structlog",
    "sqlite-vec",
    "pysqlite3-binary",
)


def cpu_model(cpuinfo: str | None = None) -> str:
    """The ``model name`` of the first CPU in /proc/cpuinfo (or in ``cpuinfo``), else the platform's guess."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or platform.machine()


def mem_total_mb() -> float | None:
    """Physical memory in MB from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package in this interpreter ("missing" when absent)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def memory_sqlite() -> str:
    """The memory store's SQLite driver here (route, SQLite version, library), or why there is none."""
    from openfang.memory._driver import driver
    from openfang.protocol.errors import MemoryStoreError

    try:
        return driver().describe()
    except MemoryStoreError as exc:
        return f"none: {exc.message}"


def git_rev(repo: Path = REPO) -> str:
    """Short HEAD commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--"], cwd=repo, capture_output=True, check=False
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}+dirty" if dirty else rev


def collect() -> dict[str, Any]:
    """The machine record stored in every results file."""
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "mem_total_mb": mem_total_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "packages": package_versions(),
        "memory_sqlite": memory_sqlite(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_rev": git_rev(),
        "load_avg": list(os.getloadavg()),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(collect(), indent=2))
