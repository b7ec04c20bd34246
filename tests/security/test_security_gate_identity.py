"""Client identity at the gateway: the rate limit follows it, the audit key is made once, keys load."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import zmq
from _security_clock import FakeClock

from openfang.control.guard import peer_identity
from openfang.protocol.envelope import Envelope
from openfang.protocol.errors import ConfigError
from openfang.security.audit import AuditLog, chain_key, verify
from openfang.security.ratelimit import Limit, RateLimitConfig, RateLimiter, RateLimitExceeded
from openfang.security.signing import HMAC_ALG, KeyRing, Verifier, load_signing_key, sign


def test_peer_identity_of_an_ipc_peer_is_its_uid(tmp_path: Path) -> None:
    """Two connections from this process both carry uid:<our uid> (SO_PEERCRED via Peer-Address)."""
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.bind(f"ipc://{tmp_path}/s")
        seen = []
        for _ in range(2):
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.connect(f"ipc://{tmp_path}/s")
            dealer.send(b"hi")
            frames = router.recv_multipart(copy=False)
            seen.append(peer_identity(frames[-1]))
            dealer.close()
        router.close()
    finally:
        ctx.term()
    assert seen == [f"uid:{os.getuid()}"] * 2


def test_ratelimit_global_ceiling_binds_all_clients_together(clock: FakeClock) -> None:
    """Each client is under its own burst, but the shared global bucket refuses the 7th request overall."""
    cfg = RateLimitConfig(client_requests=Limit(rate=1, burst=5), global_requests=Limit(rate=1, burst=6))
    limiter = RateLimiter(cfg, clock=clock)
    for client in ("a", "a", "a", "b", "b", "b"):
        limiter.charge(client=client)
    with pytest.raises(RateLimitExceeded) as info:
        limiter.charge(client="c")
    assert info.value.bucket == "global_requests"
    with pytest.raises(RateLimitExceeded):
        for _ in range(10):
            limiter.charge(client="a")
    clock.advance(1)
    limiter.charge(client="c")  # refilled


def test_chain_key_is_made_once_0600_and_shared_by_concurrent_first_starts(tmp_path: Path) -> None:
    """Eight threads racing to make the key all get the same 32 bytes; the file is mode 0600."""
    path = tmp_path / "data" / "audit.key"
    keys: list[bytes | None] = []
    threads = [
        threading.Thread(target=lambda: keys.append(chain_key(str(path), create=True))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0] or b"") == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # no temporary file left


def test_chain_key_moves_an_existing_unkeyed_log_aside(tmp_path: Path) -> None:
    """Upgrading: the old unkeyed log is kept under another name and the keyed chain starts afresh."""
    log_path = tmp_path / "audit.db"
    with AuditLog(log_path) as log:
        log.append("old.record", n=1)
    key = chain_key(str(tmp_path / "audit.key"), create=True, log_path=str(log_path))
    assert not log_path.exists()
    (old,) = tmp_path.glob("audit-unkeyed-*.db")
    assert verify(old).ok
    with AuditLog(log_path, key=key) as log:
        log.append("new.record")
    assert verify(log_path, key=key).ok and not verify(log_path).ok


def test_chain_key_named_by_the_operator_is_never_created(tmp_path: Path) -> None:
    """A configured key_file that is missing is a ConfigError naming it (no key is invented)."""
    with pytest.raises(ConfigError) as info:
        chain_key(str(tmp_path / "missing.key"), create=False)
    assert "missing.key" in str(info.value)


def test_load_signing_key_reads_hex_hmac_and_ed25519_seed(tmp_path: Path) -> None:
    """A client key file signs requests the daemon's key ring verifies (HMAC hex file, Ed25519 seed)."""
    secret = tmp_path / "ops.key"
    secret.write_text(os.urandom(32).hex() + "\n")
    hkey = load_signing_key(str(secret), "ops")
    seed = tmp_path / "ci.seed"
    seed.write_bytes(os.urandom(32))
    ekey = load_signing_key(str(seed), "ci", "ed25519")
    ring = KeyRing()
    ring.add(hkey)
    ring.add(ekey)
    verifier = Verifier(ring)
    assert verifier.verify(sign(Envelope(type="ping"), hkey)).kid == "ops"
    assert verifier.verify(sign(Envelope(type="ping"), ekey)).kid == "ci"
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 8)
    with pytest.raises(ConfigError):
        load_signing_key(str(short), "s", HMAC_ALG)


def test_chain_key_without_a_data_dir_is_refused_not_made_in_the_cwd() -> None:
    """A default config never given a data dir fails clearly instead of creating '{data_dir}/' here."""
    with pytest.raises(ConfigError) as info:
        chain_key("{data_dir}/audit.key", create=True)
    assert "no data dir" in str(info.value)
