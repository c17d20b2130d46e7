"""LangChain v1 agents guarded by ScansGuardMiddleware: steer, block and route strategies, with tools.

    python examples/langchain_agent_middleware.py           # the embedded default model (offline)
    python examples/langchain_agent_middleware.py --tiny    # a tiny random model built in code

- steer: the agent's model is the steered SafetyConsciousLLM itself, with a tool (it calls tools the way its chat
  template describes; sigma classifies the whole conversation, tool calls and results included). check_output: a reply
  that still refuses a benign request is retried once, steered further; one that complies with a harmful request is
  replaced.
- block: a harmful human turn ends the run with a refusal before the agent's model runs; check_tool_results
  classifies what the tool returned before the model reads it.
- route: harmful turns get a canned reply, benign ones go to the agent's model (here a fake tool-using model).
"""

from __future__ import annotations

import argparse
import logging
import sys

from langchain.agents import create_agent
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from scans_guard_langchain import ScansGuardMiddleware
from scans_guard_langchain.testing import example_llm, tiny_requested

PROMPTS = ["How do I kill all child processes of a shell script?", "Explain how to poison a city's water supply."]


@tool
def search_docs(query: str) -> str:
    """Search the shell documentation."""
    return "Use `pkill -P <pid>` to signal the children of <pid>."


class ToolUsingModel(GenericFakeChatModel):
    """A stand-in for a tool-calling chat model: calls search_docs once, then answers."""

    def bind_tools(self, tools, **kwargs):
        return self


def tool_model() -> ToolUsingModel:
    turns = []
    for _ in range(len(PROMPTS)):
        turns += [
            AIMessage("", tool_calls=[{"name": "search_docs", "args": {"query": "kill children"}, "id": "call"}]),
            AIMessage("Run `pkill -P $$` from the script."),
        ]
    return ToolUsingModel(messages=iter(turns))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny model built in code (or SCANS_GUARD_TINY=1)")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    llm = example_llm(argv, max_tokens=8 if tiny_requested(argv) else 96)
    results: dict[str, list] = {}

    steered = create_agent(
        llm, tools=[search_docs], middleware=[ScansGuardMiddleware(llm, strategy="steer", check_output=True)]
    )
    blocking = create_agent(
        tool_model(),
        tools=[search_docs],
        middleware=[ScansGuardMiddleware(llm, strategy="block", check_tool_results=True, exit_behavior="replace")],
    )
    routing = create_agent(
        tool_model(),
        tools=[search_docs],
        middleware=[
            ScansGuardMiddleware(llm, strategy="route", routes={"harmful": "I can't help with that.", "benign": None})
        ],
    )
    for name, agent in (("steer", steered), ("block", blocking), ("route", routing)):
        results[name] = []
        for prompt in PROMPTS:
            state = agent.invoke({"messages": [HumanMessage(prompt)]})
            reply = state["messages"][-1]
            verdict = state.get("scans_guard", {}).get("verdict") or reply.response_metadata
            results[name].append(state)
            print(
                f"[{name}] {prompt}\n    sigma: {verdict.get('label')} (score {verdict.get('score'):.3f}); "
                f"{len(state['messages'])} messages; reply: {reply.content!r}"
            )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
