"""Document tools: ``html_extract`` (readable text or markdown from a page) and ``pdf_text``.

``html_extract`` uses trafilatura, the well-kept main-content extractor (boilerplate such as navigation,
footers and ads is dropped); ``pdf_text`` uses pypdf. Both take their input as an argument (``html``, or
``data_base64`` for a PDF) or from the agent's scoped folder (``path``), so an agent can fetch a page with
``http_fetch`` and extract it, or extract a file it was given. Both libraries come with the ``tools`` extra.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from openfang.security.fs_scope import ScopedFS
from openfang.workers.tools.core import Tool, ToolContext, ToolError
from openfang.workers.tools.schema import object_schema as _obj

MAX_INPUT = 16 << 20
MAX_OUTPUT = 1_000_000
MAX_PAGES = 2000


def _need(what: str) -> ToolError:
    return ToolError(f"this tool needs {what}: pip install 'openfang[tools]'", code="unavailable")


def _input(ctx: ToolContext, args: dict[str, Any], inline: str) -> bytes:
    """The document bytes from exactly one of ``inline`` or ``path`` (a file in the scoped folder)."""
    if (inline in args) == ("path" in args):
        raise ToolError(f"give exactly one of {inline} or path", code="bad_args")
    if "path" in args:
        if ctx.fs_root is None:
            raise ToolError("path needs the agent's scoped folder (none in this host)", code="unavailable")
        return ScopedFS(ctx.fs_root, max_read_bytes=MAX_INPUT).read(args["path"])
    if inline == "data_base64":
        try:
            return base64.b64decode(args[inline], validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ToolError(f"data_base64 is not valid base64: {exc}", code="bad_args") from None
    return str(args[inline]).encode()


def _capped(text: str) -> dict[str, Any]:
    return {"text": text[:MAX_OUTPUT], "chars": len(text), "truncated": len(text) > MAX_OUTPUT}


def html_extract(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        import trafilatura
    except ImportError:
        raise _need("trafilatura") from None
    raw = _input(ctx, args, "html")
    html = raw.decode("utf-8", errors="replace")
    text = trafilatura.extract(
        html,
        output_format="markdown" if args["format"] == "markdown" else "txt",
        include_links=args["include_links"],
        include_tables=args["include_tables"],
        include_comments=False,
        favor_recall=True,
    )
    meta = trafilatura.extract_metadata(html)
    title = meta.title if meta is not None else None
    if not text:
        return {"text": "", "chars": 0, "truncated": False, "title": title, "note": "no main content found"}
    return {**_capped(text), "title": title}


def pdf_text(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise _need("pypdf") from None
    data = _input(ctx, args, "data_base64")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(args["password"]):
            raise ToolError("the PDF is encrypted and the password does not open it", code="denied")
        total = len(reader.pages)
        first = args["first_page"]
        last = min(args.get("last_page", total), total, first + MAX_PAGES - 1)
        if first > total:
            raise ToolError(f"first_page {first} is past the last page ({total})", code="bad_args")
        pages = [reader.pages[i].extract_text() or "" for i in range(first - 1, last)]
    except PdfReadError as exc:
        raise ToolError(f"not a readable PDF: {exc}", code="bad_args") from None
    except (ValueError, KeyError, TypeError) as exc:  # pypdf raises these on damaged files
        raise ToolError(f"damaged PDF: {type(exc).__name__}: {exc}", code="bad_args") from None
    text = "\n\f\n".join(pages)
    return {**_capped(text), "pages": total, "first_page": first, "last_page": last}


_PATH = {"type": "string", "minLength": 1, "maxLength": 1024, "description": "a file in the scoped folder"}

DOCUMENT_TOOLS: tuple[Tool, ...] = (
    Tool(
        name="html_extract",
        description="The readable main text of an HTML page (no menus or ads), as plain text or markdown.",
        schema=_obj(
            {
                "html": {"type": "string", "maxLength": MAX_INPUT},
                "path": _PATH,
                "format": {"enum": ["text", "markdown"], "default": "markdown"},
                "include_links": {"type": "boolean", "default": False},
                "include_tables": {"type": "boolean", "default": True},
            },
            [],
        ),
        permission="documents",
        call=html_extract,
    ),
    Tool(
        name="pdf_text",
        description="The text of a PDF (from the scoped folder or base64), page range optional.",
        schema=_obj(
            {
                "path": _PATH,
                "data_base64": {"type": "string", "maxLength": MAX_INPUT * 2},
                "first_page": {"type": "integer", "minimum": 1, "default": 1},
                "last_page": {"type": "integer", "minimum": 1},
                "password": {"type": "string", "default": "", "maxLength": 256},
            },
            [],
        ),
        permission="documents",
        call=pdf_text,
    ),
)
