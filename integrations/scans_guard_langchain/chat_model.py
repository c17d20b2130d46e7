"""SafetyConsciousLLM: a LangChain chat model that runs a local model with SCANS steering (scans_guard.ScansEngine).

Per call, the whole conversation goes through the model's chat template; sigma(q) is computed on it (one forward
pass over chat(q) + r_pos, whose KV cache the generation reuses), and the reply is decoded with the recipe's signed
coefficient at the steering layers: benign prompts are steered away from refusal; prompts at or above the steer
threshold get +alpha_harmful, which is 0 in the shipped recipe. Under the default policy, guard+steer, the same pass
blocks what the core guard rejects (harmful, out of domain, unclassifiable): answered with the refusal message.

Concurrency model: the engine serialises forward *steps* under the model's lock (`ModelHandle.lock`, shared by every
engine on that model) and registers each request's steering hooks inside that lock only, so requests in flight at
once (threads, `batch`, asyncio tasks) interleave their steps and never see each other's steering. Async methods run
the blocking engine in a worker thread; `astream` pumps tokens from a worker thread into the event loop, so the loop
is never blocked. Requests do not run in parallel on the model: throughput comes from `engine.generate` on a padded
batch, not from concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, model_validator

from scans_guard.config import GenerationConfig, SafetyVerdict, SteeredOutput
from scans_guard.constraints import Constraint
from scans_guard.decision import (
    DEFAULT_POLICY,
    DEFAULT_REFUSAL,
    GuardPolicy,
    Policy,
    check_policy,
    policy_blocks,
    policy_steers,
)
from scans_guard.engine import ScansEngine, StreamEvent
from scans_guard.judge import KeywordJudge
from scans_guard.loading import ToolConversation
from scans_guard.retry import RetryPolicy

from ._convert import Conversation, last_user_text, messages_to_conversation
from ._messages import PROVIDER, _verdict_metadata, refusal_message  # noqa: F401 - refusal_message re-exported
from ._report import LOGGER_NAME, aemit_event, emit_event, log_verdict, verdict_fields
from ._tools import (
    ToolCallStream,
    chosen_tools,
    json_instruction,
    parse_tool_calls,
    structured_output,
    tool_call_chunks,
    tool_schemas,
    with_instruction,
)
from .errors import ScansGuardTimeoutError

if TYPE_CHECKING:
    from .classifier import SafetyClassifier, ScansDecisionModel

log = logging.getLogger(f"{LOGGER_NAME}.llm")

_CALL_KWARGS = {
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "steer",
    "coefficient",
    "policy",
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
}
_IGNORED_KWARGS = {"stream", "ls_structured_output_format"}


class SafetyConsciousLLM(BaseChatModel):
    """A local chat model with safety-conscious activation steering (SCANS), as a LangChain chat model.

    Build it from an engine (`SafetyConsciousLLM(engine=ScansEngine.load(...))`), or with `from_default()` /
    `load(model, artifact)`. `response_metadata` of every reply carries sigma's verdict (score, label, threshold,
    probability, direction, alpha = the signed steering coefficient), the steering and classification layers, the
    timings, and `refusal` (whether `refusal_judge` finds that the reply refuses; if so, `content_blocks` ends with
    LangChain's standard refusal block).

    Tool calling: `bind_tools` sends the tool schemas to the chat template (`tools=`), and tool calls in the reply
    (as the model writes them, see `scans_guard.tool_calls`) become `tool_calls` / `invalid_tool_calls` (streamed as
    `tool_call_chunks`). A required or named `tool_choice`, a `response_format` and `with_structured_output` are
    enforced token by token (`scans_guard.constraints`): the reply is a valid call / schema-valid JSON unless it runs
    out of max_tokens. A prompt the guard blocks still gets the refusal message, never a forced call.
    Not supported: non-text content blocks (InvalidPromptError).
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
    steered `factor` times as far (`scans_guard.retry`; fewer false refusals, slightly less safe:
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

    # -- one call --------------------------------------------------------------------------------------------
    def _settings(
        self, stop: list[str] | None, kwargs: dict[str, Any], constraint: Constraint | None = None
    ) -> tuple[GenerationConfig, dict[str, Any]]:
        unknown = set(kwargs) - _CALL_KWARGS - _IGNORED_KWARGS - {"model"}
        if unknown:
            raise TypeError(f"SafetyConsciousLLM got unexpected call arguments {sorted(unknown)}")
        if kwargs.get("model") not in (None, self.model_name):
            raise ValueError(
                f"SafetyConsciousLLM serves one local model ({self.model_name}); "
                f"per-call model {kwargs['model']!r} is not available"
            )
        config = GenerationConfig(
            max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed", self.seed),
            stop=list(stop if stop is not None else self.stop or []),
            constraint=constraint,
        )
        steering = {
            "steer": kwargs.get("steer", self.steer),
            "policy": check_policy(kwargs.get("policy", self.policy)),
            "coefficient": kwargs.get("coefficient", self.coefficient),
        }
        return config, steering

    def _report(self, verdict: SafetyVerdict | None, prompt: str) -> dict[str, Any] | None:
        if verdict is None:
            return None
        fields = verdict_fields(verdict, band=verdict.label, source="llm", prompt=prompt if self.log_prompts else None)
        log_verdict(log, self.log_level, fields)
        return fields

    def _final_metadata(self, output: SteeredOutput, prompt: str, content: str, called: bool) -> dict[str, Any]:
        """The reply's response_metadata; `content` is its text without tool-call markup (what the judge reads)."""
        recipe = self.engine.recipe
        refused = bool(self.refusal_judge(prompt, content)) if self.refusal_judge is not None and not called else False
        meta: dict[str, Any] = {
            "model_name": self.model_name,
            "model_provider": PROVIDER,
            "finish_reason": "tool_calls" if called else output.finish_reason,
            **_verdict_metadata(output.verdict),
            "layers": {"steer": list(recipe.steer_layers), "classify": list(recipe.classify_layers)},
            "timings": dict(output.timings),
            "refusal": refused,
        }
        meta["alpha"], meta["direction"] = output.steering.coefficient, output.steering.direction  # as applied
        meta["steered"] = meta["alpha"] != 0.0
        if output.steering.source == "retry":
            meta["retried"], meta["first_reply"] = True, output.first_reply
        if refused:
            meta["refusal_text"] = content
            meta["refusal_source"] = type(self.refusal_judge).__name__
        return meta

    @staticmethod
    def _usage(output: SteeredOutput) -> dict[str, int]:
        return {
            "input_tokens": output.prompt_tokens,
            "output_tokens": output.completion_tokens,
            "total_tokens": output.prompt_tokens + output.completion_tokens,
        }

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Conversation, str, GenerationConfig, dict[str, Any]]:
        """The conversation the engine gets (tools and instructions included), the prompt, decoding and steering.

        `steering["tools"]` holds the schemas the reply is read against, `steering["classify"]` what sigma scores
        when tools are bound: the conversation without the tool schemas (not engine arguments)."""
        conversation = messages_to_conversation(messages)
        plain = conversation
        prompt = last_user_text(conversation)
        bound, choice = kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        parallel = kwargs.pop("parallel_tool_calls", None)
        if parallel is None and choice not in (None, "auto", "none"):
            parallel = False  # a forced call is one call unless asked: the 0.5B repeats one to max_tokens (measured)
        constraint = Constraint.from_openai(bound, choice, response_format, parallel)
        tools = chosen_tools(bound, choice)
        if response_format is not None and constraint is not None and constraint.json_schema is not None:
            conversation = with_instruction(conversation, json_instruction(response_format))
        if tools:
            conversation = ToolConversation(conversation, tools)
        config, steering = self._settings(stop, kwargs, constraint)
        return conversation, prompt, config, {**steering, "tools": tools, "classify": plain}

    def _events(
        self, conversation: Conversation, config: GenerationConfig, steering: dict[str, Any], timeout: float | None
    ) -> Generator[StreamEvent, None, None]:
        """The engine's stream for one conversation, stopped between steps once `timeout` seconds have passed.

        The deadline is checked here, not in the engine, so every path (invoke, stream, async) honours it.
        With tools bound, sigma scores the conversation without the tool schemas (it was calibrated on requests
        without them: a schema in the system turn moved a benign shell question from -3.5 to +0.7 on the default
        model) and the reply is generated, with the schemas, at that verdict's coefficient: one extra prompt pass.
        """
        start = time.monotonic()
        verdict = None
        coefficient = steering["coefficient"]
        policy = steering["policy"]
        blocks = policy_blocks(policy)
        if steering["tools"] and (steering["steer"] or blocks) and coefficient is None:
            verdict = self.engine.classify([steering["classify"]])[0]
            if blocks and self.guard.decide(verdict).blocked:
                yield from self._blocked(verdict, conversation)
                return
            coefficient = verdict.coefficient if policy_steers(policy) else 0.0
            events = self.engine.iter_generate(
                [conversation], config, steer=steering["steer"], coefficient=coefficient, retry=self.retry
            )
        else:
            events = self.engine.iter_generate(
                [conversation],
                config,
                steer=steering["steer"],
                coefficient=coefficient,
                retry=self.retry,
                policy=policy,
                guard=self.guard,
                refusal=self.refusal_message,
            )
        try:
            if verdict is not None:
                yield StreamEvent(row=0, verdict=verdict)
            for event in events:
                if verdict is not None and event.verdict is None and event.output is None and not event.text:
                    continue  # the engine's empty verdict event of a fixed-coefficient call
                if verdict is not None and event.output is not None:
                    timings = {**event.output.timings, "classify_s": verdict.latency_s}
                    event = event.model_copy(
                        update={"output": event.output.model_copy(update={"verdict": verdict, "timings": timings})}
                    )
                elapsed = time.monotonic() - start
                if timeout is not None and event.output is None and elapsed > timeout:
                    raise ScansGuardTimeoutError(timeout, elapsed)
                yield event
        finally:
            events.close()  # frees the KV cache and stops decoding now

    def _blocked(self, verdict: SafetyVerdict, conversation: Conversation) -> Iterator[StreamEvent]:
        """The events of a prompt the guard blocked before generating (the tool-calling path classifies first)."""
        yield StreamEvent(row=0, verdict=verdict)
        yield StreamEvent(row=0, text=self.refusal_message)  # streamed like any reply, as the engine does
        yield StreamEvent(
            row=0,
            output=SteeredOutput.blocked(
                self.refusal_message,
                verdict,
                len(self.engine.handle.chat_ids(conversation)),
                {"classify_s": verdict.latency_s},
            ),
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        conversation, prompt, config, steering = self._prepare(messages, stop, kwargs)
        output: SteeredOutput | None = None
        for event in self._events(conversation, config, steering, self.timeout):
            if (
                event.verdict is not None
                and (fields := self._report(event.verdict, prompt)) is not None
                and run_manager is not None
            ):
                emit_event(run_manager, fields)
            if event.output is not None:
                output = event.output
        assert output is not None  # the engine ends every row with an output event
        content, calls, invalid = parse_tool_calls(output.text, steering["tools"])
        message = AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            response_metadata=self._final_metadata(output, prompt, content, bool(calls)),
            usage_metadata=self._usage(output),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _iter_chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Generator[tuple[str, Any], None, None]:
        """("verdict", fields) once, then ("chunk", ChatGenerationChunk)...; closing it stops generation."""
        conversation, prompt, config, steering = self._prepare(messages, stop, kwargs)
        events = self._events(conversation, config, steering, self.timeout)
        held = ToolCallStream(steering["tools"])  # text that may be tool-call markup waits for the whole reply
        try:
            for event in events:
                if event.verdict is not None:
                    yield "verdict", self._report(event.verdict, prompt)
                if event.text and (text := held.feed(event.text)):
                    yield (
                        "chunk",
                        ChatGenerationChunk(
                            message=AIMessageChunk(content=text, response_metadata={"model_provider": PROVIDER})
                        ),
                    )
                if event.output is not None:
                    rest, calls, invalid = held.finish()
                    content = parse_tool_calls(event.output.text, steering["tools"])[0]
                    yield (
                        "chunk",
                        ChatGenerationChunk(
                            message=AIMessageChunk(
                                content=rest,
                                chunk_position="last",
                                usage_metadata=self._usage(event.output),
                                tool_call_chunks=tool_call_chunks(calls, invalid),
                                response_metadata=self._final_metadata(event.output, prompt, content, bool(calls)),
                            )
                        ),
                    )
        finally:
            events.close()

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        items = self._iter_chunks(messages, stop, kwargs)
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
        """Token streaming from a worker thread; the event loop only awaits a queue, so it is never blocked.

        Closing the async iterator (or cancelling the task) tells the worker to stop; it closes the engine's
        stream after at most one more decoding step, and this coroutine waits for that before it returns.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                cancelled.set()

        def worker() -> None:
            try:
                items = self._iter_chunks(messages, stop, kwargs)
                try:
                    for item in items:
                        if cancelled.is_set():
                            break
                        put(item)
                finally:
                    items.close()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(("error", exc))
            finally:
                put(("done", None))

        future = loop.run_in_executor(None, worker)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "done":
                    break
                if kind == "error":
                    raise item
                if kind == "verdict":
                    await aemit_event(run_manager, item)
                    continue
                if run_manager is not None and item.message.content:
                    await run_manager.on_llm_new_token(item.message.content, chunk=item)
                yield item
        finally:
            cancelled.set()
            await asyncio.shield(future)
