"""scans-guard's AI messages: the standard refusal block (a content translator for model_provider="scans_guard"),
canned refusals, and the verdict carried in response_metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.block_translators import register_translator

from scans_guard.config import SafetyVerdict

if TYPE_CHECKING:
    from langchain_core.messages import content as types

PROVIDER = "scans_guard"
"""`ls_provider` and `response_metadata["model_provider"]` of every message this package makes."""


# -- standard refusal block ------------------------------------------------------------------------------------
def _with_refusal(message: BaseMessage, blocks: list[types.ContentBlock]) -> list[types.ContentBlock]:
    meta = message.response_metadata
    if meta.get("refusal") and not any(b.get("type") == "refusal" for b in blocks):
        block: dict[str, Any] = {"type": "refusal", "refusal": meta.get("refusal_text") or ""}
        extras = {k: meta[k] for k in ("refusal_source", "score", "label") if meta.get(k) is not None}
        if extras:
            block["extras"] = extras
        blocks.append(block)  # type: ignore[arg-type]  # "refusal" is not among LangChain's ContentBlock types
    return blocks


def _translate_content(message: AIMessage) -> list[types.ContentBlock]:
    if not message.response_metadata.get("refusal"):
        raise NotImplementedError  # LangChain's own translation (text, tool calls) is right
    return _with_refusal(message, BaseMessage.content_blocks.fget(message))  # type: ignore[attr-defined]  # a property: mypy misses fget


def _translate_chunk(message: AIMessageChunk) -> list[types.ContentBlock]:
    if not message.response_metadata.get("refusal"):
        raise NotImplementedError
    return _with_refusal(message, BaseMessage.content_blocks.fget(message))  # type: ignore[attr-defined]  # a property: mypy misses fget


# Messages carry model_provider="scans_guard"; this translator gives their content_blocks, adding LangChain's standard
# refusal block when the steered model refused (so ModelRefusalMiddleware and ModelRefusalError work with them).
register_translator(PROVIDER, _translate_content, _translate_chunk)


def refusal_message(
    text: str, *, verdict: SafetyVerdict | None = None, source: str = "guard", extra: dict[str, Any] | None = None
) -> AIMessage:
    """A canned refusal as an AIMessage whose content_blocks carry the standard refusal block."""
    meta: dict[str, Any] = {
        "model_provider": PROVIDER,
        "model_name": "scans-guard-canned",
        "finish_reason": "stop",
        "refusal": True,
        "refusal_text": text,
        "refusal_source": source,
    }
    if verdict is not None:
        meta.update(_verdict_metadata(verdict))
    meta.update(extra or {})
    return AIMessage(content=text, response_metadata=meta)


def _verdict_metadata(verdict: SafetyVerdict | None) -> dict[str, Any]:
    """The verdict's record (`SafetyVerdict.record`) for response_metadata; `alpha` repeats `coefficient`."""
    if verdict is None:
        return {"score": None, "label": None, "threshold": None, "probability": None, "direction": "none"}
    record = verdict.record()
    return {**record, "alpha": record["coefficient"]}


def verdict_from_metadata(meta: dict[str, Any]) -> SafetyVerdict | None:
    """The verdict a scans-guard message carries in its response_metadata (None for an unclassified reply)."""
    if meta.get("score") is None or meta.get("layer_similarities") is None:
        return None
    return SafetyVerdict.model_validate({k: meta[k] for k in SafetyVerdict.model_fields if k in meta})
