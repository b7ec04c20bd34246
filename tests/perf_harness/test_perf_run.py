"""The benchmark runner: discovery, selection, validation, merging, carry-over, and real subprocess runs."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # perf/ is a repo folder, not installed

from perf import run as prun


def _m(name: str, system: str = "openfang", value: float | None = 1.0, **kw: Any) -> dict[str, Any]:
    return {"name": name, "system": system, "value": value, "unit": "ms", "better": "lower", **kw}


def test_run_discover_lists_bench_modules_with_run_sorted_and_peers_last(tmp_path: Path) -> None:
    """bench_*.py files defining run() are benchmarks (a broken one too); the peers' driver comes last."""
    for name in ("bench_b.py", "bench_a.py", "_cluster.py", "workloads.py"):
        (tmp_path / name).write_text("def run():\n    return []\n")
    (tmp_path / "bench_tools.py").write_text("def register(registry):\n    pass\n")
    (tmp_path / "bench_broken.py").write_text("def run(:\n")
    assert prun.discover(tmp_path) == ["perf.bench_a", "perf.bench_b", "perf.bench_broken"]
    assert prun.discover(tmp_path, peers=True)[-1] == prun.PEERS_MODULE


def test_run_select_accepts_short_prefixed_and_dotted_names() -> None:
    """--only memory, --only bench_memory and --only perf.bench_memory pick the same module."""
    mods = ["perf.bench_memory", "perf.bench_system", prun.PEERS_MODULE]
    for name in ("memory", "bench_memory", "perf.bench_memory"):
        assert prun.select(mods, [name]) == ["perf.bench_memory"]
    assert prun.select(mods, ["peers", "system"]) == ["perf.bench_system", prun.PEERS_MODULE]
    assert prun.select(mods, None) == mods


def test_run_select_rejects_unknown_names_and_lists_known_ones() -> None:
    """A typo in --only is an error naming it and the benchmarks that exist."""
    with pytest.raises(ValueError, match=r"no benchmark named memroy \(known: memory, system\)"):
        prun.select(["perf.bench_memory", "perf.bench_system"], ["memroy"])


def test_run_timeout_is_read_from_the_module_source(tmp_path: Path) -> None:
    """TIMEOUT_S at top level sets the limit; nested, non-numeric or broken sources give the default."""
    good, nested, broken = tmp_path / "g.py", tmp_path / "n.py", tmp_path / "b.py"
    good.write_text("import os\nTIMEOUT_S: float = 42\n")
    nested.write_text("def f():\n    TIMEOUT_S = 5\nTIMEOUT_S = 'long'\n")
    broken.write_text("def (:\n")
    assert prun.timeout_in_source(good, 600.0) == 42.0
    assert prun.timeout_in_source(nested, 600.0) == 600.0
    assert prun.timeout_in_source(broken, 600.0) == 600.0
    assert prun.timeout_in_source(tmp_path / "missing.py", 7.0) == 7.0


def test_run_validate_metric_reports_every_problem_with_its_place() -> None:
    """All problems of a bad metric are reported at once, each naming the module, index and metric."""
    bad = {"name": "x", "system": "autogen", "value": "fast", "unit": 3, "better": "more", "p99": True}
    problems = prun.validate_metric(bad, "memory[2]")
    assert len(problems) == 5
    assert all(p.startswith("memory[2] (x): ") for p in problems)
    assert any("'system' must be one of openfang, crewai, langgraph" in p for p in problems)
    assert prun.validate_metric([1], "memory[3]") == ["memory[3]: a metric must be a dict, got list"]


def test_run_validate_metric_accepts_not_measured_and_scaling_points() -> None:
    """value None ('not measured', with notes) and an integer workers field are valid."""
    assert prun.validate_metric(_m("agents_10000_pss_mb", "crewai", None, notes="too slow"), "p[0]") == []
    assert prun.validate_metric(_m("routing", workers=2, p50=1.0, p99=2.0, target=None), "s[0]") == []


def test_run_validate_metric_checks_agent_scaling_points() -> None:
    """An agent-count point needs a positive integer ``agents`` and a string ``series``; both named."""
    assert prun.validate_metric(_m("spawn @ 10 agents", agents=10, series="spawn"), "scale[0]") == []
    problems = prun.validate_metric(_m("spawn @ 0 agents", agents=0, series=3), "scale[1]")
    assert len(problems) == 2
    assert any("'agents' must be a positive integer" in p for p in problems)
    assert any("'series' must be a string" in p for p in problems)


def test_run_merge_rounds_takes_the_median_per_metric_and_system() -> None:
    """Over 3 rounds each (name, system, workers) keeps the median value and notes how many rounds."""
    rounds = [[_m("a", value=v, p50=v), _m("a", "crewai", value=10 * v)] for v in (3.0, 1.0, 2.0)]
    merged = {m["system"]: m for m in prun.merge_rounds(rounds)}
    assert merged["openfang"]["value"] == 2.0 and merged["openfang"]["p50"] == 2.0
    assert merged["crewai"]["value"] == 20.0 and merged["crewai"]["rounds"] == 3


def test_run_carry_over_keeps_earlier_metrics_of_modules_that_did_not_succeed() -> None:
    """A module that failed or did not run keeps its previous figures, marked; fresh figures win."""
    previous = {
        "date": "2026-01-01",
        "metrics": [
            {**_m("mem", value=5.0), "module": "memory"},
            {**_m("cold", value=9.0), "module": "system"},
            {**_m("old", value=1.0), "module": "peers", "carried_from": "2025-12-31"},
        ],
    }
    fresh = [{**_m("cold", value=8.0), "module": "system"}]
    out = {m["name"]: m for m in prun.carry_over(fresh, previous, succeeded={"system"})}
    assert out["cold"]["value"] == 8.0 and "carried_from" not in out["cold"]
    assert out["mem"]["carried_from"] == "2026-01-01"
    assert out["old"]["carried_from"] == "2025-12-31"  # keeps the date it was really measured


def test_run_peer_versions_are_collected_from_peer_metrics() -> None:
    """Versions a peer reports with its metrics end up in the machine record, by system."""
    metrics = [_m("a", "crewai", versions={"crewai": "1.0"}), _m("a", "openfang", versions={"x": "1"})]
    assert prun.peer_versions(metrics) == {"crewai": {"crewai": "1.0"}}


def _bench_module(tmp_path: Path, body: str) -> str:
    """Write a benchmark module under a unique name into tmp_path (importable via PYTHONPATH)."""
    name = f"perfbench_{os.getpid()}_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.mark.integration
def test_run_module_collects_valid_metrics_and_flags_invalid_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A benchmark's valid metrics are kept (tagged with the module); invalid ones make it 'partial'."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    mod = _bench_module(
        tmp_path,
        """
        def run(quick=False):
            return [
                {"name": "q", "system": "openfang", "value": 1.0 if quick else 2.0, "unit": "ms",
                 "better": "lower"},
                {"name": "bad", "system": "openfang", "value": "x", "unit": "ms", "better": "lower"},
            ]
        """,
    )
    rec = prun.run_module(mod, quick=True, timeout=60)
    assert rec["status"] == "partial"
    assert rec["metrics"] == [
        {"name": "q", "system": "openfang", "value": 1.0, "unit": "ms", "better": "lower", "module": mod}
    ]
    assert rec["problems"] == [f"{mod}[1] (bad): 'value' must be a number or null, got 'x'"]


@pytest.mark.integration
def test_run_module_reports_a_crash_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark that raises is reported failed with its exit status; the runner goes on."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    mod = _bench_module(tmp_path, "def run():\n    raise RuntimeError('boom')\n")
    rec = prun.run_module(mod, quick=False, timeout=60)
    assert rec["status"] == "failed"
    assert "exited with status 1" in rec["error"]
    assert rec["metrics"] == []


@pytest.mark.integration
def test_run_module_kills_a_hung_benchmark_and_the_processes_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On timeout the benchmark and its children (even one in its own session) are killed; status timeout."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    pidfile = tmp_path / "pids"
    mod = _bench_module(
        tmp_path,
        f"""
        import os, subprocess, time
        def run():
            a = subprocess.Popen(["sleep", "300"])
            b = subprocess.Popen(["sleep", "300"], start_new_session=True)
            with open({str(pidfile)!r}, "w") as f:
                f.write(f"{{a.pid}} {{b.pid}}")
            time.sleep(300)
        """,
    )
    t0 = time.monotonic()
    rec = prun.run_module(mod, quick=False, timeout=10)  # generous: a loaded machine starts slowly
    assert rec["status"] == "timeout"
    assert rec["error"] == "killed after 10 s"
    assert time.monotonic() - t0 < 60
    pids = [int(p) for p in pidfile.read_text().split()]
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        time.sleep(0.05)
    assert alive == []


def _running(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
