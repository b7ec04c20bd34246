"""Bearer tokens for the HTTP face (pure ASGI middleware, so streamed responses pass through untouched).

With no tokens configured (allowed only on a loopback address, config enforces it) every request passes.
With tokens, every request must carry ``Authorization: Bearer <token>`` except the A2A agent cards under
``/.well-known/`` paths (discovery is public, and a card names the scheme its endpoint requires) and the
dashboard's static page and files (``/`` and ``/ui/static/``: no data; the page asks for the token).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from openfang.control.http.errors import error_response

PUBLIC_MARK = "/.well-known/"
PUBLIC_PAGE = "/"
PUBLIC_PREFIX = "/ui/static/"


class BearerAuth:
    def __init__(self, app: ASGIApp, tokens: Iterable[str]) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        public = PUBLIC_MARK in path or path == PUBLIC_PAGE or path.startswith(PUBLIC_PREFIX)
        if scope["type"] != "http" or not self.tokens or public:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
        # compare_digest against every token: the time taken does not tell which prefix matched.
        if given and any(hmac.compare_digest(given, t) for t in self.tokens):
            await self.app(scope, receive, send)
            return
        why = "invalid bearer token" if given else "missing 'Authorization: Bearer <token>' header"
        response = error_response(401, "unauthorized", why, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
