"""``http_fetch``: an agent's HTTP client, behind the SSRF guard (``openfang.security.netguard``).

Every hop (the first request and each redirect) is checked with :func:`check_url` and the connection goes
to the address that was checked, never to a fresh DNS answer (DNS rebinding); TLS still verifies the
certificate against the host name (SNI). Limits: ``max_bytes`` of body (the rest is cut and
``truncated`` set), ``timeout_s`` for the whole fetch including redirects, ``MAX_REDIRECTS`` hops. Hop-by-hop
and Host headers from the agent are dropped. Text bodies are decoded with their charset; other bodies are
not returned (only their size), since a model cannot read bytes.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin

import structlog

from openfang.security.netguard import ResolvedTarget, Resolver, check_url
from openfang.workers.tools.core import Tool, ToolContext, ToolError

log = structlog.get_logger("openfang.tools")
MAX_REDIRECTS = 5
DEFAULT_MAX_BYTES = 256 * 1024
MAX_BYTES = 5 * 1024 * 1024
_DROP_HEADERS = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "upgrade",
        "te",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
    }
)
_KEEP_RESPONSE_HEADERS = ("content-type", "content-length", "last-modified", "etag", "location", "date")
_TEXTUAL = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a checked address; the Host header still names the host."""

    def __init__(self, target: ResolvedTarget, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._addresses = target.addresses

    def _open(self) -> socket.socket:
        last: OSError | None = None
        for ip in self._addresses:
            try:
                return socket.create_connection((ip, self.port), self.timeout)
            except OSError as exc:
                last = exc
        raise last or OSError("no address to connect to")

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPS(_PinnedHTTP):
    """HTTPS to a checked address, verifying the certificate for the host name."""

    def __init__(self, target: ResolvedTarget, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target, timeout)
        self._ssl = context

    def connect(self) -> None:
        self.sock = self._ssl.wrap_socket(self._open(), server_hostname=self.host)


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = 10.0,
    follow_redirects: bool = True,
    allow_hosts: Sequence[str] = (),
    allow_private: bool = False,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
    egress_check: Callable[[str, Mapping[str, str], str | None], None] | None = None,
) -> dict[str, Any]:
    """Fetch ``url`` under the SSRF policy; the JSON-able result ``http_fetch`` returns.

    ``egress_check(url, headers, body)`` runs before every hop and may raise SecurityError to refuse it.
    """
    deadline = time.monotonic() + timeout_s
    send = {k: v for k, v in (headers or {}).items() if k.lower() not in _DROP_HEADERS}
    send.setdefault("User-Agent", "openfang-http-fetch/1")
    payload = body.encode() if body is not None else None
    ctx = ssl_context or _default_ssl()
    for hop in range(MAX_REDIRECTS + 1):
        target = check_url(url, allow_hosts=allow_hosts, allow_private=allow_private, resolver=resolver)
        if egress_check is not None:
            egress_check(url, send, payload.decode() if payload is not None else None)
        left = deadline - time.monotonic()
        if left <= 0:
            raise ToolError(f"timed out after {timeout_s:g}s", code="timeout")
        conn = _PinnedHTTPS(target, left, ctx) if target.scheme == "https" else _PinnedHTTP(target, left)
        try:
            conn.request(method, target.path, body=payload, headers=send)
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if follow_redirects and resp.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method, payload = "GET", None
                continue
            raw, truncated = _read(conn, resp, max_bytes, deadline, timeout_s)
        except TimeoutError:
            raise ToolError(f"timed out after {timeout_s:g}s fetching {url}", code="timeout") from None
        except ssl.SSLError as exc:
            raise ToolError(f"TLS failed for {target.host}: {exc}", code="fetch_failed") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ToolError(f"fetching {url} failed: {exc}", code="fetch_failed") from None
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "") or ""
        out: dict[str, Any] = {
            "url": url,
            "status": resp.status,
            "headers": {h: v for h in _KEEP_RESPONSE_HEADERS if (v := resp.getheader(h)) is not None},
            "bytes": len(raw),
            "truncated": truncated,
            "redirects": hop,
        }
        if method != "HEAD":
            if not ctype or any(t in ctype.lower() for t in _TEXTUAL):
                out["body"] = raw.decode(_charset(ctype), errors="replace")
            else:
                out["body"] = None
                out["note"] = f"binary body ({ctype}) not returned"
        log.info("http_fetch", host=target.host, status=resp.status, bytes=len(raw), redirects=hop)
        return out
    raise ToolError(f"more than {MAX_REDIRECTS} redirects, last to {url}", code="fetch_failed")


@functools.cache
def _default_ssl() -> ssl.SSLContext:
    """One verifying TLS context per process (loading the CA store takes milliseconds; contexts are
    thread-safe for wrapping sockets). Created on first use, so never before a worker's fork."""
    return ssl.create_default_context()


def _read(
    conn: http.client.HTTPConnection, resp: Any, max_bytes: int, deadline: float, timeout_s: float
) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ToolError(f"timed out after {timeout_s:g}s reading the body", code="timeout")
        if conn.sock is not None:
            conn.sock.settimeout(left)
        chunk = resp.read1(min(65536, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    raw = b"".join(chunks)
    return raw[:max_bytes], len(raw) > max_bytes


def _charset(ctype: str) -> str:
    for part in ctype.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            try:
                "".encode(value.strip('"'))
                return value.strip('"')
            except LookupError:
                break
    return "utf-8"


def http_fetch(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    check = ctx.egress_check
    return fetch(
        args["url"],
        method=args["method"],
        headers=args.get("headers"),
        body=args.get("body"),
        max_bytes=args["max_bytes"],
        timeout_s=args["timeout_s"],
        follow_redirects=args["follow_redirects"],
        allow_hosts=ctx.net_allow_hosts,
        allow_private=ctx.net_allow_private,
        resolver=ctx.resolver,
        egress_check=(lambda u, h, b: check("http_fetch", u, h, b)) if check is not None else None,
    )


# The arguments http_fetch and http_request share (http_request adds methods, query and typed bodies).
FETCH_PROPERTIES: dict[str, Any] = {
    "url": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
    "headers": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 8192}},
    "body": {"type": "string", "maxLength": 1_000_000},
    "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_BYTES, "default": DEFAULT_MAX_BYTES},
    "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 30, "default": 10},
    "follow_redirects": {"type": "boolean", "default": True},
}

HTTP_FETCH = Tool(
    name="http_fetch",
    description=(
        "Fetch an http(s) URL (public addresses only) and return status, main headers and the text body."
    ),
    schema={
        "type": "object",
        "properties": {**FETCH_PROPERTIES, "method": {"enum": ["GET", "HEAD", "POST"], "default": "GET"}},
        "required": ["url"],
        "additionalProperties": False,
    },
    permission="net.http",
    call=http_fetch,
)
