"""Tool calling for a local chat model: schemas for the chat template, tool_choice, and tool calls read back from
the reply text (in the forms models write them), also while streaming.

Formats read: `<tool_call>{"name", "arguments"}</tool_call>` (Qwen2.5, Hermes; also unterminated at the end of a
reply), `[TOOL_CALLS][{"name", "arguments"}, ...]` (Mistral), and a JSON object `{"name", "parameters" |
"arguments"}` that is the whole reply (Llama 3.1, optionally after `<|python_tag|>`) or its one fenced code block
(how Qwen2.5-Coder-0.5B writes calls: measured on the standard tests). A bare or fenced object with other keys is
a JSON answer, not a call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, cast

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from scans_guard.errors import InvalidArgumentError

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.S)
_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "```")


_CALL_ONE = "Answer by calling one of the functions above, in a <tool_call></tool_call> block."


def tool_schemas(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools, pydantic models, functions or dict schemas -> OpenAI-style function schemas."""
    return [convert_to_openai_tool(t) for t in tools]


def chosen_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> tuple[list[dict] | None, str | None]:
    """(the schemas to send, the instruction that asks for a call) under `tool_choice`.

    None / "auto": every tool, no instruction. "none" / False: no tools. "any" / "required" / True: every tool,
    and an instruction to call one. A tool's name (or {"type": "function", "function": {"name": ...}}): that tool
    only, and an instruction to call it. A local model cannot be forced token by token here, so a forced choice
    is a strong request, not a guarantee; a reply without a call stays a text reply.
    """
    if not tools or tool_choice in (None, "auto"):
        return tools or None, None
    if tool_choice in ("none", False):
        return None, None
    if tool_choice in ("any", "required", True):
        return tools, _CALL_ONE
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else tool_choice
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not isinstance(name, str) or not chosen:
        raise InvalidArgumentError(
            f"tool_choice {tool_choice!r} names no bound tool ({[t['function']['name'] for t in tools]})"
        )
    return chosen, _CALL_ONE  # naming the function made the 0.5B model write prose about it instead (measured)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _read_call(raw: str, names: set[str] | None) -> ToolCall | InvalidToolCall:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return InvalidToolCall(type="invalid_tool_call", name=None, args=raw, id=_call_id(), error=f"not JSON: {exc}")
    args = data.get("arguments", data.get("parameters", {})) if isinstance(data, dict) else None
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not isinstance(args, dict):
        return InvalidToolCall(
            type="invalid_tool_call",
            name=name if isinstance(name, str) else None,
            args=raw,
            id=_call_id(),
            error='a tool call is {"name": str, "arguments": object}',
        )
    if names is not None and name not in names:
        return InvalidToolCall(
            type="invalid_tool_call",
            name=name,
            args=json.dumps(args),
            id=_call_id(),
            error=f"{name!r} is not a bound tool ({sorted(names)})",
        )
    return ToolCall(type="tool_call", name=name, args=args, id=_call_id())


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


def parse_tool_calls(
    text: str, tools: list[dict[str, Any]] | None
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """(content, tool calls, invalid tool calls) of a reply; without bound tools the text is left as it is."""
    if not tools:
        return text, [], []
    names = {t["function"]["name"] for t in tools}
    content, raws, lenient = _split_calls(text)
    if lenient and not _looks_like_call(raws[0]):
        return text, [], []  # a JSON answer, not a call
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raws:
        call = _read_call(raw, names)
        # its "type" key says which it is; mypy cannot narrow on it (ToolCall's "type" is NotRequired)
        if call.get("type") == "tool_call":
            calls.append(cast(ToolCall, call))
        else:
            invalid.append(cast(InvalidToolCall, call))
    return content, calls, invalid


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
        starts = [i for m in _MARKERS if (i := self.text.find(m)) >= 0]
        end = min(starts) if starts else len(self.text)
        if not starts:
            for k in range(min(len(self.text), max(map(len, _MARKERS))), 0, -1):
                if any(m.startswith(self.text[-k:]) for m in _MARKERS):
                    end = len(self.text) - k
                    break
        if self.released == 0 and (not self.text.strip() or self.text.lstrip().startswith("{")):
            end = 0  # maybe a bare JSON call: wait for the whole reply
        return self._release(max(end, self.released))

    def _release(self, end: int) -> str:
        out, self.released = self.text[self.released : end], end
        return out

    def finish(self) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
        """(text not yet released, tool calls, invalid tool calls)."""
        content, calls, invalid = parse_tool_calls(self.text, self.tools)
        done = self.text[: self.released]
        rest = content[len(done) :] if content.startswith(done) else ""
        return rest, calls, invalid


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


def json_instruction(response_format: dict[str, Any]) -> str:
    """A system instruction asking for one JSON object (matching the schema, for json_schema)."""
    nested = response_format.get("json_schema")  # OpenAI's form, as create_agent's ProviderStrategy sends it
    schema = nested.get("schema") if isinstance(nested, dict) else response_format.get("schema")
    if schema is None:
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
            [schema], tool_choice=name, ls_structured_output_format={"kwargs": {"method": method}, "schema": schema}
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
