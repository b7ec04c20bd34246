"""Layer 11's memo of recent redactions gives what redacting every text afresh gives."""

from __future__ import annotations

import random

from openfang.security import redact
from openfang.security.redact import RedactConfig, Redactor

PIECES = [
    "billing",
    "tech: handled 1a2b",
    "key sk-ant-api03-" + "a1B2" * 20,
    "AKIAIOSFODNN7EXAMPLE",
    "mail bob@example.com",
    "card 4111 1111 1111 1111",
    "ghp_" + "Z" * 36,
    "hunter2-but-longer",
    "the db password is opensesame99",
    "plain words",
    "é ü ✓",
]


class _Fresh(Redactor):
    """The redactor with its memo off: every text redacted afresh (the oracle)."""

    memo_entries = 0


def test_redact_memo_same_text_as_fresh_redaction() -> None:
    """Random texts glued from secrets, PII and words, repeated, redact as a fresh redactor redacts them,
    also after known secrets are added in between (the memo forgets what they change)."""
    rng = random.Random(33)
    memo, fresh = Redactor(), _Fresh()
    pool = [" ".join(rng.sample(PIECES, rng.randint(1, 3))) for _ in range(120)]
    redacted = 0
    for i in range(4000):
        if i in (1000, 2500):
            for r in (memo, fresh):
                r.add_known("hunter2-but-longer" if i == 1000 else "opensesame99")
        text = rng.choice(pool)
        out = memo.redact_text(text)
        assert out == fresh.redact_text(text), text
        redacted += out != text
    assert redacted > 1000
    assert 0 < len(memo._memo) <= Redactor.memo_entries and not fresh._memo


def test_redact_memo_forgets_after_add_known_and_a_new_config() -> None:
    """A remembered text is redacted again after add_known, and not at all once the config disables it."""
    r = Redactor()
    text = "login with hunter2-but-longer"
    assert r.redact_text(text) == text
    r.add_known("hunter2-but-longer")
    assert r.redact_text(text) == "login with [REDACTED:known_secret]"
    r.config = RedactConfig(enabled=False)
    assert r.redact_text(text) == text


def test_redact_memo_stays_bounded_and_skips_long_texts() -> None:
    """The memo holds at most memo_entries texts (cleared when full) and none longer than its limit."""
    r = Redactor()
    for i in range(3 * Redactor.memo_entries):
        assert r.redact_text(f"mail user{i}@example.com") == "mail [REDACTED:email]"
        assert len(r._memo) <= Redactor.memo_entries
    long_text = "mail bob@example.com " + "x" * redact._MEMO_TEXT
    assert r.redact_text(long_text).startswith("mail [REDACTED:email] x")
    assert all(len(text) <= redact._MEMO_TEXT for text in r._memo)
