"""Layer 10, data-exfiltration detection: secret detectors plus taint tracking at network sinks.

*Taint*: every value the host hands an agent from a secret source (an env var the manifest names as a
secret, a kv entry marked secret, a key file) is registered with :class:`TaintTracker` under a label. The
tracker also derives the encodings an agent would use to smuggle it (URL-quoted, hex, base64 in the three
byte alignments a value can have inside a longer blob, reversed), so ``?q=<base64 of the key>`` is caught.

*Detectors*: independent of taint, provider key formats, private keys, JWTs and high-entropy tokens (and
configured PII kinds) are recognised in outgoing data.

:meth:`ExfilGuard.check_tool_call` looks at a tool call's URL, headers and body; if it is headed for a
blocked sink kind (``network`` by default) and carries a tainted value or a detected secret, it is refused
with :class:`~openfang.security._errors.Denied` and an audit record that names the agent, tool, sink, what
was found (kind and a short fingerprint) and where (url/headers/body) — never the value.
"""

from __future__ import annotations

import base64
import functools
import math
import os
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openfang.security._canon import fingerprint
from openfang.security._errors import Denied
from openfang.security._fragments import FragmentWindow
from openfang.security._secrets import Detector, find_secrets, select_detectors
from openfang.security.audit import AuditSink

MIN_TAINT_LEN = 8  # shorter values occur by chance in ordinary traffic


@dataclass(frozen=True, slots=True, kw_only=True)
class ExfilConfig:
    """``block_sinks``: sink kinds where secrets are refused; ``pii``: PII kinds that count as secrets."""

    enabled: bool = True
    block_sinks: frozenset[str] = field(default_factory=lambda: frozenset({"network"}))
    secret_kinds: frozenset[str] | None = None
    pii: frozenset[str] = field(default_factory=frozenset)
    detect_encoded_taint: bool = True
    # A secret split across requests: pieces of split_min_piece+ characters per agent, kept split_window_s
    # seconds and split_window_bytes of outgoing data; refused once split_share of a secret has gone out.
    split_window_s: float = 600.0
    split_window_bytes: int = 1 << 20
    split_min_piece: int = 6
    split_share: float = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Leak:
    """One thing found in outgoing data: ``kind`` is ``taint`` or a detector name; ``where`` the part."""

    kind: str
    where: str
    label: str
    fingerprint: str


def _b64_variants(raw: bytes) -> set[str]:
    """Base64 text that appears inside *any* blob containing ``raw``, for each of the 3 byte alignments.

    Base64 character k carries bits [6k, 6k+6) of the blob; with ``raw`` starting ``pad`` bytes after a
    3-byte boundary it occupies bits [8*pad, 8*(pad+len)), so exactly the characters fully inside that range
    are the same whatever surrounds the value.
    """
    out: set[str] = set()
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw).decode("ascii")
        first = -(-8 * pad // 6)  # ceil
        last = 8 * (pad + len(raw)) // 6  # exclusive
        core = enc[first:last]
        if len(core) >= MIN_TAINT_LEN:
            out.add(core)
            out.add(core.replace("+", "-").replace("/", "_"))
    return out


class TaintTracker:
    """The secret values an agent was given, with their encodings, by label (e.g. ``env:OPENAI_API_KEY``)."""

    def __init__(self, *, encoded: bool = True) -> None:
        self._encoded = encoded
        self._needles: dict[str, tuple[str, str]] = {}  # needle -> (label, fingerprint)
        self._values: list[tuple[str, str, str]] = []  # (label, fingerprint, value) in taint order

    def taint(self, label: str, value: str | bytes) -> None:
        """Mark ``value`` as secret. Values under 8 characters are refused (they cause false alarms)."""
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        text = raw.decode("utf-8", errors="replace")
        if len(raw) < MIN_TAINT_LEN:
            raise ValueError(f"{label}: a tainted value must be at least {MIN_TAINT_LEN} bytes")
        fp = fingerprint(raw)
        needles = {text}
        if self._encoded:
            needles |= {
                urllib.parse.quote(text, safe=""),
                urllib.parse.quote_plus(text),
                raw.hex(),
                raw.hex().upper(),
            }
            needles |= _b64_variants(raw)
            needles.add(text[::-1])
        for n in needles:
            if len(n) >= MIN_TAINT_LEN:
                self._needles.setdefault(n, (label, fp))
        self._values.append((label, fp, text))

    def taint_from_env(self, names: Iterable[str], environ: Mapping[str, str]) -> list[str]:
        """Taint the env vars ``names`` (as the manifest lists them); returns the names that were set."""
        done = []
        for name in names:
            value = environ.get(name)
            if value and len(value) >= MIN_TAINT_LEN:
                self.taint(f"env:{name}", value)
                done.append(name)
        return done

    def taint_file(self, path: str | os.PathLike[str], *, max_bytes: int = 1 << 20) -> None:
        """Taint a secret file's content, and each of its lines of 16+ characters (a PEM key body leaks
        line by line as easily as whole)."""
        raw = Path(path).read_bytes()[:max_bytes]
        label = f"file:{Path(path).name}"
        text = raw.decode("utf-8", errors="replace").strip()
        if len(text) >= MIN_TAINT_LEN:
            self.taint(label, text)
        for line in text.splitlines():
            line = line.strip()
            if len(line) >= 16 and not line.startswith("-----"):
                self.taint(label, line)

    def values(self) -> list[tuple[str, str, str]]:
        """``(label, fingerprint, value)`` of every tainted value, in the order they were tainted."""
        return list(self._values)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(label for label, _ in self._needles.values())

    def find(self, text: str) -> list[tuple[str, str]]:
        """``(label, fingerprint)`` of every tainted value present in ``text`` (plain or encoded)."""
        hits: dict[str, str] = {}
        for needle, (label, fp) in self._needles.items():
            if needle in text:
                hits[label] = fp
        return sorted(hits.items())


def _flatten(value: Any, depth: int = 0) -> str:
    """All strings of a nested value joined with newlines (keys included: secrets hide in keys too)."""
    if depth > 64:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return "\n".join(f"{_flatten(k, depth + 1)}\n{_flatten(v, depth + 1)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "\n".join(_flatten(v, depth + 1) for v in value)
    return ""


def _parts(url: str, headers: Mapping[str, Any] | None, body: Any) -> dict[str, str]:
    return {
        "url": urllib.parse.unquote_plus(url) + "\n" + url,
        "headers": _flatten(headers or {}),
        "body": _flatten(body),
    }


_MAKING = threading.Lock()


@functools.lru_cache(maxsize=16)
def _detectors(kinds: frozenset[str] | None, pii: frozenset[str]) -> tuple[Detector, ...]:
    """The detectors of one configuration, shared by every agent's guard (a tuple, never changed)."""
    return select_detectors(kinds, pii=pii)


class ExfilGuard:
    """Refuses tool calls that would carry secrets to a blocked sink; audits every refusal."""

    def __init__(
        self,
        config: ExfilConfig | None = None,
        *,
        taint: TaintTracker | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.config = config or ExfilConfig()
        self.taint = taint if taint is not None else TaintTracker(encoded=self.config.detect_encoded_taint)
        self._audit = audit
        self._detectors = _detectors(self.config.secret_kinds, self.config.pii)
        # Made on the agent's first tool call (~0.7 KiB: a worker holds one guard per agent, most idle).
        self._fragments: FragmentWindow | None = None
        self._indexed = 0  # how many of the tracker's values the window has indexed

    @property
    def fragments(self) -> FragmentWindow:
        """What this agent sent recently, against pieces of the tainted values (split exfiltration)."""
        window = self._fragments
        if window is None:
            with _MAKING:  # tool calls of one agent may run on two threads at once
                window = self._fragments
                if window is None:
                    window = self._fragments = FragmentWindow(
                        min_len=self.config.split_min_piece,
                        window_s=self.config.split_window_s,
                        window_bytes=self.config.split_window_bytes,
                    )
        return window

    def _split_leaks(self, agent_id: str, texts: dict[str, str]) -> list[Leak]:
        """Pieces of a tainted value that, with what this agent sent recently, reveal ``split_share`` of it
        or more (one request alone can therefore carry less than that share of any secret)."""
        values = self.taint.values()
        for label, fp, value in values[self._indexed :]:
            self.fragments.add(label, fp, value)
        self._indexed = len(values)
        leaks = []
        for seen in self.fragments.exposure(agent_id, list(texts.values())):
            if seen.covered >= math.ceil(self.config.split_share * seen.secret.length):
                leaks.append(
                    Leak(
                        kind="taint_split",
                        where="window",
                        label=seen.secret.label,
                        fingerprint=seen.secret.fingerprint,
                    )
                )
        return leaks

    def scan(
        self, *, url: str = "", headers: Mapping[str, Any] | None = None, body: Any = None
    ) -> list[Leak]:
        """Everything secret in the parts of an outgoing call (no decision, no audit)."""
        parts = _parts(url, headers, body)
        leaks: list[Leak] = []
        for where, text in parts.items():
            if not text:
                continue
            for label, fp in self.taint.find(text):
                leaks.append(Leak(kind="taint", where=where, label=label, fingerprint=fp))
            for f in find_secrets(text, self._detectors):
                leaks.append(
                    Leak(
                        kind=f.kind, where=where, label=f.kind, fingerprint=fingerprint(text[f.start : f.end])
                    )
                )
        return leaks

    def check_tool_call(
        self,
        *,
        agent_id: str,
        tool: str,
        sink: str,
        url: str = "",
        headers: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> list[Leak]:
        """Raise :class:`Denied` if a secret heads for a blocked sink; otherwise return what was seen."""
        if not self.config.enabled:
            return []
        leaks = self.scan(url=url, headers=headers, body=body)
        parts = _parts(url, headers, body)
        if sink in self.config.block_sinks:
            leaks += self._split_leaks(agent_id, parts)
        if leaks and sink in self.config.block_sinks:
            summary = sorted({f"{leak.label}@{leak.where}" for leak in leaks})
            if self._audit is not None:
                self._audit.append(
                    "exfil.blocked",
                    agent_id=agent_id,
                    tool=tool,
                    sink=sink,
                    findings=[
                        {"kind": x.kind, "label": x.label, "where": x.where, "fp": x.fingerprint}
                        for x in leaks
                    ],
                )
            raise Denied(
                f"tool {tool!r} of agent {agent_id!r} would send secret data to a {sink} sink: "
                + ", ".join(summary),
                layer="exfil",
                reason="secret_to_sink",
            )
        self.fragments.record(agent_id, list(parts.values()))
        return leaks
