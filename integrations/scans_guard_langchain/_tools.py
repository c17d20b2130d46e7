"""Tool calling for a local chat model, LangChain's side: schemas for the chat template, tool calls read back from the
reply text (by `scans_guard.decoding.tool_calls`, which also holds the formats read) as LangChain's ToolCall /
InvalidToolCall, also while streaming, and `with_structured_output`.

A required or named tool_choice and a response_format are enforced by the core's constrained decoding
(`scans_guard.decoding.constraints`): the chat model turns them into `GenerationConfig.constraint`, so such a reply is a
valid call or a schema-valid JSON value, unless it runs out of max_tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from scans_guard.decoding import tool_calls as core
from scans_guard.decoding.constraints import response_schema
from scans_guard.decoding.tool_calls import resolve_tool_choice


def tool_schemas(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools, pydantic models, functions or dict schemas -> OpenAI-style function schemas."""
    return [convert_to_openai_tool(t) for t in tools]


def chosen_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> list[dict[str, Any]] | None:
    """The schemas the chat template gets under `tool_choice` (see
    `scans_guard.decoding.tool_calls.resolve_tool_choice`; a name that is not bound is an InvalidArgumentError)."""
    return resolve_tool_choice(tools, tool_choice).tools


def _langchain(parsed: core.ParsedReply) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    calls = [ToolCall(type="tool_call", name=c.name, args=c.arguments, id=c.id) for c in parsed.calls]
    invalid = [
        InvalidToolCall(type="invalid_tool_call", name=c.name, args=c.raw, id=c.id, error=c.error)
        for c in parsed.invalid
    ]
    return parsed.content, calls, invalid


def parse_tool_calls(
    text: str, tools: list[dict[str, Any]] | None
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """(content, tool calls, invalid tool calls) of a reply; without bound tools the text is left as it is."""
    return _langchain(core.parse_tool_calls(text, tools))


class ToolCallStream(core.ToolCallStream):
    """`scans_guard.decoding.tool_calls.ToolCallStream` whose `finish` gives LangChain's tool calls."""

    def finish(self) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:  # type: ignore[override]
        """(text not yet released, tool calls, invalid tool calls)."""
        return _langchain(super().finish())


def tool_call_chunks(calls: list[ToolCall], invalid: list[InvalidToolCall]) -> list[dict[str, Any]]:
    """Streaming form of the calls (one chunk per call, its arguments as JSON text)."""
    chunks = [
        {"type": "tool_call_chunk", "name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
        for i, c in enumerate(calls)
    ]
    chunks += [
        {
            "type": "tool_call_chunk",
            "name": c.get("name"),
            "args": c.get("args"),
            "id": c.get("id"),
            "index": len(calls) + i,
        }
        for i, c in enumerate(invalid)
    ]
    return chunks


def json_instruction(response_format: dict[str, Any]) -> str | None:
    """A system instruction asking for one JSON object (matching the schema, for json_schema); None for text. The
    schema itself is enforced by decoding; the instruction tells the model what the fields are for."""
    if response_format.get("type") == "text":
        return None
    schema = response_schema(response_format)
    if response_format.get("type") != "json_schema":
        return "Reply with one JSON object and nothing else."
    return "Reply with one JSON object and nothing else. It must match this JSON schema:\n" + json.dumps(
        schema, ensure_ascii=False
    )


def with_instruction(conversation: list[dict[str, Any]], instruction: str | None) -> list[dict[str, Any]]:
    """The conversation with `instruction` appended to its first system message (one is added if none)."""
    if not instruction:
        return conversation
    if conversation and conversation[0]["role"] == "system":
        first = {**conversation[0], "content": f"{conversation[0]['content']}\n\n{instruction}".strip()}
        return [first, *conversation[1:]]
    return [{"role": "system", "content": instruction}, *conversation]


def structured_output(llm: Any, schema: Any, *, method: str, include_raw: bool) -> Runnable:
    """`with_structured_output` of a model with `bind_tools` (see SafetyConsciousLLM.with_structured_output)."""
    pydantic_class = isinstance(schema, type) and is_basemodel_subclass(schema)
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        bound = llm.bind_tools(
            [schema],
            tool_choice=name,
            parallel_tool_calls=False,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser: Runnable = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)
            if pydantic_class
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    elif method in ("json_schema", "json_mode"):
        json_schema = None
        if method == "json_schema":
            json_schema = schema.model_json_schema() if pydantic_class else convert_to_json_schema(schema)
        bound = llm.bind(
            response_format={"type": method, "schema": json_schema},
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic_class else JsonOutputParser()
    else:
        raise ValueError(f"method must be function_calling, json_schema or json_mode, got {method!r}")
    if not include_raw:
        return bound | parser
    parse = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parse.with_fallbacks([fallback], exception_key="parsing_error")


__all__ = [
    "ToolCallStream",
    "chosen_tools",
    "json_instruction",
    "parse_tool_calls",
    "structured_output",
    "tool_call_chunks",
    "tool_schemas",
    "with_instruction",
]
