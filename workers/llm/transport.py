"""The HTTP boundary of the LLM providers: JSON POST with bounded retries, and a server-sent-events reader.

Stdlib ``http.client`` only. Every failure becomes an :class:`LLMError` here, naming the provider, the HTTP
status and the server's own error message. Retries (429, 5xx including Anthropic's 529, connection
errors, timeouts) use exponential backoff with jitter, honour ``Retry-After``, and are bounded by
``max_retries``; a status like 400 or 401 is not retried. A retry only happens before any response body
was handed out, so a half-streamed answer is never repeated. ``timeout_s`` bounds the whole exchange,
including a stream that trickles bytes slowly; headers (with the API key) are never logged.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import structlog

from openfang.workers.llm.types import LLMError

log = structlog.get_logger("openfang.llm")
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 32 * 1024 * 1024
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """Timeouts and retry policy of one provider."""

    timeout_s: float = 120.0  # the whole exchange, streaming included
    connect_timeout_s: float = 10.0
    max_retries: int = 2
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: its ``event:`` name ("message" when absent) and joined ``data:`` lines."""

    event: str
    data: str


def error_message(raw: bytes) -> str:
    """The server's error message from an error body (OpenAI, Anthropic, Ollama shapes, else the text)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            kind = err.get("type") or err.get("code")
            if msg:
                return f"{msg} ({kind})" if isinstance(kind, str) and kind else str(msg)
        elif isinstance(err, str):
            return err
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    return text[:500]


class Exchange:
    """An open response: read it once, as JSON (:meth:`json`) or as events (:meth:`events`)."""

    def __init__(self, client: HttpClient, conn: http.client.HTTPConnection, resp: Any, deadline: float):
        self._client = client
        self._conn = conn
        self._resp = resp
        self._deadline = deadline
        ctype = str(resp.getheader("Content-Type", "")).lower()
        self.is_sse = ctype.startswith("text/event-stream")

    def __enter__(self) -> Exchange:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _arm(self) -> None:
        """Shrink the socket timeout to what is left of the deadline (a slow trickle cannot run forever)."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise LLMError(
                self._client.provider,
                f"timed out after {self._client.settings.timeout_s:g}s",
                cause="timeout",
            )
        if self._conn.sock is not None:
            self._conn.sock.settimeout(left)

    def json(self) -> Any:
        """The whole body parsed as JSON (LLMError when it is not)."""
        try:
            self._arm()
            raw = self._resp.read(MAX_JSON_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._client.transport_error(exc) from None
        if len(raw) > MAX_JSON_BODY:
            raise LLMError(
                self._client.provider, f"response body over {MAX_JSON_BODY} bytes", cause="malformed"
            )
        try:
            return json.loads(raw)
        except ValueError as exc:
            snippet = self._client.scrub(raw[:200].decode("utf-8", errors="replace"))
            raise LLMError(
                self._client.provider,
                f"malformed JSON in the response: {exc}: {snippet!r}",
                cause="malformed",
            ) from None

    def events(self) -> Iterator[SSEEvent]:
        """The server-sent events of the body, as they arrive."""
        event, data = "", list[str]()
        while True:
            try:
                self._arm()
                line = self._resp.readline(1 << 20)
            except (OSError, http.client.HTTPException) as exc:
                raise self._client.transport_error(exc) from None
            if not line:
                if data:
                    yield SSEEvent(event or "message", "\n".join(data))
                return
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text:
                if data or event:
                    yield SSEEvent(event or "message", "\n".join(data))
                event, data = "", list[str]()
            elif text.startswith(":"):
                continue  # comment / keep-alive
            else:
                key, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if key == "event":
                    event = value
                elif key == "data":
                    data.append(value)


class HttpClient:
    """POSTs JSON to one base URL for one provider, with the provider's headers and retry policy."""

    def __init__(
        self, provider: str, base_url: str, headers: Mapping[str, str], settings: HttpSettings
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LLMError(provider, f"base_url must be an http(s) URL, got {base_url!r}")
        self.provider = provider
        self.settings = settings
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        # Credentials in our headers, to blank out if a server echoes them in an error message.
        secrets = {v for k, v in headers.items() if k.lower() in _SECRET_HEADERS}
        secrets |= {s.split(" ", 1)[1] for s in secrets if " " in s}
        self._secrets = tuple(sorted((s for s in secrets if len(s) >= 8), key=len, reverse=True))
        self.auth_hint: str | None = None  # appended to a 401/403 (e.g. "no API key was sent: ...")

    def scrub(self, text: str) -> str:
        """``text`` with every credential this client sends replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:  # never show headers: they hold the API key
        scheme = "https" if self._https else "http"
        port = f":{self._port}" if self._port else ""
        return f"HttpClient({self.provider!r}, {scheme}://{self._host}{port}{self._prefix})"

    def transport_error(self, exc: BaseException) -> LLMError:
        if isinstance(exc, TimeoutError | socket.timeout):
            return LLMError(
                self.provider,
                f"timed out after {self.settings.timeout_s:g}s",
                retryable=True,
                cause="timeout",
            )
        return LLMError(self.provider, f"connection failed: {exc}", retryable=True, cause="connection")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        s = self.settings
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), s.backoff_max_s)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        return float(min(s.backoff_max_s, s.backoff_s * (2**attempt)) * (0.5 + random.random() / 2))

    def open(self, path: str, body: Mapping[str, Any], *, accept_sse: bool = False) -> Exchange:
        """POST ``body`` to ``path``; return the open 2xx response, retrying what is worth retrying."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = dict(self._headers)
        if accept_sse:
            headers["Accept"] = "text/event-stream"
        deadline = time.monotonic() + self.settings.timeout_s
        attempt = 0
        while True:
            try:
                return self._attempt(path, payload, headers, deadline)
            except LLMError as err:
                if not err.retryable or attempt >= self.settings.max_retries:
                    raise
                last = err
            delay = self._backoff(attempt, last.retry_after)
            attempt += 1
            if time.monotonic() + delay >= deadline:
                raise last
            # agent_id (and the worker's node, role, pid) come from the job's bound context.
            log.warning(
                "llm_retry",
                provider=self.provider,
                model=body.get("model"),
                attempt=attempt,
                status=last.status,
                cause=last.cause,
                error=last.reason[:300],
                delay_s=round(delay, 3),
            )
            time.sleep(delay)

    def _attempt(self, path: str, payload: bytes, headers: dict[str, str], deadline: float) -> Exchange:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LLMError(self.provider, f"timed out after {self.settings.timeout_s:g}s", cause="timeout")
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=min(self.settings.connect_timeout_s, left))
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.request("POST", self._prefix + path, body=payload, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self.transport_error(exc) from None
        if 200 <= resp.status < 300:
            return Exchange(self, conn, resp, deadline)
        try:
            raw = resp.read(MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            raw = b""
        finally:
            conn.close()
        reason = self.scrub(error_message(raw))
        if resp.status in (401, 403) and self.auth_hint:
            reason = f"{reason} ({self.auth_hint})"
        raise LLMError(
            self.provider,
            reason,
            status=resp.status,
            retryable=resp.status in RETRY_STATUSES,
            retry_after=resp.getheader("Retry-After"),
        )
