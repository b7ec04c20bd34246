"""SHA-256 and HMAC-SHA256 without libcrypto until a large input needs it (security/_hashing.py)."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest

from openfang.security import _hashing
from openfang.security._hashing import BULK, compare_digest, hmac_sha256, sha256, sha256_stream


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("size", [0, 1, 55, 56, 64, 1000, BULK - 1, BULK, BULK + 1, 3 * BULK + 17])
def test_hashing_sha256_matches_hashlib_at_every_size(size: int) -> None:
    """sha256 gives hashlib's digest below, at and above the bulk threshold, in one piece and streamed."""
    data = bytes((i * 7 + 3) % 251 for i in range(size))
    want = hashlib.sha256(data).hexdigest()
    assert sha256(data).hexdigest() == want
    assert sha256(memoryview(data)).hexdigest() == want
    streamed = sha256(size=size)
    for at in range(0, size, 4096):
        streamed.update(data[at : at + 4096])
    assert streamed.hexdigest() == want
    stream = sha256_stream()
    stream.update(data)
    assert stream.hexdigest() == want


def test_hashing_small_inputs_use_the_interpreters_own_sha256() -> None:
    """Below BULK bytes the object is the builtin _sha256's; from BULK on, OpenSSL's (hashlib's)."""
    assert type(sha256(b"x" * (BULK - 1))).__module__ == "_sha256"
    assert type(sha256(size=BULK - 1)).__module__ == "_sha256"
    assert type(sha256(b"x" * BULK)) is type(hashlib.sha256())
    assert type(sha256(b"", size=BULK)) is type(hashlib.sha256())
    assert type(sha256_stream()) is type(hashlib.sha256())


def test_hashing_without_the_builtin_falls_back_to_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter without _sha256 gets OpenSSL's object for small inputs too, with the same digest."""
    monkeypatch.setattr(_hashing, "_builtin", None)
    got = sha256(b"abc")
    assert type(got) is type(hashlib.sha256())
    assert got.hexdigest() == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("key", [b"", b"k", b"k" * 64, b"k" * 65, bytes(range(256))])
def test_hashing_hmac_sha256_matches_hmac(key: bytes) -> None:
    """hmac_sha256 is hmac.new(key, data, sha256).digest() for short, block-sized and long keys."""
    for data in (b"", b"record", b"x" * 5000):
        assert hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


def test_hashing_compare_digest_answers_as_hmacs() -> None:
    """compare_digest answers as hmac.compare_digest does: equal and unequal bytes and str, a non-ASCII str
    and a type mix refused alike (it is the constant-time compare hmac falls back to without OpenSSL)."""
    import _operator

    assert compare_digest is _operator._compare_digest
    pairs: list[tuple[str, str] | tuple[bytes, bytes]] = [
        (b"ab", b"ab"),
        (b"ab", b"ac"),
        (b"ab", b"a"),
        (b"", b""),
        ("ab", "ab"),
        ("ab", "a"),
        ("", ""),
    ]
    for a, b in pairs:
        assert compare_digest(a, b) is hmac.compare_digest(a, b)  # type: ignore[arg-type]
    for bad in (("ab", b"ab"), ("é", "é")):
        with pytest.raises(TypeError):
            hmac.compare_digest(*bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            compare_digest(*bad)  # type: ignore[arg-type]


def test_hashing_start_maps_no_libcrypto() -> None:
    """The daemon's, the gateway's and the worker's imports, and the digests they take of small inputs,
    load neither hashlib nor hmac (so no libcrypto, ~2.4 ms); the first large input or HMAC loads them."""
    out = _run(
        "import sys\n"
        "import openfang.control.daemon, openfang.control.gateway, openfang.workers.worker\n"
        "from openfang.security import _canon, audit, injection\n"
        "from openfang.control.registry import manifest_digest\n"
        "from openfang.workers.sandbox.builtin_guests import builtin_digest\n"
        "injection.warm(); manifest_digest('x'); builtin_digest('llm-agent'); _canon.sha256_hex(b'x')\n"
        "audit._digest('record', None)\n"
        "print(sorted({'_hashlib', 'hashlib', 'hmac'} & set(sys.modules)))\n"
        "audit._digest('record', b'key')\n"
        "print(sorted({'_hashlib', 'hashlib', 'hmac'} & set(sys.modules)))\n"
    )
    # [] first: a module of the start imports hashlib or hmac again (use openfang.security._hashing)
    assert out.splitlines() == ["[]", "['_hashlib', 'hashlib', 'hmac']"]
