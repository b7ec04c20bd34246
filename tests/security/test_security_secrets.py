"""Secret detectors: the ASCII prefilter of find_secrets finds exactly what running every regex finds."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from openfang.security._secrets import (
    PII_DETECTORS,
    SECRET_DETECTORS,
    find_secrets,
    scan_all,
    select_detectors,
)

DATA = Path(__file__).parent / "data"
ALL = (*SECRET_DETECTORS, *PII_DETECTORS)

# Samples of each kind (and near misses), glued into the fuzzed texts below.
SAMPLES = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
    "-----END RSA PRIVATE KEY-----",
    "AKIAIOSFODNN7EXAMPLE",
    "ASIA1234567890ABCDEF",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS SK: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "github_pat_" + "A1b2" * 16,
    "sk-ant-api03-" + "x" * 30,
    "sk-proj-" + "Ab1" * 10,
    "xoxb-1234567890-abcdef",
    "sk_live_" + "a1B2c3D4e5F6g7H8",
    "rk_test_" + "Z" * 20,
    "AIza" + "B" * 35,
    "glpat-" + "c" * 22,
    "npm_" + "d1" * 18,
    "hf_" + "e2" * 17,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "password = hunter2hunter2",
    "API-KEY: 0123456789abcdefXYZ",
    "Auth_Token='abcdefgh12345678'",
    "Bearer abcdefghijklmnopqrstuvwxyz012345",
    "Xq9/Lm3+Tz8_Rk2-Vb7Wn4Yc1Hd6Jf0Gs5Pa",
    "bob@example.com",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "123-45-6789",
    "+44 20 7946 0958",
    "GB82 WEST 1234 5698 7654 32",
)
PIECES = (
    *SAMPLES,
    *(s[: len(s) // 2] for s in SAMPLES),
    "PRIVATE KEY",
    "private key",
    "aws",
    "AwS",
    "gh",
    "_live_",
    "sk-",
    "SK-",
    "bearer",
    "BEARER",
    "Password:",
    "secret",
    "@",
    "-",
    "+",
    "=",
    ":",
    " ",
    "\n",
    "\t",
    ".",
    "/",
    "0",
    "1234567",
    "89",
    "abcDEF",
    "token",
    "é",
    "\u017f",  # long s: case-folds to s
    "\u212a",  # Kelvin sign: case-folds to k
    "٣",
    "\uff53\uff4b-",  # full-width sk-
)


def _corpus() -> list[str]:
    texts = list(SAMPLES)
    for path in sorted(DATA.glob("*.jsonl")):
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return texts


def test_find_secrets_prefilter_matches_full_scan_on_corpus() -> None:
    """Over the security corpora and a sample of every kind, the prefiltered scan equals the full scan."""
    texts = _corpus()
    assert len(texts) > 500
    for detectors in (ALL, select_detectors(None, pii=("email", "credit_card", "us_ssn"))):
        for text in texts:
            assert find_secrets(text, detectors) == scan_all(text, detectors), text


def test_find_secrets_prefilter_matches_full_scan_fuzzed() -> None:
    """Random texts glued from samples, halves of samples, needles in every case and separators: same
    findings with and without the prefilter (a seeded fuzz, so a failure replays)."""
    rng = random.Random(1515)
    hits = 0
    for _ in range(4000):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 8))]
        text = "".join(p.upper() if rng.random() < 0.1 else p for p in parts)
        want = scan_all(text, ALL)
        hits += bool(want)
        assert find_secrets(text, ALL) == want, text
    assert hits > 1000  # the fuzz does reach the detectors, not only the skip path


def test_find_secrets_accepts_any_iterable_of_detectors() -> None:
    """A list or generator of detectors works like the tuple the redactor passes."""
    text = "key AKIAIOSFODNN7EXAMPLE and bob@example.com"
    want = scan_all(text, ALL)
    assert [f.kind for f in want] == ["aws_access_key", "email"]
    assert find_secrets(text, list(ALL)) == want
    assert find_secrets(text, (d for d in ALL)) == want


def test_secrets_detector_compiles_its_regex_on_first_use() -> None:
    """A fresh process compiles no detector regex at import, and a plain text no secret one; a text that needs
    one compiles only the detectors it runs, each once, and a detector stays equal and hashable."""
    code = (
        "import dataclasses\n"
        "from openfang.security import _secrets as s\n"
        "every = (*s.SECRET_DETECTORS, *s.PII_DETECTORS)\n"
        "compiled = lambda: sorted(d.kind for d in every if d._compiled is not None)\n"
        "print(compiled())\n"
        "s.find_secrets('the meeting moved to three, see you there', s.SECRET_DETECTORS)\n"
        "print(compiled())\n"
        "found = s.find_secrets('key sk-ant-' + 'x' * 22, s.SECRET_DETECTORS)\n"
        "print([f.kind for f in found], compiled())\n"
        "d = s.SECRET_DETECTORS[4]\n"
        "fresh = dataclasses.replace(d)\n"
        "print(d.pattern is d.pattern, d == fresh, hash(d) == hash(fresh), fresh._compiled is None)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[]",
        "[]",
        "['anthropic_key'] ['anthropic_key', 'openai_key']",
        "True True True True",
    ]


def test_find_secrets_short_texts_without_a_needle_equal_the_full_scan() -> None:
    """Texts without any needle around the length the literal-free detectors need (card numbers of 12-19
    digits, Luhn-valid or not, token runs of 31-33 characters, short digit strings) give what the full scan
    gives, for every detector set."""
    texts = [
        "",
        "7",
        "1234",
        "3703",
        "result=3703",
        "t5 result=3703",
        "4111 1111 1111 1111",
        "4111111111111111",
    ]
    texts += (
        ["4" * n for n in range(10, 21)] + ["x" * n for n in range(28, 36)] + ["aB3" * 11, "4222222222222"]
    )
    texts += [f"order {n}" for n in (4012888888881881, 378282246310005, 6011111111111117)]
    for detectors in (ALL, select_detectors(None, pii=("email", "credit_card", "us_ssn")), ()):
        for text in texts:
            assert find_secrets(text, detectors) == scan_all(text, detectors), text
    assert find_secrets("4012888888881881", ALL)  # a real card number still found past the floor


def test_find_secrets_literal_free_detector_at_exactly_its_length_is_asked() -> None:
    """A needle-free text exactly as long as one literal-free detector's token run or digit count (a
    32-character random token, a 13-digit card number) is still found: the per-detector length test skips
    only detectors that need more than the text holds."""
    rng = random.Random(15)
    alphabet = "BCDFHJLMNQRTUVWZbcdfjmnqrtuvwz0123456789"  # no needle can form from these
    tokens = ["".join(rng.choice(alphabet) for _ in range(32)) for _ in range(50)]
    found = 0
    for token in tokens:
        for text in (token, f"{token} x", f"id {token}"):
            want = scan_all(text, ALL)
            assert find_secrets(text, ALL) == want, text
            found += bool(want)
    assert found  # some of them are high-entropy tokens: the detector was asked
    for text in ("4222222222222", "4222222222222 ok"):
        want = scan_all(text, ALL)
        assert want and find_secrets(text, ALL) == want, text
