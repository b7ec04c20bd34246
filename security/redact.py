"""Layer 11, output filtering: redact secrets and PII from replies, audit records and log lines.

Three mechanisms, applied in order:

1. *Known secrets*: exact values registered with :meth:`Redactor.add_known` (the host registers every value
   it loaded from a secret source, the same ones exfiltration taint tracking knows) are replaced wherever
   they appear.
2. *Sensitive keys*: in a map, a string under a key named like a credential (``password``, ``api_key``,
   ``authorization``...) is replaced whole, whatever it looks like.
3. *Patterns*: provider key formats, private keys, JWTs, high-entropy tokens, and the PII kinds that are
   configured (emails, card numbers, SSNs by default) are replaced by ``[REDACTED:<kind>]``.

:func:`redact_processor` is a structlog processor over a process-wide default redactor; the lead adds it to
every process's logging chain (``openfang.logs`` picks it up automatically).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from openfang.security._secrets import Detector, find_secrets, select_detectors

_MIN_KNOWN = 6  # shorter "secrets" would redact ordinary words
_MEMO_TEXT = 1024  # the longest text whose redaction Redactor remembers
SENSITIVE_KEY = re.compile(
    r"(?i)^(?:.*[_\-])?(?:password|passwd|passphrase|secret|secrets|token|api[_\-]?key|apikey|authorization|"
    r"cookie|set[_\-]cookie|private[_\-]?key|secret[_\-]?key|access[_\-]?key|signing[_\-]?key|hmac[_\-]?key|"
    r"credentials?|session[_\-]?id|x[_\-]api[_\-]key)$"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedactConfig:
    """``secret_kinds`` None means every secret detector; ``pii`` names the PII detectors to apply."""

    enabled: bool = True
    secret_kinds: frozenset[str] | None = None
    pii: frozenset[str] = field(default_factory=lambda: frozenset({"email", "credit_card", "us_ssn"}))
    redact_sensitive_keys: bool = True


class Redactor:
    """Replaces secrets and PII in text and nested values. Not thread-safe for :meth:`add_known`."""

    def __init__(self, config: RedactConfig | None = None) -> None:
        self.config = config or RedactConfig()
        self._detectors: tuple[Detector, ...] = select_detectors(
            self.config.secret_kinds, pii=self.config.pii
        )
        self._known: set[str] = set()
        self._known_re: re.Pattern[str] | None = None
        # The redacted form of recent texts up to _MEMO_TEXT characters (a classifier's few answers, the same
        # message checked by two agents), valid for the known secrets and detectors it was made with.
        self._memo: dict[str, str] = {}
        self._memo_for: tuple[Any, ...] = (None, self._detectors, self.config)

    def add_known(self, *values: str) -> None:
        """Register exact secret values (from env vars, secret kv, key files) to be redacted everywhere."""
        for value in values:
            if isinstance(value, str) and len(value) >= _MIN_KNOWN:
                self._known.add(value)
        if self._known:
            # Longest first so a secret that contains another is replaced whole.
            alternatives = sorted(self._known, key=len, reverse=True)
            self._known_re = re.compile("|".join(re.escape(v) for v in alternatives))

    # At most this many remembered texts (cleared when full); 0 turns the memo off (the tests' oracle).
    memo_entries: ClassVar[int] = 512

    def redact_text(self, text: str) -> str:
        """``text`` with every known secret and detected pattern replaced."""
        if not self.config.enabled or not text:
            return text
        if len(text) > _MEMO_TEXT or not self.memo_entries:
            return self._redact(text)
        memo = self._memo
        state = self._memo_for
        if state[0] is not self._known_re or state[1] is not self._detectors or state[2] is not self.config:
            memo.clear()  # new known secrets (add_known), detectors or config: other results
            self._memo_for = (self._known_re, self._detectors, self.config)
        out = memo.get(text)
        if out is None:
            out = self._redact(text)
            if len(memo) >= self.memo_entries:
                memo.clear()
            memo[text] = out
        return out

    def _redact(self, text: str) -> str:
        if self._known_re is not None:
            text = self._known_re.sub("[REDACTED:known_secret]", text)
        findings = find_secrets(text, self._detectors)
        if not findings:
            return text
        out: list[str] = []
        pos = 0
        for f in findings:
            out.append(text[pos : f.start])
            out.append(f"[REDACTED:{f.kind}]")
            pos = f.end
        out.append(text[pos:])
        return "".join(out)

    def redact_value(self, value: Any, _depth: int = 0) -> Any:
        """A copy of ``value`` (maps, lists, strings, bytes) with secrets replaced; other scalars as is."""
        if not self.config.enabled:
            return value
        if _depth > 64:
            return "[REDACTED:too_deep]"  # refuse to walk hostile nesting rather than recurse without bound
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("utf-8", errors="replace")
            red = self.redact_text(text)
            return value if red == text else red
        if isinstance(value, Mapping):
            return {k: self._redact_item(k, v, _depth) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(v, _depth + 1) for v in value]
        if isinstance(value, BaseException):
            return self.redact_text(str(value))
        return value

    def _redact_item(self, key: Any, value: Any, depth: int) -> Any:
        if (
            self.config.redact_sensitive_keys
            and isinstance(key, str)
            and isinstance(value, str | bytes)
            and value
            and SENSITIVE_KEY.match(key)
        ):
            return "[REDACTED]"
        return self.redact_value(value, depth + 1)


_default = Redactor()


def default_redactor() -> Redactor:
    """The process-wide redactor used by :func:`redact_processor` and :func:`redact_value`."""
    return _default


def configure_redaction(config: RedactConfig) -> Redactor:
    """Replace the process-wide redactor (keeps the known secrets registered so far)."""
    global _default
    known = _default._known
    _default = Redactor(config)
    _default.add_known(*known)
    return _default


def register_secret(*values: str) -> None:
    """Register secret values with the process-wide redactor (logs and audit records never show them)."""
    _default.add_known(*values)


def redact_text(text: str) -> str:
    """:meth:`Redactor.redact_text` with the process-wide redactor."""
    return _default.redact_text(text)


def redact_value(value: Any) -> Any:
    """:meth:`Redactor.redact_value` with the process-wide redactor."""
    return _default.redact_value(value)


def redact_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact every value of the event (the ``event`` message included)."""
    for key in list(event_dict):
        event_dict[key] = _default._redact_item(key, event_dict[key], 0)
    return event_dict
