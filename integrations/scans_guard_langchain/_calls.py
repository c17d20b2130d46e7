"""One call of SafetyConsciousLLM: what the engine gets (conversation, decoding, steering), the engine's events for
it (sync or async, both from the engine's step scheduler) and the LangChain chunks and metadata they become."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from scans_guard.config import GenerationConfig, SafetyVerdict, SteeredOutput
from scans_guard.decoding.constraints import Constraint
from scans_guard.engine import StreamEvent
from scans_guard.model.loading import ToolConversation
from scans_guard.sigma.decision import check_policy, policy_blocks, policy_steers

from ._convert import Conversation, last_user_text, messages_to_conversation
from ._messages import PROVIDER, _verdict_metadata
from ._report import LOGGER_NAME, log_verdict, verdict_fields
from ._tools import ToolCallStream, chosen_tools, json_instruction, parse_tool_calls, tool_call_chunks, with_instruction
from .errors import ScansGuardTimeoutError

if TYPE_CHECKING:
    from .chat_model import SafetyConsciousLLM

log = logging.getLogger(f"{LOGGER_NAME}.llm")

CALL_KWARGS = {
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
IGNORED_KWARGS = {"stream", "ls_structured_output_format"}


@dataclass
class ChatCall:
    """One call: the conversation the engine gets (tools and instructions included), the prompt, decoding and
    steering; `tools` holds the schemas the reply is read against, `plain` what sigma scores when tools are bound:
    the conversation without the tool schemas."""

    llm: SafetyConsciousLLM
    conversation: Conversation
    plain: Conversation
    prompt: str
    config: GenerationConfig
    steer: bool
    policy: str  # a checked Policy
    coefficient: float | None
    tools: list[dict[str, Any]] | None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def prepare(
        cls, llm: SafetyConsciousLLM, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> ChatCall:
        unknown = set(kwargs) - CALL_KWARGS - IGNORED_KWARGS - {"model"}
        if unknown:
            raise TypeError(f"SafetyConsciousLLM got unexpected call arguments {sorted(unknown)}")
        if kwargs.get("model") not in (None, llm.model_name):
            raise ValueError(
                f"SafetyConsciousLLM serves one local model ({llm.model_name}); "
                f"per-call model {kwargs['model']!r} is not available"
            )
        conversation = plain = messages_to_conversation(messages)
        bound, choice = kwargs.get("tools"), kwargs.get("tool_choice")
        response_format, parallel = kwargs.get("response_format"), kwargs.get("parallel_tool_calls")
        if parallel is None and choice not in (None, "auto", "none"):
            parallel = False  # a forced call is one call unless asked: the 0.5B repeats one to max_tokens (measured)
        constraint = Constraint.from_openai(bound, choice, response_format, parallel)
        tools = chosen_tools(bound, choice)
        if response_format is not None and constraint is not None and constraint.json_schema is not None:
            conversation = with_instruction(conversation, json_instruction(response_format))
        if tools:
            conversation = ToolConversation(conversation, tools)
        config = GenerationConfig(
            max_new_tokens=kwargs.get("max_tokens", llm.max_tokens),
            temperature=kwargs.get("temperature", llm.temperature),
            top_p=kwargs.get("top_p", llm.top_p),
            seed=kwargs.get("seed", llm.seed),
            stop=list(stop if stop is not None else llm.stop or []),
            constraint=constraint,
        )
        return cls(
            llm,
            conversation,
            plain,
            last_user_text(plain),
            config,
            kwargs.get("steer", llm.steer),
            check_policy(kwargs.get("policy", llm.policy)),
            kwargs.get("coefficient", llm.coefficient),
            tools,
        )

    # -- the engine's events ------------------------------------------------------------------------------------
    def _classifies_first(self) -> bool:
        """With tools bound, sigma scores the conversation without the tool schemas (it was calibrated on requests
        without them: a schema in the system turn moved a benign shell question from -3.5 to +0.7 on the default
        model) and the reply is generated, with the schemas, at that verdict's coefficient: one extra prompt pass."""
        return bool(self.tools) and (self.steer or policy_blocks(self.policy)) and self.coefficient is None

    def _options(self, verdict: SafetyVerdict | None) -> dict[str, Any]:
        llm = self.llm
        if verdict is not None:
            coefficient = verdict.coefficient if policy_steers(self.policy) else 0.0
            return {"steer": self.steer, "coefficient": coefficient, "retry": llm.retry}
        return {
            "steer": self.steer,
            "coefficient": self.coefficient,
            "retry": llm.retry,
            "policy": self.policy,
            "guard": llm.guard,
            "refusal": llm.refusal_message,
        }

    def _blocks(self, verdict: SafetyVerdict) -> bool:
        return policy_blocks(self.policy) and self.llm.guard.decide(verdict).blocked

    def events(self) -> Generator[StreamEvent, None, None]:
        """The engine's stream for this call, stopped between steps once the chat model's timeout has passed (so
        every path, invoke, stream and async, honours it); closing it stops decoding now."""
        engine, verdict = self.llm.engine, None
        if self._classifies_first():
            verdict = engine.classify([self.plain])[0]
            if self._blocks(verdict):
                yield from self._blocked(verdict)
                return
            yield StreamEvent(row=0, verdict=verdict)
        events = engine.iter_generate([self.conversation], self.config, **self._options(verdict))
        try:
            yield from self._adjusted(events, verdict)
        finally:
            events.close()

    async def aevents(self) -> AsyncGenerator[StreamEvent, None]:
        """`events` for asyncio: the request's handle is awaited, so the event loop never waits on the model."""
        engine, verdict = self.llm.engine, None
        if self._classifies_first():
            verdict = (await asyncio.to_thread(engine.classify, [self.plain]))[0]
            if self._blocks(verdict):
                for event in self._blocked(verdict):
                    yield event
                return
            yield StreamEvent(row=0, verdict=verdict)
        events = engine.aiter_generate([self.conversation], self.config, **self._options(verdict))
        try:
            async for event in events:
                for kept in self._adjusted([event], verdict):
                    yield kept
        finally:
            await events.aclose()

    def _adjusted(self, events: Iterable[StreamEvent], verdict: SafetyVerdict | None) -> Iterator[StreamEvent]:
        """The engine's events of this call: a classified-first call's verdict in its output; the timeout."""
        timeout = self.llm.timeout
        for event in events:
            if verdict is not None and event.verdict is None and event.output is None and not event.text:
                continue  # the engine's empty verdict event of a fixed-coefficient call
            if verdict is not None and event.output is not None:
                timings = {**event.output.timings, "classify_s": verdict.latency_s}
                event = event.model_copy(
                    update={"output": event.output.model_copy(update={"verdict": verdict, "timings": timings})}
                )
            elapsed = time.monotonic() - self.started
            if timeout is not None and event.output is None and elapsed > timeout:
                raise ScansGuardTimeoutError(timeout, elapsed)
            yield event

    def _blocked(self, verdict: SafetyVerdict) -> Iterator[StreamEvent]:
        """The events of a prompt the guard blocked before generating (the tool-calling path classifies first)."""
        refusal = self.llm.refusal_message
        yield StreamEvent(row=0, verdict=verdict)
        yield StreamEvent(row=0, text=refusal)  # streamed like any reply, as the engine does
        prompt_tokens = len(self.llm.engine.handle.chat_ids(self.conversation))
        yield StreamEvent(
            row=0, output=SteeredOutput.blocked(refusal, verdict, prompt_tokens, {"classify_s": verdict.latency_s})
        )

    # -- what LangChain gets ------------------------------------------------------------------------------------
    def report(self, verdict: SafetyVerdict | None) -> dict[str, Any] | None:
        if verdict is None:
            return None
        llm = self.llm
        prompt = self.prompt if llm.log_prompts else None
        fields = verdict_fields(verdict, band=verdict.label, source="llm", prompt=prompt)
        log_verdict(log, llm.log_level, fields)
        return fields

    def final_metadata(self, output: SteeredOutput, content: str, called: bool) -> dict[str, Any]:
        """The reply's response_metadata; `content` is its text without tool-call markup (what the judge reads)."""
        llm, recipe = self.llm, self.llm.engine.recipe
        judge = llm.refusal_judge
        refused = bool(judge(self.prompt, content)) if judge is not None and not called else False
        meta: dict[str, Any] = {
            "model_name": llm.model_name,
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
            meta["refusal_source"] = type(judge).__name__
        return meta

    @staticmethod
    def usage(output: SteeredOutput) -> dict[str, int]:
        return {
            "input_tokens": output.prompt_tokens,
            "output_tokens": output.completion_tokens,
            "total_tokens": output.prompt_tokens + output.completion_tokens,
        }

    def chunks(self) -> ChunkStream:
        return ChunkStream(self)


class ChunkStream:
    """The call's events as ("verdict", fields) once, then ("chunk", ChatGenerationChunk)...; text that may be
    tool-call markup waits for the whole reply."""

    def __init__(self, call: ChatCall):
        self.call = call
        self.held = ToolCallStream(call.tools)

    def feed(self, event: StreamEvent) -> list[tuple[str, Any]]:
        call, items = self.call, list[tuple[str, Any]]()
        if event.verdict is not None:
            items.append(("verdict", call.report(event.verdict)))
        if event.text and (text := self.held.feed(event.text)):
            message = AIMessageChunk(content=text, response_metadata={"model_provider": PROVIDER})
            items.append(("chunk", ChatGenerationChunk(message=message)))
        if event.output is not None:
            rest, calls, invalid = self.held.finish()
            content = parse_tool_calls(event.output.text, call.tools)[0]
            last = AIMessageChunk(
                content=rest,
                chunk_position="last",
                usage_metadata=call.usage(event.output),
                tool_call_chunks=tool_call_chunks(calls, invalid),
                response_metadata=call.final_metadata(event.output, content, bool(calls)),
            )
            items.append(("chunk", ChatGenerationChunk(message=last)))
        return items


def sync_chunks(call: ChatCall) -> Generator[tuple[str, Any], None, None]:
    """The call's chunks, decoding as they are taken; closing it stops generation."""
    stream, events = call.chunks(), call.events()
    try:
        for event in events:
            yield from stream.feed(event)
    finally:
        events.close()


async def async_chunks(call: ChatCall) -> AsyncGenerator[tuple[str, Any], None]:
    """`sync_chunks` for asyncio."""
    stream, events = call.chunks(), call.aevents()
    try:
        async for event in events:
            for item in stream.feed(event):
                yield item
    finally:
        await events.aclose()
