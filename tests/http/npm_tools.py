"""The npm tools of the HTTP tests (tests/http/npm): installed once, under a lock, on first use."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

NPM_DIR = Path(__file__).resolve().parent / "npm"
BIN = NPM_DIR / "node_modules" / ".bin"


def npm_bin(name: str) -> Path:
    """The path of ``name`` in tests/http/npm/node_modules/.bin (npm install first when it is missing)."""
    if not (BIN / name).exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is required for the MCP interop tests (install nodejs and npm)"
        with open(NPM_DIR / "package.json") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers must not run npm install concurrently
            if not (BIN / name).exists():
                subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--silent"],
                    cwd=NPM_DIR,
                    check=True,
                    timeout=600,
                )
    assert (BIN / name).exists(), f"{name} is not in {BIN} after npm install"
    return BIN / name


def node22_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the npm-shipped Node 22 first on PATH (the conformance kit needs it)."""
    npm_bin("node")
    return {**env, "PATH": f"{BIN}:{env.get('PATH', '')}"}
