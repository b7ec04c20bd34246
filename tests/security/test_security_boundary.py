"""Layer 8: SSRF and file-scope escapes are refused through the audited boundary guard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openfang.security._errors import Denied
from openfang.security.audit import AuditLog
from openfang.security.boundary import BoundaryGuard

DNS = {"api.example.com": ["93.184.216.34"], "rebind.example": ["93.184.216.34", "10.0.0.5"]}


def _resolver(host: str, port: int) -> list[str]:
    return DNS.get(host, [host])


def test_boundary_ssrf_to_metadata_and_private_nets_is_refused_and_audited(audit: AuditLog) -> None:
    """Metadata, loopback and mixed public/private DNS answers are refused; public hosts pass."""
    guard = BoundaryGuard(resolver=_resolver, audit=audit)
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:6379/",
        "http://rebind.example/",
        "file:///etc/passwd",
    ):
        with pytest.raises(Denied) as err:
            guard.check_url("a1", url)
        assert err.value.reason == "network" and err.value.layer == "boundary"
    target = guard.check_url("a1", "https://api.example.com/v1")
    assert target.host == "api.example.com"
    assert len(audit.records("boundary.network_denied")) == 4


def test_boundary_symlink_and_traversal_escapes_are_refused(tmp_path: Path, audit: AuditLog) -> None:
    """'..', absolute paths and a planted symlink to outside the root are refused; normal files work."""
    root = tmp_path / "agent-root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(tmp_path, root / "up")
    guard = BoundaryGuard(audit=audit)
    fs = guard.fs(root)
    for rel in ("../secret.txt", "/etc/passwd", "link.txt", "up/secret.txt"):
        with pytest.raises(Denied) as err:
            guard.file_op("a1", "read", lambda rel=rel: fs.read(rel))  # type: ignore[misc]
        assert err.value.reason == "filesystem"
    guard.file_op("a1", "write", lambda: fs.write("notes.txt", "mine"))
    assert guard.file_op("a1", "read", lambda: fs.read("notes.txt")) == b"mine"
    assert len(audit.records("boundary.fs_denied")) == 4
