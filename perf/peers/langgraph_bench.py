"""The shared workloads on LangGraph, with its own primitives. Runs inside perf/.peers/langgraph.

    perf/.peers/langgraph/bin/python perf/peers/langgraph_bench.py --json [--quick] [--metrics ...]

- LLM: :class:`FakeChatModel`, a ``langchain_core`` ``BaseChatModel`` subclass that answers instantly by the
  rules of ``perf.workloads`` (tool calls as real ``AIMessage.tool_calls``).
- Agent: a compiled ``StateGraph`` with one node calling its own model.
- Routing: one ``StateGraph``: a router node (its own model) -> conditional edges -> 4 agent nodes.
- Tool chain: the ReAct loop as LangGraph documents it: ``StateGraph(MessagesState)`` with a model node, a
  prebuilt ``ToolNode`` over 3 ``@tool`` functions and ``tools_condition``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for perf.workloads

from perf.peers import _driver

_driver.apply_offline_env()  # before langchain is imported

from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any, TypedDict  # noqa: E402

from langchain_core.language_models.chat_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402

from perf import workloads as wl  # noqa: E402


class FakeChatModel(BaseChatModel):  # type: ignore[misc]  # the framework is typed only inside its own venv
    """Instant, deterministic chat model. ``role`` is ``router``, a route name, or ``toolchain``."""

    role: str

    @property
    def _llm_type(self) -> str:
        return "openfang-bench-fake"

    def _generate(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.role == "toolchain":
            task = wl.unwrap_task(str(messages[0].content))
            observations = [str(m.content) for m in messages if isinstance(m, ToolMessage)]
            action, arg = wl.toolchain_step(task, observations)
            if action == "final":
                msg = AIMessage(content=arg)
            else:
                call_id = f"call_{len(observations)}"
                msg = AIMessage(
                    content="", tool_calls=[{"name": action, "args": {"value": arg}, "id": call_id}]
                )
        else:
            text = wl.unwrap_task(str(messages[-1].content))
            reply = wl.classify(text) if self.role == "router" else wl.agent_reply(self.role, text)
            msg = AIMessage(content=reply)
        return ChatResult(generations=[ChatGeneration(message=msg)])


@tool  # type: ignore[untyped-decorator]  # typed only inside its venv
def lookup(value: str) -> str:
    """Look up the number stored under a key."""
    return wl.tool_lookup(value)


@tool  # type: ignore[untyped-decorator]
def compute(value: str) -> str:
    """Compute on a number."""
    return wl.tool_compute(value)


@tool  # type: ignore[untyped-decorator]
def render(value: str) -> str:
    """Render a number as the result."""
    return wl.tool_render(value)


class RouteState(TypedDict, total=False):
    text: str
    route: str
    reply: str


def _agent_node(model: FakeChatModel) -> Callable[[RouteState], dict[str, str]]:
    def node(state: RouteState) -> dict[str, str]:
        return {"reply": str(model.invoke([HumanMessage(wl.wrap_task(state["text"]))]).content)}

    return node


class LangGraphAdapter:
    system: str = "langgraph"
    packages: tuple[str, ...] = ("langgraph", "langchain-core", "pydantic")

    def build_agent(self, index: int) -> Any:
        graph = StateGraph(RouteState)
        graph.add_node("agent", _agent_node(FakeChatModel(role=wl.ROUTES[index % len(wl.ROUTES)])))
        graph.add_edge(START, "agent")
        graph.add_edge("agent", END)
        return graph.compile()

    def ask(self, agent: Any, text: str) -> str:
        return str(agent.invoke({"text": text})["reply"])

    def build_router(self) -> Callable[[str], str]:
        router_model = FakeChatModel(role="router")

        def route(state: RouteState) -> dict[str, str]:
            return {"route": str(router_model.invoke([HumanMessage(wl.wrap_task(state["text"]))]).content)}

        graph = StateGraph(RouteState)
        graph.add_node("router", route)
        for name in wl.ROUTES:
            graph.add_node(name, _agent_node(FakeChatModel(role=name)))
            graph.add_edge(name, END)
        graph.add_edge(START, "router")
        graph.add_conditional_edges("router", lambda s: s["route"], list(wl.ROUTES))
        app = graph.compile()
        return lambda text: str(app.invoke({"text": text})["reply"])

    def build_toolchain(self) -> Callable[[str], str]:
        model = FakeChatModel(role="toolchain")

        def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
            return {"messages": [model.invoke(state["messages"])]}

        graph = StateGraph(MessagesState)
        graph.add_node("agent", call_model)
        graph.add_node("tools", ToolNode([lookup, compute, render]))
        graph.add_edge(START, "agent")
        graph.add_conditional_edges("agent", tools_condition)
        graph.add_edge("tools", "agent")
        app = graph.compile()

        def run(task: str) -> str:
            result = app.invoke({"messages": [HumanMessage(wl.wrap_task(task))]})
            return str(result["messages"][-1].content)

        return run


if __name__ == "__main__":
    sys.exit(_driver.main(LangGraphAdapter, __file__))
