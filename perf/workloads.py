"""The shared workloads of every benchmark, and the rules for measuring them.

Every system (OpenFANG, CrewAI, LangGraph) runs the same message sets through the same deterministic fake
LLM, so a ratio compares the frameworks, not the prompts. This module is the single definition of:

- the routing workload: :func:`routing_messages`, the 4 classes in :data:`ROUTES`, the router's rule
  :func:`classify` and an agent's reply :func:`agent_reply` (2 LLM calls per task: router, then agent);
- the tool-chain workload: :func:`toolchain_tasks`, the 3 tools in :data:`TOOLS` and the LLM's policy
  :func:`toolchain_step` (4 LLM calls and 3 tool calls per task, strictly in sequence);
- the prompt convention :func:`wrap_task` / :func:`unwrap_task`: a framework adds its own prompt text around
  the task, and the fake LLM finds the task again between the markers;
- measuring helpers: :func:`percentile`, :func:`summarize`, :func:`memory_kb`, :func:`process_memory_kb`
  and :func:`process_tree`.

It imports only the standard library, because the peers' scripts import it from inside their own venvs.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterable, Sequence

# --- routing -----------------------------------------------------------------------------------------------

ROUTES: tuple[str, ...] = ("billing", "tech", "sales", "general")

# First matching class wins, in ROUTES order; a message with no keyword is "general".
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "billing": ("invoice", "refund", "charged"),
    "tech": ("error", "crash", "install"),
    "sales": ("price", "quote", "discount"),
}

_TEMPLATES: tuple[str, ...] = (
    "my invoice {n} looks wrong, please check",
    "the app shows error {n} on start",
    "can I get a quote for {n} seats",
    "hello, just saying hi for the {n}th time",
    "I was charged twice for order {n}",
    "install of build {n} fails halfway",
    "what is the price of plan {n}",
    "where is your office, asking for visit {n}",
    "refund for ticket {n} never arrived",
    "crash {n} when opening settings",
    "any discount for {n} licences",
    "thanks for the help with case {n}",
)

ROUTING_MESSAGES_DEFAULT = 2_000
ROUTING_MESSAGES_QUICK = 200


def routing_messages(count: int) -> list[str]:
    """``count`` distinct messages, cycling through templates so each class gets a quarter of them."""
    return [f"m{i}: " + _TEMPLATES[i % len(_TEMPLATES)].format(n=i) for i in range(count)]


def classify(text: str) -> str:
    """The router's rule: the first class whose keyword occurs in ``text``; otherwise ``general``."""
    lowered = text.lower()
    for route, words in _KEYWORDS.items():
        if any(word in lowered for word in words):
            return route
    return "general"


def agent_reply(route: str, text: str) -> str:
    """What the agent for ``route`` answers to ``text``: its name and a checksum of the message."""
    return f"{route}: handled {zlib.crc32(text.encode()) & 0xFFFF:04x}"


# --- tool chain --------------------------------------------------------------------------------------------

TOOLS: tuple[str, ...] = ("lookup", "compute", "render")
TOOLCHAIN_TASKS_DEFAULT = 1_000
TOOLCHAIN_TASKS_QUICK = 100
LLM_CALLS_PER_TOOLCHAIN_TASK = 4
TOOL_CALLS_PER_TOOLCHAIN_TASK = 3


def toolchain_tasks(count: int) -> list[str]:
    """``count`` distinct tasks; each names the key its chain starts from."""
    return [f"t{i}: key=k{i}" for i in range(count)]


def tool_lookup(value: str) -> str:
    """Tool 1: the number stored under a key (a checksum stands in for a database)."""
    return str(zlib.crc32(value.encode()) % 10_000)


def tool_compute(value: str) -> str:
    """Tool 2: arithmetic on the looked-up number."""
    return str(int(value) * 3 + 1)


def tool_render(value: str) -> str:
    """Tool 3: formats the computed number."""
    return f"result={value}"


TOOL_FUNCTIONS: dict[str, Callable[[str], str]] = {
    "lookup": tool_lookup,
    "compute": tool_compute,
    "render": tool_render,
}


def toolchain_step(task: str, observations: Sequence[str]) -> tuple[str, str]:
    """The fake LLM's policy: given the task and the tool results so far, the next action.

    Returns ``(tool_name, argument)`` for a tool call, or ``("final", answer)``. Called once per LLM call:
    4 times per task, with 0, 1, 2 and 3 observations.
    """
    done = len(observations)
    if done == 0:
        return "lookup", task.rpartition("key=")[2].strip()
    if done == 1:
        return "compute", observations[0].strip()
    if done == 2:
        return "render", observations[1].strip()
    return "final", f"{task.partition(':')[0]} {observations[2].strip()}"


def toolchain_expected(task: str) -> str:
    """The answer a correct run of the chain gives for ``task`` (used to check every reply)."""
    observations: list[str] = []
    while True:
        action, arg = toolchain_step(task, observations)
        if action == "final":
            return arg
        observations.append(TOOL_FUNCTIONS[action](arg))


# --- prompt convention -------------------------------------------------------------------------------------

_OPEN, _CLOSE = "<task>", "</task>"


def wrap_task(text: str) -> str:
    """The task as it appears inside a framework's prompt."""
    return f"{_OPEN}{text}{_CLOSE}"


def unwrap_task(prompt: str) -> str:
    """The task inside a prompt (the last one, if the framework repeats it). Raises ValueError if absent."""
    end = prompt.rfind(_CLOSE)
    start = prompt.rfind(_OPEN, 0, end)
    if end < 0 or start < 0:
        raise ValueError(f"no {_OPEN}...{_CLOSE} in prompt: {prompt[:200]!r}")
    return prompt[start + len(_OPEN) : end]


# --- measuring ---------------------------------------------------------------------------------------------


def percentile(samples: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, linearly interpolated between closest ranks."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} is outside 0..100")
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def metric(
    name: str,
    value: float,
    unit: str,
    better: str,
    *,
    target: float | None = None,
    system: str = "openfang",
    **extra: object,
) -> dict[str, object]:
    """One row of a benchmark's result, in the shape ``perf/run.py`` validates (value rounded to 3 places)."""
    return {
        "name": name,
        "system": system,
        "value": round(value, 3),
        "unit": unit,
        "better": better,
        "target": target,
        **extra,
    }


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean, min and max of ``samples`` (and their count)."""
    if not samples:
        raise ValueError("summary of no samples")
    return {
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "mean": sum(samples) / len(samples),
        "min": min(samples),
        "max": max(samples),
        "n": float(len(samples)),
    }


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants, read from /proc (so it works without psutil)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def memory_kb(pids: Iterable[int]) -> tuple[int, int]:
    """(PSS, RSS) in KiB summed over ``pids``, from /proc/<pid>/smaps_rollup; vanished pids count 0."""
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pss, rss


def process_memory_kb(pid: int) -> dict[str, int]:
    """One process's memory in KiB from /proc/<pid>/smaps_rollup: ``pss``, ``rss`` and ``uss`` (its private
    pages, clean and dirty: what killing it would free); empty if it is gone."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return {
        "pss": fields.get("Pss", 0),
        "rss": fields.get("Rss", 0),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def dir_size_bytes(path: str) -> int:
    """Bytes used on disk by every file under ``path`` (hard links counted once; symlinks not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total
