"""The security layers that guard the control boundary, assembled for one process from ``[security]``.

The gateway admits every client frame through :meth:`Guard.admit`: signature (layer 4, when keys are
configured), schema and size limits (layer 1), per-client rate limits (layer 3). Every refusal is an error
reply to the client *and* a record in the hash-chained audit log (layer 12). The daemon uses the same
assembly for the runtime integrity checks of its own files (layer 14).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openfang.protocol.envelope import Envelope, decode
from openfang.protocol.messages import check_request
from openfang.security.audit import AuditLog
from openfang.security.config import SecurityConfig, open_audit, parse_security
from openfang.security.integrity import IntegrityMonitor, Violation, package_files
from openfang.security.ratelimit import RateLimiter
from openfang.security.report import security_report
from openfang.security.signing import Verifier, keyring_from_files
from openfang.security.validation import MessageValidator

# The import root's subpackages live in separate folders (setuptools package-dir), so "openfang" alone
# would cover only the root package's own files.
OPENFANG_PACKAGES = (
    "openfang",
    "openfang.cli",
    "openfang.protocol",
    "openfang.supervisor",
    "openfang.workers",
    "openfang.memory",
    "openfang.security",
)


def security_args(table: Mapping[str, Any], *, source: str, data_dir: Path, base_dir: Path) -> dict[str, Any]:
    """What a child needs to rebuild the security config in its own process (plain data for the fork)."""
    return {"table": dict(table), "source": source, "data_dir": str(data_dir), "base_dir": str(base_dir)}


def config_from_args(args: Mapping[str, Any] | None) -> SecurityConfig:
    if not args:
        return SecurityConfig()
    return parse_security(
        args.get("table") or {},
        str(args.get("source", "cluster.toml")),
        data_dir=Path(str(args["data_dir"])),
        base_dir=Path(str(args["base_dir"])),
    )


class Guard:
    """Layers 1, 3, 4 and 12 for one gateway process."""

    def __init__(self, config: SecurityConfig, *, max_frame: int) -> None:
        self.config = config
        self.max_frame = min(max_frame, config.validation.max_frame_bytes)
        self.audit = open_audit(config)
        self.validator = MessageValidator(config.validation, audit=self.audit)
        self.limiter = RateLimiter(config.ratelimit, audit=self.audit) if config.ratelimit.enabled else None
        self.verifier: Verifier | None = None
        if config.signing.enabled and (config.signing_keys or config.signing.require):
            keys = keyring_from_files(config.signing_keys)
            self.verifier = Verifier(keys, config.signing, audit=self.audit)

    def admit(self, payload: bytes, *, client: str) -> Envelope:
        """The request in ``payload`` if every layer lets it through; raises the refusing layer's error."""
        if self.verifier is not None:
            env = self.verifier.verify_frame(payload, max_size=self.max_frame).env
        else:
            env = decode(payload, max_size=self.max_frame)
        check_request(env)
        self.validator.check(env, client=client)
        if self.limiter is not None:
            self.limiter.charge(client=client, requests=1)
        return env

    def report(self) -> list[dict[str, Any]]:
        return security_report(self.config)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


def integrity_monitor(config: SecurityConfig, audit: AuditLog | None) -> IntegrityMonitor | None:
    """Layer 14: a baseline of the daemon's own package files (and configured files), re-checked later."""
    if not config.integrity.enabled:
        return None
    files: list[str] = list(config.integrity.files)
    for package in config.integrity.packages:
        names = OPENFANG_PACKAGES if package == "openfang" else (package,)
        for name in names:
            files.extend(str(p) for p in package_files(name))
    return IntegrityMonitor(files, audit=audit)


__all__ = ["Guard", "Violation", "config_from_args", "integrity_monitor", "open_audit", "security_args"]
