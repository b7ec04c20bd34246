"""The benchmark history: one JSON line per ``make bench`` run, and the change since the previous run.

``perf/results/history.jsonl`` gets a record per run: date, git revision, the machine (cores, CPU, Python),
whether it was a quick run, and every freshly measured value (metrics carried over from an earlier run are
not repeated: they were not measured this time). The report compares each of OpenFANG's metrics with the
latest earlier record that measured it in the same mode on a machine with the same core count, and marks a
change worse than ``NOISE`` as a regression: the machine is shared and noisy, so small moves mean nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HISTORY = "history.jsonl"
NOISE = 0.10  # a change within ±10 % is not called a regression or an improvement


@dataclass(frozen=True, slots=True)
class Change:
    """One metric now against the previous run that measured it."""

    name: str
    unit: str
    better: str
    before: float
    now: float
    before_date: str
    before_rev: str

    @property
    def relative(self) -> float:
        """(now - before) / before; 0 when before is 0."""
        return (self.now - self.before) / self.before if self.before else 0.0

    @property
    def verdict(self) -> str:
        """``regression``, ``improvement`` or ``same`` (within NOISE), by the metric's direction."""
        rel = self.relative
        if abs(rel) <= NOISE:
            return "same"
        worse = rel > 0 if self.better == "lower" else rel < 0
        return "regression" if worse else "improvement"


def record(run: Mapping[str, Any]) -> dict[str, Any]:
    """The history line for ``run``: only values measured in this run (no carried-over ones)."""
    machine = run.get("machine", {})
    values = {
        f"{m['system']}:{m['name']}": {
            "value": m["value"],
            "unit": m.get("unit", ""),
            "better": m.get("better"),
        }
        for m in run.get("metrics", [])
        if m.get("value") is not None and not m.get("carried_from") and "workers" not in m
    }
    return {
        "date": run.get("date"),
        "git_rev": machine.get("git_rev"),
        "quick": bool(run.get("quick")),
        "machine": {k: machine.get(k) for k in ("cores", "cpu_model", "python", "memory_gb", "hostname")},
        "values": values,
    }


def load(path: Path) -> list[dict[str, Any]]:
    """Every readable line of the history (a damaged line is skipped, never fatal)."""
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("values"), dict):
            out.append(rec)
    return out


def append(path: Path, run: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``run``'s line to the history file (created if missing); returns the line."""
    line = record(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    return line


def changes(
    run: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]], system: str = "openfang"
) -> list[Change]:
    """Each of ``system``'s fresh metrics against the latest earlier comparable record that has it."""
    now = record(run)
    comparable = [
        r
        for r in earlier
        if bool(r.get("quick")) == now["quick"]
        and (r.get("machine") or {}).get("cores") == now["machine"].get("cores")
        and r.get("date") != now["date"]
    ]
    out = []
    for key, cur in sorted(now["values"].items()):
        sys_name, _, name = key.partition(":")
        if sys_name != system:
            continue
        for prev in reversed(comparable):
            before = prev["values"].get(key)
            if before is not None and before.get("value") is not None:
                out.append(
                    Change(
                        name=name,
                        unit=str(cur.get("unit", "")),
                        better=str(cur.get("better") or "lower"),
                        before=float(before["value"]),
                        now=float(cur["value"]),
                        before_date=str(prev.get("date")),
                        before_rev=str(prev.get("git_rev")),
                    )
                )
                break
    return out


def as_dict(change: Change) -> dict[str, Any]:
    """A change as stored in latest.json (with its verdict and relative change)."""
    return {
        **{k: getattr(change, k) for k in Change.__slots__},
        "relative": change.relative,
        "verdict": change.verdict,
    }


def from_dict(data: Mapping[str, Any]) -> Change:
    return Change(**{k: data[k] for k in Change.__slots__})


def render(changes_: Sequence[Change]) -> list[str]:
    """The report section: regressions first, then improvements, then the rest."""
    if not changes_:
        return ["", "## Change since the previous run", "", "No earlier comparable run in the history."]
    order = {"regression": 0, "improvement": 1, "same": 2}
    rows = sorted(changes_, key=lambda c: (order[c.verdict], c.name))
    lines = [
        "",
        "## Change since the previous run",
        "",
        f"Against the latest earlier run of the same mode on a machine with as many cores (history.jsonl); "
        f"changes within ±{NOISE:.0%} count as the same.",
        "",
        "| metric | unit | before | now | change | | before: run of |",
        "|---|---|--:|--:|--:|:-:|---|",
    ]
    marks = {"regression": "regression", "improvement": "better", "same": ""}
    for c in rows:
        lines.append(
            f"| {c.name} | {c.unit} | {c.before:.4g} | {c.now:.4g} | {c.relative:+.0%} | "
            f"{marks[c.verdict]} | {c.before_date} ({c.before_rev}) |"
        )
    return lines
