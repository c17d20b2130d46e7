"""LangChain inputs -> scans-guard conversations (a str, or a list of {"role", "content"} dicts with str content)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.prompt_values import PromptValue

from scans_guard.errors import InvalidPromptError

Conversation = str | list[dict[str, Any]]

# Blocks a model writes besides its text (tool calls, reasoning): not part of what the next turn is conditioned on.
_SKIPPED_BLOCKS = frozenset(
    {
        "reasoning",
        "thinking",
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "server_tool_call",
        "server_tool_call_chunk",
        "server_tool_result",
        "tool_use",
        "function_call",
    }
)


def _role(message: BaseMessage) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, FunctionMessage):
        return "function"
    if isinstance(message, ChatMessage):
        return message.role
    raise InvalidPromptError(f"unsupported message type {type(message).__name__}")


def message_text(message: BaseMessage) -> str:
    """The text of a message; text blocks are joined, non-text data blocks raise InvalidPromptError.

    Tool-call and reasoning blocks (which a model writes besides its answer) are skipped; images, audio, files
    and unknown provider blocks raise, because sigma and the steered model read text only.
    """
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and "source_type" not in block:
            parts.append(str(block.get("text", "")))
        elif kind == "text-plain" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind == "refusal":
            parts.append(str(block.get("refusal", "")))
        elif kind in _SKIPPED_BLOCKS:
            continue
        else:
            raise InvalidPromptError(
                f"{type(message).__name__} has a {kind!r} content block; scans-guard models read text only "
                "(send text, or text blocks)"
            )
    return "".join(parts)


def _message_dict(message: BaseMessage) -> dict[str, Any]:
    """One message for the chat template; an AI message's tool calls go under "tool_calls" (OpenAI's form, which
    Hugging Face chat templates read), a tool result keeps its call id and name."""
    out: dict[str, Any] = {"role": _role(message), "content": message_text(message)}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"id": c.get("id"), "type": "function", "function": {"name": c["name"], "arguments": c.get("args") or {}}}
            for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
        if message.name:
            out["name"] = message.name
    return out


def messages_to_conversation(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> [{"role", "content"}] for the chat template (the whole history: system turns, tool
    calls and tool results kept)."""
    if not messages:
        raise InvalidPromptError("the conversation is empty")
    return [_message_dict(m) for m in messages]


def _is_role_dict_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in value)
    )


def to_conversation(value: Any) -> Conversation:
    """Any classifier input -> a conversation.

    str: one user turn. PromptValue, BaseMessage, a sequence of messages or message-likes ((role, text) tuples,
    {"role", "content"} dicts): the whole conversation.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, PromptValue):
        return messages_to_conversation(value.to_messages())
    if isinstance(value, BaseMessage):
        return messages_to_conversation([value])
    if _is_role_dict_list(value):
        return [{"role": str(m["role"]), "content": m["content"]} for m in value]
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        try:
            messages = convert_to_messages(value)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise InvalidPromptError(f"cannot read {type(value).__name__} as a conversation: {exc}") from exc
        return messages_to_conversation(messages)
    if isinstance(value, Mapping):
        raise InvalidPromptError(
            f"got a {type(value).__name__} with keys {sorted(map(str, value))}: set input_key=<key> on the guard "
            "or classifier to classify that value (a guard still passes the whole dict on)"
        )
    raise InvalidPromptError(f"expected a str, a PromptValue or messages, got {type(value).__name__}")


def select_input(value: Any, input_key: str | None) -> Any:
    """What to classify of a guard's input: `value[input_key]` for a dict (chains pass dicts), else `value`."""
    if input_key is None or not isinstance(value, Mapping):
        return value
    if input_key not in value:
        raise InvalidPromptError(f"input_key {input_key!r} is not in the input (keys {sorted(map(str, value))})")
    return value[input_key]


def last_user_text(conversation: Conversation) -> str:
    """The latest user turn's text (the prompt a refusal judge and log records refer to)."""
    if isinstance(conversation, str):
        return conversation
    for m in reversed(conversation):
        if m["role"] == "user":
            return m["content"]
    return conversation[-1]["content"] if conversation else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseMessage):
        return {"role": _role(value), "content": message_text(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    return value


def state_to_conversation(state: Any) -> Conversation:
    """A decision model's `State` -> a conversation sigma can score.

    str, a message or a list of messages: as `to_conversation`. A mapping with "messages" (agent state, as
    `AutoModeMiddleware` sends it): those messages, then one user turn holding the other keys as JSON (e.g. the
    proposed tool call), so sigma scores the request that the action would carry out. Any other JSON value: one
    user turn holding it as JSON.
    """
    if isinstance(state, (str, PromptValue, BaseMessage)):
        return to_conversation(state)
    if isinstance(state, Mapping):
        rest = {k: v for k, v in state.items() if k != "messages"}
        messages = state.get("messages")
        conversation: list[dict[str, str]] = []
        if isinstance(messages, Sequence) and not isinstance(messages, str) and messages:
            conv = to_conversation(list(messages))
            conversation = [{"role": "user", "content": conv}] if isinstance(conv, str) else conv
        if rest or not conversation:
            conversation.append(
                {"role": "user", "content": json.dumps(_jsonable(rest), ensure_ascii=False, default=str)}
            )
        return conversation
    if isinstance(state, Sequence) and state and all(isinstance(m, BaseMessage) for m in state):
        return to_conversation(list(state))
    return json.dumps(_jsonable(state), ensure_ascii=False, default=str)
