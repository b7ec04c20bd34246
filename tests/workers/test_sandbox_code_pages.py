"""What a worker keeps of libwasmtime: the pages of its code and read-only data are dropped when quiet (only
clean file pages, never the relocated data), and an idle runtime maps none of them back."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from sandbox_helpers import SPIN_DIGEST, SPIN_SPECS, SPIN_WAT, in_child, run_spin

from openfang.workers.sandbox import _wasmtime as wt
from openfang.workers.sandbox._wasmtime import EngineOptions, Runtime


def _spin(rt: Runtime) -> int:
    """Compile SPIN_WAT, instantiate it and run ``spin(1000)`` to its end."""
    module, _ = rt.compile(SPIN_WAT.encode(), digest=SPIN_DIGEST, what="t")
    return run_spin(rt, module)


def _mappings() -> list[dict[str, Any]]:
    """Each mapping of _libwasmtime.so in this process: start, perms, and its smaps Rss and Anonymous KiB."""
    out: list[dict[str, Any]] = []
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and not line[0].isupper():  # a mapping's header line
                inside = len(head) == 6 and head[5].rstrip().endswith("/_libwasmtime.so")
                if inside:
                    out.append({"start": int(head[0].split("-")[0], 16), "perms": head[1]})
            elif inside and head[0] in ("Rss:", "Anonymous:"):
                out[-1][head[0].rstrip(":")] = int(head[1])
    return out


def test_release_ranges_are_the_clean_read_only_mappings_of_the_library() -> None:
    """The ranges released are exactly the library's mappings that are not writable and hold no private
    copy (smaps: Anonymous 0): its code and read-only data, never the relocated data (read-only too)."""
    maps = _mappings()
    read_only = [m for m in maps if "w" not in m["perms"]]
    expected = {m["start"] for m in read_only if m["Anonymous"] == 0}
    assert any(m["Anonymous"] > 0 for m in read_only), "no relocated read-only mapping: the layout changed"
    assert any("x" in m["perms"] for m in read_only if m["start"] in expected)
    assert {start for start, _ in wt._library_clean_ranges()} == expected


def _library_clean_rss_kb() -> int:
    """Resident KiB of the ranges released (libwasmtime's code and read-only data) in this process."""
    starts = {start for start, _ in wt._library_clean_ranges()}
    assert starts, "no clean mapping of _libwasmtime.so found"
    return sum(m["Rss"] for m in _mappings() if m["start"] in starts)


def test_idle_runtime_keeps_libwasmtime_released() -> None:
    """After a guest ran and the library's pages were released, an idle runtime (its epoch ticker running,
    no call polled) maps none of libwasmtime's code or read-only data back: the ticker only advances the
    epoch while a guest runs (advancing it mapped ~1 MB of code again in every quiet worker). Measured
    in a forked child: this process's own wasmtime use and threads stay out of it."""

    def work() -> Any:
        rt = Runtime(SPIN_SPECS, options=EngineOptions(epoch_tick_ms=2))
        rt.start_ticker()
        try:
            assert _spin(rt) == 1000
            gc.collect()
            ran = _library_clean_rss_kb()
            wt.release_compiler_pages()
            time.sleep(0.1)  # 50 ticks
            return [ran, _library_clean_rss_kb()]
        finally:
            rt.close()

    ran, idle = in_child(work)
    assert ran >= 1024, ran  # the guest ran: the library's pages were mapped
    assert idle == 0, f"{idle} KiB of libwasmtime mapped again in an idle runtime"


def test_release_at_next_fork_drops_the_pages_in_the_parent_once() -> None:
    """Registered, the release runs in the forking process right after its next fork (not before it, not
    in the child, and only once): what the supervisor's import of wasmtime touched is dropped while the
    first worker starts. Measured in a forked child, which touches the library's pages first."""

    def work() -> Any:
        rt = Runtime(SPIN_SPECS)
        try:
            assert _spin(rt) == 1000
        finally:
            rt.close()
        gc.collect()
        before = _library_clean_rss_kb()
        wt.release_compiler_pages_at_next_fork()
        still = _library_clean_rss_kb()
        pid = os.fork()
        if pid == 0:  # the grandchild exits at once, without running anything of ours
            os._exit(0)
        os.waitpid(pid, 0)
        after_fork = _library_clean_rss_kb()
        rt2 = Runtime(SPIN_SPECS)  # the library's pages in use again
        try:
            assert _spin(rt2) == 1000
        finally:
            rt2.close()
        remapped = _library_clean_rss_kb()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return [before, still, after_fork, remapped, _library_clean_rss_kb()]

    before, still, after_fork, remapped, second = in_child(work)
    assert before >= 1024 and still >= 1024, (before, still)  # nothing released at registration
    assert after_fork == 0, after_fork  # released by the parent, right after its fork
    assert remapped >= 1024 and second >= 1024, (remapped, second)  # once: the next fork releases nothing
