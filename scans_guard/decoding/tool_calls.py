"""Tool calls in reply text, as models write them: read into calls (or invalid ones, with the reason), held back while
streaming, and `tool_choice` resolved. One implementation for the server and the LangChain layer.

Formats read: `<tool_call>{"name", "arguments"}</tool_call>` (Qwen2.5, Hermes; also unterminated at the end of a
reply), `[TOOL_CALLS][{"name", "arguments"}, ...]` (Mistral), and a JSON object `{"name", "parameters" |
"arguments"}` that is the whole reply (Llama 3.1, optionally after `<|python_tag|>`) or its one fenced code block
(how Qwen2.5-Coder-0.5B writes calls unconstrained: measured on LangChain's standard tests). A bare or fenced object
with other keys is a JSON answer, not a call. A constrained reply (`scans_guard.decoding.constraints`) is always in the
first form, or the second-to-last where the chat template has no `<tool_call>` tags.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from ..errors import InvalidArgumentError

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.S)
MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "```")


class ToolCall(BaseModel):
    """A call the reply made: a bound tool's name and its arguments (a JSON object)."""

    id: str
    name: str
    arguments: dict[str, Any]


class InvalidToolCall(BaseModel):
    """Call markup that is not a valid call: not JSON, not {"name", "arguments"}, or an unbound tool."""

    id: str
    name: str | None = None
    raw: str = Field(description="the call's text (its arguments' JSON where those parsed)")
    error: str


class ParsedReply(NamedTuple):
    content: str
    calls: list[ToolCall]
    invalid: list[InvalidToolCall]


class ToolChoice(NamedTuple):
    """`tool_choice` resolved: the schemas the chat template gets, and whether the reply must call one of them."""

    tools: list[dict[str, Any]] | None
    required: bool


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_name(tool: dict[str, Any]) -> str:
    return tool["function"]["name"]


def check_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI function tools ({"type": "function", "function": {"name", "description"?, "parameters"?}}), checked:
    names unique and non-empty, parameters a JSON object schema. Returns them as a list."""
    out = list(tools)
    for i, tool in enumerate(out):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise InvalidArgumentError(f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}')
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise InvalidArgumentError(f"tools[{i}].function.name must be 1-64 letters, digits, _ . or -, got {name!r}")
        if not isinstance(function.get("parameters", {}), dict):
            raise InvalidArgumentError(f"tools[{i}].function.parameters must be a JSON schema object")
    names = [tool_name(t) for t in out]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"tool names must be unique, got {names}")
    return out


def resolve_tool_choice(tools: list[dict[str, Any]] | None, tool_choice: Any) -> ToolChoice:
    """What `tool_choice` asks for: None / "auto": every tool, a call optional; "none" / False: no tools;
    "any" / "required" / True: every tool, a call required; a tool's name or {"type": "function", "function":
    {"name": ...}}: that tool only, a call required. A name that is not among `tools` is an InvalidArgumentError."""
    if not tools or tool_choice in (None, "auto"):
        return ToolChoice(tools or None, False)
    if tool_choice in ("none", False):
        return ToolChoice(None, False)
    if tool_choice in ("any", "required", True):
        return ToolChoice(tools, True)
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else tool_choice
    chosen = [t for t in tools if tool_name(t) == name]
    if not isinstance(name, str) or not chosen:
        raise InvalidArgumentError(f"tool_choice {tool_choice!r} names no bound tool ({[tool_name(t) for t in tools]})")
    return ToolChoice(chosen, True)


def _read_call(raw: str, names: set[str] | None) -> ToolCall | InvalidToolCall:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return InvalidToolCall(id=call_id(), raw=raw, error=f"not JSON: {exc}")
    args = data.get("arguments", data.get("parameters", {})) if isinstance(data, dict) else None
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not isinstance(args, dict):
        return InvalidToolCall(
            id=call_id(),
            name=name if isinstance(name, str) else None,
            raw=raw,
            error='a tool call is {"name": str, "arguments": object}',
        )
    if names is not None and name not in names:
        return InvalidToolCall(
            id=call_id(), name=name, raw=json.dumps(args), error=f"{name!r} is not a bound tool ({sorted(names)})"
        )
    return ToolCall(id=call_id(), name=name, arguments=args)


def _split_calls(text: str) -> tuple[str, list[str], bool]:
    """(the text outside tool-call markup, the raw JSON of each call, whether the form is a bare / fenced object,
    which is a call only if it looks like one)."""
    if "<tool_call>" in text:
        return _HERMES.sub("", text).strip(), [m.group(1) for m in _HERMES.finditer(text)], False
    if "[TOOL_CALLS]" in text:
        head, _, tail = text.partition("[TOOL_CALLS]")
        try:
            calls = json.loads(tail.strip())
        except json.JSONDecodeError:
            return head.strip(), [tail.strip()], False
        calls = calls if isinstance(calls, list) else [calls]
        return head.strip(), [json.dumps(c) for c in calls], False
    bare = text.strip().removeprefix("<|python_tag|>").strip()
    if bare.startswith("{") and bare.endswith("}"):
        return "", [bare], True
    fenced = list(_FENCED.finditer(text))
    if len(fenced) == 1:
        return (text[: fenced[0].start()] + text[fenced[0].end() :]).strip(), [fenced[0].group(1)], True
    return text, [], False


def _looks_like_call(raw: str) -> bool:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("name"), str)
        and ("arguments" in data or "parameters" in data)
        and len(data) == 2
    )


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None) -> ParsedReply:
    """(content, tool calls, invalid tool calls) of a reply; without tools the text is left as it is."""
    if not tools:
        return ParsedReply(text, [], [])
    names = {tool_name(t) for t in tools}
    content, raws, lenient = _split_calls(text)
    if lenient and not _looks_like_call(raws[0]):
        return ParsedReply(text, [], [])  # a JSON answer, not a call
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raws:
        call = _read_call(raw, names)
        if isinstance(call, ToolCall):
            calls.append(call)
        else:
            invalid.append(call)
    return ParsedReply(content, calls, invalid)


class ToolCallStream:
    """Streams a reply's text while holding back what may be tool-call markup; `finish` parses the whole reply.

    Text before a marker (or before a tail that could begin one) is released at once; a reply that opens with
    "{" is held whole, since it may be a bare JSON call.
    """

    def __init__(self, tools: list[dict[str, Any]] | None):
        self.tools = tools
        self.text = ""
        self.released = 0

    def feed(self, piece: str) -> str:
        self.text += piece
        if not self.tools:
            return self._release(len(self.text))
        starts = [i for m in MARKERS if (i := self.text.find(m)) >= 0]
        end = min(starts) if starts else len(self.text)
        if not starts:
            for k in range(min(len(self.text), max(map(len, MARKERS))), 0, -1):
                if any(m.startswith(self.text[-k:]) for m in MARKERS):
                    end = len(self.text) - k
                    break
        if self.released == 0 and (not self.text.strip() or self.text.lstrip().startswith("{")):
            end = 0  # maybe a bare JSON call: wait for the whole reply
        return self._release(max(end, self.released))

    def _release(self, end: int) -> str:
        out, self.released = self.text[self.released : end], end
        return out

    def finish(self) -> ParsedReply:
        """(text not yet released, tool calls, invalid tool calls)."""
        content, calls, invalid = parse_tool_calls(self.text, self.tools)
        done = self.text[: self.released]
        rest = content[len(done) :] if content.startswith(done) else ""
        return ParsedReply(rest, calls, invalid)


def openai_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """The calls in OpenAI's message form (`arguments` as JSON text)."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
        for c in calls
    ]


__all__ = [
    "InvalidToolCall",
    "ParsedReply",
    "ToolCall",
    "ToolCallStream",
    "ToolChoice",
    "check_tools",
    "openai_tool_calls",
    "parse_tool_calls",
    "resolve_tool_choice",
]
