"""The benchmark history: each run appends its fresh figures; the report shows regressions since the last."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # perf/ is a repo folder, not installed

from perf import history, report


def run(
    date: str, values: dict[str, float], *, quick: bool = False, cores: int = 2, **extra: Any
) -> dict[str, Any]:
    metrics = [
        {
            "name": n,
            "system": "openfang",
            "value": v,
            "unit": "ms",
            "better": "lower" if n.endswith("ms") else "higher",
        }
        for n, v in values.items()
    ]
    return {
        "date": date,
        "quick": quick,
        "machine": {"cores": cores, "git_rev": date[-2:]},
        "metrics": metrics,
        **extra,
    }


def test_append_writes_one_line_per_run_without_carried_over_values(tmp_path: Path) -> None:
    """Only figures measured in this run go into history.jsonl, with the git revision and the machine."""
    r = run("2026-12-01", {"spawn_ms": 2.0})
    r["metrics"].append({"name": "old_ms", "system": "openfang", "value": 9.0, "carried_from": "2026-11-01"})
    path = tmp_path / "history.jsonl"
    history.append(path, r)
    history.append(path, run("2026-12-02", {"spawn_ms": 2.1}))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [sorted(line["values"]) for line in lines] == [["openfang:spawn_ms"], ["openfang:spawn_ms"]]
    assert lines[0]["git_rev"] == "01" and lines[0]["machine"]["cores"] == 2


def test_changes_flag_regressions_by_direction_and_ignore_noise(tmp_path: Path) -> None:
    """Slower latency and lower throughput are regressions; within 10 % is the same; faster is better."""
    earlier = [history.record(run("2026-12-01", {"spawn_ms": 2.0, "route_tps": 1000.0, "idle_ms": 10.0}))]
    now = run("2026-12-02", {"spawn_ms": 3.0, "route_tps": 1500.0, "idle_ms": 10.5})
    verdicts = {c.name: c.verdict for c in history.changes(now, earlier)}
    assert verdicts == {"spawn_ms": "regression", "route_tps": "improvement", "idle_ms": "same"}


def test_changes_compare_only_like_with_like(tmp_path: Path) -> None:
    """A quick run is not compared with a full one, nor a 2-core machine with an 8-core one."""
    earlier = [
        history.record(run("2026-12-01", {"spawn_ms": 1.0}, quick=True)),
        history.record(run("2026-12-02", {"spawn_ms": 1.0}, cores=8)),
    ]
    assert history.changes(run("2026-12-03", {"spawn_ms": 5.0}), earlier) == []
    assert "No earlier comparable run" in "\n".join(history.render([]))


def test_report_shows_the_change_section_with_regressions_first(tmp_path: Path) -> None:
    """latest.md lists regressions before improvements, with the earlier run's date and revision."""
    earlier = [history.record(run("2026-12-01", {"a_ms": 2.0, "b_tps": 100.0}))]
    now = run("2026-12-02", {"a_ms": 1.0, "b_tps": 50.0})
    now["changes"] = [history.as_dict(c) for c in history.changes(now, earlier)]
    md = report.render_markdown(now)
    section = md[md.index("## Change since the previous run") :]
    assert section.index("| b_tps |") < section.index("| a_ms |")
    assert "regression" in section and "-50%" in section and "2026-12-01 (01)" in section


def test_load_skips_damaged_lines(tmp_path: Path) -> None:
    """A truncated last line (a run killed while writing) does not break the next report."""
    path = tmp_path / "history.jsonl"
    history.append(path, run("2026-12-01", {"a_ms": 1.0}))
    with path.open("a") as f:
        f.write('{"date": "2026-12-02", "val')
    assert len(history.load(path)) == 1
