"""Reading key files (signing secrets, audit chain keys): hex text or raw bytes, never echoed in errors."""

from __future__ import annotations

import re
from pathlib import Path


def read_key_material(path: str) -> bytes:
    """Key bytes from a file: 64+ hex characters (text, surrounding whitespace ignored) or raw bytes."""
    raw = Path(path).read_bytes()
    text = raw.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{64,}", text):
        return bytes.fromhex(text.decode("ascii"))
    return raw
