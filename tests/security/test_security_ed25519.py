"""Ed25519 through the interpreter's libcrypto (security/_ed25519.py): RFC 8032 vectors, agreement with the
``cryptography`` package both ways, refusals, PEM files, fork, threads, no leaks, and a missing libcrypto."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import os
import pickle
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from cryptography.exceptions import InvalidSignature as OracleInvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import ed25519 as oracle

from openfang.protocol.errors import ConfigError, OpenFangError
from openfang.security import _ed25519
from openfang.security._ed25519 import (
    CryptoUnavailable,
    Ed25519PrivateKey,
    Ed25519PublicKey,
    InvalidKey,
    InvalidSignature,
    NotEd25519Key,
    libcrypto,
)
from openfang.security.signing import ED25519_ALG, load_signing_key

DATA = Path(__file__).parent / "data"

# RFC 8032 section 7.1: (name, secret key, public key, message, signature), all hex.
RFC8032 = [
    (
        "test1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "test2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "test3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "test1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        (DATA / "rfc8032_test1024_message.hex").read_text().strip(),
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "test_sha_abc",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        hashlib.sha512(b"abc").hexdigest(),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


@pytest.mark.parametrize(
    ("name", "secret", "public", "message", "signature"), RFC8032, ids=[v[0] for v in RFC8032]
)
def test_ed25519_rfc8032_vector(name: str, secret: str, public: str, message: str, signature: str) -> None:
    """Each RFC 8032 section 7.1 vector: the seed gives its public key and signature, which verifies."""
    msg = bytes.fromhex(message)
    if name == "test1024":
        assert len(msg) == 1023
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert key.public_key().public_bytes_raw().hex() == public
    assert key.sign(msg).hex() == signature
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(bytes.fromhex(signature), msg)


def test_ed25519_agrees_with_cryptography_both_ways() -> None:
    """For many random seeds and messages: same public key, same signature, each verifies the other's."""
    rng = random.Random(15)
    for n in range(300):
        seed = os.urandom(32)
        msg = rng.randbytes(rng.choice([0, 1, 31, 64, 200, 1023, 5000]) + n % 7)
        ours = Ed25519PrivateKey.from_private_bytes(seed)
        theirs = oracle.Ed25519PrivateKey.from_private_bytes(seed)
        raw = ours.public_key().public_bytes_raw()
        assert raw == theirs.public_key().public_bytes_raw()
        sig = ours.sign(msg)
        assert sig == theirs.sign(msg)  # Ed25519 is deterministic
        oracle.Ed25519PublicKey.from_public_bytes(raw).verify(sig, msg)
        Ed25519PublicKey.from_public_bytes(raw).verify(theirs.sign(msg), msg)


def test_ed25519_generated_keys_are_verified_by_cryptography() -> None:
    """Keys generated inside OpenSSL are distinct and their signatures verify under the oracle."""
    keys = [Ed25519PrivateKey.generate() for _ in range(50)]
    publics = {k.public_key().public_bytes_raw() for k in keys}
    assert len(publics) == 50
    for key in keys:
        sig = key.sign(b"generated")
        oracle.Ed25519PublicKey.from_public_bytes(key.public_key().public_bytes_raw()).verify(
            sig, b"generated"
        )


def test_ed25519_tampered_signature_message_or_key_is_refused() -> None:
    """Flipping any bit of the signature, changing the message or using another key: InvalidSignature."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    msg = b"pay 10 to alice"
    sig = key.sign(msg)
    public.verify(sig, msg)
    for i in range(0, 64 * 8, 5):
        bad = bytearray(sig)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(InvalidSignature):
            public.verify(bytes(bad), msg)
    for other in (b"pay 11 to alice", b"pay 10 to alice ", b"", msg[:-1]):
        with pytest.raises(InvalidSignature):
            public.verify(sig, other)
    with pytest.raises(InvalidSignature):
        Ed25519PrivateKey.generate().public_key().verify(sig, msg)
    oracle_public = oracle.Ed25519PublicKey.from_public_bytes(public.public_bytes_raw())
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(OracleInvalidSignature):
        oracle_public.verify(bad, msg)  # the oracle agrees on the refusal


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_ed25519_wrong_length_seed_or_public_key_is_refused_clearly(size: int) -> None:
    """A seed or public key that is not 32 bytes: InvalidKey (a ValueError) naming both lengths."""
    with pytest.raises(InvalidKey, match=f"private key \\(seed\\) is 32 bytes, got {size}"):
        Ed25519PrivateKey.from_private_bytes(b"\x01" * size)
    with pytest.raises(ValueError, match=f"public key is 32 bytes, got {size}"):
        Ed25519PublicKey.from_public_bytes(b"\x01" * size)


@pytest.mark.parametrize("size", [0, 1, 63, 65, 128])
def test_ed25519_wrong_length_signature_does_not_verify(size: int) -> None:
    """A signature that is not 64 bytes is InvalidSignature naming its length, never a crash."""
    key = Ed25519PrivateKey.generate()
    sig = key.sign(b"m")
    with pytest.raises(InvalidSignature, match=f"64 bytes, got {size}"):
        key.public_key().verify((sig * 2)[:size], b"m")


def test_ed25519_bytes_like_inputs_work_and_others_are_type_errors() -> None:
    """bytearray and memoryview are accepted as bytes; a str or int is a TypeError naming the argument."""
    seed = os.urandom(32)
    key = Ed25519PrivateKey.from_private_bytes(bytearray(seed))
    sig = key.sign(memoryview(b"data"))
    key.public_key().verify(bytearray(sig), memoryview(b"data"))
    with pytest.raises(TypeError, match="data to sign must be bytes, not str"):
        key.sign("data")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="public key must be bytes, not int"):
        Ed25519PublicKey.from_public_bytes(32)  # type: ignore[arg-type]


def test_ed25519_keys_cannot_be_pickled_or_made_directly() -> None:
    """A key owns its OpenSSL key: pickling is refused, a copy is the same object, repr hides the seed."""
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(key.public_key())
    assert copy.copy(key) is key and copy.deepcopy(key) is key
    assert repr(key) == "<Ed25519PrivateKey>" and "07" * 4 not in repr(key)
    with pytest.raises(TypeError, match="classmethods"):
        Ed25519PrivateKey()


def test_ed25519_public_keys_compare_by_value() -> None:
    """Two key objects of the same 32 bytes are equal and hash alike; another key is not equal."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    a, b = Ed25519PublicKey.from_public_bytes(raw), Ed25519PublicKey.from_public_bytes(raw)
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != Ed25519PrivateKey.generate().public_key()


def _err_peek() -> int:
    fn = ctypes.CDLL(libcrypto().path).ERR_peek_error
    fn.restype, fn.argtypes = ctypes.c_ulong, []
    return int(fn())


def test_ed25519_refusals_leave_openssl_error_queue_empty() -> None:
    """After a refused signature or an unreadable PEM, this thread's OpenSSL error queue is empty."""
    key = Ed25519PrivateKey.generate()
    with pytest.raises(InvalidSignature):
        key.public_key().verify(b"\0" * 64, b"x")
    assert _err_peek() == 0
    with pytest.raises(InvalidKey):
        Ed25519PrivateKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert _err_peek() == 0
    assert hashlib.sha256(b"still fine").hexdigest()  # _hashlib shares the library


# PEM files, through load_signing_key (the path signing.py users take) and the key class.


def _oracle_pem(private: object, password: bytes | None = None, fmt: str = "pkcs8") -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pformat = (
        serialization.PrivateFormat.PKCS8
        if fmt == "pkcs8"
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return private.private_bytes(serialization.Encoding.PEM, pformat, encryption)  # type: ignore[attr-defined, no-any-return]


def test_ed25519_pem_from_cryptography_loads_and_signs_like_the_seed(tmp_path: Path) -> None:
    """A PKCS#8 Ed25519 PEM made by cryptography loads and signs exactly as its seed does."""
    seed = os.urandom(32)
    path = tmp_path / "ed.pem"
    path.write_bytes(_oracle_pem(oracle.Ed25519PrivateKey.from_private_bytes(seed)))
    key = load_signing_key(str(path), "ci", ED25519_ALG)
    assert key.sign_bytes(b"req") == Ed25519PrivateKey.from_private_bytes(seed).sign(b"req")
    assert (
        key.public_bytes()
        == oracle.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    )


def test_ed25519_pem_from_openssl_cli_loads(tmp_path: Path) -> None:
    """A key made by `openssl genpkey -algorithm ed25519` loads; its signature verifies under the oracle."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command is part of the test machine"
    path = tmp_path / "cli.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True)
    key = load_signing_key(str(path), "cli", ED25519_ALG)
    theirs = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(theirs, oracle.Ed25519PrivateKey)
    theirs.public_key().verify(key.sign_bytes(b"x"), b"x")


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("rsa", "the PEM key is not an Ed25519 key"),
        ("rsa-traditional", "the PEM key is not an Ed25519 key"),
        ("ec", "the PEM key is not an Ed25519 key"),
        ("ed25519-encrypted", "not a PEM private key without a password"),
        ("rsa-traditional-encrypted", "not a PEM private key without a password"),
        ("public-key", "not a PEM private key without a password"),
        ("damaged", "not a PEM private key without a password"),
    ],
)
def test_ed25519_pem_refusals_keep_their_config_error_texts(tmp_path: Path, kind: str, what: str) -> None:
    """Other key types, encrypted keys, public keys and damaged PEM are ConfigErrors with today's texts."""
    ed = oracle.Ed25519PrivateKey.generate()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = {
        "rsa": lambda: _oracle_pem(rsa_key),
        "rsa-traditional": lambda: _oracle_pem(rsa_key, fmt="traditional"),
        "ec": lambda: _oracle_pem(ec.generate_private_key(ec.SECP256R1())),
        "ed25519-encrypted": lambda: _oracle_pem(ed, b"hunter2"),
        "rsa-traditional-encrypted": lambda: _oracle_pem(rsa_key, b"hunter2", fmt="traditional"),
        "public-key": lambda: ed.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "damaged": lambda: _oracle_pem(ed).replace(b"M", b"N", 3),
    }[kind]()
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    with pytest.raises(ConfigError) as err:
        load_signing_key(str(path), "k", ED25519_ALG)
    assert [p.what for p in err.value.problems] == [what]
    assert str(path) in str(err.value) and pem.decode()[40:80] not in str(err.value)


def test_ed25519_encrypted_pem_never_prompts_the_password_callback_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading an encrypted PEM asks our callback (not the terminal) and fails when it refuses."""
    lib = libcrypto()
    asked: list[int] = []

    def refuse(buf: int | None, size: int, rwflag: int, userdata: int | None) -> int:
        asked.append(size)
        return -1

    cb_type = type(lib.refuse_password)
    monkeypatch.setattr(lib, "refuse_password", cb_type(refuse))
    with pytest.raises(InvalidKey) as err:
        Ed25519PrivateKey.from_pem(_oracle_pem(oracle.Ed25519PrivateKey.generate(), b"pw"))
    assert not isinstance(err.value, NotEd25519Key) and asked


def test_ed25519_pem_type_is_told_apart() -> None:
    """from_pem raises NotEd25519Key (an InvalidKey) for a readable RSA key."""
    with pytest.raises(NotEd25519Key, match="not an Ed25519 key"):
        Ed25519PrivateKey.from_pem(
            _oracle_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
        )


# Processes and threads.


def test_ed25519_key_made_before_fork_signs_in_the_child() -> None:
    """A key made in the parent signs in a forked child (and the child can make keys); the parent verifies."""
    key = Ed25519PrivateKey.generate()
    expected = key.sign(b"from the child")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            fresh = Ed25519PrivateKey.generate()
            out = key.sign(b"from the child") + fresh.public_key().public_bytes_raw() + fresh.sign(b"child")
            os.write(write, out)
        finally:
            os._exit(0)
    os.close(write)
    got = b""
    while chunk := os.read(read, 4096):
        got += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got[:64] == expected
    Ed25519PublicKey.from_public_bytes(got[64:96]).verify(got[96:], b"child")
    assert got[64:96] != key.public_key().public_bytes_raw()


def test_ed25519_eight_threads_sign_and_verify_with_shared_keys() -> None:
    """8 threads sign and verify with one shared key pair (and their own): every result is right."""
    shared = Ed25519PrivateKey.from_private_bytes(b"\x2a" * 32)
    shared_public = shared.public_key()
    oracle_shared = oracle.Ed25519PrivateKey.from_private_bytes(b"\x2a" * 32)
    errors: list[str] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        own = Ed25519PrivateKey.generate()
        own_public = own.public_key()
        for i in range(300):
            msg = f"thread {n} message {i}".encode()
            sig = shared.sign(msg)
            if sig != oracle_shared.sign(msg):
                errors.append(f"{n}/{i}: shared signature differs from the oracle's")
            shared_public.verify(sig, msg)
            own_public.verify(own.sign(msg), msg)
            try:
                shared_public.verify(sig, msg + b"!")
                errors.append(f"{n}/{i}: tampered message verified")
            except InvalidSignature:
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _churn(rounds: int, pem: bytes) -> None:
    for i in range(rounds):
        key = Ed25519PrivateKey.generate() if i % 4 else Ed25519PrivateKey.from_pem(pem)
        public = key.public_key()
        sig = key.sign(b"leak check %d" % i)
        public.verify(sig, b"leak check %d" % i)
        with contextlib.suppress(InvalidSignature):
            public.verify(sig, b"tampered")


def test_ed25519_many_keys_and_calls_keep_rss_bounded() -> None:
    """12,000 keys (made, from PEM) and 18,000 signs and verifies leave RSS within 1.5 MiB of a warm start."""
    pem = _oracle_pem(oracle.Ed25519PrivateKey.generate())
    proc = psutil.Process()
    _churn(1000, pem)
    before = proc.memory_info().rss
    _churn(6000, pem)
    grown = proc.memory_info().rss - before
    # Measured with the frees disabled: never freeing the EVP_PKEYs grows RSS ~4.4 MiB here, never freeing
    # the per-call EVP_MD_CTX ~12 MiB; with them it stays flat.
    assert grown < 1.5 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"


# A libcrypto that cannot be used.


def test_ed25519_library_without_openssl_functions_is_crypto_unavailable() -> None:
    """libc loaded as libcrypto, or a missing file: CryptoUnavailable (an OpenFangError) naming the gap."""
    with pytest.raises(CryptoUnavailable, match=r"has no OpenSSL_version_num\(\)") as err:
        _ed25519._Lib("libc.so.6")
    assert isinstance(err.value, OpenFangError) and err.value.code == "unavailable"
    with pytest.raises(CryptoUnavailable, match=r"cannot load libcrypto '/nonexistent/libcrypto\.so\.3'"):
        _ed25519._Lib("/nonexistent/libcrypto.so.3")


def test_ed25519_openssl_older_than_3_is_crypto_unavailable(tmp_path: Path) -> None:
    """A libcrypto reporting OpenSSL 1.1.1 is refused, naming its version and the 3.0 requirement."""
    compiler = shutil.which("cc") or shutil.which("clang")
    assert compiler is not None, "a C compiler is part of the test machine (make test-deps)"
    src = tmp_path / "old.c"
    src.write_text(
        "unsigned long OpenSSL_version_num(void) { return 0x1010117fUL; }\n"
        'const char *OpenSSL_version(int t) { return "OpenSSL 1.1.1w  11 Sep 2023"; }\n'
    )
    lib = tmp_path / "libcrypto.so.1.1"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    with pytest.raises(CryptoUnavailable, match=r"is OpenSSL 1\.1\.1w .*needs OpenSSL >= 3\.0"):
        _ed25519._Lib(str(lib))


def test_ed25519_binding_uses_the_libcrypto_hashlib_mapped() -> None:
    """The bound library is the one _hashlib mapped, found in /proc/self/maps, and is OpenSSL 3."""
    lib = libcrypto()
    maps = Path("/proc/self/maps").read_text()
    assert lib.path in maps and "libcrypto" in Path(lib.path).name
    assert lib.version >= _ed25519.MIN_OPENSSL
    out = subprocess.run(
        [sys.executable, "-c", "from openfang.security._ed25519 import libcrypto; print(libcrypto().path)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == lib.path


def test_ed25519_no_libcrypto_at_all_is_crypto_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """When no libcrypto can be found, the first key use raises CryptoUnavailable saying where it looked."""
    monkeypatch.setattr(_ed25519, "_LIB", None)
    monkeypatch.setattr(_ed25519, "_libcrypto_path", lambda: None)
    with pytest.raises(CryptoUnavailable, match=r"no libcrypto found: .*_hashlib.*find_library"):
        Ed25519PrivateKey.generate()


def test_ed25519_first_use_from_eight_threads_at_once_loads_once() -> None:
    """In a fresh interpreter, 8 threads making their first key at once: one binding made, all sign right."""
    code = """
import threading
from openfang.security import _ed25519
from openfang.security._ed25519 import Ed25519PrivateKey
made, ok, start = [], [], threading.Barrier(8)
class Counted(_ed25519._Lib):
    def __init__(self, path):
        made.append(path)
        super().__init__(path)
_ed25519._Lib = Counted
def work():
    start.wait()
    key = Ed25519PrivateKey.generate()
    key.public_key().verify(key.sign(b"first"), b"first")
    ok.append(1)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(len(made), len(ok))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "8"]
