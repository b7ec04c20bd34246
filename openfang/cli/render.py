"""Human-readable rendering of reply bodies for the ``openfang`` client."""

from __future__ import annotations

import datetime as dt
from typing import Any


def kv(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)
    width = max((len(k) for k in body), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in sorted(body.items()))


def status(body: dict[str, Any]) -> str:
    children = body.get("children") or {}
    lines = [
        f"{body.get('name')}  {body.get('state')}  (openfang {body.get('version')}, pid {body.get('pid')})",
        f"uptime    {_duration(body.get('uptime_s'))}",
        f"config    {body.get('config')}",
        f"data dir  {body.get('data_dir')}",
        f"control   {body.get('endpoint')}",
        f"events    {body.get('events')}",
        f"children  {children.get('active', '?')} active of {children.get('specs', '?')} "
        f"({children.get('supervisors', '?')} supervisors, {children.get('workers', '?')} workers)",
        f"workers   {body.get('workers')}",
        f"reloads   {body.get('reloads')}",
    ]
    for key in ("embedder", "memory"):
        if key in body:
            lines.append(f"{key:<9} {body[key]}")
    return "\n".join(lines)


def tree(body: dict[str, Any]) -> str:
    header = f"{'ID':<28} {'PID':>7} {'CPU':>4} {'STATE':<11} {'RSS':>9} {'UPTIME':>9} {'RESTARTS':>8}"
    lines = [header]
    root = body.get("root")
    if root:
        lines.append(_row(root, 0))
    for node in body.get("children", []):
        _walk(node, 1, lines)
    return "\n".join(lines)


def _walk(node: dict[str, Any], depth: int, lines: list[str]) -> None:
    lines.append(_row(node, depth))
    for child in node.get("children") or []:
        _walk(child, depth + 1, lines)


def _row(node: dict[str, Any], depth: int) -> str:
    name = ("  " * depth) + str(node.get("id"))
    cpu = node.get("cpu")
    rss = node.get("rss_bytes")
    return (
        f"{name:<28} {node.get('pid') or '-':>7} {cpu if cpu is not None else '-':>4} "
        f"{node.get('state', '?'):<11} {_mb(rss):>9} {_duration(node.get('uptime_s')):>9} "
        f"{node.get('restarts', 0):>8}"
    )


def reload(body: dict[str, Any]) -> str:
    parts = [
        f"{k}: {', '.join(body.get(k) or []) or '-'}" for k in ("started", "stopped", "replaced", "unchanged")
    ]
    return "reloaded\n" + "\n".join(parts)


def agents(body: dict[str, Any]) -> str:
    rows = body.get("agents") or []
    lines = [f"{'AGENT':<28} {'WORKER':<12} {'STATE':<11} {'FUEL USED':>12} {'MEMORY':>9}"]
    for a in rows:
        lines.append(
            f"{a.get('agent_id', '?'):<28} {a.get('worker', '?'):<12} {a.get('state', '?'):<11} "
            f"{a.get('fuel_used', 0):>12} {_mb(a.get('memory_bytes')):>9}"
        )
    for err in body.get("errors") or []:
        lines.append(f"(a worker did not answer: {err})")
    return "\n".join(lines)


def event(ev: dict[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(float(ev.get("time", 0)), tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    rest = " ".join(f"{k}={v}" for k, v in sorted(ev.items()) if k not in ("kind", "time"))
    return f"{when} {ev.get('kind', '?'):<22} {rest}"


def _mb(n: Any) -> str:
    return f"{n / 1048576:.1f}M" if isinstance(n, int | float) else "-"


def _duration(s: Any) -> str:
    if not isinstance(s, int | float):
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def security(body: dict[str, Any]) -> str:
    lines = [f"{'#':>2} {'LAYER':<32} {'STATE':<8} CONFIG"]
    for layer in body.get("layers") or []:
        cfg = ", ".join(f"{k}={v}" for k, v in sorted((layer.get("config") or {}).items()))
        state = "on" if layer.get("enabled") else "off"
        lines.append(f"{layer.get('layer', '?'):>2} {layer.get('name', '?'):<32} {state:<8} {cfg[:120]}")
    for layer in body.get("layers") or []:
        warning = (layer.get("config") or {}).get("warning")
        if warning:
            lines.append(f"WARNING (layer {layer.get('layer', '?')}, {layer.get('name', '?')}): {warning}")
    return "\n".join(lines)


def memory_hits(body: dict[str, Any]) -> str:
    lines = []
    for hit in body.get("hits") or []:
        score = hit.get("score")
        score_s = f"{score:.3f}" if isinstance(score, int | float) else "-"
        lines.append(
            f"{score_s}  {hit.get('agent_id', '?'):<24} {hit.get('kind', ''):<10} {hit.get('text', '')}"
        )
    return "\n".join(lines) or "(no matches)"


def memory_history(body: dict[str, Any]) -> str:
    lines = []
    for msg in body.get("messages") or []:
        when = dt.datetime.fromtimestamp(float(msg.get("time") or 0), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{when}  {msg.get('role', '?'):<9} {msg.get('text', '')}")
    return "\n".join(lines) or "(no messages)"
