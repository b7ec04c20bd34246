"""Text and encoding tools: chunk, diff, template, hash, base64, uuid, url_parse.

All are pure functions of their arguments (no I/O), bounded in what they accept and what they return.
``template_render`` uses Jinja2's sandboxed environment (the ``tools`` extra), which refuses attribute
access to Python internals (``__class__``, ``__globals__``...) so a template cannot reach out of its data.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import hmac
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import object_schema as _obj

MAX_TEXT = 1_000_000
MAX_OUTPUT = 1_000_000
HASHES = ("md5", "sha1", "sha256", "sha512", "sha3_256", "blake2b")


_TEXT = {"type": "string", "maxLength": MAX_TEXT}


# ---- text_chunk -----------------------------------------------------------------------------------------


def chunk(text: str, size: int, overlap: int) -> list[str]:
    """Split ``text`` into pieces of at most ``size`` characters, cut at paragraph, line, sentence or word
    boundaries where one lies in the last half of the window, each piece starting ``overlap`` characters
    before the previous one ended."""
    if overlap >= size:
        raise ToolError(f"overlap ({overlap}) must be smaller than size ({size})", code="bad_args")
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            window = text[start:end]
            for sep in ("\n\n", "\n", ". ", " "):
                cut = window.rfind(sep)
                if cut >= size // 2:
                    end = start + cut + len(sep)
                    break
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return pieces


def text_chunk(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    pieces = chunk(args["text"], args["size"], args["overlap"])
    return {"chunks": pieces, "count": len(pieces)}


# ---- text_diff ------------------------------------------------------------------------------------------


def text_diff(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    old, new = args["old"].splitlines(keepends=True), args["new"].splitlines(keepends=True)
    lines = list(
        difflib.unified_diff(old, new, fromfile=args["old_name"], tofile=args["new_name"], n=args["context"])
    )
    diff = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    ratio = difflib.SequenceMatcher(None, args["old"], args["new"], autojunk=False).quick_ratio()
    return {"diff": diff, "added": added, "removed": removed, "similarity": round(ratio, 4)}


# ---- template_render ------------------------------------------------------------------------------------


def template_render(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        from jinja2 import StrictUndefined, TemplateError
        from jinja2.exceptions import SecurityError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # the `tools` extra is not installed
        raise ToolError(
            "template_render needs Jinja2: pip install 'openfang[tools]'", code="unavailable"
        ) from None
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=args["autoescape"])
    try:
        out = _render_capped(env.from_string(args["template"]), args["data"])
    except SecurityError as exc:
        raise ToolError(f"template refused by the sandbox: {exc}", code="denied") from None
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise ToolError(f"template error{where}: {exc}", code="bad_args") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ToolError(f"template error: {exc}", code="bad_args") from None
    return {"text": out}


def _render_capped(template: Any, data: dict[str, Any]) -> str:
    """Render piece by piece and stop at MAX_OUTPUT: a nested loop must not build a gigabyte first."""
    parts: list[str] = []
    size = 0
    for piece in template.generate(**data):
        size += len(piece)
        if size > MAX_OUTPUT:
            raise ToolError(f"rendered text is longer than {MAX_OUTPUT} characters", code="too_large")
        parts.append(piece)
    return "".join(parts)


# ---- hash / base64 / uuid -------------------------------------------------------------------------------


def hash_tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    data = _bytes_in(args["text"], args["input"])
    algo = args["algorithm"]
    if "hmac_key" in args:
        digest = hmac.new(args["hmac_key"].encode(), data, algo).hexdigest()
        return {"algorithm": f"hmac-{algo}", "hex": digest}
    return {"algorithm": algo, "hex": hashlib.new(algo, data).hexdigest()}


def _bytes_in(text: str, kind: str) -> bytes:
    if kind == "utf8":
        return text.encode()
    try:
        return bytes.fromhex(text) if kind == "hex" else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ToolError(f"input is not valid {kind}: {exc}", code="bad_args") from None


def base64_tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    urlsafe = args["urlsafe"]
    if args["op"] == "encode":
        raw = args["text"].encode()
        out = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
        return {"text": out.decode("ascii")}
    text = args["text"].strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded) if urlsafe else base64.b64decode(padded, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ToolError(f"not valid base64: {exc}", code="bad_args") from None
    try:
        return {"text": raw.decode(), "bytes": len(raw)}
    except UnicodeDecodeError:
        return {"hex": raw.hex(), "bytes": len(raw), "note": "not UTF-8 text: given as hex"}


def uuid_tool(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if args["version"] == 4:
        return {"uuids": [str(uuid.uuid4()) for _ in range(args["count"])]}
    if "name" not in args:
        raise ToolError("uuid version 5 needs 'name' (and optionally 'namespace')", code="bad_args")
    spaces = {"dns": uuid.NAMESPACE_DNS, "url": uuid.NAMESPACE_URL, "oid": uuid.NAMESPACE_OID}
    try:
        space = spaces.get(args["namespace"]) or uuid.UUID(args["namespace"])
    except ValueError:
        raise ToolError("namespace must be dns, url, oid or a UUID", code="bad_args") from None
    return {"uuids": [str(uuid.uuid5(space, args["name"]))]}


# ---- url_parse ------------------------------------------------------------------------------------------


def url_parse(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    url = args["url"]
    if "base" in args:
        url = urljoin(args["base"], url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ToolError(f"not a valid URL: {exc}", code="bad_args") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    if "set_query" in args:
        merged = dict(query)
        merged.update({k: str(v) for k, v in args["set_query"].items()})
        query = list(merged.items())
        url = urlunsplit(parts._replace(query=urlencode(query)))
    grouped: dict[str, list[str]] = {}
    for k, v in query:
        grouped.setdefault(k, []).append(v)
    return {
        "url": url,
        "scheme": parts.scheme,
        "host": parts.hostname,
        "port": port,
        "username": parts.username,
        "path": parts.path,
        "query": grouped,
        "fragment": parts.fragment,
    }


TEXT_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="text_chunk",
        description="Split a text into chunks of at most `size` characters for embedding, at natural breaks.",
        schema=_obj(
            {
                "text": _TEXT,
                "size": {"type": "integer", "minimum": 50, "maximum": 100_000, "default": 1000},
                "overlap": {"type": "integer", "minimum": 0, "maximum": 50_000, "default": 100},
            },
            ["text"],
        ),
        permission="text",
        call=text_chunk,
        blocking=False,
    ),
    Tool(
        name="text_diff",
        description="Unified diff of two texts, with counts of added and removed lines and a similarity.",
        schema=_obj(
            {
                "old": _TEXT,
                "new": _TEXT,
                "old_name": {"type": "string", "default": "old", "maxLength": 200},
                "new_name": {"type": "string", "default": "new", "maxLength": 200},
                "context": {"type": "integer", "minimum": 0, "maximum": 100, "default": 3},
            },
            ["old", "new"],
        ),
        permission="text",
        call=text_diff,
    ),
    Tool(
        name="template_render",
        description="Render a sandboxed Jinja2 template with JSON data: {{ name }}, {% for x in items %}...",
        schema=_obj(
            {
                "template": {"type": "string", "maxLength": 100_000},
                "data": {"type": "object", "default": {}},
                "autoescape": {"type": "boolean", "default": False},
            },
            ["template"],
        ),
        permission="text",
        call=template_render,
    ),
    Tool(
        name="hash",
        description="Hash text or bytes (md5, sha1, sha256, sha512, sha3_256, blake2b), or HMAC with a key.",
        schema=_obj(
            {
                "text": _TEXT,
                "input": {"enum": ["utf8", "hex", "base64"], "default": "utf8"},
                "algorithm": {"enum": list(HASHES), "default": "sha256"},
                "hmac_key": {"type": "string", "maxLength": 1024},
            },
            ["text"],
        ),
        permission="encoding",
        call=hash_tool,
        blocking=False,
    ),
    Tool(
        name="base64",
        description="Base64 encode UTF-8 text, or decode base64 (text, or hex when the bytes are not UTF-8).",
        schema=_obj(
            {
                "text": _TEXT,
                "op": {"enum": ["encode", "decode"], "default": "encode"},
                "urlsafe": {"type": "boolean", "default": False},
            },
            ["text"],
        ),
        permission="encoding",
        call=base64_tool,
        blocking=False,
    ),
    Tool(
        name="uuid",
        description="New random UUIDs (version 4), or the name-based UUID (version 5) of a name.",
        schema=_obj(
            {
                "version": {"enum": [4, 5], "default": 4},
                "count": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
                "name": {"type": "string", "maxLength": 1000},
                "namespace": {"type": "string", "default": "url", "maxLength": 64},
            },
            [],
        ),
        permission="encoding",
        call=uuid_tool,
        blocking=False,
    ),
    Tool(
        name="url_parse",
        description="Split a URL into scheme, host, port, path, query (as lists) and fragment; resolve it "
        "against a base; set query parameters.",
        schema=_obj(
            {
                "url": {"type": "string", "maxLength": 8192},
                "base": {"type": "string", "maxLength": 8192},
                "set_query": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                },
            },
            ["url"],
        ),
        permission="text",
        call=url_parse,
        blocking=False,
    ),
)
