"""The public API named in docs/security.md exists, and the engine imports only protocol from our packages."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PUBLIC = {
    "validation": ["ValidationLimits", "MessageValidator", "check_message", "check_frame", "check_manifest"],
    "injection": ["InjectionConfig", "InjectionDetector", "InjectionGuard", "Verdict"],
    "ratelimit": ["RateLimitConfig", "Limit", "RateLimiter", "RateLimitExceeded"],
    "signing": [
        "SigningKey",
        "KeyRing",
        "SigningConfig",
        "Verifier",
        "Verified",
        "sign",
        "keyring_from_files",
    ],
    "capabilities": ["SandboxPolicyConfig", "CapabilityPolicy", "SandboxGrant"],
    "boundary": ["BoundaryGuard"],
    "permissions": ["AgentPermissions", "PermissionChecker", "parse_permissions"],
    "exfil": ["ExfilConfig", "ExfilGuard", "TaintTracker", "Leak"],
    "redact": ["RedactConfig", "Redactor", "redact_processor", "register_secret", "configure_redaction"],
    "audit": ["AuditLog", "AuditSink", "AuditRecord", "VerifyResult", "verify"],
    "attestation": ["AttestationConfig", "Attestor", "Attested", "sign_manifest", "module_digest"],
    "integrity": ["IntegrityMonitor", "Violation", "package_files"],
    "identity": [
        "AgentIdentity",
        "IdentityRegistry",
        "AgentMessageVerifier",
        "FromAgent",
        "sign_agent_message",
    ],
    "rollback": ["VersionStore", "parse_version"],
    "config": ["SecurityConfig", "parse_security"],
    "report": ["security_report"],
    "_errors": ["Denied"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_api_documented_names_exist(module: str) -> None:
    """Every name the docs promise is importable from its module."""
    mod = importlib.import_module(f"openfang.security.{module}")
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"openfang.security.{module} lacks {missing}"


def test_api_security_imports_only_protocol_of_ours() -> None:
    """security/ may import openfang.protocol and itself, nothing else of ours."""
    root = Path(importlib.import_module("openfang.security").__path__[0])
    bad = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else (
                    [node.module]
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                    else []
                )
            )
            for name in names:
                if name.startswith("openfang.") and not name.startswith(
                    ("openfang.protocol", "openfang.security")
                ):
                    bad.append(f"{path.name}: {name}")
    assert not bad
