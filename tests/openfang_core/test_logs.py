"""The log: every line one JSON object, even when many processes write it at once with Python unbuffered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Four forked writers, 3,000 lines each, onto one O_APPEND file as the daemon's children share its stderr.
# Run with -u (PYTHONUNBUFFERED, common in containers and set on this project's machines): stderr is then
# unbuffered, so a logger that writes a line's text and its newline in two calls lets another process's
# line in between (seen in a daemon's log: two objects on one line, the first one's newline later).
WRITERS = """
import os, sys
from openfang.logs import configure_logging
import structlog
configure_logging("info", "json")
log = structlog.get_logger("t")
kids = []
for n in range(4):
    pid = os.fork()
    if pid == 0:
        for i in range(3000):
            log.info("line", writer=n, i=i, pad="x" * (n * 7))
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
"""


@pytest.mark.integration
def test_log_lines_of_concurrent_unbuffered_processes_never_share_a_line(tmp_path: Path) -> None:
    """12,000 lines from four processes at once: each line parses as one JSON object, none is lost."""
    log = tmp_path / "log"
    with log.open("ab") as out:
        subprocess.run([sys.executable, "-u", "-c", WRITERS], stderr=out, check=True, timeout=120)
    lines = log.read_text().splitlines()
    broken = [line for line in lines if not _one_object(line)]
    assert not broken, f"{len(broken)} of {len(lines)} lines are not one JSON object: {broken[0][:300]!r}"
    assert len(lines) == 4 * 3000


def _one_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
