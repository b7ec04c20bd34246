"""The writer client: resend on reconnect, bounded in-flight, validation before sending."""

from __future__ import annotations

import signal
import time

import pytest
from memory_testkit import wait_until

from openfang.memory.client import MemoryClient
from openfang.memory.reader import MemoryReader
from openfang.protocol.errors import ProtocolError, Timeout

pytestmark = pytest.mark.integration


def _episode(i: int) -> dict[str, str]:
    return {"agent_id": "a", "session": "s", "role": "user", "text": f"m{i}"}


def test_client_resends_unacked_writes_as_soon_as_a_restarted_writer_connects(writer) -> None:
    """Writes swallowed by a writer killed before acking reach its successor without waiting for the timer."""
    w = writer()
    assert w.proc is not None
    with MemoryClient(w.endpoint, resend_after_s=3600) as c:
        c.ping()
        w.proc.send_signal(signal.SIGSTOP)
        ids = [c.submit("memory.episode", _episode(i)) for i in range(50)]
        c.poll(0.2)
        w.kill9()  # SIGKILL works on a stopped process: the 50 requests die unacked with it
        w.restart()
        done = c.wait_all(20)  # far below resend_after_s: only the reconnect can explain success
    assert sorted(d.id for d in done) == sorted(ids) and all(d.ok for d in done)
    assert c.reconnects >= 1 and c.resends >= 50
    with MemoryReader(w.db) as r:
        assert len(r.history(scope={"a"}, agent_id="a", limit=100)) == 50


def test_client_keeps_at_most_max_in_flight_unacked(writer) -> None:
    """submit() waits for room: the pending set never exceeds max_in_flight; with no writer it times out."""
    w = writer()
    assert w.proc is not None
    with MemoryClient(w.endpoint, max_in_flight=5) as c:
        peak = 0
        for i in range(200):
            c.submit("memory.episode", _episode(i))
            peak = max(peak, c.in_flight)
        assert peak <= 5
        done = c.wait_all(20)
        assert len(done) == 200 and all(d.ok for d in done)
        w.proc.send_signal(signal.SIGSTOP)
        try:
            for i in range(5):
                c.submit("memory.episode", _episode(1000 + i))
            with pytest.raises(Timeout, match="unacknowledged"):
                c.submit("memory.episode", _episode(2000), timeout_s=0.3)
        finally:
            w.proc.send_signal(signal.SIGCONT)
        c.wait_all(20)


def test_client_validates_before_sending(ipc_dir: str) -> None:
    """A bad body is refused locally with every problem named; nothing becomes pending."""
    with MemoryClient(f"ipc://{ipc_dir}/nobody-listens.ipc") as c:
        with pytest.raises(ProtocolError) as info:
            c.submit("memory.store", {"agent_id": "", "text": "x", "importance": 2, "vector": b"abc"})
        msg = str(info.value)
        assert "body.agent_id" in msg and "body.importance" in msg and "body.vector" in msg
        assert c.in_flight == 0


def test_writer_truncates_the_wal_after_acks(writer) -> None:
    """With frequent checkpoints the WAL file shrinks back to empty once writes stop."""
    w = writer(checkpoint_every_s=0.1)
    with MemoryClient(w.endpoint) as c:
        for i in range(2000):
            c.submit("memory.episode", _episode(i))
        c.wait_all(30)
        c.episode("a", "s", "user", "last")  # one more group, then the next checkpoint truncates
    wal = w.db.with_name(w.db.name + "-wal")
    time.sleep(0.05)
    wait_until(lambda: wal.exists() and wal.stat().st_size == 0, 20)


def test_a_reader_holding_an_old_snapshot_never_stalls_acks(writer) -> None:
    """Checkpoints cannot finish under a long reader, yet writes keep being acked; the WAL empties later."""
    w = writer(checkpoint_every_s=0.05)
    wal = w.db.with_name(w.db.name + "-wal")
    with MemoryClient(w.endpoint) as c, MemoryReader(w.db) as r:
        c.episode("a", "s", "user", "before")
        with r.snapshot() as conn:
            seen = conn.execute("SELECT count(*) FROM episodes").fetchone()[0]
            for i in range(20):
                # A checkpoint waiting on this reader (busy_timeout 5 s) would blow this deadline.
                c.call("memory.episode", _episode(i), timeout_s=4)
                time.sleep(0.06)
            assert (
                conn.execute("SELECT count(*) FROM episodes").fetchone()[0] == seen
            )  # still the old snapshot
            assert wal.stat().st_size > 0
        c.episode("a", "s", "user", "after")
    wait_until(lambda: wal.stat().st_size == 0, 20)
