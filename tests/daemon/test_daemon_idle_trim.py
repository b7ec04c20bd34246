"""An idle worker gives memory back (heap trim, libwasmtime's code pages) and its agents keep answering."""

from __future__ import annotations

import time

import pytest
from daemon_harness import Cluster, wait_for

ECHO = '[agent]\nname = "idle"\nmodule = "builtin:echo"\n'

pytestmark = pytest.mark.integration


def _wasmtime_code_kb(pid: int) -> int:
    """Resident KiB of the executable mappings of libwasmtime in process ``pid``."""
    kb, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not line.startswith(("Rss", "Pss")) and len(head) >= 5:
                inside = head[1] == "r-xp" and line.rstrip().endswith("/_libwasmtime.so")
            elif inside and line.startswith("Rss:"):
                kb += int(head[1])
    return kb


def test_idle_worker_releases_wasmtime_code_pages_and_its_agent_still_answers(
    make_cluster: type[Cluster],
) -> None:
    """Once quiet after a spawn and a message, the worker holds far fewer of libwasmtime's code pages than
    while it ran them; the next message maps what it needs again and is answered like the first."""
    c = make_cluster(workers=1).start()
    agent = c.ok("agent.spawn", {"manifest": ECHO})["agent_id"]
    first = c.ok("agent.send", {"agent_id": agent, "text": "one"})["reply"]
    (worker,) = c.node("workers")["children"]
    pid = int(worker["pid"])
    # Right after the message the code it ran is mapped; half a second of quiet later it is released.
    busy = _wasmtime_code_kb(pid)
    wait_for(lambda: _wasmtime_code_kb(pid) < busy / 2, timeout=10, what="code pages released")
    time.sleep(0.2)
    again = c.ok("agent.send", {"agent_id": agent, "text": "one"})["reply"]
    assert again == first and "one" in again
    assert c.stop() == 0
