"""Run the benchmarks and write perf/results/latest.{json,md,svg}.

    python -m perf.run --out perf/results [--peers] [--only NAME ...] [--quick] [--timeout S] [--rounds N]

Each ``perf/bench_*.py`` module (and ``perf/peers/bench_peers.py`` with ``--peers``) exposes
``run() -> list[dict]`` (or ``run(quick: bool)``). Every module runs in its OWN subprocess, in a new session,
under a time limit: memory figures are not polluted by an earlier benchmark, and a benchmark that hangs or
crashes is killed (with every process it started) and shown as failed while the run goes on.

A module may set ``TIMEOUT_S = <seconds>`` at top level; it is read from the source, without importing.
Metrics of modules that did not run successfully this time are carried over from the previous
latest.json, marked with the date they were measured, so a partial run (``--only``) loses nothing.
Every run appends its fresh figures to ``history.jsonl`` (with the git revision and the machine), and the
report shows each metric's change since the previous comparable run (``perf.history``).
With ``--rounds N`` the module list runs N times, reversing the order each round (systems alternate), and
each metric's value is the median over rounds.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from perf import history, machine, report
from perf.workloads import process_tree

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parent
PEERS_MODULE = "perf.peers.bench_peers"
DEFAULT_TIMEOUT_S = 600.0
SYSTEMS = (report.OURS, *report.PEERS)
BETTER = ("higher", "lower")


def discover(perf_dir: Path = PERF_DIR, *, peers: bool = False) -> list[str]:
    """Benchmark modules: ``perf.bench_*`` defining ``run`` (helpers such as bench_tools.py are skipped),
    sorted, then the peers' driver if asked for."""
    mods = sorted(f"perf.{p.stem}" for p in perf_dir.glob("bench_*.py") if defines_run(p))
    return [*mods, PEERS_MODULE] if peers else mods


def defines_run(path: Path) -> bool:
    """True if the file defines a top-level ``run`` function, or cannot be parsed (then its run will fail
    and say why, rather than silently vanish from the table)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return True
    return any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body)


def short_name(module: str) -> str:
    """``perf.bench_memory`` -> ``memory``; ``perf.peers.bench_peers`` -> ``peers``."""
    return module.rpartition(".")[2].removeprefix("bench_")


def select(modules: Sequence[str], only: Sequence[str] | None) -> list[str]:
    """The modules named in ``only`` (short, ``bench_x`` or dotted names); ValueError names unknown ones."""
    if not only:
        return list(modules)
    wanted = {name.rpartition(".")[2].removeprefix("bench_") for name in only}
    known = {short_name(m) for m in modules}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(
            f"--only: no benchmark named {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return [m for m in modules if short_name(m) in wanted]


def module_timeout(module: str, default: float = DEFAULT_TIMEOUT_S) -> float:
    """The module's top-level ``TIMEOUT_S`` constant, read from its source (no import), else ``default``."""
    return timeout_in_source(REPO.joinpath(*module.split(".")).with_suffix(".py"), default)


def timeout_in_source(path: Path, default: float) -> float:
    """The positive number assigned to ``TIMEOUT_S`` at the top level of ``path``, else ``default``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return default
    for node in tree.body:
        value: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if (
                isinstance(target, ast.Name)
                and target.id == "TIMEOUT_S"
                and isinstance(value, ast.Constant)
                and isinstance(value.value, int | float)
                and not isinstance(value.value, bool)
                and value.value > 0
            ):
                return float(value.value)
    return default


def validate_metric(metric: Any, where: str) -> list[str]:
    """Every problem with one metric dict, each naming the place (empty list: valid)."""
    if not isinstance(metric, Mapping):
        return [f"{where}: a metric must be a dict, got {type(metric).__name__}"]
    problems = []
    name = metric.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: 'name' must be a non-empty string")
    else:
        where = f"{where} ({name})"
    if metric.get("system") not in SYSTEMS:
        problems.append(
            f"{where}: 'system' must be one of {', '.join(SYSTEMS)}, got {metric.get('system')!r}"
        )
    value = metric.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        problems.append(f"{where}: 'value' must be a number or null, got {value!r}")
    if not isinstance(metric.get("unit"), str):
        problems.append(f"{where}: 'unit' must be a string")
    if metric.get("better") not in BETTER:
        problems.append(f"{where}: 'better' must be 'higher' or 'lower', got {metric.get('better')!r}")
    for key in ("target", "p50", "p99"):
        v = metric.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            problems.append(f"{where}: '{key}' must be a number or null, got {v!r}")
    if "workers" in metric and (
        isinstance(metric["workers"], bool) or not isinstance(metric["workers"], int)
    ):
        problems.append(f"{where}: 'workers' must be an integer")
    if "agents" in metric and (
        isinstance(metric["agents"], bool) or not isinstance(metric["agents"], int) or metric["agents"] < 1
    ):
        problems.append(f"{where}: 'agents' must be a positive integer (the agent count of a scaling point)")
    if "series" in metric and not isinstance(metric["series"], str):
        problems.append(f"{where}: 'series' must be a string")
    return problems


# --- child side --------------------------------------------------------------------------------------------


def _child(module: str, result_file: str, quick: bool) -> int:
    """Inside the benchmark's subprocess: import, run, write the list of metrics as JSON."""
    import importlib

    mod = importlib.import_module(module)
    run = getattr(mod, "run", None)
    if not callable(run):
        raise SystemExit(f"{module} has no run() function")
    metrics = run(quick=quick) if "quick" in inspect.signature(run).parameters else run()
    Path(result_file).write_text(json.dumps(metrics, default=str), encoding="utf-8")
    return 0


# --- parent side -------------------------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Make orphaned descendants of our benchmarks our children (Linux), so none can outlive the run."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER = 36
    except (OSError, AttributeError):
        return False


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the benchmark, its process group, and descendants that left the group."""
    pids = process_tree(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _kill_pids(pids)
    proc.wait()


def reap_orphans(existing: set[int]) -> int:
    """SIGKILL and reap every process below us that was not there before the benchmark (``existing``)."""
    me = os.getpid()
    leftovers = [p for p in process_tree(me) if p != me and p not in existing]
    _kill_pids(leftovers)
    for pid in leftovers:
        # ChildProcessError: not our direct child; its own parent (killed too) reaps it, or init does.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return len(leftovers)


def run_module(module: str, *, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one benchmark module in a subprocess; returns its record with status, seconds and metrics."""
    record: dict[str, Any] = {"module": short_name(module), "status": "ok", "problems": [], "metrics": []}
    print(f"\n=== {short_name(module)} (timeout {timeout:.0f} s) ===", flush=True)
    with tempfile.TemporaryDirectory(prefix="openfang-bench-") as tmp:
        result_file = os.path.join(tmp, "metrics.json")
        cmd = [sys.executable, "-m", "perf.run", "--child", module, "--result-file", result_file]
        cmd += ["--quick"] if quick else []
        existing = set(process_tree(os.getpid()))
        t0 = time.perf_counter()
        # A new session: on timeout we kill the whole group the benchmark started.
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            code = None
        finally:
            # A benchmark must not leave daemons behind: we are a subreaper, so its orphans are ours now.
            reap_orphans(existing)
        record["seconds"] = round(time.perf_counter() - t0, 2)
        if code is None:
            record.update(status="timeout", error=f"killed after {timeout:.0f} s")
            return record
        if code != 0:
            record.update(status="failed", error=f"exited with status {code} (see its output above)")
            return record
        try:
            metrics = json.loads(Path(result_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            record.update(status="failed", error=f"no readable result: {exc}")
            return record
    if not isinstance(metrics, list):
        record.update(status="failed", error=f"run() returned {type(metrics).__name__}, not a list")
        return record
    for i, metric in enumerate(metrics):
        problems = validate_metric(metric, f"{short_name(module)}[{i}]")
        if problems:
            record["problems"] += problems
        else:
            record["metrics"].append({**metric, "module": short_name(module)})
    if record["problems"]:
        record["status"] = "partial"
    return record


def merge_rounds(rounds: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One metric per (name, system, workers): the median of its numeric fields over the rounds."""
    grouped: dict[tuple[str, str, Any], list[Mapping[str, Any]]] = {}
    for metrics in rounds:
        for m in metrics:
            grouped.setdefault((m["name"], m["system"], m.get("workers")), []).append(m)
    merged = []
    for samples in grouped.values():
        out = dict(samples[-1])
        for key in ("value", "p50", "p99"):
            nums = [float(s[key]) for s in samples if s.get(key) is not None]
            if nums:
                out[key] = statistics.median(nums)
        if len(samples) > 1:
            out["rounds"] = len(samples)
        merged.append(out)
    return merged


def carry_over(
    fresh: Sequence[Mapping[str, Any]], previous: Mapping[str, Any] | None, succeeded: set[str]
) -> list[dict[str, Any]]:
    """``fresh`` plus the previous run's metrics of modules that did not succeed now, marked as carried."""
    out = [dict(m) for m in fresh]
    if not previous:
        return out
    have = {(m["name"], m["system"], m.get("workers")) for m in out}
    for m in previous.get("metrics", []):
        key = (m.get("name"), m.get("system"), m.get("workers"))
        if m.get("module") in succeeded or key in have:
            continue
        out.append({**m, "carried_from": m.get("carried_from") or previous.get("date", "?")})
    return out


def peer_versions(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Package versions each peer reported with its metrics (``versions`` field), by system."""
    found: dict[str, dict[str, str]] = {}
    for m in metrics:
        if m.get("system") != report.OURS and isinstance(m.get("versions"), Mapping):
            found.setdefault(str(m["system"]), {}).update(m["versions"])
    return found


def _load_previous(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PERF_DIR / "results", help="results folder")
    parser.add_argument("--peers", action="store_true", help="also run CrewAI and LangGraph (perf/.peers)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these benchmarks (e.g. memory peers)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    parser.add_argument(
        "--timeout", type=float, help="per-benchmark time limit in seconds (overrides TIMEOUT_S)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="run everything N times, alternating order")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.result_file, args.quick)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    try:
        modules = select(discover(peers=args.peers or bool(args.only and "peers" in args.only)), args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if not modules:
        print("no benchmarks found (perf/bench_*.py)", file=sys.stderr)
    become_subreaper()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    records: dict[str, dict[str, Any]] = {}
    per_round: list[list[dict[str, Any]]] = []
    for r in range(args.rounds):
        order = modules if r % 2 == 0 else list(reversed(modules))
        metrics: list[dict[str, Any]] = []
        for module in order:
            rec = run_module(module, quick=args.quick, timeout=args.timeout or module_timeout(module))
            metrics += rec.pop("metrics")
            prev = records.get(rec["module"])
            # A module counts as succeeded if any round succeeded; keep the worst problem visible.
            if prev is None or rec["status"] != "ok":
                records[rec["module"]] = rec
        per_round.append(metrics)
    succeeded = {name for name, rec in records.items() if rec["status"] == "ok"}
    previous = _load_previous(args.out / "latest.json")
    fresh = merge_rounds(per_round)
    host = machine.collect()
    host["peer_packages"] = peer_versions(fresh)
    run = {
        "schema": 1,
        "date": started,
        "quick": args.quick,
        "peers": args.peers,
        "rounds": args.rounds,
        "machine": host,
        "modules": list(records.values()),
        "metrics": carry_over(fresh, previous, succeeded),
    }
    history_path = args.out / history.HISTORY
    run["changes"] = [history.as_dict(c) for c in history.changes(run, history.load(history_path))]
    paths = report.write_reports(run, args.out)
    history.append(history_path, run)
    print("\n" + report.render_markdown(run))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0 if len(succeeded) == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
