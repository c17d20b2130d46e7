"""SafetyConsciousLLM: a LangChain chat model that runs a local model with SCANS steering (scans_guard.ScansEngine).

Per call, the whole conversation goes through the model's chat template; sigma(q) is computed on it (one forward
pass over chat(q) + r_pos, whose KV cache the generation reuses), and the reply is decoded with the recipe's signed
coefficient at the steering layers: benign prompts are steered away from refusal; prompts at or above the steer
threshold get +alpha_harmful, which is 0 in the shipped recipe. Under the default policy, guard+steer, the same pass
blocks what the core guard rejects (harmful, out of domain, unclassifiable): answered with the refusal message.

Concurrency model: every call is a request on the engine's step scheduler (`ScansEngine.scheduler`, as the server's
are), so calls in flight at once (threads, `batch`, asyncio tasks) share its decoding batches, each row with its own
steering. Sync methods wait on their request's handle; async methods await it (`ScansEngine.aiter_generate`), so the
event loop never waits on a decoding step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, ModelProfile
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, model_validator

from scans_guard.config import SteeredOutput
from scans_guard.engine import ScansEngine
from scans_guard.sigma.decision import DEFAULT_POLICY, DEFAULT_REFUSAL, GuardPolicy, Policy, check_policy, policy_blocks
from scans_guard.steering.judge import KeywordJudge
from scans_guard.steering.retry import RetryPolicy

from ._calls import ChatCall, async_chunks, sync_chunks
from ._convert import messages_to_conversation
from ._messages import PROVIDER, refusal_message  # noqa: F401 - refusal_message re-exported
from ._report import aemit_event, emit_event
from ._tools import chosen_tools, parse_tool_calls, structured_output, tool_schemas

if TYPE_CHECKING:
    from .classifier import SafetyClassifier, ScansDecisionModel


class SafetyConsciousLLM(BaseChatModel):
    """A local chat model with safety-conscious activation steering (SCANS), as a LangChain chat model.

    Build it from an engine (`SafetyConsciousLLM(engine=ScansEngine.load(...))`), or with `from_default()` /
    `load(model, artifact)`. `response_metadata` of every reply carries sigma's verdict (score, label, threshold,
    probability, direction, alpha = the signed steering coefficient), the steering and classification layers, the
    timings, and `refusal` (whether `refusal_judge` finds that the reply refuses; if so, `content_blocks` ends with
    LangChain's standard refusal block).

    Tool calling: `bind_tools` sends the tool schemas to the chat template (`tools=`), and tool calls in the reply
    (as the model writes them, see `scans_guard.decoding.tool_calls`) become `tool_calls` / `invalid_tool_calls`
    (streamed as `tool_call_chunks`). A required or named `tool_choice`, a `response_format` and
    `with_structured_output` are enforced token by token (`scans_guard.decoding.constraints`): the reply is a valid call
    / schema-valid JSON unless it runs out of max_tokens. A prompt the guard blocks still gets the refusal message,
    never a forced call. Not supported: non-text content blocks (InvalidPromptError).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    engine: ScansEngine = Field(exclude=True)
    """The local model and its calibrated artifact (owned by this chat model; shared by its classifier)."""
    model_name: str | None = Field(default=None, alias="model")
    """Reported name (traces, `response_metadata["model_name"]`); defaults to the engine's model name."""
    temperature: float = Field(0.0, ge=0)
    """0 = greedy decoding."""
    max_tokens: int = Field(256, ge=1)
    """Most new tokens per reply."""
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    """Sampling seed (temperature > 0); None draws a fresh one per call."""
    stop: list[str] | None = None
    """Default stop strings; the reply is cut before the first one."""
    policy: Policy = DEFAULT_POLICY
    """"guard+steer" (default): a prompt `guard` blocks (harmful at the guard point, outside sigma's calibration
    domain, unclassifiable) is answered with `refusal_message` without generating (finish_reason
    "content_filter"), the rest steered; "guard": blocked alike, the rest unsteered; "steer": nothing blocked."""
    guard: GuardPolicy = Field(default_factory=GuardPolicy)
    """The blocking rule of the guard policies (e.g. `GuardPolicy(out_of_domain="grey")` lets out-of-domain
    prompts through, unsteered)."""
    refusal_message: str = DEFAULT_REFUSAL
    """What a blocked prompt is answered with."""
    steer: bool = True
    """False: no steering (under policy "steer": plain generation, no classification: the unsteered baseline)."""
    coefficient: float | None = None
    """Fixed signed steering coefficient for every prompt instead of sigma's (no classification)."""
    retry: RetryPolicy | None = None
    """A reply sigma steered away from refusal that the policy's judge still finds refusing is generated once more,
    steered `factor` times as far (`scans_guard.steering.retry`; fewer false refusals, slightly less safe:
    docs/steering.md). None (default): one reply. With tools bound the coefficient is fixed: no retry."""
    refusal_judge: Callable[[str, str], bool] | None = Field(default_factory=KeywordJudge, exclude=True)
    """(prompt, reply) -> refused?; None: never flag refusals."""
    streaming: bool = False
    """Stream from `invoke` as well (LangChain's standard flag)."""
    timeout: float | None = Field(None, gt=0)
    """Seconds a call may run; past it, decoding stops between two steps with
    `ScansGuardTimeoutError` (a TimeoutError). The classification pass is not interrupted (`max_input_tokens`
    bounds it). None: no limit."""
    max_retries: int | None = None
    """Accepted for LangChain's standard parameters; unused (a local model has nothing to retry)."""
    log_level: int | None = logging.DEBUG
    """Level of the per-call verdict log record (logger `scans_guard_langchain.llm`); None: no record."""
    log_prompts: bool = False
    """Put the prompt text into log records and verdict events (off by default: prompts may be sensitive)."""

    @model_validator(mode="after")
    def _default_name(self) -> SafetyConsciousLLM:
        check_policy(self.policy)
        if self.coefficient is not None and policy_blocks(self.policy):
            raise ValueError(
                "a fixed coefficient skips classification, so it cannot run under a guard policy: "
                "set policy='steer' for a fixed-coefficient baseline"
            )
        if self.model_name is None:
            self.model_name = self.engine.handle.name
        return self

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        artifact: Any = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        progress: bool = True,
        **fields: Any,
    ) -> SafetyConsciousLLM:
        """Load a model (None: the embedded default) with its artifact (None: the shipped one); see ScansEngine.load."""
        engine = ScansEngine.load(model, artifact, device=device, dtype=dtype, progress=progress)
        return cls(engine=engine, **fields)

    @classmethod
    def from_default(cls, **fields: Any) -> SafetyConsciousLLM:
        """The embedded default model (Qwen2.5-Coder-1.5B-Instruct) with its shipped artifact, offline."""
        return cls.load(**fields)

    # -- classifier views ------------------------------------------------------------------------------------
    @property
    def classifier(self) -> SafetyClassifier:
        """sigma(q) alone as a Runnable: str | messages | PromptValue -> SafetyVerdict (same engine)."""
        from .classifier import SafetyClassifier

        return SafetyClassifier(engine=self.engine)

    def as_classifier(self, **kwargs: Any) -> SafetyClassifier:
        from .classifier import SafetyClassifier

        return SafetyClassifier(engine=self.engine, **kwargs)

    def as_decision_model(self, **kwargs: Any) -> ScansDecisionModel:
        """sigma as a `langchain_core.decisions.BaseDecisionModel` (for AutoModeMiddleware, ModelRouterMiddleware)."""
        from .classifier import ScansDecisionModel

        return ScansDecisionModel(engine=self.engine, **kwargs)

    # -- LangChain plumbing ----------------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "scans-guard"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        recipe, meta = self.engine.recipe, self.engine.artifact.meta
        return {
            "model_name": self.model_name,
            "model_fingerprint": meta.model_fingerprint.get("weight_probe_sha256"),
            "artifact_model": meta.model_name,
            "recipe": recipe.model_dump(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "steer": self.steer,
            "coefficient": self.coefficient,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=model
            if isinstance(model := kwargs.get("model"), str)
            else (self.model_name or self.engine.handle.name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if ls_stop := (stop if stop is not None else self.stop):
            params["ls_stop"] = list(ls_stop)
        return params

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        """Bind tools (LangChain tools, pydantic models, functions or OpenAI schemas). `tool_choice`: "auto" / None
        (the model may call), "none" (no tools), "any" / "required" (a call of one of them, enforced), or a tool's
        name (a call of that tool, enforced). A forced call is a single call unless `parallel_tool_calls=True`;
        `parallel_tool_calls=False` also limits "auto" to at most one call per reply."""
        schemas = tool_schemas(tools)
        chosen_tools(schemas, tool_choice)  # an unknown tool name fails here, not at the first call
        return self.bind(tools=schemas, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: Any,
        *,
        include_raw: bool = False,
        method: str = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Replies parsed into `schema` (pydantic class: validated instance; else a dict).

        method "function_calling": the schema is bound as the one tool and a call of it is enforced;
        "json_schema": one JSON object matching the schema is enforced (and a system instruction shows the
        schema), then parsed and validated; "json_mode": any JSON object. include_raw: {"raw", "parsed",
        "parsing_error"}. A reply cut by max_tokens, or the refusal of a prompt the guard blocks, does not parse.
        """
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        return structured_output(self, schema, method=method, include_raw=include_raw)

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What LangChain reads to size contexts (SummarizationMiddleware) and pick strategies (create_agent).

        max_input_tokens: the longest prompt the engine accepts (its `max_input_tokens`, within the context window).
        """
        window = self.engine.handle.context_window
        cap = self.engine.max_input_tokens
        return ModelProfile(
            max_input_tokens=window if cap is None else min(cap, window),
            text_inputs=True,
            image_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            pdf_inputs=False,
            text_outputs=True,
            tool_calling=True,
            tool_choice=True,
            structured_output=True,
            temperature=True,
        )

    # -- token counting (the model's own tokenizer: exact and offline; LangChain's default is GPT-2, online) --------
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` as message content (special-token text is read as literal characters)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return self.engine.handle.encode(text, content=True)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the conversation as the model reads it: chat template and generation prompt included.

        This equals a reply's `usage_metadata["input_tokens"]` for the same messages and tools (the schemas are
        part of the prompt the template renders).
        """
        if not messages:
            return 0
        schemas = tool_schemas(tools) if tools else None
        return len(self.engine.handle.chat_ids(messages_to_conversation(messages), tools=schemas))

    # -- calls ----------------------------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = ChatCall.prepare(self, messages, stop, kwargs)
        output: SteeredOutput | None = None
        for event in call.events():
            fields = call.report(event.verdict) if event.verdict is not None else None
            if fields is not None and run_manager is not None:
                emit_event(run_manager, fields)
            output = event.output or output
        return self._result(call, output)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """`_generate` awaiting the request's handle: concurrent calls share the engine's decoding batches."""
        call = ChatCall.prepare(self, messages, stop, kwargs)
        output: SteeredOutput | None = None
        async for event in call.aevents():
            fields = call.report(event.verdict) if event.verdict is not None else None
            if fields is not None and run_manager is not None:
                await aemit_event(run_manager, fields)
            output = event.output or output
        return self._result(call, output)

    @staticmethod
    def _result(call: ChatCall, output: SteeredOutput | None) -> ChatResult:
        assert output is not None  # the engine ends every row with an output event
        content, calls, invalid = parse_tool_calls(output.text, call.tools)
        message = AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            response_metadata=call.final_metadata(output, content, bool(calls)),
            usage_metadata=call.usage(output),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        items = sync_chunks(ChatCall.prepare(self, messages, stop, kwargs))
        try:
            for kind, item in items:
                if kind == "verdict":
                    # stream() passes no run manager (LangChain reports tokens itself): then the event goes to the
                    # run this call belongs to, if any (e.g. the chain that streams this model)
                    emit_event(run_manager, item)
                    continue
                if run_manager is not None and item.message.content:
                    run_manager.on_llm_new_token(item.message.content, chunk=item)
                yield item
        finally:
            items.close()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Token streaming that awaits the request's handle: the event loop never waits on a decoding step.

        Closing the async iterator (or cancelling the task) cancels the request: it leaves the batch at the next
        step."""
        items = async_chunks(ChatCall.prepare(self, messages, stop, kwargs))
        try:
            async for kind, item in items:
                if kind == "verdict":
                    await aemit_event(run_manager, item)
                    continue
                if run_manager is not None and item.message.content:
                    await run_manager.on_llm_new_token(item.message.content, chunk=item)
                yield item
        finally:
            await items.aclose()
