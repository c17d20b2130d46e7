"""The tools, argument models, JSON-schema model and prompts that the constrained-decoding tests share (the engine's
and the server's): on the tiny random model every valid call or schema-valid JSON is the constraint's doing.

The schemas are compact: the server's template puts the tools in the system turn of the tiny model's short context.
The argument models forbid extra keys, so a call with an argument the schema does not name fails validation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=6)
    unit: Literal["c", "f"]


class Add(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = Field(ge=0, le=9)
    b: bool


class City(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=6)
    country: Literal["France", "Japan"]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 6}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "boolean"}},
                "required": ["a", "b"],
            },
        },
    },
]
"""The OpenAI tool definitions of `get_weather` (arguments: `Weather`) and `add` (`Add`)."""
ARGS = {"get_weather": Weather, "add": Add}
PROMPTS = [
    "What is the weather in Paris?",
    "Add 2 and 3.",
    "Tell me a joke about cats.",
    "Which city is the capital of Japan?",
    "How do I bake bread?",
    "Write a poem about the sea.",
    "Is it going to rain in Madrid tomorrow?",
    "Sum forty and two, please.",
    "hi",
    "Translate 'good morning' into French.",
    "What is 7 times 6?",
    "List three colours.",
]
