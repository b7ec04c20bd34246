"""One compiled multi-pattern matcher for every literal cue of the prompt-injection detector.

All anchor cues of :data:`._injection_cues.CUES` (about 1,600, in a dozen scripts) are folded and compiled
into Aho-Corasick automata (``ahocorasick_rs``, Rust): one of the ASCII keys, run on the bytes of a
pure-ASCII folded text (most traffic; byte offsets are then character offsets), and an automaton of all
keys for any other text. One pass over the folded text finds every occurrence of every cue, overlapping
ones included, in time linear in the text and independent of the number of cues. The Python that follows
touches only the hits, so the automata are built to report few of them:

- a short cue (five characters or fewer, such as ``ai`` or ``skip``) is compiled once per character that
  may precede a word (space, newline, quote, bracket...), so it cannot hit inside a longer word
  (``said``, ``again``); the text is searched with a space in front;
- the common words of the ``CONTEXT`` classes are not compiled at all: one regular expression per class
  looks for them only in the window next to a hit that needs them (:meth:`Hits.near`).

A hit is kept when it respects word boundaries (see the cue table's docstring) and is not inside a
``NEUTRAL`` phrase. The result, :class:`Hits`, lists each class's hits in text order.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ahocorasick_rs

from openfang.security._hashing import sha256
from openfang.security._injection_cues import CONTEXT
from openfang.security._injection_normalise import fold

Span = tuple[int, int]
# Per compiled key: (classes, offset of the cue in the key, test the start, test the end).
KeyMeta = tuple[tuple[str, ...], int, bool, bool]
_SHORT = 5
_WORD_OPENERS = " \n\"'([<>/:,.|"


class Hits:
    """Cue hits in one folded text: ``spans[cls]`` is a list of ``(start, end)`` in text order.

    A value: nothing changes it after :meth:`CueMatcher.find` returns it. (A plain slotted class rather than a
    frozen dataclass: it is built once per scanned text, and the frozen ``__init__`` costs a microsecond.)
    """

    __slots__ = ("context", "spans", "text")

    def __init__(
        self, text: str, spans: Mapping[str, list[Span]], context: Mapping[str, tuple[re.Pattern[str], int]]
    ) -> None:
        self.text = text
        self.spans = spans
        self.context = context

    def of(self, cls: str) -> list[Span]:
        """The hits of anchor class ``cls`` (empty list if none)."""
        return self.spans.get(cls, [])

    def has(self, cls: str) -> bool:
        return cls in self.spans

    def near(self, cls: str, lo: int, hi: int) -> Span | None:
        """The first hit of ``cls`` starting in ``[lo, hi]``, or None (context classes searched on demand)."""
        if lo < 0:
            lo = 0
        spans = self.spans.get(cls)
        if spans is not None:
            i = bisect_left(spans, (lo, -1))
            return spans[i] if i < len(spans) and spans[i][0] <= hi else None
        found = self.context.get(cls)
        if found is None or hi < lo:
            return None
        pattern, reach = found  # a hit starting by hi ends by hi + reach: search no further
        text = self.text
        end = hi + reach
        while True:
            m = pattern.search(text, lo, end)
            if m is None or m.start() > hi:
                return None
            at = m.start()
            # The start-of-word test is done here, not by a look-behind in the pattern: with a literal
            # first character, sre skips ahead to candidate positions, about twice as fast.
            if at == 0 or not (text[at - 1].isalnum() or text[at - 1] == "_"):
                return m.span()
            lo = at + 1

    def count(self, cls: str, lo: int, hi: int) -> int:
        """How many hits of anchor class ``cls`` start in ``[lo, hi]``."""
        spans = self.spans.get(cls)
        if not spans:
            return 0
        return bisect_left(spans, (hi + 1, -1)) - bisect_left(spans, (max(lo, 0), -1))

    def any_near(self, classes: Iterable[str], lo: int, hi: int) -> Span | None:
        """The first hit, in ``classes`` order, of any of ``classes`` starting in ``[lo, hi]``."""
        if lo < 0:
            lo = 0
        for cls in classes:  # near() inlined for anchor classes: this runs for most hits of some rules
            spans = self.spans.get(cls)
            if spans is not None:
                i = bisect_left(spans, (lo, -1))
                if i < len(spans) and spans[i][0] <= hi:
                    return spans[i]
            elif cls in self.context:
                hit = self.near(cls, lo, hi)
                if hit is not None:
                    return hit
        return None


def _drop_covered(spans: dict[str, list[Span]], neutral: list[Span]) -> None:
    """Remove, in place, every hit inside a neutral span. Each list is sorted by start: a class whose hits all
    lie outside a neutral span's range is skipped, and inside it only the hits starting in the range are
    looked at (a bisection), so long texts with many neutral phrases stay linear."""
    for cls in list(spans):
        hits = spans[cls]
        drop: set[int] = set()
        for a, b in neutral:
            if hits[0][0] > b or hits[-1][0] < a:
                continue
            i = bisect_left(hits, (a, -1))
            while i < len(hits) and hits[i][0] <= b:
                if hits[i][1] <= b:
                    drop.add(i)
                i += 1
        if drop:
            kept = [sp for i, sp in enumerate(hits) if i not in drop]
            if kept:
                spans[cls] = kept
            else:
                del spans[cls]


def _unspaced(c: str) -> bool:
    """Characters of scripts written without spaces between words: no boundary test around them."""
    return unicodedata.east_asian_width(c) in ("W", "F")


def _spellings(phrase: str) -> set[str]:
    """The folded forms of a cue: with look-alikes mapped and, for Cyrillic or Greek cues, without."""
    keys = {fold(phrase, lookalikes=True), fold(phrase, lookalikes=False)}
    if "" in keys:
        raise ValueError(f"cue {phrase!r} folds to nothing")
    return keys


Entry = tuple[str, tuple[str, ...], int, bool, bool]
"""One compiled key: (key, its classes, offset of the cue in the key, test the start, test the end)."""


@dataclass(frozen=True, slots=True)
class Table:
    """A cue table folded and laid out for the automata: what :class:`CueMatcher` compiles.

    :func:`fold_table` makes it from the cue table; ``_injection_table.py`` holds it precomputed for
    :data:`._injection_cues.CUES` (generated, and checked by a test), so a process does not fold every
    cue before its first scan.
    """

    entries: tuple[Entry, ...]
    context: dict[str, tuple[str, int]]  # context class -> (regex source, reach)


def _context_source(phrases: Sequence[str]) -> tuple[str, int]:
    """One regex for a context class (longest phrases first, prefix cues ``*`` open-ended), and its reach:
    how far past its start a hit can end, plus the character the end test reads (a prefix cue's word is
    allowed 30 more characters)."""
    folded = {(key, p.endswith("*")) for p in phrases for key in _spellings(p.rstrip("*"))}
    ordered = sorted(folded, key=lambda item: (-len(item[0]), item))
    body = "|".join(re.escape(word) + (r"\w*" if prefix else "") for word, prefix in ordered)
    reach = max(len(word) + (30 if prefix else 0) for word, prefix in folded) + 1
    return rf"(?:{body})(?!\w)", reach


def fingerprint(cues: Mapping[str, Sequence[str]]) -> str:
    """A digest of a cue table (and of which classes are context): the generated table records the one it
    was folded from."""
    text = repr((sorted(cues.items()), sorted(CONTEXT)))
    return sha256(text.encode()).hexdigest()


def fold_table(cues: Mapping[str, Sequence[str]]) -> Table:
    """Fold every cue (each of its spellings) and lay the keys out for the automata."""
    table: dict[str, tuple[set[str], bool]] = {}
    for cls, phrases in cues.items():
        if cls in CONTEXT:
            continue
        for phrase in phrases:
            prefix = phrase.endswith("*")
            for key in sorted(_spellings(phrase.rstrip("*"))):
                classes, was_prefix = table.get(key, (set(), prefix))
                if was_prefix != prefix:
                    raise ValueError(f"cue {key!r} is both a prefix and a word")
                classes.add(cls)
                table[key] = (classes, prefix)
    entries: list[Entry] = []
    for key, (classes, prefix) in table.items():
        word_start = key[0].isalnum() and not _unspaced(key[0])
        check_end = not prefix and key[-1].isalnum() and not _unspaced(key[-1])
        cls_tuple = tuple(sorted(classes))
        if word_start and len(key) <= _SHORT:
            for opener in _WORD_OPENERS:
                entries.append((opener + key, cls_tuple, 1, False, check_end))
        else:
            entries.append((key, cls_tuple, 0, word_start, check_end))
    context = {cls: _context_source(cues[cls]) for cls in sorted(CONTEXT) if cls in cues}
    return Table(entries=tuple(entries), context=context)


class CueMatcher:
    """Compiles a folded cue table once; :meth:`find` then runs one automaton pass per text."""

    def __init__(self, cues: Mapping[str, Sequence[str]] | Table) -> None:
        table = cues if isinstance(cues, Table) else fold_table(cues)
        keys = [entry[0] for entry in table.entries]
        # Per compiled key: (classes, offset of the cue in the key, test the start, test the end).
        meta = [entry[1:] for entry in table.entries]
        self._keys = keys
        self._meta = meta
        self._sources = table.context
        # What only a text that is not ASCII (the full automaton) or that has a cue hit (the context classes'
        # regexes) needs: built on first need or by :meth:`complete` (a worker's warm-up), not with the rest
        # in the root before the workers fork (~5.5 ms off the cold start's path; perf/PROFILE.md, cold8).
        self._automaton: ahocorasick_rs.AhoCorasick | None = None
        self._context: dict[str, tuple[re.Pattern[str], int]] | None = None
        # Most folded texts are pure ASCII: for them an automaton of the ASCII keys alone, run on bytes
        # (where offsets are character offsets), is faster than the full automaton on a str. A contiguous
        # NFA, not a DFA: built in ~1.4 ms instead of ~7 (in the root, on the cold start's path, before the
        # workers fork), 0.4 MB instead of 3.3; a hot scan of a short message costs ~0.1-0.2 us more, none
        # measurable in a worker, where the DFA was cache-cold between messages (perf/PROFILE.md).
        ascii_keys = [i for i, key in enumerate(keys) if key.isascii()]
        self._ascii_meta = [meta[i] for i in ascii_keys]
        self._ascii_automaton = ahocorasick_rs.BytesAhoCorasick(
            [keys[i].encode("ascii") for i in ascii_keys],
            implementation=ahocorasick_rs.Implementation.ContiguousNFA,
        )

    def complete(self, *, automaton: bool = True, context: bool = True) -> None:
        """Build now what the first text that is not ASCII (``automaton``), or the first cue hit
        (``context``), would otherwise build."""
        if automaton:
            self._full()
        if context:
            self._contexts()

    def _full(self) -> ahocorasick_rs.AhoCorasick:
        """The automaton of every key, for a text that is not ASCII (built once)."""
        automaton = self._automaton
        if automaton is None:
            automaton = self._automaton = ahocorasick_rs.AhoCorasick(self._keys)
        return automaton

    def _contexts(self) -> dict[str, tuple[re.Pattern[str], int]]:
        """The context classes' patterns and reaches (compiled once)."""
        context = self._context
        if context is None:
            context = self._context = {
                cls: (re.compile(source), reach) for cls, (source, reach) in self._sources.items()
            }
        return context

    @property
    def size(self) -> int:
        """Number of keys compiled into the automaton."""
        return len(self._keys)

    def find_folded_ascii(self, folded: bytes) -> Hits | None:
        """``find(folded.decode())`` for a folded text of ASCII bytes, the automaton run once on the bytes as
        they are; None when it matches nothing (``find`` would return no spans)."""
        matches = self._ascii_automaton.find_matches_as_indexes(b" " + folded, overlapping=True)
        if not matches:
            return None
        text = folded.decode("ascii")
        return self._hits(text, matches, self._ascii_meta)

    def find(self, text: str) -> Hits:
        """Every cue hit in the folded ``text`` that respects word boundaries and is not neutralised."""
        padded = " " + text  # positions in padded are one more than in text
        if padded.isascii():
            meta = self._ascii_meta
            matches = self._ascii_automaton.find_matches_as_indexes(padded.encode("ascii"), overlapping=True)
        else:
            meta = self._meta
            matches = self._full().find_matches_as_indexes(padded, overlapping=True)
        if not matches:  # most traffic: no cue at all
            context = self._context
            return Hits(text=text, spans={}, context=self._contexts() if context is None else context)
        return self._hits(text, matches, meta)

    def _hits(self, text: str, matches: list[tuple[int, int, int]], meta: Sequence[KeyMeta]) -> Hits:
        """The automaton's raw ``matches`` in ``" " + text`` kept at word boundaries, by class, neutral cover
        dropped."""
        padded = " " + text
        last = len(padded)
        spans: defaultdict[str, list[Span]] = defaultdict(list)
        for idx, start, end in matches:  # the hot loop: about 0.3 us a raw match
            classes, offset, check_start, check_end = meta[idx]
            if (check_start and padded[start - 1].isalnum()) or (
                check_end and end < last and padded[end].isalnum()
            ):
                continue
            span = (start + offset - 1, end - 1)
            for cls in classes:
                spans[cls].append(span)
        for found in spans.values():
            if len(found) > 1:
                found.sort()
        neutral = spans.pop("NEUTRAL", None)
        if neutral:
            _drop_covered(spans, neutral)
        context = self._context
        return Hits(text=text, spans=spans, context=self._contexts() if context is None else context)
