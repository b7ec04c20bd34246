"""The benchmark report: rows, ratios, targets, markdown, SVG and the files written (pure logic)."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # perf/ is a repo folder, not installed

from perf import report


def _m(
    name: str, system: str, value: float | None, unit: str = "ms", better: str = "lower", **kw: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "system": system,
        "value": value,
        "unit": unit,
        "better": better,
        "target": None,
        **kw,
    }


def test_report_ratio_above_one_favours_openfang_in_both_directions() -> None:
    """Lower-is-better divides peer by ours, higher-is-better ours by peer: > 1 always means we are better."""
    assert report.ratio(10.0, 100.0, "lower") == 10.0
    assert report.ratio(1_000.0, 100.0, "higher") == 10.0
    assert report.ratio(100.0, 10.0, "lower") == 0.1


def test_report_ratio_is_none_when_a_side_is_missing_or_zero() -> None:
    """No ratio is invented from a missing or zero figure."""
    assert report.ratio(None, 5.0, "lower") is None
    assert report.ratio(5.0, None, "higher") is None
    assert report.ratio(0.0, 5.0, "lower") is None


def test_report_target_met_respects_the_better_direction() -> None:
    """A latency target is met at or below it, a throughput target at or above it; unknown stays None."""
    assert report.target_met(150.0, 150.0, "lower") is True
    assert report.target_met(151.0, 150.0, "lower") is False
    assert report.target_met(14_999.0, 15_000.0, "higher") is False
    assert report.target_met(None, 15_000.0, "higher") is None


def test_report_format_value_keeps_three_significant_digits_and_dashes_missing() -> None:
    """Numbers read at a sensible precision; None becomes the dash the table uses for 'not measured'."""
    assert report.format_value(15234.7) == "15,235"
    assert report.format_value(123.4) == "123"
    assert report.format_value(12.34) == "12.3"
    assert report.format_value(1.234) == "1.23"
    assert report.format_value(0.01234) == "0.0123"
    assert report.format_value(None) == report.DASH


def test_report_rows_follow_the_catalogue_then_other_metrics_by_name() -> None:
    """Catalogue metrics come first in catalogue order; unknown metrics follow alphabetically."""
    rows = report.build_rows(
        [
            _m("zeta_thing", "openfang", 1.0),
            _m("routing_tasks_per_s", "crewai", 10.0, "tasks/s", "higher"),
            _m("cold_start_ms", "langgraph", 900.0),
            _m("alpha_thing", "openfang", 2.0),
        ]
    )
    assert [r.name for r in rows] == ["cold_start_ms", "routing_tasks_per_s", "alpha_thing", "zeta_thing"]


def test_report_relative_target_is_our_idle_memory_plus_the_allowance() -> None:
    """The 100-agent target is OpenFANG's own idle PSS + 5 MB, and 'met' is judged against it."""
    rows = {
        r.name: r
        for r in report.build_rows(
            [
                _m("idle_pss_mb", "openfang", 40.0, "MB"),
                _m("agents_100_pss_mb", "openfang", 46.0, "MB"),
                _m("agents_10000_pss_mb", "openfang", 200.0, "MB"),
            ]
        )
    }
    assert rows["agents_100_pss_mb"].target == 45.0
    assert rows["agents_100_pss_mb"].met is False
    assert rows["agents_10000_pss_mb"].target == 240.0
    assert rows["agents_10000_pss_mb"].met is True
    assert rows["idle_pss_mb"].met is True


def test_report_target_given_by_the_benchmark_overrides_the_catalogue() -> None:
    """A benchmark's own target field wins over the catalogue's."""
    [row] = report.build_rows([{**_m("cold_start_ms", "openfang", 120.0), "target": 100.0}])
    assert (row.target, row.met) == (100.0, False)


def test_report_markdown_shows_dashes_where_openfang_was_not_measured() -> None:
    """With only peers measured, our column, ratios and 'met' are dashes while the peers' figures show."""
    md = report.render_markdown(
        {"date": "D", "machine": {"cores": 2}, "metrics": [_m("cold_start_ms", "crewai", 3434.0)]}
    )
    row = next(line for line in md.splitlines() if line.startswith("| Cold start"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == report.DASH and cells[3] == "3,434" and cells[4] == report.DASH
    assert cells[5] == cells[6] == report.DASH
    assert cells[7] == "150" and cells[8] == report.DASH


def test_report_markdown_marks_carried_values_and_failed_benchmarks() -> None:
    """Values from an earlier run carry a dagger; a timed-out benchmark is listed with its error."""
    run = {
        "metrics": [{**_m("cold_start_ms", "openfang", 99.0), "carried_from": "2026-01-01"}],
        "modules": [
            {"module": "system", "status": "timeout", "seconds": 600.0, "error": "killed after 600 s"}
        ],
    }
    md = report.render_markdown(run)
    assert "99.0 †" in md
    assert "measured in an earlier run" in md
    assert "| system | **timeout** | 600 | killed after 600 s |" in md


def test_report_scaling_section_appears_only_with_worker_points() -> None:
    """Per-worker-count metrics render a scaling table with speed-up against 1 worker."""
    base = [_m("routing_tasks_per_s", "openfang", 10_000.0, "tasks/s", "higher")]
    assert "## Scaling" not in report.render_markdown({"metrics": base})
    points = [
        {**_m("routing_tasks_per_s_scaling", "openfang", v, "tasks/s", "higher"), "workers": w}
        for w, v in ((2, 18_000.0), (1, 10_000.0))
    ]
    md = report.render_markdown({"metrics": base + points})
    assert "## Scaling: routing_tasks_per_s_scaling" in md
    assert f"| 2 | 18,000 | 1.80{report.TIMES} | 90 % |" in md
    # Scaling points never leak into the main table as a duplicate row.
    assert sum(1 for line in md.splitlines() if line.startswith("| routing_tasks_per_s_scaling")) == 0


def test_report_svg_is_well_formed_with_one_bar_per_ratio() -> None:
    """The chart parses as XML and has one bar per (metric, peer) that has a ratio."""
    metrics = [
        _m("cold_start_ms", "openfang", 100.0),
        _m("cold_start_ms", "crewai", 3_000.0),
        _m("cold_start_ms", "langgraph", 900.0),
        _m("routing_tasks_per_s", "openfang", 10.0, "tasks/s", "higher"),
        _m("routing_tasks_per_s", "langgraph", 1_000.0, "tasks/s", "higher"),
    ]
    svg = ET.fromstring(report.render_svg({"metrics": metrics}))
    bars = [el for el in svg.iter("{http://www.w3.org/2000/svg}rect") if el.find("{*}title") is not None]
    assert sorted(el.findtext("{*}title") for el in bars) == [
        f"{r}{report.TIMES}" for r in ("0.01", "30.0", "9.00")
    ]


def test_report_svg_without_common_metrics_says_so() -> None:
    """With no metric measured by both us and a peer, the chart explains instead of drawing nothing."""
    svg = report.render_svg({"metrics": [_m("cold_start_ms", "crewai", 3_000.0)]})
    assert "No ratio yet" in ET.tostring(ET.fromstring(svg), encoding="unicode")


def test_report_write_reports_writes_json_md_svg_and_no_temp_files(tmp_path: Path) -> None:
    """The three result files are written (JSON round-trips) and no .tmp file is left behind."""
    run = {"date": "D", "machine": {}, "modules": [], "metrics": [_m("cold_start_ms", "langgraph", 900.0)]}
    paths = report.write_reports(run, tmp_path / "results")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "latest.json",
        "latest.md",
        "latest.svg",
    ]
    assert json.loads(paths["json"].read_text()) == run
    assert paths["md"].read_text().startswith("# OpenFANG benchmarks")


def test_report_main_rerenders_markdown_and_svg_from_the_json(tmp_path: Path) -> None:
    """python -m perf.report DIR rebuilds latest.md/svg from latest.json, naming the peers' versions."""
    run = {
        "machine": {"peer_packages": {"langgraph": {"langgraph": "1.2.22"}}},
        "metrics": [_m("cold_start_ms", "langgraph", 900.0)],
    }
    (tmp_path / "latest.json").write_text(json.dumps(run))
    assert report.main([str(tmp_path)]) == 0
    assert "LangGraph: langgraph 1.2.22" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "latest.svg").read_text().startswith("<svg")
    assert report.main([str(tmp_path / "missing")]) == 1


def _agent_point(series: str, agents: int, value: float) -> dict[str, Any]:
    point = _m(f"{series} @ {agents:,} agents", "openfang", value, "MB")
    return {**point, "series": series, "agents": agents}


def test_report_agent_series_get_their_own_table_not_main_rows() -> None:
    """Points with ``agents`` and ``series`` render one row per series with a column per agent count,
    and never appear in the main table."""
    points = [
        _agent_point("memory PSS", n, v) for n, v in ((1, 80.0), (10_000, 366.0), (100, 96.0), (1_000, 129.0))
    ]
    points.append(_agent_point("agent.list", 10_000, 1_061.0))
    md = report.render_markdown({"metrics": points})
    assert "## Scaling with the number of agents" in md
    assert "| series | unit | 1 | 100 | 1,000 | 10,000 |" in md
    assert "| memory PSS | MB | 80.0 | 96.0 | 129 | 366 |" in md
    assert f"| agent.list | MB | {report.DASH} | {report.DASH} | {report.DASH} | 1,061 |" in md
    assert not any(line.startswith("| memory PSS @") for line in md.splitlines())


def test_report_svg_draws_each_agent_series_on_a_log_axis() -> None:
    """The SVG parses, has one line per series with one point per agent count, placed left to right in
    log order (1 -> 100 -> 10,000 equally spaced)."""
    points = [_agent_point("memory PSS", n, v) for n, v in ((1, 80.0), (100, 96.0), (10_000, 366.0))]
    points += [_agent_point("spawn p50", n, v) for n, v in ((1, 20.0), (100, 2.0))]
    svg = ET.fromstring(report.render_svg({"metrics": points}))
    lines = list(svg.iter("{http://www.w3.org/2000/svg}polyline"))
    assert len(lines) == 2
    xs = [float(p.split(",")[0]) for p in lines[0].get("points", "").split()]
    assert len(xs) == 3 and xs[0] < xs[1] < xs[2]
    assert abs((xs[1] - xs[0]) - (xs[2] - xs[1])) < 0.5  # equal steps per factor of 100: log scale
    titles = [el.findtext("{*}title") for el in svg.iter("{http://www.w3.org/2000/svg}circle")]
    assert "10,000 agents: 366" in titles
