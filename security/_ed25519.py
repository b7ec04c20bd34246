"""Ed25519 keys, signatures and verification, done by the OpenSSL libcrypto the interpreter already links.

Why not a package: Python's ``_hashlib`` and ``_ssl`` already map OpenSSL's libcrypto into every process, and
OpenSSL 3 does Ed25519 (RFC 8032, pure Ed25519). Binding the dozen calls we need through :mod:`ctypes` costs
no install, no import of a 16 MB package and no second copy of OpenSSL in memory (``cryptography`` links its
own). This module has one job: Ed25519 keys, sign, verify; nothing else of OpenSSL is bound.

Ownership: each key object owns one ``EVP_PKEY``, freed by a finalizer when the object is unreachable; keys
cannot be pickled (that would copy the pointer) and copying one returns it. Every sign or verify makes and
frees its own ``EVP_MD_CTX``, so one key may be used from many threads at once (ctypes releases the GIL
during each call) and in a child after ``fork`` (the child owns a copy of the key's memory). A fresh private
key is generated inside OpenSSL: its seed never passes through Python bytes. OpenSSL's per-thread error
queue is cleared after every failed call, so no stale error reaches ``_ssl`` or ``_hashlib`` later.

The binding loads on first use (``libcrypto()``): it finds the libcrypto that ``_hashlib`` mapped (from
``/proc/self/maps``; else ``ctypes.util.find_library("crypto")``), requires OpenSSL >= 3.0 and declares the
argument and result types of every function it calls. Errors::

    OpenFangError
    └── Ed25519Error            OpenSSL failed where the input was fine (out of memory, broken library)
        ├── CryptoUnavailable   no usable libcrypto: not found, older than 3.0, or a function missing
        ├── InvalidSignature    the signature does not verify (wrong key, data or signature, bad length)
        └── InvalidKey          bytes or a PEM text that are not an Ed25519 key (also a ValueError)
            └── NotEd25519Key   a readable PEM private key of another type (RSA, EC, ...)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import weakref
from typing import Any, NoReturn, Self

from openfang.protocol.errors import OpenFangError

SEED_SIZE = 32
PUBLIC_SIZE = 32
SIGNATURE_SIZE = 64
MIN_OPENSSL = 0x30000000  # OpenSSL_version_num() of 3.0.0
_NID_ED25519 = 1087  # NID_ED25519 in openssl/obj_mac.h
_MAX_PEM = 1 << 20  # a PEM private key is a few hundred bytes; BIO_new_mem_buf takes an int length


# These errors use the wire's existing codes (protocol.messages.ERROR_CODES): the callers turn a bad key or
# signature into a refusal or a config problem of their own, so a code only shows if one escapes them.
class Ed25519Error(OpenFangError):
    """OpenSSL failed on input that was fine; the message names the OpenSSL call."""

    code = "internal"


class CryptoUnavailable(Ed25519Error):
    """No usable libcrypto: the message says which library was tried and what is missing."""

    code = "unavailable"


class InvalidSignature(Ed25519Error):
    """The signature does not verify under this public key for these bytes."""

    code = "denied"


class InvalidKey(Ed25519Error, ValueError):
    """Bytes or a PEM text that are not an Ed25519 key (a ValueError too, as callers expect of bad keys)."""

    code = "denied"


class NotEd25519Key(InvalidKey):
    """A PEM private key that OpenSSL read, of another type than Ed25519."""


class _Lib:
    """The bound libcrypto functions, each with its argument and result types declared."""

    def __init__(self, path: str) -> None:
        import ctypes

        self.path = path
        try:
            cdll = ctypes.CDLL(path)
        except OSError as exc:
            raise CryptoUnavailable(f"cannot load libcrypto {path!r}: {exc}") from None
        c_void_p, c_char_p, c_int, c_size_t = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
        p_void_p, p_size_t = ctypes.POINTER(c_void_p), ctypes.POINTER(c_size_t)

        def bind(name: str, restype: Any, *argtypes: Any) -> Any:
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                raise CryptoUnavailable(
                    f"libcrypto {path!r} has no {name}() (Ed25519 needs OpenSSL >= 3.0)"
                ) from None
            fn.restype = restype
            fn.argtypes = list(argtypes)
            return fn

        version_num = bind("OpenSSL_version_num", ctypes.c_ulong)
        version_text = bind("OpenSSL_version", c_char_p, c_int)
        self.version: int = version_num()
        if self.version < MIN_OPENSSL:
            text = (version_text(0) or b"?").decode("ascii", "replace")  # 0 = OPENSSL_VERSION
            raise CryptoUnavailable(f"libcrypto {path!r} is {text}; Ed25519 needs OpenSSL >= 3.0")

        # Pointers to OpenSSL objects are c_void_p (ints in Python); byte inputs are c_char_p (bytes pass by
        # address, no copy); lengths are explicit, so NUL bytes in data are fine.
        self.ERR_clear_error = bind("ERR_clear_error", None)
        self.EVP_PKEY_free = bind("EVP_PKEY_free", None, c_void_p)
        self.EVP_PKEY_CTX_new_from_name = bind(
            "EVP_PKEY_CTX_new_from_name", c_void_p, c_void_p, c_char_p, c_char_p
        )
        self.EVP_PKEY_CTX_free = bind("EVP_PKEY_CTX_free", None, c_void_p)
        self.EVP_PKEY_keygen_init = bind("EVP_PKEY_keygen_init", c_int, c_void_p)
        self.EVP_PKEY_generate = bind("EVP_PKEY_generate", c_int, c_void_p, p_void_p)
        self.EVP_PKEY_new_raw_private_key = bind(
            "EVP_PKEY_new_raw_private_key", c_void_p, c_int, c_void_p, c_char_p, c_size_t
        )
        self.EVP_PKEY_new_raw_public_key = bind(
            "EVP_PKEY_new_raw_public_key", c_void_p, c_int, c_void_p, c_char_p, c_size_t
        )
        self.EVP_PKEY_get_raw_public_key = bind(
            "EVP_PKEY_get_raw_public_key", c_int, c_void_p, c_char_p, p_size_t
        )
        self.EVP_PKEY_is_a = bind("EVP_PKEY_is_a", c_int, c_void_p, c_char_p)
        self.EVP_MD_CTX_new = bind("EVP_MD_CTX_new", c_void_p)
        self.EVP_MD_CTX_free = bind("EVP_MD_CTX_free", None, c_void_p)
        # (ctx, EVP_PKEY_CTX **pctx, const EVP_MD *md, ENGINE *e, EVP_PKEY *pkey): Ed25519 takes md NULL.
        self.EVP_DigestSignInit = bind(
            "EVP_DigestSignInit", c_int, c_void_p, p_void_p, c_void_p, c_void_p, c_void_p
        )
        self.EVP_DigestSign = bind("EVP_DigestSign", c_int, c_void_p, c_char_p, p_size_t, c_char_p, c_size_t)
        self.EVP_DigestVerifyInit = bind(
            "EVP_DigestVerifyInit", c_int, c_void_p, p_void_p, c_void_p, c_void_p, c_void_p
        )
        self.EVP_DigestVerify = bind(
            "EVP_DigestVerify", c_int, c_void_p, c_char_p, c_size_t, c_char_p, c_size_t
        )
        self.BIO_new_mem_buf = bind("BIO_new_mem_buf", c_void_p, c_char_p, c_int)
        self.BIO_free = bind("BIO_free", c_int, c_void_p)
        # int pem_password_cb(char *buf, int size, int rwflag, void *u). Without a callback OpenSSL would
        # prompt on the terminal for an encrypted key; ours refuses (-1), so an encrypted key fails to load.
        password_cb = ctypes.CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_void_p)
        self.refuse_password = password_cb(_refuse_password)
        self.PEM_read_bio_PrivateKey = bind(
            "PEM_read_bio_PrivateKey", c_void_p, c_void_p, p_void_p, password_cb, c_void_p
        )
        self.buffer = ctypes.create_string_buffer
        self.size_t = c_size_t
        self.void_p = c_void_p
        self.byref = ctypes.byref

    def fail(self, call: str, error: type[Ed25519Error] = Ed25519Error, message: str = "") -> NoReturn:
        """Clear OpenSSL's error queue for this thread and raise ``error``."""
        self.ERR_clear_error()
        raise error(message or f"OpenSSL {call}() failed (libcrypto {self.path!r})")


def _refuse_password(buf: int | None, size: int, rwflag: int, userdata: int | None) -> int:
    return -1


def _libcrypto_path() -> str | None:
    """The libcrypto ``_hashlib`` mapped into this process, else the system's, else None."""
    with contextlib.suppress(ImportError):
        importlib.import_module("_hashlib")  # maps the interpreter's libcrypto, if it links one
    paths: set[str] = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and "libcrypto" in os.path.basename(fields[5].strip()):
                    paths.add(fields[5].strip())
    except OSError:
        pass
    # A wheel may bundle its own renamed copy (libcrypto-1a2b3c.so.3): the interpreter's is libcrypto.so.N.
    found = sorted(paths, key=lambda p: (not os.path.basename(p).startswith("libcrypto.so"), p))
    if found:
        return found[0]
    import ctypes.util

    return ctypes.util.find_library("crypto")


_LIB: _Lib | None = None
_LOAD_LOCK = threading.Lock()


def libcrypto() -> _Lib:
    """The bound libcrypto, loaded on first use; raises CryptoUnavailable naming what is missing."""
    global _LIB
    if _LIB is not None:
        return _LIB
    with _LOAD_LOCK:
        if _LIB is None:
            path = _libcrypto_path()
            if path is None:
                raise CryptoUnavailable(
                    "no libcrypto found: this Python's _hashlib maps none and find_library('crypto') "
                    "finds none (Ed25519 needs OpenSSL >= 3.0's libcrypto)"
                )
            _LIB = _Lib(path)
    return _LIB


def _reset_lock_in_child() -> None:
    # A fork while another thread held the lock would leave it held forever in the child.
    global _LOAD_LOCK
    _LOAD_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return bytes(memoryview(value))
    except TypeError:
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}") from None


class _Key:
    """One owned ``EVP_PKEY``: freed by a finalizer, never copied, never pickled."""

    __slots__ = ("__weakref__", "_pkey")
    _pkey: int  # the EVP_PKEY *, owned: freed by the finalizer and nothing else

    def __init__(self) -> None:
        raise TypeError(f"make a {type(self).__name__} with one of its classmethods")

    @classmethod
    def _own(cls, lib: _Lib, pkey: int) -> Self:
        key = object.__new__(cls)
        # Registered first: nothing between here and the return can leave the EVP_PKEY unowned.
        done = weakref.finalize(key, lib.EVP_PKEY_free, pkey)
        done.atexit = False  # the process is ending: its memory goes with it
        key._pkey = pkey
        return key

    def _raw_public(self) -> bytes:
        lib = libcrypto()
        out = lib.buffer(PUBLIC_SIZE)
        size = lib.size_t(PUBLIC_SIZE)
        if (
            lib.EVP_PKEY_get_raw_public_key(self._pkey, out, lib.byref(size)) != 1
            or size.value != PUBLIC_SIZE
        ):
            lib.fail("EVP_PKEY_get_raw_public_key")
        return out.raw

    def __copy__(self) -> Self:
        return self  # immutable: a copy may share the EVP_PKEY

    def __deepcopy__(self, memo: Any) -> Self:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"cannot pickle {type(self).__name__}: it owns an OpenSSL key")


class Ed25519PublicKey(_Key):
    """An Ed25519 public key: verifies signatures. Equal keys compare equal and hash alike."""

    __slots__ = ()

    @classmethod
    def from_public_bytes(cls, data: bytes) -> Ed25519PublicKey:
        """The key of 32 raw bytes (RFC 8032 encoding); InvalidKey for another length."""
        raw = _bytes(data, "an Ed25519 public key")
        if len(raw) != PUBLIC_SIZE:
            raise InvalidKey(f"an Ed25519 public key is {PUBLIC_SIZE} bytes, got {len(raw)}")
        lib = libcrypto()
        pkey = lib.EVP_PKEY_new_raw_public_key(_NID_ED25519, None, raw, PUBLIC_SIZE)
        if not pkey:
            lib.fail(
                "EVP_PKEY_new_raw_public_key", InvalidKey, "OpenSSL refused these 32 bytes as a public key"
            )
        return cls._own(lib, pkey)

    def public_bytes_raw(self) -> bytes:
        """The 32 raw bytes of the key."""
        return self._raw_public()

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if ``signature`` is this key's over ``data``; else raise InvalidSignature."""
        sig = _bytes(signature, "an Ed25519 signature")
        msg = _bytes(data, "signed data")
        if len(sig) != SIGNATURE_SIZE:
            raise InvalidSignature(f"an Ed25519 signature is {SIGNATURE_SIZE} bytes, got {len(sig)}")
        lib = libcrypto()
        ctx = lib.EVP_MD_CTX_new()
        if not ctx:
            lib.fail("EVP_MD_CTX_new")
        try:
            if lib.EVP_DigestVerifyInit(ctx, None, None, None, self._pkey) != 1:
                lib.fail("EVP_DigestVerifyInit")
            if lib.EVP_DigestVerify(ctx, sig, SIGNATURE_SIZE, msg, len(msg)) != 1:
                lib.fail("EVP_DigestVerify", InvalidSignature, "signature does not verify")
        finally:
            lib.EVP_MD_CTX_free(ctx)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ed25519PublicKey):
            return NotImplemented
        return self._raw_public() == other._raw_public()

    def __hash__(self) -> int:
        return hash(self._raw_public())

    def __repr__(self) -> str:
        return f"Ed25519PublicKey({self._raw_public().hex()!r})"


class Ed25519PrivateKey(_Key):
    """An Ed25519 private key: signs. Its repr shows nothing of the key."""

    __slots__ = ()

    @classmethod
    def generate(cls) -> Ed25519PrivateKey:
        """A fresh key, generated inside OpenSSL from its CSPRNG."""
        lib = libcrypto()
        ctx = lib.EVP_PKEY_CTX_new_from_name(None, b"ED25519", None)
        if not ctx:
            lib.fail("EVP_PKEY_CTX_new_from_name")
        try:
            out = lib.void_p()
            if lib.EVP_PKEY_keygen_init(ctx) != 1 or lib.EVP_PKEY_generate(ctx, lib.byref(out)) != 1:
                lib.fail("EVP_PKEY_generate")
            if not out.value:
                lib.fail("EVP_PKEY_generate")
            return cls._own(lib, out.value)
        finally:
            lib.EVP_PKEY_CTX_free(ctx)

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Ed25519PrivateKey:
        """The key of a 32-byte seed (RFC 8032's private key); InvalidKey for another length."""
        seed = _bytes(data, "an Ed25519 private key")
        if len(seed) != SEED_SIZE:
            raise InvalidKey(f"an Ed25519 private key (seed) is {SEED_SIZE} bytes, got {len(seed)}")
        lib = libcrypto()
        pkey = lib.EVP_PKEY_new_raw_private_key(_NID_ED25519, None, seed, SEED_SIZE)
        if not pkey:
            lib.fail("EVP_PKEY_new_raw_private_key", InvalidKey, "OpenSSL refused these 32 bytes as a seed")
        return cls._own(lib, pkey)

    @classmethod
    def from_pem(cls, data: bytes) -> Ed25519PrivateKey:
        """The key of a PEM private key without a password (PKCS#8 ``BEGIN PRIVATE KEY``).

        InvalidKey if OpenSSL cannot read a private key from it (not PEM, damaged, or encrypted: no password
        is ever asked for); NotEd25519Key if it reads a key of another type.
        """
        pem = _bytes(data, "a PEM private key")
        if len(pem) > _MAX_PEM:
            raise InvalidKey("not a PEM private key without a password (over 1 MiB)")
        lib = libcrypto()
        bio = lib.BIO_new_mem_buf(pem, len(pem))  # reads ``pem`` in place: it lives until BIO_free
        if not bio:
            lib.fail("BIO_new_mem_buf")
        try:
            pkey = lib.PEM_read_bio_PrivateKey(bio, None, lib.refuse_password, None)
        finally:
            lib.BIO_free(bio)
        if not pkey:
            lib.fail("PEM_read_bio_PrivateKey", InvalidKey, "not a PEM private key without a password")
        if lib.EVP_PKEY_is_a(pkey, b"ED25519") != 1:
            lib.EVP_PKEY_free(pkey)
            lib.fail("EVP_PKEY_is_a", NotEd25519Key, "the PEM key is not an Ed25519 key")
        return cls._own(lib, pkey)

    def public_key(self) -> Ed25519PublicKey:
        """The public half, as its own key object."""
        return Ed25519PublicKey.from_public_bytes(self._raw_public())

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (deterministic: same key and data, same signature)."""
        msg = _bytes(data, "data to sign")
        lib = libcrypto()
        ctx = lib.EVP_MD_CTX_new()
        if not ctx:
            lib.fail("EVP_MD_CTX_new")
        try:
            out = lib.buffer(SIGNATURE_SIZE)
            size = lib.size_t(SIGNATURE_SIZE)
            if lib.EVP_DigestSignInit(ctx, None, None, None, self._pkey) != 1:
                lib.fail("EVP_DigestSignInit")
            if lib.EVP_DigestSign(ctx, out, lib.byref(size), msg, len(msg)) != 1:
                lib.fail("EVP_DigestSign")
            if size.value != SIGNATURE_SIZE:
                lib.fail("EVP_DigestSign", message=f"EVP_DigestSign() wrote {size.value} bytes, not 64")
            return out.raw
        finally:
            lib.EVP_MD_CTX_free(ctx)

    def __repr__(self) -> str:
        return "<Ed25519PrivateKey>"
