"""Secret and PII detectors shared by exfiltration detection (layer 10) and redaction (layer 11).

Each detector is a named regular expression, optionally with a validator that removes false positives
(a Luhn check for card numbers, an entropy floor for generic tokens, JSON-decoding the header of a JWT).
Provider patterns follow the documented public formats of those keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field

import ahocorasick_rs


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One secret found in a text: detector name and span (the value itself is not kept here)."""

    kind: str
    start: int
    end: int


def shannon_entropy(token: str) -> float:
    """Bits per character of ``token``'s character distribution."""
    if not token:
        return 0.0
    counts = Counter(token)
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _luhn(digits: str) -> bool:
    nums = [int(d) for d in re.sub(r"\D", "", digits)]
    if not 13 <= len(nums) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(nums)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _jwt_ok(token: str) -> bool:
    header = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        return isinstance(json.loads(decoded), dict)
    except (binascii.Error, ValueError):
        return False


_PATH_WORD = re.compile(r"[a-z][a-z_\-]{2,}")


def _high_entropy(token: str) -> bool:
    # Real random tokens mix classes; long hex/base64 of >= 32 chars with >= 3.5 bits/char rarely are words.
    classes = sum(bool(re.search(p, token)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    if classes < 2:
        return False
    # A file path (a module, a data dir under a random temp folder) is not a secret: most of its components
    # are lowercase words. Base64 secrets that contain "/" split into mixed-case runs instead.
    parts = [p for p in token.split("/") if p]
    if len(parts) >= 3 and 2 * sum(bool(_PATH_WORD.fullmatch(p)) for p in parts) >= len(parts):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", token):
        # Hex strings are mostly digests (git ids, sha256 pins) in ordinary text; hex secrets that matter are
        # caught by taint tracking, which knows the actual values.
        return False
    return shannon_entropy(token) >= 4.2


@dataclass(frozen=True, slots=True, kw_only=True)
class Detector:
    """A named pattern; ``check`` drops false positives.

    The other fields are what any match of ``pattern`` needs in a pure-ASCII text, so that text holding none
    of it skips the regex (:func:`find_secrets`): one of the literals ``needs`` (sought case-insensitively
    when ``needs_any_case``), at least ``min_digits`` ASCII digits, a run of ``token_run`` token characters
    (``[A-Za-z0-9+/_-]``). Each is a necessary condition, never a sufficient one; a detector with none of
    them always runs. Non-ASCII text always runs every regex (``\\b``, ``\\d`` and case-folding are wider
    than ASCII there).
    """

    kind: str
    regex: str
    check: Callable[[str], bool] | None = None
    group: int = 0
    needs: tuple[str, ...] = ()
    needs_any_case: bool = False
    min_digits: int = 0
    token_run: int = 0
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def pattern(self) -> re.Pattern[str]:
        """``regex``, compiled on its first use in this process and kept. Not at import: the daemon imports
        this module before it forks anything (~2.5 ms for every detector's regex, on the cold start's path),
        and most texts never run a regex (:func:`find_secrets` skips what cannot match)."""
        compiled = self._compiled
        if compiled is None:
            compiled = re.compile(self.regex)
            object.__setattr__(self, "_compiled", compiled)  # a cache, not a field: frozen stays true
        return compiled


SECRET_DETECTORS: tuple[Detector, ...] = (
    Detector(
        kind="private_key",
        needs=("PRIVATE KEY",),
        regex=(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
            r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY"
            r"(?: BLOCK)?-----"
        ),
    ),
    Detector(
        kind="aws_access_key",
        regex=(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b"),
        needs=("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA"),
    ),
    Detector(
        kind="aws_secret_key",
        needs=("aws",),
        needs_any_case=True,
        regex=(r"(?i)aws.{0,20}?(?:secret|sk).{0,20}?['\"=:\s]\s*([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"),
        group=1,
    ),
    Detector(
        kind="github_token",
        needs=("gh", "github_pat_"),
        regex=(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})\b"),
    ),
    Detector(kind="anthropic_key", regex=(r"\bsk-ant-[A-Za-z0-9_\-]{20,}"), needs=("sk-ant-",)),
    Detector(
        kind="openai_key", regex=(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"), needs=("sk-",)
    ),
    Detector(kind="slack_token", regex=(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), needs=("xox",)),
    Detector(
        kind="stripe_key",
        regex=(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
        needs=("_live_", "_test_"),
    ),
    Detector(kind="google_api_key", regex=(r"\bAIza[0-9A-Za-z_\-]{35}"), needs=("AIza",)),
    Detector(kind="gitlab_token", regex=(r"\bglpat-[A-Za-z0-9_\-]{20,}"), needs=("glpat-",)),
    Detector(kind="npm_token", regex=(r"\bnpm_[A-Za-z0-9]{36}\b"), needs=("npm_",)),
    Detector(kind="huggingface_token", regex=(r"\bhf_[A-Za-z0-9]{34,}\b"), needs=("hf_",)),
    Detector(
        kind="jwt",
        regex=(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}"),
        check=_jwt_ok,
        needs=("eyJ",),
    ),
    Detector(
        kind="password_assignment",
        regex=(
            r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)\b"
            r"\s*[=:]\s*['\"]?([^\s'\"]{8,})"
        ),
        group=1,
        needs=("password", "passwd", "pwd", "secret", "api", "access", "auth"),
        needs_any_case=True,
    ),
    Detector(
        kind="bearer_token",
        regex=(r"(?i)\bbearer\s+([A-Za-z0-9_\-\.=+/]{20,})"),
        group=1,
        needs=("bearer",),
        needs_any_case=True,
    ),
    Detector(
        kind="high_entropy_token",
        regex=(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,}={0,2}(?![A-Za-z0-9+/_\-])"),
        check=_high_entropy,
        token_run=32,
    ),
)

PII_DETECTORS: tuple[Detector, ...] = (
    Detector(kind="email", regex=(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"), needs=("@",)),
    # Not the fraction or integer part of a decimal number (a float's digits pass Luhn one time in ten).
    Detector(
        kind="credit_card",
        regex=(r"(?<![\d.])\b(?:\d[ \-]?){12,18}\d\b(?!\.\d)"),
        check=_luhn,
        min_digits=13,
    ),
    Detector(
        kind="us_ssn",
        regex=(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
        needs=("-",),
        min_digits=9,
    ),
    Detector(
        kind="phone",
        regex=(r"(?<![\w+])\+\d{1,3}[ \-.]?\(?\d{1,4}\)?(?:[ \-.]?\d{2,4}){2,4}\b"),
        needs=("+",),
        min_digits=6,
    ),
    Detector(kind="iban", regex=(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b")),
)

SECRET_KINDS = frozenset(d.kind for d in SECRET_DETECTORS)
PII_KINDS = frozenset(d.kind for d in PII_DETECTORS)


def select_detectors(kinds: Iterable[str] | None, *, pii: Iterable[str] = ()) -> tuple[Detector, ...]:
    """Secret detectors (all, or those named in ``kinds``) plus the PII detectors named in ``pii``."""
    wanted = set(kinds) if kinds is not None else set(SECRET_KINDS)
    wanted_pii = set(pii)
    return tuple(d for d in SECRET_DETECTORS if d.kind in wanted) + tuple(
        d for d in PII_DETECTORS if d.kind in wanted_pii
    )


# Every literal some detector needs, lower-cased, in one automaton run over the lower-cased text: a
# pure-ASCII text holding none of them (most text) runs only the detectors that need no literal, and those
# only when their digit or token-run condition holds.
_NEEDLES = sorted({n.lower() for d in (*SECRET_DETECTORS, *PII_DETECTORS) for n in d.needs})
_NEEDLE_AUTOMATON = ahocorasick_rs.AhoCorasick(_NEEDLES)
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_TOKEN_SHAPE = bytes(ord("t") if i in _TOKEN_CHARS else ord(" ") for i in range(256))
# Per detector tuple (by identity; the tuple is kept so its id stays its own): those needing no literal, each
# with the shortest text it can match (min_digits digits or a token_run run: that many bytes), and the
# shortest text any of them can match.
_LITERAL_FREE: dict[int, tuple[tuple[Detector, ...], tuple[tuple[Detector, int], ...], int]] = {}


def _literal_free(detectors: tuple[Detector, ...]) -> tuple[tuple[tuple[Detector, int], ...], int]:
    entry = _LITERAL_FREE.get(id(detectors))
    if entry is None or entry[0] is not detectors:
        if len(_LITERAL_FREE) > 64:
            _LITERAL_FREE.clear()
        free = tuple((d, max(d.min_digits, d.token_run)) for d in detectors if not d.needs)
        floor = min((n for _, n in free), default=0)
        entry = (detectors, free, floor)
        _LITERAL_FREE[id(detectors)] = entry
    return entry[1], entry[2]


def _may_match(det: Detector, text: str, data: bytes, found: Set[str]) -> bool:
    """False when ``det`` cannot match the pure-ASCII ``text`` (``data``: its bytes); ``found`` holds the
    lower-cased needles that occur in the lower-cased text."""
    if det.needs and not any(n.lower() in found and (det.needs_any_case or n in text) for n in det.needs):
        return False
    if det.min_digits and len(data) - len(data.translate(None, b"0123456789")) < det.min_digits:
        return False
    # find, not ``in``: bytes.__contains__ first tries its operand as an int and makes and clears a TypeError
    # (~1.8k instructions) before the substring search; find takes a bytes operand as it is. Same answer.
    return not det.token_run or data.translate(_TOKEN_SHAPE).find(b"t" * det.token_run) >= 0


_NOTHING: frozenset[str] = frozenset()


def find_secrets(text: str, detectors: Iterable[Detector]) -> list[Finding]:
    """Every non-overlapping finding in ``text``, earlier and longer spans first.

    In a pure-ASCII text a detector that cannot match (:class:`Detector`'s needs) is skipped; the findings
    are the same as :func:`scan_all`'s, which runs every detector's regex.
    """
    if text.isascii():
        data = text.encode("ascii")
        if not isinstance(detectors, tuple):
            detectors = tuple(detectors)
        matches = _NEEDLE_AUTOMATON.find_matches_as_indexes(text.lower(), overlapping=True)
        present = {_NEEDLES[i] for i, _, _ in matches} if matches else _NOTHING
        if not matches:
            free, floor = _literal_free(detectors)
            size = len(data)
            if size < floor:
                return []  # shorter than any digit count or token run a literal-free detector needs
            # A detector whose digit count or token run is longer than the text is not asked (_may_match
            # would say False: a short reply skips the token-run test of the high-entropy detector).
            detectors = [det for det, least in free if size >= least and _may_match(det, text, data, present)]
        else:
            detectors = [det for det in detectors if _may_match(det, text, data, present)]
        if not detectors:
            return []  # most plain replies: no detector can match
    return scan_all(text, detectors)


def scan_all(text: str, detectors: Iterable[Detector]) -> list[Finding]:
    """Every non-overlapping finding of the detectors' regexes in ``text``, no detector skipped; earlier and
    longer spans first."""
    found: list[Finding] = []
    for det in detectors:
        pattern = det._compiled  # the slot, not the property: this loop runs every regex of a non-ASCII text
        if pattern is None:
            pattern = det.pattern
        for m in pattern.finditer(text):
            value = m.group(det.group)
            if value is None or (det.check is not None and not det.check(value)):
                continue
            found.append(Finding(kind=det.kind, start=m.start(det.group), end=m.end(det.group)))
    found.sort(key=lambda f: (f.start, -(f.end - f.start)))
    merged: list[Finding] = []
    for f in found:
        if merged and f.start < merged[-1].end:
            continue  # overlaps a finding already kept (the earlier, then longer, span wins)
        merged.append(f)
    return merged
