"""Socket helpers on real sockets: backpressure, ipc permissions, tcp refused without CURVE, ZAP admission."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from protocol_testkit import ipc_dir, serving

from openfang.protocol import _zap
from openfang.protocol.client import Client
from openfang.protocol.curve import CurveClient, CurveServer, generate_keys
from openfang.protocol.errors import AlreadyExists, Busy, ConfigError, NotFound, Timeout
from openfang.protocol.sockets import (
    MAX_IPC_PATH,
    bind_pub,
    bind_router,
    connect_dealer,
    send_each,
    send_nowait,
)

pytestmark = pytest.mark.integration

NO_ANSWER_S = 1.0  # how long an unauthenticated client waits to prove it gets nothing


@pytest.fixture
def ctx() -> Any:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def ipc() -> Any:
    with ipc_dir() as path:
        yield path


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "keys", "alice")
    return tmp_path / "keys"


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_send_nowait_raises_busy_when_a_dealer_queue_is_full(ctx: Any, ipc: str) -> None:
    """A DEALER towards a peer that never reads hits its high-water mark: Busy, never a block or a drop."""
    router = bind_router(ctx, f"ipc://{ipc}/r.sock", hwm=1)
    router.rcvbuf = 4096
    dealer = connect_dealer(ctx, f"ipc://{ipc}/r.sock", hwm=1)
    dealer.sndbuf = 4096
    deadline = time.monotonic() + 10
    while True:  # wait for the connection (IMMEDIATE: Busy until then)
        try:
            send_nowait(dealer, [b"x" * 65536])
            break
        except Busy:
            assert time.monotonic() < deadline, "dealer never connected"
            time.sleep(0.01)
    with pytest.raises(Busy, match="full"):
        for _ in range(100_000):
            send_nowait(dealer, [b"x" * 65536], peer="router")


def test_send_nowait_raises_busy_when_a_dealer_has_no_peer(ctx: Any, ipc: str) -> None:
    """With IMMEDIATE nothing is queued towards an endpoint nobody listens on: Busy at once."""
    dealer = connect_dealer(ctx, f"ipc://{ipc}/nobody.sock")
    with pytest.raises(Busy, match="not connected"):
        send_nowait(dealer, [b"hello"])


def test_send_nowait_raises_not_found_for_an_unknown_router_peer(ctx: Any, ipc: str) -> None:
    """ROUTER_MANDATORY: a reply to a routing id nobody has is NotFound naming the peer, not a silent drop."""
    router = bind_router(ctx, f"ipc://{ipc}/r.sock")
    with pytest.raises(NotFound, match=r"worker w9 \(routing id b'w9'\) is not connected"):
        send_nowait(router, [b"w9", b"payload"], peer="worker w9")


def test_send_nowait_raises_busy_when_a_router_peer_queue_is_full(ctx: Any, ipc: str) -> None:
    """ROUTER_MANDATORY + a peer that never reads: Busy once that peer's queue is full."""
    router = bind_router(ctx, f"ipc://{ipc}/r.sock", hwm=1)
    router.sndbuf = 4096
    dealer = connect_dealer(ctx, f"ipc://{ipc}/r.sock", identity="w1", hwm=1)
    dealer.rcvbuf = 4096
    deadline = time.monotonic() + 10
    while True:
        try:
            send_nowait(router, [b"w1", b"x" * 65536])
            break
        except NotFound:
            assert time.monotonic() < deadline, "dealer never connected"
            time.sleep(0.01)
    with pytest.raises(Busy, match="full"):
        for _ in range(100_000):
            send_nowait(router, [b"w1", b"x" * 65536], peer="worker w1")


def test_send_each_sends_in_order_and_reports_each_failure_as_send_nowait_would(ctx: Any, ipc: str) -> None:
    """send_each delivers every message it can, in order (two frames or a REQ's three), and gives each one
    that fails with its index and the same error type and text as send_nowait of it; the rest still go."""
    router = bind_router(ctx, f"ipc://{ipc}/r.sock")
    dealer = connect_dealer(ctx, f"ipc://{ipc}/r.sock", identity="c1")
    deadline = time.monotonic() + 10
    while send_each(router, [[b"c1", b"probe"]]):  # until the dealer's connection is known
        assert time.monotonic() < deadline, "dealer never connected"
        time.sleep(0.01)
    assert dealer.poll(5000) and dealer.recv_multipart() == [b"probe"]
    messages = [[b"c1", b"one"], [b"w9", b"lost"], [b"c1", b"", b"two"], [b"nobody", b"x"], [b"c1", b"three"]]
    failed = send_each(router, messages, peer="client")
    assert [i for i, _ in failed] == [1, 3]
    for index, exc in failed:
        with pytest.raises(NotFound) as raised:
            send_nowait(router, messages[index], peer="client")
        assert type(exc) is type(raised.value) and str(exc) == str(raised.value)
    got = []
    while len(got) < 3:
        assert dealer.poll(5000), f"only {got} arrived"
        got.append(dealer.recv_multipart())
    assert got == [[b"one"], [b"", b"two"], [b"three"]]
    assert send_each(router, []) == []


def test_send_each_from_a_dealer_sends_one_frame_messages_whole_and_in_order(ctx: Any, ipc: str) -> None:
    """A DEALER's messages of one frame (a worker's batches) and of two reach the ROUTER whole, in order,
    each behind the DEALER's routing id; with no peer each is Busy, as send_nowait says."""
    router = bind_router(ctx, f"ipc://{ipc}/r.sock")
    dealer = connect_dealer(ctx, f"ipc://{ipc}/r.sock", identity="w1")
    deadline = time.monotonic() + 10
    while send_each(dealer, [[b"probe"]]):  # IMMEDIATE: Busy until connected
        assert time.monotonic() < deadline, "dealer never connected"
        time.sleep(0.01)
    assert router.poll(5000) and router.recv_multipart() == [b"w1", b"probe"]
    assert send_each(dealer, [[b"one"], [b"two", b"parts"], [b"three"]], peer="gateway") == []
    got = []
    while len(got) < 3:
        assert router.poll(5000), f"only {got} arrived"
        got.append(router.recv_multipart())
    assert got == [[b"w1", b"one"], [b"w1", b"two", b"parts"], [b"w1", b"three"]]
    lonely = connect_dealer(ctx, f"ipc://{ipc}/nobody.sock")
    failed = send_each(lonely, [[b"a"], [b"b"]], peer="gateway")
    assert [i for i, _ in failed] == [0, 1] and all(isinstance(e, Busy) for _, e in failed)
    assert "gateway" in str(failed[0][1])


def test_send_each_reports_busy_for_a_full_peer_queue(ctx: Any, ipc: str) -> None:
    """A peer that never reads: once its queue is full, each further message is reported Busy, none blocks."""
    router = bind_router(ctx, f"ipc://{ipc}/r.sock", hwm=1)
    router.sndbuf = 4096
    dealer = connect_dealer(ctx, f"ipc://{ipc}/r.sock", identity="w1", hwm=1)
    dealer.rcvbuf = 4096
    deadline = time.monotonic() + 10
    while send_each(router, [[b"w1", b"x" * 65536]]):
        assert time.monotonic() < deadline, "dealer never connected"
        time.sleep(0.01)
    failed = send_each(router, [[b"w1", b"x" * 65536]] * 2000, peer="worker w1")
    assert failed and all(isinstance(exc, Busy) and "full" in str(exc) for _, exc in failed)
    assert len({i for i, _ in failed}) == len(failed) and all(0 <= i < 2000 for i, _ in failed)


def test_ipc_socket_file_is_0600_in_a_new_0700_directory(ctx: Any, ipc: str) -> None:
    """Binding ipc creates the missing directory 0700 and leaves the socket file 0600."""
    bind_router(ctx, f"ipc://{ipc}/run/ctl.sock")
    bind_pub(ctx, f"ipc://{ipc}/run/events.sock")
    assert _mode(f"{ipc}/run") == 0o700
    assert stat.S_ISSOCK(os.stat(f"{ipc}/run/ctl.sock").st_mode)
    assert _mode(f"{ipc}/run/ctl.sock") == 0o600 and _mode(f"{ipc}/run/events.sock") == 0o600


def test_ipc_socket_file_is_0660_and_group_owned_with_a_group(ctx: Any, ipc: str) -> None:
    """With a configured group the socket file is 0660 and belongs to that group."""
    gid = os.getgid()
    bind_router(ctx, f"ipc://{ipc}/ctl.sock", group=gid)
    assert _mode(f"{ipc}/ctl.sock") == 0o660 and os.stat(f"{ipc}/ctl.sock").st_gid == gid
    bind_pub(ctx, f"ipc://{ipc}/ev.sock", mode=0o640, group=gid)
    assert _mode(f"{ipc}/ev.sock") == 0o640


@pytest.mark.parametrize(
    ("endpoint", "mode", "expected"),
    [
        ("ipc://{d}/c.sock", 0o666, "must grant nothing to others"),
        ("ipc://@abstract-name", 0o600, "abstract or wildcard"),
        ("ipc://{d}/" + "x" * 120, 0o600, "longer than 107 bytes"),
        ("udp://127.0.0.1:5", 0o600, "not supported"),
        ("nonsense", 0o600, "must look like"),
    ],
    ids=["world-mode", "abstract", "too-long", "udp", "no-scheme"],
)
def test_unsafe_or_invalid_endpoints_are_refused_naming_the_endpoint(
    ctx: Any, ipc: str, endpoint: str, mode: int, expected: str
) -> None:
    """Endpoints that cannot be guarded (or cannot exist) raise ConfigError whose place is the endpoint."""
    endpoint = endpoint.format(d=ipc)
    with pytest.raises(ConfigError) as info:
        bind_router(ctx, endpoint, mode=mode)
    assert info.value.problems[0].where == endpoint and expected in info.value.problems[0].what


def test_ipc_path_of_max_ipc_path_bytes_binds_and_one_byte_more_is_refused(ctx: Any, ipc: str) -> None:
    """MAX_IPC_PATH is libzmq's limit (sun_path less its NUL): a path that long binds, one more does not."""
    assert MAX_IPC_PATH == zmq.IPC_PATH_MAX_LEN
    longest = ipc + "/" + "s" * (MAX_IPC_PATH - len(ipc) - 1)
    assert len(os.fsencode(longest)) == MAX_IPC_PATH
    bind_router(ctx, f"ipc://{longest}").close(linger=0)
    with pytest.raises(ConfigError, match=f"longer than {MAX_IPC_PATH} bytes"):
        bind_router(ctx, f"ipc://{longest}x")
    raw = ctx.socket(zmq.ROUTER)
    with pytest.raises(zmq.ZMQError):  # libzmq agrees: our check refuses nothing it would take
        raw.bind(f"ipc://{longest}x")
    raw.close(linger=0)


def test_tcp_bind_without_curve_is_refused(ctx: Any) -> None:
    """A tcp endpoint without CURVE keys is refused at bind, naming the endpoint."""
    for bind in (bind_router, bind_pub):
        with pytest.raises(ConfigError, match=r"tcp://127\.0\.0\.1:0: tcp endpoints require CURVE"):
            bind(ctx, "tcp://127.0.0.1:0")


def test_generate_keys_writes_private_secrets_and_never_overwrites(tmp_path: Path) -> None:
    """Secrets are 0600 in 0700 directories, the client is authorized, and existing keys are kept."""
    files = generate_keys(tmp_path / "k", "alice")
    assert files.client_secret is not None and files.authorized is not None
    assert _mode(files.server_secret) == 0o600 and _mode(files.client_secret) == 0o600
    assert _mode(tmp_path / "k") == 0o700 and _mode(tmp_path / "k" / "clients") == 0o700
    assert files.authorized.read_text().count("public-key") == 1
    before = files.server_secret.read_bytes()
    generate_keys(tmp_path / "k", "bob")
    assert files.server_secret.read_bytes() == before
    with pytest.raises(AlreadyExists):
        generate_keys(tmp_path / "k", "alice")
    with pytest.raises(AlreadyExists):
        generate_keys(tmp_path / "k", "server")
    with pytest.raises(ConfigError, match="keys name"):
        generate_keys(tmp_path / "k", "../evil")
    assert set(CurveServer(tmp_path / "k").clients.values()) == {"alice", "bob"}


def test_curve_server_reports_every_missing_key_file(tmp_path: Path) -> None:
    """An empty keys directory names both the missing server secret and the missing authorized keys."""
    with pytest.raises(ConfigError) as info:
        CurveServer(tmp_path)
    wheres = [p.where for p in info.value.problems]
    assert wheres == [str(tmp_path / "server.key_secret"), str(tmp_path / "authorized")]


def test_authorized_curve_client_gets_an_answer_over_tcp(keys: Path) -> None:
    """A client holding an authorized key and the server key is answered over tcp."""
    alice = CurveClient(keys, name="alice")
    with (
        serving("tcp://127.0.0.1:0", keys_dir=str(keys)) as (endpoint, _),
        Client(endpoint, curve=alice) as c,
    ):
        assert c.request("ping")["pid"] == os.getpid()


def test_tcp_client_without_keys_gets_no_answer(keys: Path) -> None:
    """A plain (NULL mechanism) client of a CURVE endpoint never connects: no reply, a client Timeout."""
    with serving("tcp://127.0.0.1:0", keys_dir=str(keys)) as (endpoint, server):
        with Client(endpoint, timeout=NO_ANSWER_S) as client, pytest.raises(Timeout):
            client.request("ping")
        assert server.handled == 0


def test_tcp_client_with_an_unauthorized_key_gets_no_answer(keys: Path, tmp_path: Path) -> None:
    """A client with the right server key but a key not in authorized/ is refused by ZAP: no reply."""
    server_key = (keys / "server.key").read_text()
    generate_keys(tmp_path / "other", "mallory")
    (tmp_path / "other" / "server.key").write_text(server_key)  # mallory knows the real server key
    curve = CurveServer(keys)
    with serving("tcp://127.0.0.1:0", curve=curve) as (endpoint, server):
        with (
            Client(endpoint, curve=CurveClient(tmp_path / "other", name="mallory"), timeout=NO_ANSWER_S) as c,
            pytest.raises(Timeout),
        ):
            c.request("ping")
        assert server.handled == 0
        assert _zap.handler_for(server.sock.context).denied >= 1
        with Client(endpoint, curve=CurveClient(keys, name="alice"), timeout=10) as client:
            assert client.request("ping")["pid"] == os.getpid()


def test_tcp_client_with_a_wrong_server_key_gets_no_answer(keys: Path) -> None:
    """A client that expects another server's key fails the CURVE handshake: no reply."""
    alice = CurveClient(keys, name="alice")
    wrong = CurveClient(
        server_key=zmq.curve_keypair()[0], public_key=alice.public_key, secret_key=alice._secret_key
    )
    with serving("tcp://127.0.0.1:0", keys_dir=str(keys)) as (endpoint, server):
        with Client(endpoint, curve=wrong, timeout=NO_ANSWER_S) as client, pytest.raises(Timeout):
            client.request("ping")
        assert server.handled == 0


def test_revoked_client_is_refused_after_reload(keys: Path) -> None:
    """Deleting authorized/NAME.key and reloading refuses that client's new connections."""
    generate_keys(keys, "bob")
    curve = CurveServer(keys)
    with serving("tcp://127.0.0.1:0", curve=curve) as (endpoint, _):
        with Client(endpoint, curve=CurveClient(keys, name="bob"), timeout=10) as client:
            assert "pid" in client.request("ping")
        (keys / "authorized" / "bob.key").unlink()
        assert curve.reload() == 1
        bob = CurveClient(keys, name="bob")
        with Client(endpoint, curve=bob, timeout=NO_ANSWER_S) as client, pytest.raises(Timeout):
            client.request("ping")
        with Client(endpoint, curve=CurveClient(keys, name="alice"), timeout=10) as client:
            assert "pid" in client.request("ping")


def test_context_term_returns_while_the_zap_handler_runs(keys: Path) -> None:
    """ctx.term() with a CURVE socket closed does not hang on the ZAP handler thread (it stops itself)."""
    context: zmq.Context[Any] = zmq.Context()
    sock = bind_router(context, "tcp://127.0.0.1:0", curve=CurveServer(keys))
    handler = _zap.handler_for(context)
    assert handler.alive
    sock.close()
    done = threading.Event()

    def term() -> None:
        context.term()
        done.set()

    threading.Thread(target=term, daemon=True).start()
    assert done.wait(10), "context.term() hung"
    handler.stop()
    assert not handler.alive


def test_sockets_reexports_the_curve_names_on_first_use() -> None:
    """The CURVE names the socket module re-exports are curve's own (imported on first read); any other
    missing name is an AttributeError naming it."""
    from openfang.protocol import curve, sockets

    assert sockets.CurveServer is curve.CurveServer and sockets.CurveClient is curve.CurveClient
    assert sockets.KeyFiles is curve.KeyFiles and sockets.generate_keys is curve.generate_keys
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        sockets.Nope  # noqa: B018


def test_send_nowait_delivers_every_frame_in_order(ctx: Any, ipc: str) -> None:
    """A multipart message sent through pyzmq's own send arrives whole, its frames in order."""
    router = bind_router(ctx, f"ipc://{ipc}/r.sock")
    dealer = connect_dealer(ctx, f"ipc://{ipc}/r.sock", identity=b"d1")
    deadline = time.monotonic() + 5
    while True:  # IMMEDIATE: Busy until the connection is up
        try:
            send_nowait(dealer, [b"hello"])
            break
        except Busy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert router.poll(5000)
    assert router.recv_multipart() == [b"d1", b"hello"]
    send_nowait(router, [b"d1", b"a", b"", b"c" * 1000])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"a", b"", b"c" * 1000]


def test_send_nowait_uses_a_subclass_s_own_send(ctx: Any, ipc: str) -> None:
    """A socket class that overrides send (as zmq.asyncio's does) is sent through its own send."""
    seen: list[tuple[bytes, int]] = []

    class Recording(zmq.Socket[bytes]):
        def send(self, data: Any, flags: int = 0, copy: bool = True, track: bool = False, **kw: Any) -> Any:
            seen.append((bytes(data), int(flags)))
            return super().send(data, flags, copy, track)

    sock = Recording(ctx, zmq.DEALER)
    try:
        sock.connect(f"ipc://{ipc}/x.sock")
        send_nowait(sock, [b"one", b"two"])
    finally:
        sock.close(0)
    assert [d for d, _ in seen] == [b"one", b"two"]
    assert seen[0][1] & zmq.SNDMORE and not seen[1][1] & zmq.SNDMORE
