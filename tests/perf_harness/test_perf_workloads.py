"""The shared workloads and measuring helpers of perf/ (pure logic, plus /proc reads of real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

# perf/ is a folder of the repo, not an installed package: make it importable however pytest is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from perf import workloads as wl


def test_workloads_routing_messages_split_evenly_across_the_four_routes() -> None:
    """Each of the 4 classes gets exactly a quarter of a 2,000-message set, and messages are distinct."""
    msgs = wl.routing_messages(2_000)
    assert len(set(msgs)) == 2_000
    assert Counter(wl.classify(m) for m in msgs) == dict.fromkeys(wl.ROUTES, 500)


def test_workloads_classify_defaults_to_general_without_keyword() -> None:
    """A message with no keyword goes to general; the first matching class in ROUTES order wins."""
    assert wl.classify("good morning") == "general"
    assert wl.classify("REFUND please, the install crashed") == "billing"
    assert wl.classify("install crashed, what is the price") == "tech"


def test_workloads_agent_reply_depends_on_route_and_message() -> None:
    """Agents' replies differ by route and by message, so a wrong route or message is detected."""
    a, b = wl.routing_messages(2)
    assert wl.agent_reply("tech", a) != wl.agent_reply("sales", a)
    assert wl.agent_reply("tech", a) != wl.agent_reply("tech", b)


def test_workloads_toolchain_takes_four_llm_steps_and_three_tool_calls() -> None:
    """The chain's policy asks for lookup, compute, render, then answers from the last tool result."""
    task = wl.toolchain_tasks(8)[7]
    steps: list[tuple[str, str]] = []
    observations: list[str] = []
    while True:
        action, arg = wl.toolchain_step(task, observations)
        steps.append((action, arg))
        if action == "final":
            break
        observations.append(wl.TOOL_FUNCTIONS[action](arg))
    assert [a for a, _ in steps] == ["lookup", "compute", "render", "final"]
    assert len(steps) == wl.LLM_CALLS_PER_TOOLCHAIN_TASK
    assert steps[0][1] == "k7"
    assert steps[-1][1] == wl.toolchain_expected(task) == f"t7 result={int(wl.tool_lookup('k7')) * 3 + 1}"


def test_workloads_unwrap_task_finds_the_last_task_in_a_prompt() -> None:
    """The fake LLM finds the task between markers even when a framework repeats or surrounds it."""
    prompt = f"system: be nice\n{wl.wrap_task('old')}\nuser: {wl.wrap_task('m1: hello')}\nThought:"
    assert wl.unwrap_task(prompt) == "m1: hello"


def test_workloads_unwrap_task_rejects_a_prompt_without_task() -> None:
    """A prompt that lost the task is an error naming what is missing, not a silent wrong answer."""
    with pytest.raises(ValueError, match="<task>"):
        wl.unwrap_task("no markers here")


def test_workloads_percentile_interpolates_between_ranks() -> None:
    """p50 of an even set is the mean of the middle pair; p0/p100 are min/max; order does not matter."""
    samples = [4.0, 1.0, 3.0, 2.0]
    assert wl.percentile(samples, 50) == 2.5
    assert wl.percentile(samples, 0) == 1.0
    assert wl.percentile(samples, 100) == 4.0
    assert wl.percentile(range(101), 99) == 99.0


def test_workloads_percentile_rejects_no_samples_and_bad_q() -> None:
    """Empty samples and q outside 0..100 raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="no samples"):
        wl.percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        wl.percentile([1.0], 101)


def test_workloads_summarize_reports_p50_p99_and_extremes() -> None:
    """summarize() gives p50, p99, mean, min, max and n of the samples."""
    s = wl.summarize([float(i) for i in range(1, 101)])
    assert (s["p50"], s["min"], s["max"], s["n"], s["mean"]) == (50.5, 1.0, 100.0, 100.0, 50.5)
    assert 99.0 < s["p99"] < 100.0


def test_workloads_memory_kb_reads_pss_and_rss_of_a_live_process() -> None:
    """PSS and RSS of this process are positive, PSS <= RSS, and a vanished pid counts zero."""
    pss, rss = wl.memory_kb([os.getpid()])
    assert 0 < pss <= rss
    assert wl.memory_kb([2**22 + 12345]) == (0, 0)


@pytest.mark.integration
def test_workloads_process_tree_includes_grandchildren() -> None:
    """process_tree() finds a child's child, so a whole system's memory is summed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import subprocess,sys; subprocess.run(['sleep', '30'])"],
    )
    try:
        deadline = time.monotonic() + 20
        tree = wl.process_tree(proc.pid)
        while len(tree) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            tree = wl.process_tree(proc.pid)
        assert tree[0] == proc.pid
        assert len(tree) == 2
        grandchild = tree[1]
    finally:
        for pid in wl.process_tree(proc.pid)[::-1]:
            os.kill(pid, 9)
        proc.wait()
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{grandchild}") and time.monotonic() < deadline:
        time.sleep(0.05)  # reparented to init, which reaps it


def test_workloads_dir_size_counts_hard_links_once(tmp_path: Path) -> None:
    """A hard-linked file counts once toward a venv's size; nested folders count."""
    (tmp_path / "sub").mkdir()
    data = tmp_path / "sub" / "a.bin"
    data.write_bytes(b"x" * 100_000)
    one = wl.dir_size_bytes(str(tmp_path))
    os.link(data, tmp_path / "b.bin")
    assert one >= 100_000
    assert wl.dir_size_bytes(str(tmp_path)) == one
