"""Tool calling and structured output with the steered model: bind_tools, tool_choice, with_structured_output.

    python examples/langchain_tools.py           # the embedded default model (offline)
    python examples/langchain_tools.py --tiny    # a tiny random model built in code (max_tokens cuts its calls)

The tool schemas go to the model's chat template (Qwen2.5's has a tools section); sigma classifies the conversation
without them (it was calibrated on requests without tool schemas) and the reply, generated with them at that
verdict's steering, has its <tool_call> blocks read back as `tool_calls` (streamed as `tool_call_chunks`).
A required or named tool_choice and with_structured_output are enforced while decoding
(scans_guard.decoding.constraints): the reply is a valid call / a JSON object valid against the schema unless max_tokens
cuts it (as it does the tiny model's); `include_raw=True` keeps the raw reply and any parsing error instead of raising.
"""

from __future__ import annotations

import argparse
import sys

from langchain_core.tools import tool
from pydantic import BaseModel, Field
from scans_guard_langchain.testing import example_llm, tiny_requested


@tool
def get_weather(city: str) -> str:
    """Get the current weather of a city."""
    return f"It is sunny in {city}."


class Country(BaseModel):
    """A country and its capital."""

    name: str = Field(description="the country's name")
    capital: str = Field(description="its capital city")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny model built in code (or SCANS_GUARD_TINY=1)")
    parser.parse_args(argv)
    llm = example_llm(argv, max_tokens=8 if tiny_requested(argv) else 96)

    question = "What is the weather like in Paris right now?"
    reply = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(question)
    print(
        f"Q: {question}\n   tool calls: {reply.tool_calls}\n   text: {reply.content!r}\n"
        f"   sigma: {reply.response_metadata['label']} (score {reply.response_metadata['score']:.3f})"
    )

    streamed = None
    for chunk in llm.bind_tools([get_weather], tool_choice="any").stream(question):
        streamed = chunk if streamed is None else streamed + chunk
    print(f"   streamed tool calls: {streamed.tool_calls}")

    structured = llm.with_structured_output(Country, method="json_schema", include_raw=True)
    result = structured.invoke("Name a country in Europe and its capital.")
    print(f"structured: parsed={result['parsed']!r} error={result['parsing_error']!r}")
    return {"reply": reply, "streamed": streamed, "structured": result}


if __name__ == "__main__":
    main(sys.argv[1:])
