"""Every HTTP error of the face as one JSON shape, and the translation of wire errors to HTTP statuses.

The body follows the OpenAI error shape (so OpenAI clients show the message), used on every route that is
not a JSON-RPC protocol (MCP and A2A answer with their own JSON-RPC errors)::

    {"error": {"message": "no agent named 'x' (known: greeter, clock)", "type": "not_found",
               "code": "not_found", "param": "model"}}
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from openfang.protocol.errors import OpenFangError

# wire error code -> HTTP status
STATUS_OF_CODE: dict[str, int] = {
    "bad_request": 400,
    "bad_config": 400,
    "too_large": 413,
    "not_found": 404,
    "denied": 403,
    "rate_limited": 429,
    "busy": 503,
    "timeout": 504,
    "unknown_type": 400,
    "sandbox_error": 502,
    "memory_error": 502,
}


class HttpError(Exception):
    """An error to answer with ``status`` and the JSON error body; ``param`` names the offending field."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return error_response(self.status, self.code, self.message, param=self.param, headers=headers)


def error_response(
    status: int, code: str, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": {"message": message, "type": code, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def from_openfang(exc: OpenFangError, *, param: str | None = None) -> HttpError:
    """The HttpError for an error of ours (a gateway error reply, a timeout, a bad body)."""
    code = exc.code or "internal"
    return HttpError(STATUS_OF_CODE.get(code, 500), code, str(exc), param=param)
