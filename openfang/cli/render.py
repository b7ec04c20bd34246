"""Human-readable rendering of reply bodies for the ``openfang`` client."""

from __future__ import annotations

import datetime as dt
from typing import Any


def kv(body: Any) -> str:
    """One ``key  value`` line per field, keys aligned; a field with no value (nil) is left out."""
    if not isinstance(body, dict):
        return str(body)
    shown = {k: v for k, v in body.items() if v is not None}
    width = max((len(k) for k in shown), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in sorted(shown.items()))


def status(body: dict[str, Any]) -> str:
    children = body.get("children") or {}
    expected = body.get("workers_expected")
    if body.get("ready"):
        ready = "ready"
    elif body.get("ready") is False:
        of = expected if expected is not None else "?"
        ready = f"not ready: {body.get('workers', 0)} of {of} workers connected"
    else:
        ready = str(body.get("state"))
    lines = [
        f"{body.get('name')}  {ready}  (openfang {body.get('version')}, pid {body.get('pid')})",
        f"state     {body.get('state')}",
        f"uptime    {_duration(body.get('uptime_s'))}",
        f"config    {body.get('config')}",
        f"data dir  {body.get('data_dir')}",
        f"control   {body.get('endpoint')}",
        f"events    {body.get('events')}",
        f"children  {children.get('active', '?')} active of {children.get('specs', '?')} "
        f"({children.get('supervisors', '?')} supervisors, {children.get('workers', '?')} workers)",
        f"workers   {body.get('workers')} connected" + (f" of {expected}" if expected is not None else ""),
        f"reloads   {body.get('reloads')}",
    ]
    for path, pool in sorted((body.get("pools") or {}).items()):  # elastic worker pools
        doing = " (starting one)" if pool.get("starting") else ""
        doing = " (draining one)" if pool.get("draining") else doing
        lines.append(
            f"pools     {path} {pool.get('running')} running of {pool.get('max')}, "
            f"min {pool.get('min_running')}{doing}"
        )
    for key in ("embedder", "sqlite", "memory"):
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
    """A page of registered agents: running, suspended, restarting, hibernated and dead ones (with the
    reason), and a footer naming the next page's cursor when there is one."""
    rows = body.get("agents") or []
    lines = [
        f"{'AGENT':<28} {'WORKER':<12} {'STATE':<11} {'RESTARTS':>8} {'FUEL USED':>12} {'MEMORY':>9}  REASON"
    ]
    for a in rows:
        reason = a.get("reason") or "" if a.get("state") in ("dead", "restarting") else ""
        lines.append(
            f"{a.get('agent_id', '?'):<28} {a.get('worker') or '-':<12} {a.get('state', '?'):<11} "
            f"{a.get('restarts', 0):>8} {a.get('fuel_used', 0):>12} {_mb(a.get('memory_bytes')):>9}  "
            f"{reason}".rstrip()
        )
    for err in body.get("errors") or []:
        lines.append(f"(a worker did not answer: {err})")
    total = body.get("total")
    if body.get("next"):
        lines.append(
            f"({len(rows)} of {total} shown; next page: openfang agent list --after {body['next']}, "
            "or --all for every page)"
        )
    elif isinstance(total, int) and total != len(rows):
        lines.append(f"(last page: {len(rows)} of {total} shown)")
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
    hits = body.get("hits") or []
    if not hits:
        return "(no matches)"
    lines = [f"{'SCORE':>6} {'SIM':>5} {'KW#':>3} {'VEC#':>4}  {'AGENT':<24} {'KIND':<10} TEXT"]
    for hit in hits:
        lines.append(
            f"{_num(hit.get('score'), 4):>6} {_num(hit.get('similarity'), 3):>5} "
            f"{hit.get('keyword_rank') or '-':>3} {hit.get('vector_rank') or '-':>4}  "
            f"{hit.get('agent_id', '?'):<24} {hit.get('kind', ''):<10} {hit.get('text', '')}"
        )
    lines.append(
        "SCORE fuses the ranks (sum of 1/(60 + rank) over the keyword and vector lists, plus small "
        "importance and recency terms): it orders the hits. SIM is the cosine similarity of the vector "
        "match; KW# and VEC# are the ranks in each list (- : not in it)."
    )
    return "\n".join(lines)


def _num(v: Any, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"


def memory_usage(body: dict[str, Any]) -> str:
    """LLM use per agent and model, then a total line per agent."""
    rows = body.get("usage") or []
    if not rows:
        return "(no LLM usage recorded)"
    lines = [f"{'AGENT':<24} {'MODEL':<28} {'CALLS':>6} {'PROMPT':>10} {'COMPLETION':>10} {'COST USD':>10}"]
    for r in rows:
        cost = "-" if r.get("cost_usd") is None else f"{r['cost_usd']:.6f}"
        lines.append(
            f"{r['agent_id']:<24} {r.get('model')!s:<28} {r['llm_calls']:>6} {r['prompt_tokens']:>10} "
            f"{r['completion_tokens']:>10} {cost:>10}"
        )
    return "\n".join(lines)


def memory_history(body: dict[str, Any]) -> str:
    lines = []
    for msg in body.get("messages") or []:
        when = dt.datetime.fromtimestamp(float(msg.get("time") or 0), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{when}  {msg.get('role', '?'):<9} {msg.get('text', '')}")
    return "\n".join(lines) or "(no messages)"
