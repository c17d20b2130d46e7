"""Request bodies of the server's routes, validated strictly (a string where a number belongs is a 400, not coerced).

Unknown top-level fields of a chat completion are ignored, as OpenAI-compatible servers do for fields they do not
implement; fields that would change the answer and are not implemented (n > 1, functions, logprobs, penalties) are
refused with a 400 naming the field rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ...config import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY, SEED_MAX, SEED_MIN

Number = StrictInt | StrictFloat
ROLES = ("system", "developer", "user", "assistant", "tool")
EXTENSION_KEY = "scans_guard"  # the request option block and the response field the server adds to OpenAI's schema
MAX_STOP = 4


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: StrictStr
    text: StrictStr | None = None


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    arguments: StrictStr = Field(description="the call's arguments as JSON text (an object)")


class MessageToolCall(BaseModel):
    """A call an earlier assistant turn made (OpenAI's form), rendered back by the chat template."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = Field(None, description="assistant: the calls it made")
    tool_call_id: StrictStr | None = Field(None, description="tool: the call this is the result of")
    name: StrictStr | None = None


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: StrictStr | None = None
    parameters: dict | None = Field(None, description="JSON schema of the arguments (an object)")
    strict: StrictBool | None = Field(None, description="accepted; calls always match the schema when one is forced")


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ScansGuardOptions(BaseModel):
    """Per-request options under the `scans_guard` body field."""

    model_config = ConfigDict(extra="forbid")

    steer: StrictBool | None = Field(
        None,
        description="steer by the verdict (default: the server's); false: plain "
        "generation, no classification unless the policy is guard (refused when the "
        "artifact steers harmful prompts towards refusal, unless the server allows it "
        "with --allow-fixed-coefficient)",
    )
    policy: Literal["steer", "guard", "guard+steer"] | None = Field(
        None,
        description="guard+steer: a request the guard blocks (harmful, out of domain, unclassifiable) is "
        "answered with the refusal text without generating, the rest steered; guard: blocked alike, the rest "
        "unsteered; steer: nothing blocked (a server running with a guard keeps it whatever the request says)",
    )
    coefficient: Number | None = Field(
        None,
        description="fixed steering coefficient (no classification; baselines): "
        "only on a server started with --allow-fixed-coefficient, never with guard",
    )
    operating_point: Literal["guard", "steer"] | None = Field(None, description="where the label is decided")
    retry: StrictBool | None = Field(
        None,
        description="a reply sigma steered away that still refuses is generated "
        "once more, steered further; its first reply is never sent (default: the "
        "server's, scans-guard serve --retry)",
    )


class ChatCompletionRequest(BaseModel):
    """Every number has a range checked here, before any model work: out of range is a 400 naming the field.
    NaN and infinities (which Python's JSON accepts) are refused for every number."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    seed: StrictInt | None = Field(None, ge=SEED_MIN, le=SEED_MAX)  # what torch.Generator.manual_seed accepts
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[ToolSpec] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="required or a named function: the reply is a call, enforced token by token"
    )
    parallel_tool_calls: StrictBool | None = None
    functions: list | None = None
    response_format: dict | None = Field(
        None,
        description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", '
        '"schema"}}: the reply is such JSON, enforced token by token',
    )
    user: StrictStr | None = None
    # Extensions, as vLLM names them.
    top_k: StrictInt | None = Field(None, ge=1)
    repetition_penalty: Number | None = Field(None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    ignore_eos: StrictBool | None = False
    scans_guard: ScansGuardOptions | None = None


class ClassifyRequest(BaseModel):
    """`input`: one prompt, a list of prompts, or a list of conversations (each a list of messages)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    input: StrictStr | list[StrictStr | list[ChatMessage]]
    operating_point: Literal["guard", "steer"] = "guard"
