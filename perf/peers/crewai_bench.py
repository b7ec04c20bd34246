"""The shared workloads on CrewAI, with its own primitives. Runs inside perf/.peers/crewai.

    perf/.peers/crewai/bin/python perf/peers/crewai_bench.py --json [--quick] [--metrics ...]

- LLM: :class:`FakeLLM`, a subclass of CrewAI's ``BaseLLM`` (its documented interface for custom LLMs) that
  answers instantly by the rules of ``perf.workloads``, in the ReAct text format CrewAI's executor parses
  (``Action:`` / ``Action Input:`` for tools, ``Final Answer:`` to finish).
- Agent: an ``Agent`` with its own ``FakeLLM``, plus the ``Task`` and one-agent ``Crew`` it answers through.
- Routing: a router crew (its agent classifies) picks one of 4 agent crews, which answers: 2 kickoffs.
- Tool chain: one crew whose agent has 3 ``@tool`` tools; CrewAI's executor runs the loop. Tool result
  caching is off (``cache=False``) so that every task really makes its 3 tool calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for perf.workloads

from perf.peers import _driver

_driver.apply_offline_env()  # before crewai is imported

import re  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from crewai import Agent, Crew, Process, Task  # noqa: E402
from crewai.llms.base_llm import BaseLLM  # noqa: E402
from crewai.tools import tool  # noqa: E402

from perf import workloads as wl  # noqa: E402

# CrewAI appends each tool result to the transcript as "Observation: <result>"; the tool-format help text
# in the system prompt also contains "Observation: the result of the action", which is not a result.
_OBSERVATION = re.compile(r"^Observation:\s*(.+)$", re.MULTILINE)
_TEMPLATE_OBSERVATION = "the result of the action"


def _text(messages: str | list[Any]) -> str:
    if isinstance(messages, str):
        return messages
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


class FakeLLM(BaseLLM):  # type: ignore[misc]  # the framework is typed only inside its own venv
    """Instant, deterministic LLM. ``role`` is ``router``, a route name, or ``toolchain``."""

    role: str = "general"

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        prompt = _text(messages)
        if self.role == "toolchain":
            task = wl.unwrap_task(prompt)
            observations = [o for o in _OBSERVATION.findall(prompt) if o.strip() != _TEMPLATE_OBSERVATION]
            action, arg = wl.toolchain_step(task, observations)
            if action == "final":
                return f"Thought: I now know the final answer\nFinal Answer: {arg}"
            return f'Thought: next step\nAction: {action}\nAction Input: {{"value": "{arg}"}}'
        text = wl.unwrap_task(prompt)
        reply = wl.classify(text) if self.role == "router" else wl.agent_reply(self.role, text)
        return f"Thought: I now can give a great answer\nFinal Answer: {reply}"

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        # The base class estimates len/4 too, but logs a warning on every call (a real provider overrides it).
        return (len(_text(messages)) + 3) // 4

    def supports_stop_words(self) -> bool:
        return False

    def get_context_window_size(self) -> int:
        return 8192


@tool("lookup")  # type: ignore[untyped-decorator]  # typed only inside its venv
def lookup(value: str) -> str:
    """Look up the number stored under a key."""
    return wl.tool_lookup(value)


@tool("compute")  # type: ignore[untyped-decorator]
def compute(value: str) -> str:
    """Compute on a number."""
    return wl.tool_compute(value)


@tool("render")  # type: ignore[untyped-decorator]
def render(value: str) -> str:
    """Render a number as the result."""
    return wl.tool_render(value)


def _crew(role: str, llm_role: str, tools: list[Any] | None = None) -> Crew:
    agent = Agent(
        role=role,
        goal=f"act as the {role}",
        backstory="a benchmark agent",
        llm=FakeLLM(model="fake", role=llm_role),
        tools=tools or [],
        cache=False,
        allow_delegation=False,
        verbose=False,
    )
    task = Task(description=f"Handle this: {wl.wrap_task('{text}')}", expected_output="one line", agent=agent)
    return Crew(agents=[agent], tasks=[task], process=Process.sequential, verbose=False)


def _kickoff(crew: Crew, text: str) -> str:
    return str(crew.kickoff(inputs={"text": text}).raw)


class CrewAIAdapter:
    system: str = "crewai"
    packages: tuple[str, ...] = ("crewai", "pydantic")

    def build_agent(self, index: int) -> Any:
        route = wl.ROUTES[index % len(wl.ROUTES)]
        return _crew(f"{route} agent {index}", route)

    def ask(self, agent: Any, text: str) -> str:
        return _kickoff(agent, text)

    def build_router(self) -> Callable[[str], str]:
        router = _crew("router", "router")
        agents = {route: _crew(f"{route} agent", route) for route in wl.ROUTES}
        return lambda text: _kickoff(agents[_kickoff(router, text).strip()], text)

    def build_toolchain(self) -> Callable[[str], str]:
        crew = _crew("tool user", "toolchain", [lookup, compute, render])
        return lambda task: _kickoff(crew, task)


if __name__ == "__main__":
    sys.exit(_driver.main(CrewAIAdapter, __file__))
