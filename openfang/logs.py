"""Logging setup shared by every OpenFANG process: structlog, JSON in production, console on a terminal.

Configured once in the daemon before any fork; children inherit the configuration and bind their own
context (``role``, ``pid``, ``worker``, ``agent_id``) with ``structlog.contextvars``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _redactor() -> Any:
    """The security engine's redaction processor, when it is installed (secrets never reach a log line)."""
    try:
        from openfang.security.redact import redact_processor
    except ImportError:
        return None
    return redact_processor


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog for this process and every child forked after it."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    redact = _redactor()
    if redact is not None:
        processors.append(redact)
    processors.append(structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        # One write per line (text and newline together): PrintLogger writes them apart, and with Python
        # unbuffered (-u, PYTHONUNBUFFERED) another process sharing the stream wrote its line in between.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
