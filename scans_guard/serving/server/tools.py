"""Tool calls and structured output of chat completions.

A request's `tools`, `tool_choice`, `parallel_tool_calls` and `response_format` become the tool schemas the chat
template gets and the `Constraint` the reply is decoded under (checked before any model work: a malformed tool or a
schema that cannot be enforced is a 400 naming the field). The reply's tool calls come back in OpenAI's shape,
`message.tool_calls` with finish_reason "tool_calls", whole or streamed (the call markup is held back, the calls sent
as the last delta). A request the guard blocks gets the refusal text and finish_reason "content_filter": it is never
decoded, so never forced into a call.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ...decoding.constraints import Constraint, response_schema
from ...decoding.tool_calls import ToolCallStream, openai_tool_calls, parse_tool_calls, resolve_tool_choice
from ...errors import InvalidArgumentError
from ...model.loading import ToolConversation
from .errors import ApiError
from .schemas import ROLES, ChatCompletionRequest, ChatMessage


def _bad(param: str, exc: Exception) -> ApiError:
    if isinstance(exc, ValidationError):
        message = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()[:3])
    else:
        message = str(exc)
    return ApiError(400, message, param=param, code="invalid_value")


def _enforceable(param: str, **fields: Any) -> Constraint:
    try:
        return Constraint(**fields)
    except (ValidationError, ValueError) as exc:
        raise _bad(param, exc) from None


def chat_tools(body: ChatCompletionRequest) -> tuple[list[dict] | None, Constraint | None]:
    """(the tool schemas the chat template gets, the reply's constraint or None) of a request.

    tool_choice "required" or a named function: the reply is a call of one of those tools; response_format
    json_object / json_schema: the reply is that JSON (or, with tools under "auto", that JSON or a call); tools
    under "auto" alone: free text, in which the model may call. "none": no tools.
    """
    if body.functions:
        raise ApiError(400, "functions are not supported: use tools", param="functions", code="unsupported_parameter")
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    choice = (
        body.tool_choice
        if body.tool_choice is None or isinstance(body.tool_choice, str)
        else body.tool_choice.model_dump()
    )
    if choice not in (None, "none", "auto") and not tools:
        raise ApiError(400, f"tool_choice {choice!r} needs tools", param="tool_choice", code="invalid_value")
    try:
        chosen = resolve_tool_choice(tools, choice)
        schema = response_schema(body.response_format)
    except (InvalidArgumentError, ValueError) as exc:
        raise _bad("tool_choice" if isinstance(exc, InvalidArgumentError) else "response_format", exc) from None
    if tools:
        _enforceable("tools", tools=tools)  # every tool's parameters, whether or not this reply must call
    if schema is not None:
        _enforceable("response_format", json_schema=schema)
    try:
        constraint = Constraint.from_openai(tools, choice, body.response_format, body.parallel_tool_calls)
    except (ValidationError, ValueError) as exc:
        raise _bad("tools", exc) from None
    return chosen.tools, constraint


def conversation(body: ChatCompletionRequest, tools: list[dict] | None) -> list[dict]:
    """The engine's conversation of a request (a ToolConversation when the template gets tools)."""
    messages = chat_messages(body.messages)
    return ToolConversation(messages, tools) if tools else messages


def chat_messages(messages: list[ChatMessage], param: str = "messages") -> list[dict]:
    """OpenAI messages -> the engine's conversation (text only; developer is a system turn; an assistant turn's
    tool calls and a tool turn's result kept for the chat template)."""
    out = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise ApiError(
                400,
                f"unsupported role {m.role!r}: one of {', '.join(ROLES)}",
                param=f"{param}.{i}.role",
                code="invalid_value",
            )
        content = m.content
        if isinstance(content, list):
            bad = [p.type for p in content if p.type != "text" or p.text is None]
            if bad:
                raise ApiError(
                    400,
                    f"only text content parts are supported, got {bad[0]!r}",
                    param=f"{param}.{i}.content",
                    code="invalid_value",
                )
            content = "".join(p.text or "" for p in content)  # every part has text (checked above)
        if content is None and m.role == "assistant" and m.tool_calls:
            content = ""
        if content is None:
            raise ApiError(400, "message content must be text", param=f"{param}.{i}.content", code="invalid_value")
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.role == "tool" and i == 0:
            raise ApiError(400, "a tool message answers an earlier call", param=f"{param}.0.role", code="invalid_value")
        if m.tool_calls and m.role == "assistant":
            message["tool_calls"] = [_called(c, f"{param}.{i}.tool_calls.{k}") for k, c in enumerate(m.tool_calls)]
        if m.role == "tool" and m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        if m.role == "tool" and m.name is not None:
            message["name"] = m.name
        out.append(message)
    return out


def _called(call: Any, param: str) -> dict[str, Any]:
    """An earlier call for the chat template: its arguments as an object (templates write them with tojson)."""
    try:
        arguments = json.loads(call.function.arguments)
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ApiError(
            400, "arguments must be a JSON object", param=f"{param}.function.arguments", code="invalid_value"
        )
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def reply_message(text: str, tools: list[dict] | None, refused: bool, finish: str) -> tuple[dict, str]:
    """(the assistant message, finish_reason) of a whole reply: its calls under tool_calls, if it made any."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if not tools or refused:
        return message, finish
    content, calls, _invalid = parse_tool_calls(text, tools)
    if not calls:
        return message, finish
    message.update(content=content or None, tool_calls=openai_tool_calls(calls))
    return message, "tool_calls" if finish == "stop" else finish


class StreamedReply:
    """A streamed reply's text deltas with tool-call markup held back (`feed`), then its calls (`finish`)."""

    def __init__(self, tools: list[dict] | None):
        self.tools = tools
        self.held = ToolCallStream(tools)

    def feed(self, piece: str) -> str:
        return self.held.feed(piece)

    def finish(self, finish: str) -> tuple[str, list[dict], str]:
        """(text not yet sent, the calls as tool_calls deltas, finish_reason)."""
        rest, calls, _invalid = self.held.finish()
        if not calls:
            return rest, [], finish
        deltas = [{"index": i, **call} for i, call in enumerate(openai_tool_calls(calls))]
        return rest, deltas, "tool_calls" if finish == "stop" else finish
