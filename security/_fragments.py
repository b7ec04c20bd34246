"""Pieces of secrets that already left, per agent: a secret split across requests is still a secret leaving.

An agent told to smuggle a key out can send ``?a=<first half>`` and later ``?b=<second half>``; neither
request carries the whole value, so a per-request scan sees nothing. :class:`FragmentWindow` remembers, per
agent, which characters of each tainted value have already gone out in the recent past, and answers how
much of a value a new request would bring to light *together with* what went before.

How a piece is recognised: every run of ``min_len`` consecutive characters of a tainted value (a k-gram)
is indexed, in plain text and in lower- and upper-case hex (a hex k-gram covers k/2 characters of the
value). An outgoing text is slid over, k-gram by k-gram; each hit marks the value's characters it covers.

The window is bounded in time (``window_s``) and in bytes (``window_bytes`` of the agent's outgoing data
since the piece left), and holds at most ``max_events`` pieces per agent (oldest dropped first). Not
caught: pieces shorter than ``min_len``, pieces in other encodings (base64, reversed, encrypted,
compressed) or transformed, and pieces spread wider than the window. Thread-safe (tools run on threads).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_FIND_LIMIT = 2000  # k-grams up to which a substring search per k-gram beats one Python pass per text


@dataclass(frozen=True, slots=True)
class Secret:
    """One tainted value as the window sees it."""

    label: str
    fingerprint: str
    length: int


@dataclass(frozen=True, slots=True)
class Exposure:
    """How much of ``secret`` the recent window plus the current request reveal."""

    secret: Secret
    covered: int  # characters of the value revealed, in total (earlier requests and this one)
    earlier: int  # pieces of it that earlier requests in the window carried


@dataclass(slots=True)
class _Piece:
    """One piece of a secret an agent sent out: when, where in the secret, its running byte count."""

    at: float
    sent_bytes: int  # the agent's running byte count when it left
    secret: int
    start: int
    end: int


@dataclass(slots=True)
class _Agent:
    """One agent's recent pieces and counts."""

    pieces: deque[_Piece]
    sent_bytes: int = 0
    requests: int = 0


class FragmentWindow:
    """Per-agent record of which characters of which secrets recently left (see the module docstring)."""

    def __init__(
        self,
        *,
        min_len: int = 6,
        window_s: float = 600.0,
        window_bytes: int = 1 << 20,
        max_events: int = 4096,
        max_agents: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_len = min_len
        self.window_s = window_s
        self.window_bytes = window_bytes
        self.max_events = max_events
        self.max_agents = max_agents
        self._clock = clock
        self._lock = threading.Lock()
        self._secrets: list[Secret] = []
        self._seen_values: set[str] = set()
        # k-gram -> [(secret index, first covered char, end covered char)]
        self._grams: dict[str, list[tuple[int, int, int]]] = {}
        self._agents: OrderedDict[str, _Agent] = OrderedDict()

    def add(self, label: str, fingerprint: str, value: str) -> None:
        """Index ``value`` (a tainted secret) so pieces of it are recognised."""
        k = self.min_len
        with self._lock:
            if value in self._seen_values or len(value) < 2 * k:
                return  # short values are caught whole or not at all
            self._seen_values.add(value)
            index = len(self._secrets)
            self._secrets.append(Secret(label, fingerprint, len(value)))
            for i in range(len(value) - k + 1):
                self._grams.setdefault(value[i : i + k], []).append((index, i, i + k))
            raw = value.encode("utf-8")
            if len(raw) == len(value):  # hex of an ASCII value: 2 hex digits per character
                for text in {raw.hex(), raw.hex().upper()}:
                    for i in range(len(text) - k + 1):
                        start, end = i // 2, (i + k + 1) // 2
                        self._grams.setdefault(text[i : i + k], []).append((index, start, end))

    def _hits(self, texts: Iterable[str]) -> list[tuple[int, int, int]]:
        """The (secret, start, end) ranges of every indexed k-gram present in ``texts``.

        Whether a k-gram occurs is all that matters (each maps to fixed ranges of its secret), so with few
        k-grams each is looked for with ``in`` (C speed); with many, the texts are slid over once.
        """
        k = self.min_len
        grams = self._grams
        hits: list[tuple[int, int, int]] = []
        for text in texts:
            if len(grams) <= _FIND_LIMIT:
                for gram, ranges in grams.items():
                    if gram in text:
                        hits.extend(ranges)
                continue
            for i in range(len(text) - k + 1):
                found = grams.get(text[i : i + k])
                if found:
                    hits.extend(found)
        return hits

    def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(pieces=deque(maxlen=self.max_events))
            while len(self._agents) > self.max_agents:
                self._agents.popitem(last=False)
        else:
            self._agents.move_to_end(agent_id)
        return agent

    def _expire(self, agent: _Agent, now: float) -> None:
        pieces = agent.pieces
        while pieces and (
            now - pieces[0].at > self.window_s or agent.sent_bytes - pieces[0].sent_bytes > self.window_bytes
        ):
            pieces.popleft()

    def exposure(self, agent_id: str, texts: list[str]) -> list[Exposure]:
        """What ``texts`` (one outgoing request) would reveal together with the window; no change made."""
        if not self._grams:
            return []
        with self._lock:
            hits = self._hits(texts)
            if not hits:
                return []
            agent = self._agent(agent_id)
            self._expire(agent, self._clock())
            out = []
            for secret in sorted({secret for secret, _, _ in hits}):
                earlier = [piece for piece in agent.pieces if piece.secret == secret]
                chars: set[int] = set()
                for piece in earlier:
                    chars.update(range(piece.start, piece.end))
                for s, start, end in hits:
                    if s == secret:
                        chars.update(range(start, end))
                out.append(Exposure(self._secrets[secret], len(chars), len(earlier)))
            return out

    def record(self, agent_id: str, texts: list[str]) -> None:
        """``texts`` left (the request was allowed): remember the pieces of secrets it carried."""
        with self._lock:
            agent = self._agent(agent_id)
            now = self._clock()
            agent.sent_bytes += sum(len(t) for t in texts)
            agent.requests += 1
            for secret, start, end in _merged(self._hits(texts) if self._grams else []):
                agent.pieces.append(_Piece(now, agent.sent_bytes, secret, start, end))
            self._expire(agent, now)


def _merged(hits: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Overlapping or touching ranges of the same secret as one range each (few pieces per request)."""
    out: list[tuple[int, int, int]] = []
    for secret, start, end in sorted(set(hits)):
        if out and out[-1][0] == secret and start <= out[-1][2]:
            out[-1] = (secret, out[-1][1], max(out[-1][2], end))
        else:
            out.append((secret, start, end))
    return out
