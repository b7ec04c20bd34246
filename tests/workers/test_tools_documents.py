"""html_extract and pdf_text: main text out of real HTML and PDF documents, from arguments or scoped files."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from openfang.workers.tools.registry import ToolContext, default_registry

REG = default_registry()

PAGE = """<html><head><title>Launch notes</title></head><body>
<nav><a href="/">Home</a> | <a href="/shop">Shop</a> | <a href="/login">Login</a></nav>
<article><h1>Launch notes</h1>
<p>The rocket launched on a clear morning after three weeks of careful preparation by the team.</p>
<p>Engineers confirmed that every stage separated on schedule and the payload reached orbit safely.</p>
<table><tr><th>stage</th><th>time</th></tr><tr><td>one</td><td>T+150s</td></tr></table>
</article>
<footer>Copyright 2026 Example Corp. All rights reserved. Cookie settings.</footer>
</body></html>"""


def make_pdf(*pages: str) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (xref offsets computed)."""
    objs: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def call(name: str, args: dict[str, Any], root: Path | None = None, allowed: str = "documents") -> Any:
    return REG.invoke(ToolContext(agent_id="a1", allowed=frozenset({allowed}), fs_root=root), name, args)


def test_html_extract_keeps_the_article_and_drops_navigation_and_footer() -> None:
    """The main text (and its table) comes out as markdown; menus and the footer do not."""
    res = call("html_extract", {"html": PAGE})
    assert res.ok, res
    text = res.value["text"]
    assert "three weeks of careful preparation" in text and "payload reached orbit" in text
    assert "T+150s" in text
    assert "Cookie settings" not in text and "Login" not in text
    assert res.value["title"] == "Launch notes"


def test_html_extract_reads_a_scoped_file_and_refuses_ambiguous_input(tmp_path: Path) -> None:
    """path reads from the agent's folder; giving both html and path, or neither, is bad_args."""
    (tmp_path / "page.html").write_text(PAGE)
    res = call("html_extract", {"path": "page.html", "format": "text"}, tmp_path)
    assert res.ok and "payload reached orbit" in res.value["text"]
    assert call("html_extract", {"html": PAGE, "path": "page.html"}, tmp_path).code == "bad_args"
    assert call("html_extract", {}, tmp_path).code == "bad_args"
    assert call("html_extract", {"path": "../etc/passwd"}, tmp_path).code == "denied"
    assert call("html_extract", {"html": PAGE}, allowed="text").code == "denied"


def test_pdf_text_extracts_pages_in_range() -> None:
    """Each page's text comes out, page ranges apply, and the page count is reported."""
    pdf = base64.b64encode(make_pdf("First page words", "Second page words", "Third page words")).decode()
    res = call("pdf_text", {"data_base64": pdf})
    assert res.ok, res
    assert res.value["pages"] == 3 and "Second page words" in res.value["text"]
    res = call("pdf_text", {"data_base64": pdf, "first_page": 2, "last_page": 2})
    assert res.value["text"].strip() == "Second page words" and res.value["last_page"] == 2
    assert "past the last page" in (call("pdf_text", {"data_base64": pdf, "first_page": 9}).error or "")


def test_pdf_text_refuses_garbage_clearly(tmp_path: Path) -> None:
    """Random bytes and bad base64 are bad_args with a reason; the tool does not crash."""
    (tmp_path / "fake.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 10)
    res = call("pdf_text", {"path": "fake.pdf"}, tmp_path)
    assert res.code == "bad_args" and ("PDF" in (res.error or "")), res
    assert call("pdf_text", {"data_base64": "!!"}).code == "bad_args"
