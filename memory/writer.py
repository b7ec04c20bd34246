"""The memory writer: the one process that writes the memory database.

Started by the supervisor as ``openfang.memory.writer:main`` (``ctx.args`` -> :class:`WriterConfig`), or by
hand / in tests as ``python -m openfang.memory.writer --db PATH --endpoint ENDPOINT``.

Loop: drain the ROUTER socket into a bounded queue (overflow gets an explicit ``busy`` error reply, never a
silent drop), apply up to ``max_batch`` queued requests as one group commit (:class:`~._apply.Applier`),
send the acks, then, outside the commit path, TRUNCATE-checkpoint the WAL about every second and run TTL
compaction on a timer. SIGTERM: finish the current group, send its acks, close, exit 0; requests still
queued are not acknowledged, so their clients resend them to the next writer.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import structlog
import zmq

from openfang.memory import _db, messages, schema
from openfang.memory._apply import COMPACT_BATCH, Applier
from openfang.memory.client import locations
from openfang.protocol import messages as catalogue
from openfang.protocol.bodies import Empty
from openfang.protocol.config_kit import Above, Doc, Parse, Place, Range, read
from openfang.protocol.envelope import DEFAULT_MAX_FRAME, Envelope, decode, encode, error_reply, peek_id
from openfang.protocol.errors import Busy, ConfigError, OpenFangError, Problem
from openfang.protocol.sockets import MAX_IPC_PATH, bind_router
from openfang.protocol.stats import Histogram

log = structlog.get_logger("openfang.memory.writer")


class ChildContext(Protocol):
    """What the writer uses of ``openfang.supervisor.child.ChildContext`` (memory imports only protocol)."""

    id: str
    path: str
    args: Mapping[str, Any]
    uplink: Any

    def ready(self, **info: Any) -> None: ...
    def heartbeat(self) -> None: ...
    def fileno(self) -> int: ...
    def recv_nowait(self) -> dict[str, Any] | None: ...


POLL_MS = 100
HEARTBEAT_EVERY_S = 0.2


def _endpoint(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("ipc://", "tcp://")):
        raise ValueError(f"must be an ipc:// or tcp:// endpoint, got {value!r}")
    if value.startswith("ipc://") and len(os.fsencode(value[6:])) > MAX_IPC_PATH:
        raise ValueError(f"ipc path longer than {MAX_IPC_PATH} bytes")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterConfig:
    """The writer's settings (the memory child's ``args``), a config-kit section: its defaults are here."""

    db_path: Annotated[str, Doc("path of the memory database file")]
    endpoint: Annotated[str, Parse(_endpoint, "an ipc:// or tcp:// endpoint")] = (
        ""  # "": ipc://<db dir>/memory.ipc
    )
    max_batch: Annotated[int, Range(1)] = 1000
    queue_max: Annotated[int, Range(1)] = 10_000
    checkpoint_every_s: Annotated[float, Above(0)] = 1.0
    compact_every_s: Annotated[float, Above(0)] = 5.0
    episode_ttl_s: Annotated[float, Above(0)] | None = None
    ledger_ttl_s: Annotated[float, Above(0)] = 86400.0
    journal_size_limit: Annotated[int, Range(0)] = _db.JOURNAL_SIZE_LIMIT
    max_frame: Annotated[int, Range(1024)] = DEFAULT_MAX_FRAME
    keys_dir: Annotated[str, Doc("CURVE server keys, required for a tcp:// endpoint")] | None = None

    @property
    def bind_endpoint(self) -> str:
        return (
            self.endpoint
            or f"ipc://{os.path.join(os.path.dirname(os.path.abspath(self.db_path)), 'memory.ipc')}"
        )

    @classmethod
    def from_args(
        cls, args: Mapping[str, Any], where: str = "memory.args", env: Mapping[str, str] | None = None
    ) -> WriterConfig:
        """Validate ``args``; raises ConfigError listing every problem, each with its key.

        ``{data_dir}`` in ``db_path`` / ``endpoint`` is replaced by ``OPENFANG_DATA_DIR`` (which the daemon
        gives every child); missing ones default to :func:`openfang.memory.client.locations`, the same
        place the workers look. A key set to None counts as absent.
        """
        env = os.environ if env is None else env
        problems: list[Problem] = []
        place = Place.at(where)
        args = {k: v for k, v in args.items() if v is not None}
        data_dir = env.get("OPENFANG_DATA_DIR", "")
        for key in ("db_path", "endpoint"):
            value = args.get(key)
            if isinstance(value, str) and "{data_dir}" in value:
                if not data_dir:
                    problems.append(
                        Problem(place.key(key), "uses {data_dir} but OPENFANG_DATA_DIR is not set")
                    )
                args[key] = value.replace("{data_dir}", data_dir)
        if data_dir or env.get("OPENFANG_MEMORY_DB"):
            try:
                default_endpoint, default_db_path = locations(env)
                args.setdefault("db_path", default_db_path)
                args.setdefault("endpoint", default_endpoint)
            except ConfigError:
                pass
        config = read(cls, args, place, problems)
        if problems or config is None:
            raise ConfigError(problems)
        return config


class Writer:
    """One writer: its connection, applier, socket and loop."""

    def __init__(self, config: WriterConfig, ctx: ChildContext | None = None) -> None:
        self.config = config
        self.child = ctx
        self.stopping = False
        self.queue: collections.deque[tuple[list[bytes], Envelope]] = collections.deque()
        self.commit_seconds = Histogram()  # each group commit; with the counts below, answered by memory.ping
        self.commits = self.writes = self.busy = 0
        self.log = log.bind(role="memory", pid=os.getpid(), db=config.db_path)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stopping = True  # the loop finishes the group in hand, acks it, then leaves

    def run(self) -> None:
        cfg = self.config
        os.makedirs(os.path.dirname(os.path.abspath(cfg.db_path)), exist_ok=True)
        conn = _db.open_writer(cfg.db_path, journal_size_limit=cfg.journal_size_limit)
        applied = schema.migrate_connection(conn)
        self.applier = Applier(conn, episode_ttl_s=cfg.episode_ttl_s, ledger_ttl_s=cfg.ledger_ttl_s)
        zctx = zmq.Context()
        # The project's socket helper: ipc file 0600 in a 0700 directory, tcp only with CURVE (keys_dir),
        # ROUTER_MANDATORY (an ack to a departed client raises, logged, instead of vanishing). hwm=0: the
        # bounded queue here, not ZeroMQ's, decides what is refused, and an ack is never dropped at a HWM.
        # Frames over max_frame get a too_large reply from decode(); only absurd ones drop the connection.
        sock = bind_router(
            zctx,
            cfg.bind_endpoint,
            hwm=0,
            keys_dir=cfg.keys_dir,
            max_msgsize=max(64 << 20, 4 * cfg.max_frame),
        )
        sock.setsockopt(zmq.LINGER, 2000)  # acks already sent are flushed on close
        self.sock = sock
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.log.info(
            "memory_writer_ready",
            endpoint=cfg.bind_endpoint,
            seq=self.applier.seq,
            migrations=applied,
            sqlite=_db.driver().describe(),
        )
        if self.child is not None:
            self.child.ready(endpoint=cfg.bind_endpoint, db=cfg.db_path, seq=self.applier.seq)
        try:
            self._loop()
        finally:
            sock.close()
            zctx.term()
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            self.log.info("memory_writer_stopped", seq=self.applier.seq)

    def _loop(self) -> None:
        cfg = self.config
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        uplink = self.child.fileno() if (self.child is not None and self.child.uplink is not None) else None
        if uplink is not None:
            poller.register(uplink, zmq.POLLIN)
        last_ckpt = last_compact = last_hb = time.monotonic()
        dirty = False
        while not self.stopping:
            ready = dict(poller.poll(0 if self.queue else POLL_MS))
            if self.sock in ready:
                self._drain()
            if uplink is not None and uplink in ready:
                self._on_uplink()
            if self.queue:
                group = [self.queue.popleft() for _ in range(min(cfg.max_batch, len(self.queue)))]
                t0 = time.perf_counter()
                replies = self.applier.apply_group([env for _, env in group])
                self.commit_seconds.observe(time.perf_counter() - t0)
                self.commits, self.writes = self.commits + 1, self.writes + len(group)
                for (frames, _env), reply in zip(group, replies, strict=True):
                    self._send(frames, reply)
                dirty = True
            now = time.monotonic()
            # Checkpoint after the acks went out, never inside a commit. Readers always holding a snapshot
            # keep the WAL from resetting on its own (it grew to ~1 GB in 5 s); a TRUNCATE checkpoint every
            # ~1 s holds it near journal_size_limit (docs/memory.md, "The writer").
            if dirty and now - last_ckpt >= cfg.checkpoint_every_s:
                self._checkpoint()
                last_ckpt, dirty = now, False
            if now - last_compact >= cfg.compact_every_s:
                last_compact = now
                try:
                    counts = self.applier.compact_now()
                    if any(counts.values()):
                        self.log.info("memory_compacted", **counts)
                        dirty = True
                    if any(n >= COMPACT_BATCH for n in counts.values()):
                        last_compact = 0.0  # more to do: again next turn, after the queued writes
                except OpenFangError as exc:
                    self.log.error("memory_compaction_failed", error=exc.message)
            if now - last_hb >= HEARTBEAT_EVERY_S and self.child is not None:
                self.child.heartbeat()
                last_hb = now

    def _checkpoint(self) -> None:
        """TRUNCATE-checkpoint the WAL without waiting: a reader on an old snapshot makes it partial, not slow

        TRUNCATE calls the busy handler until readers move on; with the connection's busy_timeout that could
        stall acks for seconds, so the checkpoint runs with busy_timeout 0 and simply retries next period.
        """
        conn = self.applier.conn
        try:
            conn.execute("PRAGMA busy_timeout=0")
            busy, log_pages, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                self.log.debug("memory_checkpoint_partial", wal_pages=log_pages, checkpointed=done)
        except _db.driver().DatabaseError as exc:
            self.log.warning("memory_checkpoint_failed", error=str(exc))
        finally:
            conn.execute(f"PRAGMA busy_timeout={_db.BUSY_TIMEOUT_MS}")

    def _drain(self) -> None:
        """Move waiting requests into the queue; past ``queue_max``, answer ``busy`` right away."""
        cfg = self.config
        for _ in range(cfg.queue_max + cfg.max_batch):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            route, payload = frames[:-1], frames[-1]
            try:
                env = decode(payload, max_size=cfg.max_frame)
            except OpenFangError as exc:
                self._send(route, error_reply(peek_id(payload) or "-", exc))
                continue
            if env.type == messages.PING:  # answered here, not by the Applier: its body is the empty one
                try:
                    catalogue.parse(env, Empty)
                except OpenFangError as exc:
                    self._send(route, env.error(exc))
                    continue
                stats = self._stats()
                self._send(
                    route, env.reply({"seq": self.applier.seq, "queued": len(self.queue), "stats": stats})
                )
            elif len(self.queue) >= cfg.queue_max:
                self.busy += 1
                self._send(
                    route, env.error(Busy(f"memory writer queue is full ({cfg.queue_max}); retry later"))
                )
            else:
                self.queue.append((route, env))

    def _stats(self) -> dict[str, Any]:
        """The writer's figures since it started (MemoryWriterStats, less ``queued``)."""
        return {
            "queue_max": self.config.queue_max,
            "commits": self.commits,
            "writes": self.writes,
            "busy": self.busy,
            "commit_seconds": self.commit_seconds.to_wire(),
        }

    def _send(self, route: list[bytes], reply: Envelope) -> None:
        try:
            self.sock.send_multipart([*route, encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client is gone; it resends to whoever serves next
            self.log.warning("memory_reply_undeliverable", req_id=reply.id, error=str(exc))

    def _on_uplink(self) -> None:
        assert self.child is not None
        try:
            while self.child.recv_nowait() is not None:
                pass  # the writer takes no requests from its supervisor today
        except EOFError:
            self.stopping = True


def main(ctx: ChildContext) -> None:
    """Supervisor entry: ``ctx.args`` holds the :class:`WriterConfig` fields."""
    Writer(WriterConfig.from_args(ctx.args, where=f"{ctx.path or ctx.id}.args"), ctx).run()


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openfang.memory.writer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--db", required=True, dest="db_path")
    parser.add_argument("--endpoint")
    for name in ("max_batch", "queue_max", "journal_size_limit", "max_frame"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int)
    for name in ("checkpoint_every_s", "compact_every_s", "episode_ttl_s", "ledger_ttl_s"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=float)
    ns = parser.parse_args(argv)
    try:
        config = WriterConfig.from_args({k: v for k, v in vars(ns).items() if v is not None}, where="argv")
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    Writer(config, None).run()
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
