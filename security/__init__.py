"""openfang.security: the security engine, sixteen layers each in its own module (see docs/security.md).

validation (1), injection (2), ratelimit (3), signing (4), capabilities (5-7), boundary with netguard and
fs_scope (8), permissions (9), exfil (10), redact (11), audit (12), attestation (13), integrity (14),
identity (15), rollback (16); config parses ``[security]``, report feeds ``openfang security report``.
Import the module you need; this package imports nothing eagerly (the logging setup imports ``redact``).
"""
