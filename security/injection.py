"""Layer 2, prompt-injection detection: a scored detector applied to user input and to tool/LLM output.

The detector normalises the text (NFKC, case-fold, invisible characters out), then scores it with:

- the weighted patterns of :mod:`openfang.security._injection_rules` (instruction override, role play as
  system, chat-template and tool-call forgery, exfiltration asks, markdown-image exfil links, indirect
  injections addressed to "AI agents reading this"),
- hidden-unicode heuristics: Unicode *tag* characters (invisible ASCII smuggling, decoded and re-scanned),
  bidi overrides, and runs of zero-width characters (ZWJ inside emoji sequences is not counted),
- base64 blobs: each long enough blob that decodes to text is scanned too; instructions inside it score as
  ``base64``.

Rule weights combine with a noisy-OR (``1 - prod(1 - w)``). A score at or above the threshold is a
detection; what happens then is the configured action for the text's direction: ``flag`` (report, pass the
text on), ``strip`` (remove invisible characters and the matched passages), ``block`` (raise
:class:`~openfang.security._errors.Denied`). Every detection writes an ``injection.detected`` audit record
with the source, score and rule names (not the text).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from openfang.security._errors import Denied
from openfang.security._injection_heuristics import directive_features
from openfang.security._injection_rules import RULES
from openfang.security.audit import AuditSink

Action = Literal["flag", "strip", "block"]
Source = Literal["user", "tool", "llm", "agent"]
ACTIONS = ("flag", "strip", "block")
OUTPUT_SOURCES = frozenset({"tool", "llm"})

_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u00ad"
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
_ZW_ANY = re.compile(f"[{_ZERO_WIDTH}]")
_TAGS = re.compile("[\U000e0000-\U000e007f]")
_INVISIBLE = re.compile(f"[{_ZERO_WIDTH}{_BIDI}\U000e0000-\U000e007f]")
_B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
_SPACES = re.compile(r"[ \t\f\v]+")
_NEGATION = re.compile(r"\b(?:never|not|don't|dont|do not|no one|nobody)\b[^.]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectionConfig:
    """``action`` applies to user/agent input, ``output_action`` to tool and LLM output flowing back."""

    enabled: bool = True
    threshold: float = 0.5
    action: Action = "block"
    output_action: Action = "strip"
    max_scan_chars: int = 200_000  # longer texts are scanned in their first and last halves of this size


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The detector's result. ``text`` is what to pass on (stripped when the action is ``strip``)."""

    score: float
    detected: bool
    rules: tuple[str, ...]
    categories: tuple[str, ...]
    action: Action | None
    text: str
    spans: tuple[tuple[int, int], ...] = field(default=(), repr=False)


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    return _SPACES.sub(" ", text).casefold()


def _is_symbol(c: str) -> bool:
    return bool(c) and unicodedata.category(c) in ("So", "Sk")


def _hidden_unicode(text: str) -> list[tuple[str, float]]:
    hits: list[tuple[str, float]] = []
    if _TAGS.search(text):
        hits.append(("unicode:tag_characters", 0.9))
    if any(c in text for c in "\u202d\u202e"):
        hits.append(("unicode:bidi_override", 0.6))
    if not _ZW_ANY.search(text):
        return hits
    # ZWJ between two emoji/symbols is how emoji sequences are built: do not count those.
    count = 0
    for i, c in enumerate(text):
        if c in _ZERO_WIDTH:
            prev = text[i - 1] if i else ""
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if c == "\u200d" and (_is_symbol(prev) or _is_symbol(nxt)):
                continue
            count += 1
    if count >= 10:
        hits.append(("unicode:zero_width_run", 0.8))
    elif count >= 3:
        hits.append(("unicode:zero_width", 0.5))
    return hits


def _tag_payload(text: str) -> str:
    """Unicode tag characters mirror ASCII: decode the invisible message so the rules can read it."""
    return "".join(chr(ord(c) - 0xE0000) for c in text if 0xE0020 <= ord(c) <= 0xE007E)


def _b64_payloads(text: str) -> list[str]:
    out = []
    for m in _B64.finditer(text):
        blob = m.group(0)
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(c.isprintable() or c.isspace() for c in decoded)
        if decoded and printable / len(decoded) >= 0.9 and sum(c.isalpha() for c in decoded) >= 8:
            out.append(decoded)
    return out


class InjectionDetector:
    """Scores texts; stateless apart from its config, safe to share."""

    def __init__(self, config: InjectionConfig | None = None) -> None:
        self.config = config or InjectionConfig()

    def _match(self, norm: str) -> list[tuple[str, str, float, tuple[int, int]]]:
        found = []
        for rule in RULES:
            m = rule.pattern.search(norm)
            if m and rule.negatable and _NEGATION.search(norm[max(0, m.start() - 24) : m.start()]):
                continue
            if m:
                found.append((rule.category, f"{rule.category}:{rule.name}", rule.weight, m.span()))
        return found

    def score(self, text: str) -> tuple[float, list[str], list[str], list[tuple[int, int]]]:
        """``(score, rule names, categories, spans in the normalised text)``."""
        limit = self.config.max_scan_chars
        if len(text) > limit:
            text = text[: limit // 2] + "\n" + text[-limit // 2 :]
        weights: dict[str, float] = {}
        cats: set[str] = set()
        spans: list[tuple[int, int]] = []
        for name, w in _hidden_unicode(text):
            weights[name] = w
            cats.add("unicode")
        norm = _normalise(text)
        for cat, name, w, span in self._match(norm):
            weights[name] = w
            cats.add(cat)
            spans.append(span)
        for name, w in directive_features(norm):
            weights[name] = w
            cats.add("heuristic")
        hidden = _tag_payload(text) if _TAGS.search(text) else ""
        if hidden:
            for _cat, name, w, _span in self._match(_normalise(hidden)):
                weights["unicode:" + name] = max(w, 0.9)
                cats.add("unicode")
        for payload in _b64_payloads(text):
            inner = self._match(_normalise(payload))
            inner_score = 1.0
            for *_rest, w, _span in inner:
                inner_score *= 1 - w
            if inner and 1 - inner_score >= self.config.threshold:
                weights["base64:" + inner[0][1]] = 0.9
                cats.add("base64")
        remaining = 1.0
        for w in weights.values():
            remaining *= 1 - w
        return 1 - remaining, sorted(weights), sorted(cats), spans

    def scan(self, text: str, *, source: Source = "user") -> Verdict:
        """Score ``text`` and decide (no audit; see :class:`InjectionGuard`)."""
        if not self.config.enabled or not text:
            return Verdict(score=0.0, detected=False, rules=(), categories=(), action=None, text=text)
        s, rules, cats, spans = self.score(text)
        detected = s >= self.config.threshold
        action: Action | None = None
        out = text
        if detected:
            action = self.config.output_action if source in OUTPUT_SOURCES else self.config.action
            if action == "strip":
                out = self.strip(text)
        return Verdict(
            score=round(s, 4),
            detected=detected,
            rules=tuple(rules),
            categories=tuple(cats),
            action=action,
            text=out,
            spans=tuple(spans),
        )

    def strip(self, text: str) -> str:
        """``text`` without invisible characters, each line that triggers a rule replaced by a marker.

        Lines are judged one by one so the clean ones keep their exact form (case included). If an
        injection spans lines (a forged ReAct transcript) and survives that, the matched passages are cut
        from the normalised text instead, which loses case but not safety.
        """
        marker = "[removed: possible prompt injection]"
        lines = _INVISIBLE.sub("", text).split("\n")
        out_lines = [marker if self._match(_normalise(line)) else line for line in lines]
        out = "\n".join(out_lines)
        score, _rules, _cats, left = self.score(out)
        if score < self.config.threshold:
            return out
        norm = _normalise(out)
        spans = sorted(left)
        pieces, pos = [], 0
        for start, end in spans:
            line_start = norm.rfind("\n", 0, start) + 1
            line_end = norm.find("\n", end)
            line_end = len(norm) if line_end < 0 else line_end
            if line_start < pos:
                line_start = pos
            pieces.append(norm[pos:line_start])
            pieces.append(marker)
            pos = max(pos, line_end)
        pieces.append(norm[pos:])
        return "".join(pieces)


class InjectionGuard:
    """Applies the detector at a boundary and audits detections; raises Denied when the action is block."""

    def __init__(self, config: InjectionConfig | None = None, *, audit: AuditSink | None = None) -> None:
        self.detector = InjectionDetector(config)
        self._audit = audit

    def check(self, text: str, *, source: Source, agent_id: str = "", client: str = "") -> Verdict:
        """Scan ``text`` coming from ``source``; return the verdict (with the text to pass on) or raise."""
        verdict = self.detector.scan(text, source=source)
        if verdict.detected:
            if self._audit is not None:
                self._audit.append(
                    "injection.detected",
                    source=source,
                    agent_id=agent_id,
                    client=client,
                    score=verdict.score,
                    rules=list(verdict.rules),
                    action=verdict.action,
                )
            if verdict.action == "block":
                raise Denied(
                    f"possible prompt injection in {source} text (score {verdict.score:.2f}: "
                    f"{', '.join(verdict.categories)})",
                    layer="injection",
                    reason="prompt_injection",
                )
        return verdict
