"""Turn a benchmark run into perf/results/latest.{json,md,svg}.

Input is the run dict :mod:`perf.run` builds (``date``, ``machine``, ``modules``, ``metrics``). Each metric
is one dict ``{"name", "system", "value", "unit", "better", "target", "p50"?, "p99"?, "notes"?}``; a value of
``None`` means "not measured" (the notes say why). Rows follow :data:`CATALOGUE` (the metrics the README
defines, with their 2-core targets), then any other metric a benchmark returns, by name.

The ratio column is "how many times better OpenFANG is": ours/peer for higher-is-better metrics,
peer/ours for lower-is-better ones, so > 1 always favours OpenFANG. Targets are shown, never asserted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from perf import history

OURS = "openfang"
PEERS: tuple[str, ...] = ("crewai", "langgraph")
TITLES: dict[str, str] = {OURS: "OpenFANG", "crewai": "CrewAI", "langgraph": "LangGraph"}
DASH = "—"
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """A metric the README defines: its title and its 2-core target (absolute, or relative to another)."""

    name: str
    title: str
    target: float | None = None
    # (other metric, offset): the target is our value of the other metric plus offset ("idle + 5 MB").
    relative_to: tuple[str, float] | None = None


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec(name="cold_start_ms", title="Cold start: exec → first agent reply", target=150),
    MetricSpec(name="warm_start_ms", title="Warm start: one more agent → it answers (p50)", target=1),
    MetricSpec(
        name="warm_start_two_requests_ms",
        title="Warm start as two requests: agent.spawn, then agent.send (p50)",
        target=1,
    ),
    MetricSpec(name="idle_pss_mb", title="Idle memory, 1 agent (PSS, all processes)", target=60),
    MetricSpec(name="idle_rss_mb", title="Idle memory, 1 agent (RSS, all processes)"),
    MetricSpec(
        name="agents_100_pss_mb", title="Memory with 100 idle agents (PSS)", relative_to=("idle_pss_mb", 5)
    ),
    MetricSpec(name="agents_1000_pss_mb", title="Memory with 1,000 idle agents (PSS)"),
    MetricSpec(
        name="agents_10000_pss_mb",
        title="Memory with 10,000 idle agents (PSS)",
        relative_to=("idle_pss_mb", 200),
    ),
    MetricSpec(name="routing_tasks_per_s", title="Routing: classify → 1 of 4 agents answers", target=15_000),
    MetricSpec(name="toolchain_tasks_per_s", title="Tool chain: 4 LLM + 3 tool calls per task", target=3_000),
    MetricSpec(name="venv_mb", title="Install footprint (venv size)", target=80),
    MetricSpec(name="worker_restart_after_kill9_ms", title="Worker restart after kill -9 (p50)", target=30),
    MetricSpec(name="daemon_exec_to_ready_ms", title="Daemon exec → READY"),
    MetricSpec(name="control_round_trip_ipc_us", title="Control round trip (p50)"),
    MetricSpec(name="memory_writer_acked_writes_per_s", title="Memory writer: acked writes/s"),
)
_SPECS = {spec.name: spec for spec in CATALOGUE}


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One table row: a metric across systems, with OpenFANG's target and ratios against each peer."""

    name: str
    title: str
    unit: str
    better: str
    values: dict[str, float | None]
    target: float | None
    target_text: str
    met: bool | None
    ratios: dict[str, float | None]
    carried: frozenset[str] = field(default_factory=frozenset)


def ratio(ours: float | None, peer: float | None, better: str) -> float | None:
    """How many times better OpenFANG is than the peer (> 1 favours OpenFANG); None if either is missing."""
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return None
    return ours / peer if better == "higher" else peer / ours


def target_met(value: float | None, target: float | None, better: str) -> bool | None:
    """Whether ``value`` meets ``target`` (None when either is unknown)."""
    if value is None or target is None:
        return None
    return value >= target if better == "higher" else value <= target


def format_value(value: float | None) -> str:
    """A number at a readable precision (3 significant digits, thousands separated); None is a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    return DASH if value is None else f"{format_value(value)}{TIMES}"


def _by_name(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Mapping[str, Any]]]:
    table: dict[str, dict[str, Mapping[str, Any]]] = {}
    for metric in metrics:
        if "workers" in metric or "agents" in metric:
            continue  # scaling points (by workers, by agents) have their own sections
        table.setdefault(str(metric["name"]), {})[str(metric["system"])] = metric
    return table


def _value(metric: Mapping[str, Any] | None) -> float | None:
    if metric is None or metric.get("value") is None:
        return None
    return float(metric["value"])


def build_rows(metrics: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Group metric dicts into table rows: catalogue order first, then other metrics by name."""
    table = _by_name(metrics)
    names = [s.name for s in CATALOGUE if s.name in table] + sorted(n for n in table if n not in _SPECS)
    rows = []
    for name in names:
        systems = table[name]
        spec = _SPECS.get(name)
        first = next(iter(systems.values()))
        better = str(first.get("better", "lower"))
        ours = _value(systems.get(OURS))
        target, target_text = _target(spec, systems.get(OURS), table, str(first.get("unit", "")))
        rows.append(
            Row(
                name=name,
                title=spec.title if spec else name,
                unit=str(first.get("unit", "")),
                better=better,
                values={s: _value(systems.get(s)) for s in (OURS, *PEERS)},
                target=target,
                target_text=target_text,
                met=target_met(ours, target, better),
                ratios={p: ratio(ours, _value(systems.get(p)), better) for p in PEERS},
                carried=frozenset(s for s, m in systems.items() if m.get("carried_from")),
            )
        )
    return rows


def _target(
    spec: MetricSpec | None,
    ours: Mapping[str, Any] | None,
    table: Mapping[str, Mapping[str, Mapping[str, Any]]],
    unit: str,
) -> tuple[float | None, str]:
    if ours is not None and ours.get("target") is not None:
        return float(ours["target"]), format_value(float(ours["target"]))
    if spec is None:
        return None, DASH
    if spec.relative_to is not None:
        other, offset = spec.relative_to
        base = _value(table.get(other, {}).get(OURS))
        text = f"idle + {offset:g} {unit}".strip()
        if base is None:
            return None, text
        return base + offset, f"{format_value(base + offset)} ({text})"
    if spec.target is None:
        return None, DASH
    return spec.target, format_value(spec.target)


def _met_text(met: bool | None) -> str:
    return DASH if met is None else ("yes" if met else "**no**")


def render_markdown(run: Mapping[str, Any]) -> str:
    """The whole latest.md: summary table, scaling, notes, failures, machine."""
    machine = run.get("machine", {})
    rows = build_rows(run.get("metrics", []))
    lines = [
        "# OpenFANG benchmarks",
        "",
        f"Measured {run.get('date', '?')} on {machine.get('cpu_model', '?')} "
        f"({machine.get('cores', '?')} cores), Python {machine.get('python', '?')}, "
        f"git {machine.get('git_rev', '?')}{' — quick mode' if run.get('quick') else ''}. "
        "Ratios: how many times better OpenFANG is (> 1 favours OpenFANG). Targets are 2-core goals. "
        "How each metric is measured: perf/README.md.",
        *_peer_line(machine),
        "",
        "| metric | unit | OpenFANG | CrewAI | LangGraph | vs CrewAI | vs LangGraph | target | met |",
        "|---|---|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for row in rows:
        cells = [f"{format_value(row.values[s])}{' †' if s in row.carried else ''}" for s in (OURS, *PEERS)]
        ratios = [format_ratio(row.ratios[p]) for p in PEERS]
        lines.append(
            f"| {row.title} | {row.unit} | {' | '.join(cells)} | {' | '.join(ratios)} | "
            f"{row.target_text} | {_met_text(row.met)} |"
        )
    if not rows:
        lines.append(f"| (no metrics) | | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |")
    if any(row.carried for row in rows):
        lines += [
            "",
            "† measured in an earlier run (its date is in the notes): that benchmark did not run, or did not "
            "succeed, this time.",
        ]
    if "changes" in run:
        lines += history.render([history.from_dict(c) for c in run["changes"]])
    lines += _scaling_section(run.get("metrics", []))
    lines += _agents_section(run.get("metrics", []))
    lines += _notes_section(run.get("metrics", []))
    lines += _modules_section(run.get("modules", []))
    lines += ["", "## Machine", "", "```", json.dumps(machine, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _peer_line(machine: Mapping[str, Any]) -> list[str]:
    peers = machine.get("peer_packages") or {}
    if not peers:
        return []
    listed = "; ".join(
        f"{TITLES.get(system, system)}: " + ", ".join(f"{pkg} {ver}" for pkg, ver in sorted(pkgs.items()))
        for system, pkgs in sorted(peers.items())
    )
    return ["", f"Peers (fake LLM, no network): {listed}."]


def scaling_points(metrics: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per metric name, the (workers, value) points of OpenFANG's scaling runs, by worker count."""
    points: dict[str, list[tuple[int, float]]] = {}
    for metric in metrics:
        if "workers" in metric and metric.get("system") == OURS and metric.get("value") is not None:
            points.setdefault(str(metric["name"]), []).append(
                (int(metric["workers"]), float(metric["value"]))
            )
    return {name: sorted(pts) for name, pts in sorted(points.items())}


def agent_points(metrics: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per series, OpenFANG's (agents, value) points (metrics with ``agents`` and ``series``), by agents."""
    points: dict[str, list[tuple[int, float]]] = {}
    for metric in metrics:
        if "agents" in metric and metric.get("system") == OURS and metric.get("value") is not None:
            series = str(metric.get("series") or metric["name"])
            points.setdefault(series, []).append((int(metric["agents"]), float(metric["value"])))
    return {name: sorted(pts) for name, pts in points.items()}


def _agents_section(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """One table: a row per series, a column per agent count (perf/bench_scale.py)."""
    points = agent_points(metrics)
    if not points:
        return []
    units = {str(m.get("series") or m["name"]): str(m.get("unit", "")) for m in metrics if "agents" in m}
    counts = sorted({n for pts in points.values() for n, _ in pts})
    out = [
        "",
        "## Scaling with the number of agents",
        "",
        "| series | unit | " + " | ".join(f"{n:,}" for n in counts) + " |",
        "|---|---|" + "--:|" * len(counts),
    ]
    for series, pts in points.items():
        by_n = dict(pts)
        cells = [format_value(by_n.get(n)) for n in counts]
        out.append(f"| {series} | {units.get(series, '')} | " + " | ".join(cells) + " |")
    return out


def _scaling_section(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    out: list[str] = []
    for name, points in scaling_points(metrics).items():
        base = points[0][1] / points[0][0] if points[0][0] > 0 else None
        out += [
            "",
            f"## Scaling: {name}",
            "",
            "| workers | value | speed-up | efficiency |",
            "|--:|--:|--:|--:|",
        ]
        for workers, value in points:
            speedup = value / points[0][1] if points[0][1] > 0 else None
            eff = value / (base * workers) if base else None
            out.append(
                f"| {workers} | {format_value(value)} | {format_ratio(speedup)} | "
                f"{DASH if eff is None else f'{eff * 100:.0f} %'} |"
            )
    return out


def _notes_section(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    noted = [m for m in metrics if m.get("notes") or m.get("p99") is not None or m.get("carried_from")]
    if not noted:
        return []
    out = ["", "## Notes", ""]
    for m in sorted(noted, key=lambda m: (str(m["name"]), str(m["system"]))):
        parts = []
        if m.get("p50") is not None and m.get("p99") is not None:
            parts.append(f"p50 {format_value(m['p50'])}, p99 {format_value(m['p99'])}")
        if m.get("notes"):
            parts.append(str(m["notes"]))
        if m.get("carried_from"):
            parts.append(f"carried from {m['carried_from']}")
        system = TITLES.get(str(m["system"]), str(m["system"]))
        out.append(f"- `{m['name']}` {system}: {'; '.join(parts)}")
    return out


def _modules_section(modules: Sequence[Mapping[str, Any]]) -> list[str]:
    if not modules:
        return []
    out = ["", "## Benchmarks run", "", "| benchmark | status | seconds | problem |", "|---|---|--:|---|"]
    for mod in modules:
        problem = "; ".join([*([mod["error"]] if mod.get("error") else []), *mod.get("problems", [])])
        status = str(mod.get("status", "?"))
        out.append(
            f"| {mod.get('module')} | {status if status == 'ok' else f'**{status}**'} | "
            f"{format_value(mod.get('seconds'))} | {problem.replace('|', '/').replace(chr(10), ' ')} |"
        )
    return out


_PEER_COLOURS = {"crewai": "#e4572e", "langgraph": "#4c72b0"}


def render_svg(run: Mapping[str, Any]) -> str:
    """A hand-written SVG: per metric and peer, a bar of log10(ratio) around 1x (right = OpenFANG better);
    below, each agent-count series (perf/bench_scale.py) as a line against the number of agents (log x)."""
    ratios, height = _ratio_chart(run)
    plots, plots_h = _agent_plots(agent_points(run.get("metrics", [])), top=height)
    width, total = 860, height + plots_h
    return (
        "\n".join(
            [
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" '
                f'viewBox="0 0 {width} {total}" font-family="sans-serif" font-size="12">',
                f'<rect width="{width}" height="{total}" fill="white"/>',
                *ratios,
                *plots,
                "</svg>",
            ]
        )
        + "\n"
    )


_PLOT_COLS, _PLOT_W, _PLOT_H = 3, 270, 150


def _agent_plots(points: Mapping[str, Sequence[tuple[int, float]]], top: float) -> tuple[list[str], float]:
    """Small multiples: one plot per series, x = agents on a log axis, y = value from 0 (linear)."""
    if not points:
        return [], 0.0
    parts = [
        f'<text x="10" y="{top + 22}" font-size="15" font-weight="bold">How cost grows with the number of '
        "agents (x: agents, log scale)</text>"
    ]
    xs = sorted({n for pts in points.values() for n, _ in pts})
    lo, hi = math.log10(max(1, xs[0])), math.log10(max(10, xs[-1]))
    hi = hi if hi > lo else lo + 1
    for i, (series, pts) in enumerate(points.items()):
        ox = 10 + (i % _PLOT_COLS) * (_PLOT_W + 16)
        oy = top + 40 + (i // _PLOT_COLS) * (_PLOT_H + 30)
        pw, ph = _PLOT_W - 50, _PLOT_H - 40
        px0, py0 = ox + 44, oy + 20  # plot area's top left
        ymax = max(v for _, v in pts) or 1.0

        def x_of(n: int, px0: float = px0, pw: float = pw) -> float:
            return px0 + (math.log10(max(1, n)) - lo) / (hi - lo) * pw

        def y_of(v: float, py0: float = py0, ph: float = ph, ymax: float = ymax) -> float:
            return py0 + ph - v / ymax * ph

        parts.append(f'<text x="{ox}" y="{oy + 12}" font-weight="bold">{escape(series[:40])}</text>')
        parts.append(f'<rect x="{px0}" y="{py0}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>')
        for k in range(math.floor(lo), math.ceil(hi) + 1):
            x = x_of(10**k)
            parts.append(f'<line x1="{x:.1f}" y1="{py0}" x2="{x:.1f}" y2="{py0 + ph}" stroke="#eee"/>')
            label = f"{10**k:,}" if k < 4 else f"1e{k}"
            parts.append(
                f'<text x="{x:.1f}" y="{py0 + ph + 12}" text-anchor="middle" font-size="9">{label}</text>'
            )
        parts.append(
            f'<text x="{px0 - 4}" y="{py0 + 4}" text-anchor="end" font-size="9">{format_value(ymax)}</text>'
        )
        parts.append(f'<text x="{px0 - 4}" y="{py0 + ph}" text-anchor="end" font-size="9">0</text>')
        line = " ".join(f"{x_of(n):.1f},{y_of(v):.1f}" for n, v in pts)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#4c72b0" stroke-width="2"/>')
        for n, v in pts:
            parts.append(
                f'<circle cx="{x_of(n):.1f}" cy="{y_of(v):.1f}" r="3" fill="#4c72b0">'
                f"<title>{n:,} agents: {escape(format_value(v))}</title></circle>"
            )
    rows = math.ceil(len(points) / _PLOT_COLS)
    return parts, 40 + rows * (_PLOT_H + 30)


def _ratio_chart(run: Mapping[str, Any]) -> tuple[list[str], float]:
    """The ratio bars (without the svg element) and their height."""
    bars = [
        (row, p, r)
        for row in build_rows(run.get("metrics", []))
        for p in PEERS
        if (r := row.ratios[p]) is not None
    ]
    width, left, right, bar_h, top = 860, 330, 40, 16, 60
    height = top + max(1, len(bars)) * (bar_h + 6) + 50
    parts = [
        '<text x="10" y="22" font-size="15" font-weight="bold">OpenFANG vs peers: times better '
        f"(log scale; right of 1{TIMES} favours OpenFANG)</text>",
    ]
    if not bars:
        parts.append(
            f'<text x="10" y="{top + 10}">No ratio yet: OpenFANG and a peer have no metric measured in '
            "common.</text>"
        )
        return parts, height
    span = max(1.0, math.ceil(max(abs(math.log10(r)) for _row, _p, r in bars)))
    plot_w = width - left - right
    centre = left + plot_w / 2

    def x_of(log_ratio: float) -> float:
        return centre + log_ratio / span * plot_w / 2

    axis_y = top + len(bars) * (bar_h + 6) + 4
    for k in range(-int(span), int(span) + 1):
        x = x_of(k)
        label = f"{10.0**k:g}{TIMES}"
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{axis_y}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line x1="{centre:.1f}" y1="{top - 6}" x2="{centre:.1f}" y2="{axis_y}" stroke="#333"/>')
    for i, (row, peer, r) in enumerate(bars):
        y = top + i * (bar_h + 6)
        x0, x1 = sorted((centre, x_of(math.log10(r))))
        parts.append(
            f'<text x="{left - 8}" y="{y + bar_h - 4}" text-anchor="end">'
            f"{escape(row.title[:44])} vs {escape(TITLES[peer])}</text>"
        )
        parts.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(1.0, x1 - x0):.1f}" height="{bar_h}" '
            f'fill="{_PEER_COLOURS[peer]}"><title>{escape(format_ratio(r))}</title></rect>'
        )
        parts.append(f'<text x="{x1 + 4:.1f}" y="{y + bar_h - 4}">{escape(format_ratio(r))}</text>')
    return parts, height


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written report


def write_reports(run: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write latest.json, latest.md and latest.svg into ``out_dir``; returns their paths by suffix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"latest.{ext}" for ext in ("json", "md", "svg")}
    _write_atomic(paths["json"], json.dumps(run, indent=2, sort_keys=True) + "\n")
    _write_atomic(paths["md"], render_markdown(run))
    _write_atomic(paths["svg"], render_svg(run))
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m perf.report [DIR]``: re-render latest.md and latest.svg from DIR/latest.json."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else Path("perf/results")
    try:
        run = json.loads((out_dir / "latest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read {out_dir / 'latest.json'}: {exc}", file=sys.stderr)
        return 1
    _write_atomic(out_dir / "latest.md", render_markdown(run))
    _write_atomic(out_dir / "latest.svg", render_svg(run))
    print(f"rendered {out_dir / 'latest.md'} and {out_dir / 'latest.svg'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
