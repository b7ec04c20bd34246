"""Create or refresh the peers' isolated venvs under perf/.peers/ (idempotent), and prove they work offline.

    python -m perf.peers.setup [--only crewai|langgraph ...] [--force] [--write-locks]

Each peer gets its own venv with pinned top-level versions (:data:`PEERS`) and, when
``perf/peers/locks/<peer>.txt`` exists, every transitive dependency pinned too (pip ``-c``), so two
machines benchmark the same code. A venv whose stamp (``installed.json``) matches the pins and whose
framework imports is left alone. After installing, a cold start of the peer's benchmark script runs in a
network namespace with no interfaces (``unshare -n``, when we are allowed to) to prove it needs no network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from perf import workloads as wl
from perf.peers._driver import OFFLINE_ENV

PEERS_DIR = Path(__file__).resolve().parents[1] / ".peers"
LOCK_DIR = Path(__file__).resolve().parent / "locks"
SCRIPTS_DIR = Path(__file__).resolve().parent

# Newest releases that install from PyPI on Python 3.11 here (langchain-core >= 1.7.3 needs a certifi
# release newer than any on the index).
PEERS: dict[str, tuple[str, ...]] = {
    "crewai": ("crewai==1.15.30",),
    "langgraph": ("langgraph==1.2.22", "langchain-core==1.7.2"),
}
IMPORT_CHECK: dict[str, str] = {
    "crewai": "import crewai, crewai.llms.base_llm",
    "langgraph": "import langgraph.graph, langgraph.prebuilt, langchain_core.language_models",
}


def venv_python(name: str) -> Path:
    """The interpreter of peer ``name``'s venv."""
    return PEERS_DIR / name / "bin" / "python"


def _lock_digest(name: str) -> str | None:
    lock = LOCK_DIR / f"{name}.txt"
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else None


def _imports(name: str) -> bool:
    py = venv_python(name)
    if not py.exists():
        return False
    env = {**os.environ, **OFFLINE_ENV}
    return subprocess.run([str(py), "-c", IMPORT_CHECK[name]], env=env, capture_output=True).returncode == 0


def _stamp(name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((PEERS_DIR / name / "installed.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def up_to_date(name: str) -> bool:
    """True when the venv exists, matches the pins and the lock, and its framework imports."""
    stamp = _stamp(name)
    return (
        stamp is not None
        and stamp.get("requirements") == list(PEERS[name])
        and stamp.get("lock") == _lock_digest(name)
        and _imports(name)
    )


def install(name: str) -> dict[str, Any]:
    """(Re)create peer ``name``'s venv and install its pinned packages; returns and stores the stamp."""
    venv = PEERS_DIR / name
    py = venv_python(name)
    if not py.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PEERS[name]]
    lock = LOCK_DIR / f"{name}.txt"
    if lock.exists():
        cmd += ["-c", str(lock)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    freeze = subprocess.run(
        [str(py), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout
    stamp = {
        "requirements": list(PEERS[name]),
        "lock": _lock_digest(name),
        "installed": sorted(line for line in freeze.splitlines() if line and not line.startswith("#")),
        "venv_mb": round(wl.dir_size_bytes(str(venv)) / (1 << 20), 1),
        "install_seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (venv / "installed.json").write_text(json.dumps(stamp, indent=2) + "\n")
    return stamp


def offline_prefix() -> list[str]:
    """``["unshare", "-n"]`` when we may run a command with no network at all, else ``[]``."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


def offline_check(name: str) -> str:
    """Run the peer's cold start with no network; returns how it was checked (RuntimeError if it fails)."""
    prefix = offline_prefix()
    script = SCRIPTS_DIR / f"{name}_bench.py"
    proc = subprocess.run(
        [*prefix, str(venv_python(name)), str(script), "--cold"],
        env={**os.environ, **OFFLINE_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    want = wl.agent_reply(wl.ROUTES[0], wl.routing_messages(1)[0])
    if proc.returncode != 0 or proc.stdout.strip() != want:
        raise RuntimeError(
            f"{name}: offline cold start failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    return (
        "in a network namespace with no interfaces" if prefix else "with telemetry off (unshare unavailable)"
    )


def write_lock(name: str) -> Path:
    """Record the venv's exact versions as the lock file the next install is constrained by."""
    freeze = subprocess.run(
        [str(venv_python(name)), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout
    LOCK_DIR.mkdir(exist_ok=True)
    path = LOCK_DIR / f"{name}.txt"
    header = f"# pip freeze of perf/.peers/{name}; python -m perf.peers.setup --write-locks rewrites it\n"
    path.write_text(header + freeze)
    stamp = _stamp(name)
    if stamp is not None:  # the venv is exactly what the lock says: keep it up to date
        stamp["lock"] = _lock_digest(name)
        (PEERS_DIR / name / "installed.json").write_text(json.dumps(stamp, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.peers.setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(PEERS), default=sorted(PEERS))
    parser.add_argument("--force", action="store_true", help="reinstall even if up to date")
    parser.add_argument("--write-locks", action="store_true", help="after installing, rewrite the lock files")
    args = parser.parse_args(argv)
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only:
        if not args.force and up_to_date(name):
            stamp = _stamp(name) or {}
            print(f"{name}: up to date ({', '.join(PEERS[name])}; venv {stamp.get('venv_mb')} MB)")
        else:
            print(f"{name}: installing {', '.join(PEERS[name])} into {PEERS_DIR / name} ...", flush=True)
            try:
                stamp = install(name)
            except subprocess.CalledProcessError as exc:
                print(f"{name}: install FAILED: {exc}", file=sys.stderr)
                failed.append(name)
                continue
            print(
                f"{name}: installed {len(stamp['installed'])} packages in {stamp['install_seconds']} s, "
                f"venv {stamp['venv_mb']} MB:"
            )
            print("  " + "\n  ".join(stamp["installed"]))
        if args.write_locks:
            print(f"{name}: lock written to {write_lock(name)}")
        try:
            print(f"{name}: answers offline ({offline_check(name)})")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
