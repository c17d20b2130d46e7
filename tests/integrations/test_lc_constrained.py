"""bind_tools with a required or named tool_choice, and with_structured_output, enforced by the core's constrained
decoding: on the tiny random model (whose free replies are gibberish) every reply is a valid call or a valid object,
and a prompt the guard blocks still gets the refusal."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.exceptions import ModelRefusalError
from pydantic import BaseModel, Field
from scans_guard_langchain import SafetyConsciousLLM

from scans_guard import ScansEngine
from scans_guard.sigma.decision import DEFAULT_REFUSAL
from scans_guard.testing import tiny_model

pytest.importorskip("llguidance", reason="constrained decoding needs the [structured] extra")


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=6)
    unit: Literal["c", "f"]


class Add(BaseModel):
    """Add two small numbers."""

    a: int = Field(ge=0, le=9)
    b: int = Field(ge=0, le=9)


class Capital(BaseModel):
    """A country and its capital."""

    country: Literal["France", "Japan", "Spain"]
    capital: str = Field(max_length=6)
    sure: bool


SCHEMAS = {"GetWeather": GetWeather, "Add": Add}
PROMPTS = [
    "Paris is the capital of which country? Answer as JSON with name and country.",
    "What is the weather in Rome?",
    "Add 4 and 5.",
    "Tell me about the sea.",
    "hi",
    "Which is bigger, 3 or 7?",
]


@pytest.fixture(scope="module")
def llm(tiny_long_engine):
    return SafetyConsciousLLM(engine=tiny_long_engine, policy="steer", max_tokens=200)


def _valid(reply) -> list[str]:
    assert reply.tool_calls and not reply.invalid_tool_calls, reply
    for call in reply.tool_calls:
        SCHEMAS[call["name"]].model_validate(call["args"])
    return [c["name"] for c in reply.tool_calls]


def test_required_and_named_tool_choice_are_valid_calls(llm):
    any_tool = llm.bind_tools([GetWeather, Add], tool_choice="any", parallel_tool_calls=False)
    named = llm.bind_tools([GetWeather, Add], tool_choice="Add", parallel_tool_calls=False)
    for prompt in PROMPTS:
        reply = any_tool.invoke(prompt)
        assert len(_valid(reply)) == 1 and reply.response_metadata["finish_reason"] == "tool_calls"
        assert _valid(named.invoke(prompt)) == ["Add"]
    chunks = list(any_tool.stream(PROMPTS[1]))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert _valid(merged) == _valid(any_tool.invoke(PROMPTS[1]))
    free = [llm.bind_tools([GetWeather, Add]).invoke(p) for p in PROMPTS[:3]]  # "auto": no constraint
    assert not any(r.tool_calls for r in free)


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_with_structured_output_is_never_none(llm, method):
    structured = llm.with_structured_output(Capital, method=method)
    for prompt in PROMPTS:
        assert isinstance(structured.invoke(prompt), Capital)
    raw = llm.with_structured_output(Capital, method=method, include_raw=True).invoke(PROMPTS[0])
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Capital)


def test_a_blocked_prompt_gets_the_refusal_not_a_forced_call(tiny_artifact):
    harmful = ScansEngine(tiny_model("qwen2", seed=0, context=2048), tiny_artifact.with_thresholds(steer=-1, guard=-1))
    llm = SafetyConsciousLLM(engine=harmful, max_tokens=200)  # guard+steer: every prompt is blocked
    reply = llm.bind_tools([GetWeather], tool_choice="any").invoke(PROMPTS[1])
    assert reply.text == DEFAULT_REFUSAL and not reply.tool_calls
    assert reply.response_metadata["finish_reason"] == "content_filter"
    with pytest.raises(ModelRefusalError):  # LangChain's parsers read the refusal block of the reply
        llm.with_structured_output(Capital).invoke(PROMPTS[0])
    raw = llm.with_structured_output(Capital, method="json_schema", include_raw=True).invoke(PROMPTS[0])
    assert raw["raw"].text == DEFAULT_REFUSAL and raw["parsed"] is None
