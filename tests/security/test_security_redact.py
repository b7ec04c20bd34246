"""Layer 11: secrets and PII are redacted from replies, values and log lines."""

from __future__ import annotations

import io
import json

import structlog

from openfang.security.redact import RedactConfig, Redactor, redact_processor, register_secret


def test_redact_provider_keys_pii_and_sensitive_keys() -> None:
    """Known key formats, emails, card numbers and credential-named fields are replaced."""
    r = Redactor()
    out = r.redact_value(
        {
            "reply": "Your key sk-ant-api03-"
            + "x" * 30
            + " and AKIAIOSFODNN7EXAMPLE; mail bob@example.com, card 4111 1111 1111 1111",
            "api_key": "short-but-secret",
            "Authorization": "Bearer abc",
            "max_tokens": 512,
            "nested": [{"password": "pw12345678"}],
        }
    )
    assert out["reply"] == (
        "Your key [REDACTED:anthropic_key] and [REDACTED:aws_access_key]; mail [REDACTED:email], "
        "card [REDACTED:credit_card]"
    )
    assert out["api_key"] == "[REDACTED]" and out["Authorization"] == "[REDACTED]"
    assert out["max_tokens"] == 512 and out["nested"][0]["password"] == "[REDACTED]"


def test_redact_known_secret_values_anywhere() -> None:
    """A registered secret value is redacted even inside ordinary words."""
    r = Redactor()
    r.add_known("corp-internal-token-1234")
    assert r.redact_text("x=corp-internal-token-1234;y") == "x=[REDACTED:known_secret];y"


def test_redact_leaves_ordinary_text_alone() -> None:
    """Prose, digests, UUIDs and numbers survive redaction unchanged."""
    text = (
        "Build e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 passed in 42 s; "
        "request 123e4567-e89b-12d3-a456-426614174000 served."
    )
    assert Redactor().redact_text(text) == text


def test_redact_pii_kinds_follow_config() -> None:
    """Without email in pii, emails stay; card numbers failing Luhn are not treated as cards."""
    r = Redactor(RedactConfig(pii=frozenset({"credit_card"})))
    assert r.redact_text("mail bob@example.com") == "mail bob@example.com"
    assert r.redact_text("order 1234 5678 9012 3456") == "order 1234 5678 9012 3456"


def test_redact_processor_scrubs_structlog_lines() -> None:
    """A log line passing through redact_processor never contains the secret."""
    register_secret("hunter2-but-longer")
    stream = io.StringIO()
    structlog.configure(
        processors=[redact_processor, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger().bind(agent_id="a1")
        log.info("login with hunter2-but-longer", token="ghp_" + "Z" * 36, attempt=2)
    finally:
        structlog.reset_defaults()
    line = json.loads(stream.getvalue())
    assert "hunter2-but-longer" not in stream.getvalue() and "ZZZZ" not in stream.getvalue()
    assert line["attempt"] == 2 and line["agent_id"] == "a1"


def test_redaction_keeps_file_paths_but_still_catches_secrets_with_slashes() -> None:
    """A module path under a random temp folder stays readable; a base64 secret containing '/' is redacted."""
    from openfang.security.redact import redact_text

    for path in (
        "/tmp/tmp.Xk29Fa81qZ/main/examples/agents/nasty/huge_table.wat",
        "/work/wt/injection2/examples/agents/nasty/huge_table.wat",
    ):
        assert redact_text(path) == path
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEYq9Zt3"
    assert "REDACTED" in redact_text(f"key {secret} here")
