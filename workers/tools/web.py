"""Web tools beyond ``http_fetch``: ``http_request`` (any method, JSON or form bodies) and ``web_search``.

Both go through :func:`openfang.workers.tools.net.fetch`, so every hop is checked by the SSRF guard, pinned
to the checked address, and passed to the exfiltration check first. ``web_search`` speaks three backends:

- ``searxng``: ``GET {base_url}/search?q=...&format=json`` (a self-hosted SearXNG with the JSON format on),
- ``brave``: ``GET {base_url}/res/v1/web/search?q=...`` with ``X-Subscription-Token`` (Brave Search API),
- ``tavily``: ``POST {base_url}/search`` with a JSON body and a bearer key (Tavily),

configured per agent by ``[agent.web_search]`` (``backend``, ``base_url``, ``api_key_env``,
``max_results``) or, for agents without that table, by the daemon's environment
(``OPENFANG_WEB_SEARCH_BACKEND``, ``OPENFANG_WEB_SEARCH_URL``). The configured backend host is trusted
configuration, so it is exempt from the private-address rule (a SearXNG on the LAN works); the URLs in
the results are not fetched by this tool. Results are normalised to ``title``, ``url``, ``snippet``.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlencode, urlsplit

from openfang.workers.tools.core import SearchConfig, Tool, ToolContext, ToolError
from openfang.workers.tools.net import FETCH_PROPERTIES, MAX_BYTES, fetch

BACKENDS: dict[str, tuple[str, str | None]] = {  # backend -> (default base URL, default key variable)
    "searxng": ("", None),
    "brave": ("https://api.search.brave.com", "BRAVE_API_KEY"),
    "tavily": ("https://api.tavily.com", "TAVILY_API_KEY"),
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _egress(ctx: ToolContext, tool: str) -> Any:
    check = ctx.egress_check
    return (lambda u, h, b: check(tool, u, h, b)) if check is not None else None


def _with_query(url: str, query: dict[str, Any]) -> str:
    if not query:
        return url
    sep = "&" if urlsplit(url).query else "?"
    return url + sep + urlencode({k: str(v) for k, v in query.items()})


def http_request(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    bodies = [k for k in ("json", "form", "body") if k in args]
    if len(bodies) > 1:
        raise ToolError(f"give at most one of json, form and body (got {', '.join(bodies)})", code="bad_args")
    headers = dict(args.get("headers") or {})
    body: str | None = None
    if "json" in args:
        body = json.dumps(args["json"], ensure_ascii=False)
        headers.setdefault("Content-Type", "application/json")
    elif "form" in args:
        body = urlencode({k: str(v) for k, v in args["form"].items()})
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif "body" in args:
        body = args["body"]
    if body is not None and args["method"] in ("GET", "HEAD"):
        raise ToolError(f"a {args['method']} request has no body", code="bad_args")
    out = fetch(
        _with_query(args["url"], args.get("query") or {}),
        method=args["method"],
        headers=headers,
        body=body,
        max_bytes=args["max_bytes"],
        timeout_s=args["timeout_s"],
        follow_redirects=args["follow_redirects"],
        allow_hosts=ctx.net_allow_hosts,
        allow_private=ctx.net_allow_private,
        resolver=ctx.resolver,
        egress_check=_egress(ctx, "http_request"),
    )
    ctype = out["headers"].get("content-type", "")
    if isinstance(out.get("body"), str) and "json" in ctype.lower() and not out["truncated"]:
        try:
            out["json"] = json.loads(out["body"])
        except ValueError:
            out["note"] = "the body says JSON but does not parse"
    return out


# ---- web_search -----------------------------------------------------------------------------------------


def search_config(ctx: ToolContext) -> SearchConfig:
    """The agent's [agent.web_search], else the daemon's environment; ToolError when none is set."""
    if ctx.web_search is not None:
        return ctx.web_search
    backend = os.environ.get("OPENFANG_WEB_SEARCH_BACKEND")
    if not backend:
        raise ToolError(
            "web_search has no backend: set [agent.web_search] or OPENFANG_WEB_SEARCH_BACKEND "
            "(searxng, brave, tavily) in the daemon's environment",
            code="unavailable",
        )
    return SearchConfig(backend=backend, base_url=os.environ.get("OPENFANG_WEB_SEARCH_URL"))


def _key(cfg: SearchConfig) -> str | None:
    name = cfg.api_key_env or BACKENDS[cfg.backend][1]
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ToolError(
            f"web_search ({cfg.backend}) needs an API key in {name}, set in the daemon's environment",
            code="unavailable",
        )
    return value


def web_search(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    cfg = search_config(ctx)
    if cfg.backend not in BACKENDS:
        raise ToolError(
            f"unknown web_search backend {cfg.backend!r} (known: {', '.join(BACKENDS)})", code="unavailable"
        )
    base = (cfg.base_url or BACKENDS[cfg.backend][0]).rstrip("/")
    if not base:
        raise ToolError(f"web_search backend {cfg.backend} needs a base_url", code="unavailable")
    count = min(args["max_results"], cfg.max_results)
    query = args["query"]
    headers: dict[str, str] = {"Accept": "application/json"}
    body: str | None = None
    method = "GET"
    if cfg.backend == "searxng":
        url = _with_query(base + "/search", {"q": query, "format": "json"})
    elif cfg.backend == "brave":
        url = _with_query(base + "/res/v1/web/search", {"q": query, "count": count})
        headers["X-Subscription-Token"] = _key(cfg) or ""
    else:
        url, method = base + "/search", "POST"
        headers["Authorization"] = f"Bearer {_key(cfg)}"
        headers["Content-Type"] = "application/json"
        body = json.dumps({"query": query, "max_results": count})
    host = urlsplit(base).hostname or ""
    out = fetch(
        url,
        method=method,
        headers=headers,
        body=body,
        max_bytes=MAX_BYTES,
        timeout_s=args["timeout_s"],
        follow_redirects=False,
        allow_hosts=(*ctx.net_allow_hosts, host),  # the configured backend is trusted configuration
        allow_private=ctx.net_allow_private,
        resolver=ctx.resolver,
        egress_check=_egress(ctx, "web_search"),
    )
    if out["status"] != 200:
        snippet = (out.get("body") or "")[:300]
        raise ToolError(f"{cfg.backend} answered HTTP {out['status']}: {snippet}", code="fetch_failed")
    try:
        data = json.loads(out.get("body") or "")
    except ValueError:
        raise ToolError(f"{cfg.backend} did not answer JSON", code="fetch_failed") from None
    return {"backend": cfg.backend, "query": query, "results": _normalise(cfg.backend, data)[:count]}


def _normalise(backend: str, data: Any) -> list[dict[str, str]]:
    if not isinstance(data, dict):
        raise ToolError(f"{backend} answered an unexpected shape", code="fetch_failed")
    if backend == "brave":
        items = (data.get("web") or {}).get("results") or []
        fields = ("title", "url", "description")
    elif backend == "tavily":
        items, fields = data.get("results") or [], ("title", "url", "content")
    else:
        items, fields = data.get("results") or [], ("title", "url", "content")
    out = []
    for item in items:
        if isinstance(item, dict) and item.get(fields[1]):
            out.append(
                {
                    "title": str(item.get(fields[0]) or ""),
                    "url": str(item[fields[1]]),
                    "snippet": str(item.get(fields[2]) or ""),
                }
            )
    return out


_SCALAR = {"type": ["string", "number", "boolean"]}

WEB_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="http_request",
        description="Any HTTP request (GET, POST, PUT, PATCH, DELETE...) with query, headers and a JSON or "
        "form body, to public addresses; JSON answers come back parsed.",
        schema={
            "type": "object",
            "properties": {
                **FETCH_PROPERTIES,
                "method": {"enum": list(METHODS), "default": "GET"},
                "query": {"type": "object", "additionalProperties": _SCALAR},
                "json": {"description": "a JSON body (sets Content-Type: application/json)"},
                "form": {"type": "object", "additionalProperties": _SCALAR},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        permission="net.http",
        call=http_request,
    ),
    Tool(
        name="web_search",
        description="Search the web (the configured SearXNG, Brave or Tavily): title, url and snippet.",
        schema={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 500},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
                "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 30, "default": 10},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        permission="net.search",
        call=web_search,
    ),
)
