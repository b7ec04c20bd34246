"""CURVE keys for tcp endpoints: generating them, and the server and client sides of a secured socket.

Layout of a keys directory (every file is a ``zmq.auth.create_certificates`` certificate; directories 0700,
secret files 0600)::

    keys_dir/server.key            the server's public key: give it to every client
    keys_dir/server.key_secret     the server's secret key: never leaves the server
    keys_dir/clients/NAME.key      client NAME's public key
    keys_dir/clients/NAME.key_secret   client NAME's secret key: give it to that client only
    keys_dir/authorized/NAME.key   public keys the server admits (delete one, then reload, to revoke)

A client machine needs ``server.key`` and its own ``NAME.key_secret`` (in ``clients/`` or at the top).
CURVE alone only proves a client knows the server's public key; :class:`CurveServer` also runs a ZAP handler
that admits only the keys in ``authorized/``, so an unknown or wrong key gets no connection at all.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from openfang.protocol import _zap
from openfang.protocol.errors import AlreadyExists, ConfigError, Problem

SERVER = "server"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyFiles:
    """The files :func:`generate_keys` wrote (client fields are None when only the server pair was made)."""

    server_public: Path
    server_secret: Path
    client_public: Path | None = None
    client_secret: Path | None = None
    authorized: Path | None = None


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask


def _create_pair(directory: Path, name: str) -> tuple[Path, Path]:
    # Under a tight umask the secret file never exists with wider permissions, not even briefly.
    old = os.umask(0o177)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    Path(public).chmod(0o644)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def generate_keys(keys_dir: str | os.PathLike[str], name: str = "client") -> KeyFiles:
    """Create CURVE keypairs in ``keys_dir`` (layout above); ``openfang keys generate`` calls this.

    ``name == "server"`` creates the server pair. Any other name creates client ``name``'s pair and
    authorizes it, creating the server pair first if there is none. Existing keys are never overwritten
    (:class:`AlreadyExists`); a bad name raises :class:`ConfigError`.
    """
    if not _NAME.match(name):
        raise ConfigError(
            Problem(f"keys name {name!r}", "must be 1-64 of A-Z a-z 0-9 _ . - (not starting with .)")
        )
    root = Path(keys_dir)
    _make_dir(root)
    server_public, server_secret = root / f"{SERVER}.key", root / f"{SERVER}.key_secret"
    if name == SERVER:
        if server_secret.exists():
            raise AlreadyExists(f"{server_secret} exists; remove it first to make a new server key")
        server_public, server_secret = _create_pair(root, SERVER)
        return KeyFiles(server_public=server_public, server_secret=server_secret)
    if not server_secret.exists():
        server_public, server_secret = _create_pair(root, SERVER)
    clients, authorized = root / "clients", root / "authorized"
    _make_dir(clients)
    _make_dir(authorized)
    if (clients / f"{name}.key_secret").exists():
        raise AlreadyExists(
            f"{clients / name}.key_secret exists; remove it first to make a new key for {name!r}"
        )
    client_public, client_secret = _create_pair(clients, name)
    admitted = authorized / f"{name}.key"
    shutil.copyfile(client_public, admitted)
    admitted.chmod(0o644)
    return KeyFiles(
        server_public=server_public,
        server_secret=server_secret,
        client_public=client_public,
        client_secret=client_secret,
        authorized=admitted,
    )


def _load(path: Path, *, secret: bool, problems: list[Problem]) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        problems.append(Problem(str(path), f"cannot read CURVE certificate: {exc}"))
        return b"", None
    if len(public) != 40 or (secret and (secret_key is None or len(secret_key) != 40)):
        problems.append(Problem(str(path), "not a CURVE certificate (expected 40-character Z85 keys)"))
    return public, secret_key


class CurveServer:
    """The server side: its keypair and the authorized client keys of a keys directory.

    Raises :class:`ConfigError` listing every problem (missing server secret, no authorized keys, unreadable
    certificate). :meth:`apply` secures a socket before it binds and starts the context's ZAP handler thread
    on first use; the thread ends by itself when the context is terminated (``ctx.term()``; prefer it to
    ``ctx.destroy()``, which would close the handler's socket under its feet). :meth:`reload` re-reads
    ``authorized/``.
    """

    def __init__(self, keys_dir: str | os.PathLike[str]) -> None:
        self.keys_dir = Path(keys_dir)
        problems: list[Problem] = []
        public, secret = _load(self.keys_dir / f"{SERVER}.key_secret", secret=True, problems=problems)
        self.public_key, self._secret_key = public, secret or b""
        self._clients: dict[bytes, str] = self._read_authorized(problems)
        if problems:
            raise ConfigError(problems)
        self.domain = f"openfang-{os.urandom(6).hex()}"
        self._handlers: list[_zap.ZapHandler] = []

    def _read_authorized(self, problems: list[Problem]) -> dict[bytes, str]:
        directory = self.keys_dir / "authorized"
        files = sorted(directory.glob("*.key")) if directory.is_dir() else []
        if not files:
            problems.append(
                Problem(str(directory), "no authorized client keys (run: openfang keys generate NAME)")
            )
        clients = {}
        for path in files:
            public, _ = _load(path, secret=False, problems=problems)
            if public:
                clients[public] = path.stem
        return clients

    @property
    def clients(self) -> dict[bytes, str]:
        """Authorized Z85 public keys and the client name each belongs to."""
        return dict(self._clients)

    def reload(self) -> int:
        """Re-read ``authorized/`` (applies to new connections: revoke, admit). Returns the count."""
        problems: list[Problem] = []
        clients = self._read_authorized(problems)
        if problems:
            raise ConfigError(problems)
        self._clients = clients
        return len(clients)

    def _lookup(self, public_key: bytes) -> str | None:
        return self._clients.get(public_key)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server whose clients are checked by the context's ZAP handler."""
        handler = _zap.handler_for(sock.context)
        handler.register(self.domain, self._lookup)
        if handler not in self._handlers:
            self._handlers.append(handler)
        sock.zap_domain = self.domain.encode()
        sock.curve_server = True
        sock.curve_secretkey = self._secret_key
        sock.curve_publickey = self.public_key

    def close(self) -> None:
        """Stop admitting clients through this server's domain (the sockets themselves are the caller's)."""
        for handler in self._handlers:
            handler.unregister(self.domain)
        self._handlers.clear()


class CurveClient:
    """The client side: the server's public key and this client's keypair.

    From a keys directory (``CurveClient(keys_dir, name="alice")``) or from explicit Z85 keys
    (``CurveClient(server_key=..., public_key=..., secret_key=...)``).
    """

    def __init__(
        self,
        keys_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = "client",
        server_key: bytes | None = None,
        public_key: bytes | None = None,
        secret_key: bytes | None = None,
    ) -> None:
        problems: list[Problem] = []
        if keys_dir is not None:
            root = Path(keys_dir)
            server_key, _ = _load(root / f"{SERVER}.key", secret=False, problems=problems)
            mine = root / "clients" / f"{name}.key_secret"
            if not mine.exists() and (root / f"{name}.key_secret").exists():
                mine = root / f"{name}.key_secret"
            public_key, secret_key = _load(mine, secret=True, problems=problems)
        else:
            for label, key in (
                ("server_key", server_key),
                ("public_key", public_key),
                ("secret_key", secret_key),
            ):
                if key is None or len(key) != 40:
                    problems.append(Problem(f"curve client {label}", "must be a 40-character Z85 key"))
        if problems:
            raise ConfigError(problems)
        assert server_key is not None and public_key is not None and secret_key is not None
        self.server_key, self.public_key, self._secret_key = server_key, public_key, secret_key

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE client of the server (before it connects)."""
        sock.curve_serverkey = self.server_key
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self._secret_key
