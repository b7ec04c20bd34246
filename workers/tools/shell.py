"""``shell_exec``: run an allowed command in a bubblewrap sandbox, never unconfined.

The command is an argv list (no shell parsing unless the agent's allowlist names a shell itself) whose
first element must be in the agent's ``[agent.shell] allow`` list. It runs under ``bwrap`` with every
namespace unshared (no network, its own pid/ipc/uts/cgroup namespaces), a read-only view of ``/usr`` (and
``/etc`` for the dynamic loader and locale), a private ``/tmp``, the agent's scoped folder bound read-write
at ``/work`` (its only writable place, and the working directory), a cleared environment, and
``--die-with-parent`` so a worker crash kills it. Resource limits are set with ``setrlimit`` before ``bwrap``
starts and are inherited by the command: CPU seconds, address space, file size, open files and processes.
The wall-clock timeout kills the whole process group, and output is read incrementally and capped, so a
command printing without end costs at most the cap.

Where namespaces cannot be created (a container without user namespaces, no ``bwrap`` installed), the
tool answers ``unavailable`` and runs nothing: it never falls back to running the command unconfined.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from openfang.workers.tools.core import ShellPolicy, Tool, ToolContext, ToolError

BWRAP = os.environ.get("OPENFANG_BWRAP", "bwrap")
PRLIMIT = "prlimit"
MAX_ARGS = 256
MAX_ARG_CHARS = 100_000


def sandbox_available() -> str | None:
    """None when bubblewrap can create its namespaces here, else the reason it cannot (probed once)."""
    return _probe(BWRAP)


@functools.lru_cache(maxsize=4)
def _probe(bwrap: str) -> str | None:
    exe = shutil.which(bwrap)
    if exe is None:
        return f"bubblewrap ({bwrap!r}) is not installed (Debian: apt-get install bubblewrap)"
    if shutil.which(PRLIMIT) is None:
        return "prlimit (util-linux) is not installed: resource limits cannot be set"
    try:
        probe = subprocess.run(
            [exe, *_base_args(None), "--", "/bin/true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to start: {exc}"
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def _base_args(work: Path | None) -> list[str]:
    args = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--clearenv",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8",
    ]  # fmt: skip
    if Path("/usr/lib64").is_dir():
        args += ["--symlink", "usr/lib64", "/lib64"]
    for etc in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"):
        if os.path.exists(etc):
            args += ["--ro-bind", etc, etc]
    if work is not None:
        args += ["--bind", str(work), "/work", "--chdir", "/work", "--setenv", "HOME", "/work"]
    return args


def _user_tasks() -> int:
    """Tasks (processes and threads) of this uid now: RLIMIT_NPROC counts them all."""
    uid = os.getuid()
    total = 0
    for p in psutil.process_iter(["uids", "num_threads"]):
        if p.info["uids"] is not None and p.info["uids"].real == uid:
            total += p.info["num_threads"] or 1
    return total


def _limits(policy: ShellPolicy, nproc: int | None) -> list[str]:
    """util-linux ``prlimit`` in front of bwrap: limits set without Python code between fork and exec
    (unsafe in a worker that runs threads), inherited by bwrap and the command."""
    mem = policy.memory_mb << 20
    args = [
        PRLIMIT,
        f"--cpu={policy.cpu_s}:{policy.cpu_s + 1}",
        f"--as={mem}",
        f"--fsize={64 << 20}",
        "--nofile=256",
        "--core=0",
    ]
    if nproc is not None:
        args.append(f"--nproc={nproc}")
    return [*args, "--"]


def run_sandboxed(argv: Sequence[str], work: Path, policy: ShellPolicy, stdin: str = "") -> dict[str, Any]:
    """Run ``argv`` in the sandbox with ``work`` as /work; returns exit code, output (capped), and timing."""
    reason = sandbox_available()
    if reason is not None:
        raise ToolError(f"shell_exec refuses to run unconfined: {reason}", code="unavailable")
    exe = shutil.which(BWRAP) or BWRAP
    # RLIMIT_NPROC does not bind root (CAP_SYS_RESOURCE); for any other user it caps the command's forks.
    nproc = None if os.getuid() == 0 else _user_tasks() + policy.max_processes
    started = time.monotonic()
    # stdin from a file, not a pipe: a command that never reads it cannot block us while we write.
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write(stdin.encode())
        stdin_file.seek(0)
        proc = subprocess.Popen(
            [*_limits(policy, nproc), exe, *_base_args(work), "--", *argv],
            stdin=stdin_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,  # its own group, so a timeout kills everything it started
            close_fds=True,
        )
    out, err, truncated, timed_out = _collect(proc, policy, started)
    return {
        "exit_code": proc.returncode,
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
        "truncated": truncated,
        "timed_out": timed_out,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }


def _collect(
    proc: subprocess.Popen[bytes], policy: ShellPolicy, started: float
) -> tuple[bytes, bytes, bool, bool]:
    bufs: dict[int, bytearray] = {}
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        assert stream is not None
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ)
        bufs[stream.fileno()] = bytearray()
    truncated = timed_out = False
    deadline = started + policy.timeout_s
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fd]
                room = policy.max_output_bytes - len(buf)
                buf += chunk[: max(room, 0)]
                if len(chunk) > room:
                    truncated = True
            if truncated:
                break
    finally:
        sel.close()
        if timed_out or truncated:
            with_group_killed(proc)
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            with_group_killed(proc)
            proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), truncated, timed_out


def with_group_killed(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group (bwrap and everything it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def shell_exec(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    policy = ctx.shell
    if policy is None or not policy.allow:
        raise ToolError(
            "shell_exec: this agent's manifest allows no commands ([agent.shell] allow)", code="denied"
        )
    argv = [str(a) for a in args["argv"]]
    if sum(len(a) for a in argv) > MAX_ARG_CHARS:
        raise ToolError(f"arguments longer than {MAX_ARG_CHARS} characters", code="bad_args")
    if argv[0] not in policy.allow:
        allowed = ", ".join(policy.allow)
        raise ToolError(
            f"shell_exec: {argv[0]!r} is not in this agent's allow list ({allowed})", code="denied"
        )
    if ctx.fs_root is None:
        raise ToolError(
            "shell_exec needs the agent's scoped folder (no data dir in this host)", code="unavailable"
        )
    ctx.fs_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return run_sandboxed(argv, ctx.fs_root, policy, args["stdin"])


SHELL_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="shell_exec",
        description=(
            "Run an allowed command (argv list, no shell) in a sandbox: no network, the agent's folder as "
            "/work, CPU/memory/time limits, output capped."
        ),
        schema={
            "type": "object",
            "properties": {
                "argv": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 10_000},
                    "minItems": 1,
                    "maxItems": MAX_ARGS,
                },
                "stdin": {"type": "string", "default": "", "maxLength": 1_000_000},
            },
            "required": ["argv"],
            "additionalProperties": False,
        },
        permission="shell",
        call=shell_exec,
    ),
)
