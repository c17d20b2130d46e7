"""What a reply must be, enforced token by token: a JSON value matching a schema, a call of one of a set of tools, or
either. `Constraint` is `GenerationConfig.constraint`; `scans_guard.decoding.grammar_mask` masks the logits by it.

The grammar is llguidance's Lark with embedded JSON schemas (`%json {...}`): a tool call is written the way the chat
template shows calls (`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, Qwen2.5 / Hermes) or, for a
template without those tags, as one bare JSON object (Llama 3.1). JSON is written compactly on one line (", " and
": " between items, no other whitespace), so a model cannot pad a reply with endless whitespace; objects that list
their `properties` get no other keys unless the schema allows them explicitly (`additionalProperties`), which the
output still satisfies against the schema as given.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .tool_calls import check_tools, resolve_tool_choice, tool_name

JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TEXT_TAGS = ('"<tool_call>"', '"</tool_call>"')  # the tags as text (validation without a tokenizer)
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMAS = ("items", "additionalItems", "contains", "not", "if", "then", "else", "additionalProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")  # allOf is left as written: closing its parts could contradict


def llguidance() -> Any:
    """The llguidance module (the `structured` extra), or an ImportError that says how to install it."""
    try:
        import llguidance as module
    except ImportError as exc:  # pragma: no cover - the extra is installed by scripts/setup.sh
        raise ImportError(
            "constrained decoding (JSON schemas, forced tool calls) needs llguidance: "
            "pip install 'scans-guard[structured]'"
        ) from exc
    return module


def closed(schema: Any) -> Any:
    """A copy of `schema` whose objects with `properties` and no `additionalProperties` get no other keys."""
    if not isinstance(schema, dict):
        return schema
    out = copy.copy(schema)
    if "properties" in out and "additionalProperties" not in out and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed(v) for k, v in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(v) for v in out[key]]
    return out


def _formatted(schema: dict[str, Any]) -> dict[str, Any]:
    return {**closed(schema), "x-guidance": JSON_FORMAT}


class Constraint(BaseModel):
    """What a reply must be: a JSON value matching `json_schema`, a call of one of `tools`, or (both given) either.

    Build one with `Constraint.json_object()`, `Constraint.matching(schema)`, `Constraint.tool_call(tools, ...)` or
    `Constraint.from_openai(...)`. It is checked when built: a schema llguidance cannot compile is a ValueError
    naming the problem, before any model work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    json_schema: dict[str, Any] | None = Field(
        None, description="the reply is one JSON value matching this schema ({'type': 'object'}: any object)"
    )
    tools: list[dict[str, Any]] | None = Field(
        None,
        description="the reply calls one of these OpenAI function tools ({'type': 'function', 'function': "
        "{'name', 'parameters'}}), its arguments matching the tool's parameters schema",
    )
    parallel_tool_calls: bool = Field(True, description="more than one call in a reply (in <tool_call> tags only)")

    @field_validator("tools")
    @classmethod
    def _tools_are_functions(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if tools is None:
            return None
        if not tools:
            raise ValueError("tools is empty: give at least one tool, or no constraint")
        return check_tools(tools)

    @model_validator(mode="after")
    def _compiles(self) -> Constraint:
        if self.json_schema is None and self.tools is None:
            raise ValueError("a constraint needs a json_schema, tools, or both")
        failed, messages = llguidance().LLMatcher.validate_grammar_with_warnings(self.grammar(TEXT_TAGS))
        if failed:
            first = messages[0].strip().splitlines()[0] if messages and messages[0].strip() else "invalid grammar"
            raise ValueError(f"the schema cannot be enforced: {first}")
        return self

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls(json_schema={"type": "object"})

    @classmethod
    def matching(cls, schema: dict[str, Any]) -> Constraint:
        """A JSON value matching `schema`."""
        return cls(json_schema=schema)

    @classmethod
    def tool_call(cls, tools: list[dict[str, Any]], name: str | None = None, parallel: bool = True) -> Constraint:
        """A call of one of `tools` (only of the one called `name`, if given)."""
        chosen = resolve_tool_choice(check_tools(tools), name or "required").tools
        return cls(tools=chosen, parallel_tool_calls=parallel)

    @classmethod
    def from_openai(
        cls,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> Constraint | None:
        """The constraint of an OpenAI chat request, or None when the reply is free text.

        tool_choice "required" or a named tool: a call. response_format {"type": "json_object"} or {"type":
        "json_schema", "json_schema": {"schema": ...}} (or {"schema": ...} directly): that JSON, or, with tools
        under tool_choice "auto", either that JSON or a call. Tools under "auto" alone: free text (the model may
        call or answer). tool_choice "none": no call.
        """
        choice = resolve_tool_choice(check_tools(tools) if tools else None, tool_choice)
        schema = response_schema(response_format)
        parallel = True if parallel_tool_calls is None else bool(parallel_tool_calls)
        if choice.required:
            return cls(tools=choice.tools, parallel_tool_calls=parallel)
        if schema is None:
            return None
        return cls(json_schema=schema, tools=choice.tools, parallel_tool_calls=parallel)

    # -- grammar -------------------------------------------------------------------------------------------
    def call_schema(self) -> dict[str, Any]:
        """The JSON schema of one call: {"name": one of the tools, "arguments": that tool's parameters}."""
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool_name(t)},
                    "arguments": t["function"].get("parameters") or {"type": "object", "properties": {}},
                },
                "required": ["name", "arguments"],
            }
            for t in self.tools or []
        ]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}

    def grammar(self, call_tags: tuple[str, str] | None) -> str:
        """The Lark grammar of the reply; `call_tags`: the Lark atoms that open and close a call (None: a call is a
        bare JSON object, one per reply)."""
        rules, alternatives = ["%llguidance {}"], []
        if self.json_schema is not None:
            rules.append("content: %json " + json.dumps(_formatted(self.json_schema)))
            alternatives.append("content")
        if self.tools:
            body = "%json " + json.dumps(_formatted(self.call_schema()))
            if call_tags is None:
                rules.append(f"calls: {body}")
            else:
                rules.append(f'call: {call_tags[0]} "\\n" {body} "\\n" {call_tags[1]}')
                rules.append('calls: call ("\\n" call)*' if self.parallel_tool_calls else "calls: call")
            alternatives.append("calls")
        return "\n".join([rules[0], "start: " + " | ".join(alternatives), *rules[1:]]) + "\n"


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema an OpenAI `response_format` asks for (None: text). Raises ValueError on a malformed one."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind in ("json_object", "json_mode"):
        return {"type": "object"}
    if kind != "json_schema":
        raise ValueError(f"response_format.type must be text, json_object or json_schema, got {kind!r}")
    nested = response_format.get("json_schema")
    schema = nested.get("schema") if isinstance(nested, dict) else response_format.get("schema")
    if schema is None and isinstance(nested, dict) and "schema" not in nested:
        raise ValueError("response_format.json_schema needs a schema")
    if not isinstance(schema, dict):
        raise ValueError("response_format.json_schema.schema must be a JSON schema object")
    return schema


__all__ = ["Constraint", "closed", "response_schema"]
