"""Signals of the prompt-injection detector that are not words: hidden Unicode and base64 payloads.

- Unicode *tag* characters (U+E0020..U+E007E) mirror ASCII invisibly; a run of them spelling words is
  decoded so the detector can scan the hidden message (a flag emoji's short tag sequence is not counted).
- Bidi overrides (U+202D, U+202E) reorder what a reviewer sees; runs of zero-width characters hide or split
  words (a ZWJ between two symbols, as in emoji sequences, is not counted).
- Base64: each blob of 24 or more base64 characters that decodes to readable text is handed back to the
  detector, which scans it like any other text.

Every function here is called only when a cheap test says it may find something: pure-ASCII text skips the
Unicode checks, and text without a long base64-shaped run skips the decoding.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from openfang.security._injection_normalise import TAG_LEAD, ZERO_WIDTH

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_SHAPE = bytes(ord("b") if i in _B64_ALPHABET else ord(" ") for i in range(256))
_B64_RUN = b"b" * 24
_B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
_TAGS = re.compile("[\U000e0020-\U000e007e]+")
_ZW = frozenset(ZERO_WIDTH)


def tag_payload(text: str) -> str:
    """The ASCII message spelt by the longest run of tag characters, if it reads as words ("" otherwise)."""
    if text.isascii() or TAG_LEAD not in text.encode("utf-8", "replace"):
        return ""
    runs = _TAGS.findall(text)
    best = max(runs, key=len, default="")
    decoded = "".join(chr(ord(c) - 0xE0000) for c in best)
    return decoded if sum(c.isalpha() for c in decoded) >= 8 and " " in decoded else ""


def unicode_signals(text: str) -> list[tuple[str, float]]:
    """``(rule, weight)`` for bidi overrides and zero-width runs in ``text``."""
    if text.isascii():
        return []
    out: list[tuple[str, float]] = []
    if "\u202d" in text or "\u202e" in text:
        out.append(("unicode:bidi_override", 0.5))
    count = sum(text.count(c) for c in _ZW)  # C scans; the Python loop below visits only joiners
    if not count:
        return out
    at = text.find("\u200d")
    while at >= 0:
        if _symbol(text, at - 1) or _symbol(text, at + 1):  # ZWJ inside an emoji sequence
            count -= 1
        at = text.find("\u200d", at + 1)
    if count >= 10:
        out.append(("unicode:zero_width_run", 0.55))
    elif count >= 3:
        out.append(("unicode:zero_width", 0.3))
    return out


def _symbol(text: str, i: int) -> bool:
    return 0 <= i < len(text) and unicodedata.category(text[i]) in ("So", "Sk")


def base64_payloads(text: str) -> list[tuple[str, str]]:
    """``(blob, decoded text)`` for every base64 blob in ``text`` that decodes to readable words."""
    if _B64_RUN not in text.encode("utf-8", "replace").translate(_B64_SHAPE):
        return []
    out = []
    for m in _B64.finditer(text):
        blob = m.group(0)
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(c.isprintable() or c.isspace() for c in decoded)
        if decoded and printable / len(decoded) >= 0.9 and sum(c.isalpha() for c in decoded) >= 8:
            out.append((blob, decoded))
    return out
