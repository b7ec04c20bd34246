# ruff: noqa: RUF002  -- look-alike letters are this module's subject
"""One normalisation pass for the prompt-injection detector: the *folded* text the cue matcher reads.

Folding maps every spelling an attacker uses to hide a word onto the one the cue table holds:

- NFKC (full-width and mathematical letters), lower case, curly quotes to straight ones;
- invisible characters (zero-width, bidi controls, soft hyphen, tag characters) removed, so
  ``ig\\u200bnore`` reads ``ignore``;
- Cyrillic and Greek look-alikes mapped to Latin (``іgnоre``), digits and ``$`` read as letters
  (leetspeak ``1gn0r3``), and ``-``, ``_`` and ``*`` dropped (``in-struc-tions``, ``api_key``, ``**note**``);
- letters spelt out one by one (``i g n o r e``, ``S.y.s.t.e.m``) joined again; tabs and runs of spaces
  made one space.

Invariants: the fold never crosses or removes a newline (the detector maps hits back to lines through them),
and it is a pure function of its input, so the cue table is folded with the same function at build time and
a cue matches whatever text folds to it. Length is *not* preserved; positions are only compared with other
positions in the same folded text.

Pure-ASCII text (most traffic) takes a fast path: ``lower`` and one ``bytes.translate``. Other text pays
for NFKC, case-folding and byte-level replacements, each of them a C loop over the text; nothing here
runs a Python loop or a regex over every character, except the spelt-out-letters join, which runs only
when a cheap shape test finds such a run.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Leetspeak digits read as letters; separators used to break words apart vanish. ASCII bytes never occur
# inside a UTF-8 multi-byte sequence, so translating bytes is safe on any encoded text.
_LEET = bytes.maketrans(b"013457$\t", b"oieasts ")
_DROP = b"-_*"
# Shape of the text for the spelt-out test: letters become "a", separators a space, the rest "#".
_SHAPE = bytes(
    ord("a") if chr(i).isalpha() and i < 128 else ord(" ") if chr(i) in " .-_*/" else ord("#")
    for i in range(256)
)
_SPELT_SHAPE = b" a a a a "  # four single letters in a row: rare in prose, the signature of s p a c i n g
_SPELT = re.compile(r"(?<![^\W\d_])[^\W\d_](?:[ .\-_*/][^\W\d_](?![^\W\d_])){2,}")

# Invisible characters (UTF-8), removed. U+200D (ZWJ) joins emoji too; it is removed like the rest.
ZERO_WIDTH = (
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\u2061",
    "\u2062",
    "\u2063",
    "\u2064",
    "\ufeff",
    "\u180e",
)
BIDI = ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069")
# Look-alikes (after lower-casing) to their Latin letter, and typographic quotes to ASCII ones.
_LOOKALIKE = {
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y", "\u0445": "x",
    "\u0456": "i", "\u0458": "j", "\u0455": "s", "\u0501": "d", "\u04bb": "h",
    "\u03bf": "o", "\u03b1": "a", "\u03b5": "e", "\u03b9": "i", "\u03ba": "k", "\u03bd": "v", "\u03c1": "p",
    "\u03c4": "t", "\u03c5": "u", "\u03c7": "x", "\u0131": "i", "\u0261": "g", "\u0251": "a",
}  # fmt: skip
_QUOTES = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"'}
_INVISIBLES = (*ZERO_WIDTH, *BIDI, "\u00ad", "\u200e", "\u200f", *(chr(c) for c in range(0xE0000, 0xE0080)))
_MAP = {k.encode(): v.encode() for k, v in (*_QUOTES.items(), *((c, "") for c in _INVISIBLES))}
_MAP_LOOK = {**_MAP, **{k.encode(): v.encode() for k, v in _LOOKALIKE.items()}}


def _alternation(keys: Iterable[bytes]) -> re.Pattern[bytes]:
    """A pattern matching exactly ``keys``, the UTF-8 encodings of single characters.

    Such a set is prefix-free (UTF-8 is a prefix code), so at most one key matches at a position and the
    keys can be grouped by all their bytes but the last: ``\xf3\xa0\x80[\x80-\xbf...]`` instead of an
    alternation of 128 tag characters. Same matches; sre compiles it in ~0.2 ms instead of ~2-5 ms (on the
    start path: the root imports this module before it forks anything).
    """
    by_prefix: dict[bytes, list[int]] = {}
    for key in keys:
        if len(key.decode("utf-8")) != 1:
            raise ValueError(f"{key!r} is not one character")
        by_prefix.setdefault(key[:-1], []).append(key[-1])
    branches = []
    for prefix in sorted(by_prefix, key=lambda p: (-len(p), p)):
        last = b"".join(re.escape(bytes([b])) for b in sorted(set(by_prefix[prefix])))
        branches.append(re.escape(prefix) + (b"[" + last + b"]" if len(by_prefix[prefix]) > 1 else last))
    return re.compile(b"|".join(branches))


# One pass over the encoded text finds every sequence to replace (a C scan; matches are rare in ordinary
# text). Text written in Cyrillic or Greek keeps its letters: mapping them would turn every word into a
# mixed-script one, and the cue table holds both spellings of its Cyrillic and Greek cues anyway.
_SPECIAL = _alternation(_MAP)
_SPECIAL_LOOK = _alternation(_MAP_LOOK)
# The lead bytes of those sequences: single-byte memchr tests that skip the regex on most text (a UTF-8 lead
# byte never occurs inside another character's encoding).
_LEADS = tuple(bytes([b]) for b in sorted({k[0] for k in _MAP}))
_LEADS_LOOK = tuple(bytes([b]) for b in sorted({k[0] for k in _MAP_LOOK}))
TAG_LEAD = b"\xf3\xa0"  # U+E0000..U+E0FFF (tag characters) in UTF-8
# NFKC matters only for compatibility characters; on Hangul or CJK text it costs more than all the rest of
# the scan, so it runs only when one of these UTF-8 prefixes is present: full-width forms (U+FF00..),
# mathematical alphanumerics (U+1D400..), ligatures (U+FB00..), enclosed alphanumerics (U+2460..),
# super- and subscripts (U+2070..), letter-like symbols (U+2100..).
_COMPAT = re.compile(rb"\xef[\xbc\xbd\xac]|\xf0\x9d|\xe2(?:[\x91\x92\x93\x82\x84]|\x81[\xb0-\xbf])")


_SCRIPT_LEADS = (b"\xd0", b"\xd1", b"\xce", b"\xcf")  # lead bytes of Cyrillic and Greek letters
_LOOK_SEQS = tuple(k.encode() for k in _LOOKALIKE if k.encode()[:1] in _SCRIPT_LEADS)


def _native(data: bytes) -> bool:
    """Is this Cyrillic or Greek *writing*, rather than Latin words with look-alikes slipped in?

    Real Russian or Greek uses many letters with no Latin twin (б, д, и, л, я; β, γ, λ, π, ω); a spoofed
    word uses only twins. Writing is native when a quarter or more of its Cyrillic/Greek letters have none.
    """
    if not any(lead in data for lead in _SCRIPT_LEADS):  # single bytes: memchr, no counting
        return False
    data = data[:8192]  # a sample is enough to tell writing from spoofing, and keeps long texts linear
    total = sum(data.count(lead) for lead in _SCRIPT_LEADS)
    twins = sum(data.count(seq) for seq in _LOOK_SEQS)
    return (total - twins) * 4 >= total


def fold(text: str, *, lookalikes: bool | None = None) -> str:
    """The folded form of ``text`` (see the module docstring).

    ``lookalikes`` forces the look-alike mapping on or off; by default it is on unless the text is written in
    Cyrillic or Greek (see :func:`_native`).
    """
    if text.isascii():
        data = text.lower().encode("ascii")
    else:
        data = text.lower().encode("utf-8", "replace")
        if (b"\xef" in data or b"\xf0" in data or b"\xe2" in data) and _COMPAT.search(data) is not None:
            data = unicodedata.normalize("NFKC", text).lower().encode("utf-8", "replace")
        if lookalikes is None:
            lookalikes = not _native(data)
        table, pattern, leads = (
            (_MAP_LOOK, _SPECIAL_LOOK, _LEADS_LOOK) if lookalikes else (_MAP, _SPECIAL, _LEADS)
        )
        if any(lead in data for lead in leads) and pattern.search(data) is not None:
            data = pattern.sub(lambda m: table[m.group(0)], data)
    return _fold_rest(data).decode("utf-8", "replace")


def fold_ascii(text: str) -> bytes:
    """``fold(text)`` of an ASCII ``text`` as its UTF-8 bytes, not decoded: ``fold(text) ==
    fold_ascii(text).decode("utf-8", "replace")`` (the detector's scan of an ASCII text runs the matcher's
    byte automaton on them directly)."""
    return _fold_rest(text.lower().encode("ascii"))


def _fold_rest(data: bytes) -> bytes:
    """What :func:`fold` does after the Unicode folding: leetspeak, dropped marks, spelt-out words, spaces."""
    # find, not ``in``: bytes.__contains__ first tries its operand as an int and makes and clears a TypeError
    # (~1.8k instructions) before the substring search; find takes a bytes operand as it is. Same answers.
    data = data.translate(_LEET, _DROP)
    if data.translate(_SHAPE).find(_SPELT_SHAPE) >= 0:
        data = _join_spelt(data)
    while data.find(b"  ") >= 0:  # after the join, which reads double spaces as word breaks
        data = data.replace(b"  ", b" ")
    return data


def _join_spelt(data: bytes) -> bytes:
    """``i g n o r e`` -> ``ignore``: runs of single letters with one separator between them are joined."""
    text = data.decode("utf-8", "replace")
    joined = _SPELT.sub(lambda m: re.sub(r"[ .\-_*/]", "", m.group(0)), text)
    return joined.encode("utf-8")
