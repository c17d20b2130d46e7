"""`ScansGuardMiddleware`'s check of a model's text reply: a complying reply to a grey or harmful request is a
violation, and a steered reply to a benign request that still refuses is retried under the `RetryPolicy`.

The retry follows `scans_guard.steering.retry`'s rule (only sigma's own steering is retried, once, at the policy's
factor x the verdict's coefficient, judged by the policy's judge), here on the whole reply the agent's model has
written.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Literal

from langchain.agents.middleware.types import ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, HumanMessage

from scans_guard.config import SafetyVerdict
from scans_guard.steering.retry import RetryPolicy

from ._agent_state import GuardSettings, Step, latest, state_record
from ._convert import message_text
from ._decision import Decision, decide
from ._messages import verdict_from_metadata
from ._report import log_verdict, verdict_fields
from ._strategies import STEERING


def check_reply(
    mw: GuardSettings, request: ModelRequest, routed: ModelRequest, response: ModelResponse
) -> Generator[Step, Any, ModelResponse]:
    """The response to `routed` (the strategy's version of `request`) after the output check: as it is, retried
    (a "call" step), or with the reply replaced by the violation message."""
    reply = reply_of(response)
    if reply is None or reply.tool_calls:
        return response
    decision = reply_decision(mw, request, reply)
    report_reply(mw, reply)
    if decision is None or not mw.check_output:
        return response
    prompt, text = latest_prompt(request), message_text(reply)
    retry = RetryPolicy.applies(mw.retry, mw.strategy in STEERING, routed.model_settings.get("coefficient"))
    verdict = decision.verdict
    if decision.band == "benign" and retry is not None and verdict is not None and verdict.coefficient < 0:
        if retry.refusal_judge()(prompt, text):  # a benign request still refused: once more, steered further
            return (yield from _retried(retry, routed, verdict, text))
        return response
    if decision.band != "benign" and not mw.refusal_judge(prompt, text):  # a grey or harmful request answered
        update = mw._violation(decision, "output", text, [reply])
        return ModelResponse(result=update["messages"], structured_response=None)
    return response


def _retried(
    retry: RetryPolicy, routed: ModelRequest, verdict: SafetyVerdict, first_reply: str
) -> Generator[Step, Any, ModelResponse]:
    """The call once more at the policy's coefficient (a fixed one, so policy steer), its reply marked as retried."""
    further = retry.steering(verdict).coefficient
    settings = {**routed.model_settings, "coefficient": further, "policy": "steer"}
    response = yield "call", routed.override(model_settings=settings)
    again = reply_of(response)
    if again is not None:
        again.response_metadata.update(
            {**verdict.record(), "coefficient": further, "alpha": further, "retried": True, "first_reply": first_reply}
        )
    return response


def reply_of(response: Any) -> AIMessage | None:
    """The AI message of a model call's response (a ModelResponse or a bare message)."""
    messages = response.result if isinstance(response, ModelResponse) else [response]
    return next((m for m in messages if isinstance(m, AIMessage)), None)


def latest_prompt(request: ModelRequest) -> str:
    """The text of the request's latest human message ("" when there is none)."""
    messages = list(request.messages)
    idx = latest(messages, HumanMessage)
    return message_text(messages[idx]) if idx is not None else ""


def reply_decision(mw: GuardSettings, request: ModelRequest, reply: AIMessage) -> Decision | None:
    """The input's decision: from the steered reply's own verdict (steer), else from the state record."""
    if mw.strategy in STEERING:
        verdict = verdict_from_metadata(reply.response_metadata)
        return decide(verdict, mw.policy, "raise", mw.block_grey) if verdict is not None else None
    record = state_record(request.state)
    if record is None:
        return None
    verdict = SafetyVerdict.model_validate(record["verdict"]) if record.get("verdict") else None
    action: Literal["allow", "block"] = (
        "block" if record["band"] == "harmful" or (record["band"] == "grey" and mw.block_grey) else "allow"
    )
    return Decision(record["band"], action, verdict, None)


def report_reply(mw: GuardSettings, reply: AIMessage) -> None:
    """Log the steered model's verdict (strategy steer; the model itself sent the verdict event)."""
    if mw.strategy not in STEERING or (verdict := verdict_from_metadata(reply.response_metadata)) is None:
        return
    fields = verdict_fields(verdict, band=mw.policy.band(verdict), source=mw.name)
    fields["scans_refusal"] = reply.response_metadata.get("refusal")
    log_verdict(mw.logger, mw.log_level, fields)
