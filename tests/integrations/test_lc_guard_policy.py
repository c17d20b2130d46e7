"""SafetyConsciousLLM and ScansGuardMiddleware default to guard+steer: what the core guard blocks is answered with the
refusal message without generating (invoke, stream, tools bound), the rest is steered as under "steer"."""

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from scans_guard_langchain import SafetyConsciousLLM, ScansGuardMiddleware

from scans_guard.sigma.decision import DEFAULT_REFUSAL, GuardPolicy

PROMPT = "How do I bake bread?"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def test_the_default_policy_blocks_without_generating(harmful_engine, benign_engine):
    blocking = SafetyConsciousLLM(engine=harmful_engine, max_tokens=6)
    assert blocking.policy == "guard+steer"
    reply = blocking.invoke(PROMPT)
    assert reply.text == DEFAULT_REFUSAL and reply.response_metadata["finish_reason"] == "content_filter"
    assert reply.usage_metadata["output_tokens"] == 0 and reply.response_metadata["label"] == "harmful"
    assert "".join(c.text for c in blocking.stream(PROMPT)) == DEFAULT_REFUSAL
    tooled = blocking.bind_tools([get_weather]).invoke("What's the weather in Paris?")
    assert tooled.text == DEFAULT_REFUSAL and not tooled.tool_calls
    streamed = "".join(c.text for c in blocking.bind_tools([get_weather]).stream("What's the weather in Paris?"))
    assert streamed == DEFAULT_REFUSAL  # streamed with tools bound too, as without
    custom = SafetyConsciousLLM(engine=harmful_engine, max_tokens=6, refusal_message="Not here.").invoke(PROMPT)
    assert custom.text == "Not here."
    # let through: the same reply as the steer policy, steered away from refusal
    allowed = SafetyConsciousLLM(engine=benign_engine, max_tokens=6).invoke(PROMPT)
    steered = SafetyConsciousLLM(engine=benign_engine, max_tokens=6, policy="steer").invoke(PROMPT)
    assert allowed.content == steered.content and allowed.response_metadata["direction"] == "away_from_refusal"


def test_out_of_domain_is_blocked_unless_the_guard_lets_it_through(benign_engine):
    spanish = "¿Cómo se hace pan en casa, paso a paso, sin levadura?"
    assert SafetyConsciousLLM(engine=benign_engine, max_tokens=4).invoke(spanish).text == DEFAULT_REFUSAL
    lenient = SafetyConsciousLLM(engine=benign_engine, max_tokens=4, guard=GuardPolicy(out_of_domain="grey"))
    reply = lenient.invoke(spanish)
    assert reply.response_metadata["finish_reason"] != "content_filter"
    assert reply.response_metadata["alpha"] == 0.0  # through, but never steered away from refusal


def test_a_fixed_coefficient_needs_the_steer_policy(tiny_engine):
    with pytest.raises(ValueError, match="policy='steer'"):
        SafetyConsciousLLM(engine=tiny_engine, coefficient=-1.0)
    assert SafetyConsciousLLM(engine=tiny_engine, coefficient=-1.0, policy="steer", max_tokens=2).invoke(PROMPT)


def test_the_middleware_defaults_to_guard_steer(harmful_engine):
    from langchain.agents import create_agent

    llm = SafetyConsciousLLM(engine=harmful_engine, max_tokens=4, policy="steer")
    middleware = ScansGuardMiddleware(llm)
    assert middleware.strategy == "guard+steer"
    agent = create_agent(llm, tools=[], middleware=[middleware])
    reply = agent.invoke({"messages": [HumanMessage(PROMPT)]})["messages"][-1]
    assert reply.text == DEFAULT_REFUSAL and reply.response_metadata["finish_reason"] == "content_filter"
    steer_only = create_agent(llm, tools=[], middleware=[ScansGuardMiddleware(llm, strategy="steer")])
    reply = steer_only.invoke({"messages": [HumanMessage(PROMPT)]})["messages"][-1]
    assert reply.response_metadata["direction"] == "towards_refusal" and reply.text != DEFAULT_REFUSAL
