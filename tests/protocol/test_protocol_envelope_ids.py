"""Request ids (``envelope.new_id``): a per-process random prefix and a counter must stay unique across
threads, forked children (which get a prefix of their own) and separate processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from openfang.protocol.envelope import Envelope, new_id

_ID = re.compile(r"[0-9a-f]{32}")


def test_new_id_is_32_hex_characters_and_never_repeats_in_a_process() -> None:
    """Every id is 32 lower-case hex characters; 100,000 ids in a row are all different."""
    ids = [new_id() for _ in range(100_000)]
    assert all(_ID.fullmatch(i) for i in ids[:1000])
    assert len(set(ids)) == len(ids)
    assert Envelope(type="ping").id != Envelope(type="ping").id


def test_new_id_is_unique_across_threads() -> None:
    """Eight threads taking ids at once never get the same one."""
    got: list[list[str]] = [[] for _ in range(8)]

    def take(out: list[str]) -> None:
        out.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=take, args=(out,)) for out in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in got for i in out]
    assert len(set(every)) == len(every) == 160_000


def test_new_id_in_a_forked_child_differs_from_the_parents_next_ids() -> None:
    """A forked child does not hand out its parent's ids: it makes a prefix of its own at the fork."""
    before = new_id()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then exit at once
        try:
            os.write(wfd, " ".join(new_id() for _ in range(1000)).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        child = r.read().decode().split()
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(1000)]
    assert len(child) == 1000 and all(_ID.fullmatch(i) for i in child)
    assert not set(child) & set(parent)
    assert child[0][:16] != before[:16] and parent[0][:16] == before[:16]


def test_new_id_differs_between_processes() -> None:
    """Two fresh interpreters (a restart) start from different prefixes."""
    code = "from openfang.protocol.envelope import new_id; print(new_id())"
    first, second = (
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    )
    assert _ID.fullmatch(first) and _ID.fullmatch(second)
    assert first != second and first[:16] != second[:16]
