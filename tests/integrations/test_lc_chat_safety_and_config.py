"""SafetyConsciousLLM: refusal flags, fail-safe defaults, retries, timeouts and errors; the params, profile, token
counts and logs it reports (tiny model)."""

from __future__ import annotations

import logging

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from lc_chat_helpers import PROMPT, Events
from scans_guard_langchain import EVENT_NAME, PROVIDER, SafetyConsciousLLM, ScansGuardTimeoutError

from scans_guard import ScansEngine
from scans_guard.errors import InvalidPromptError
from scans_guard.steering.judge import KeywordJudge


def test_refusal_gets_the_standard_block(tiny_engine):
    calls = []

    def judge(prompt, reply):
        calls.append((prompt, reply))
        return True

    llm = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=6, refusal_judge=judge)
    reply = llm.invoke([HumanMessage("first"), AIMessage("ok"), HumanMessage(PROMPT)])
    assert calls == [(PROMPT, reply.content)]
    blocks = reply.content_blocks
    assert blocks[-1]["type"] == "refusal" and blocks[-1]["refusal"] == reply.content
    assert isinstance(reply.content, str) and reply.response_metadata["refusal"] is True
    full = None
    for chunk in llm.stream(PROMPT):
        full = chunk if full is None else full + chunk
    assert [b["type"] for b in full.content_blocks] == ["text", "refusal"]
    v1 = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=6, refusal_judge=judge, output_version="v1")
    assert [b["type"] for b in v1.invoke(PROMPT).content] == ["text", "refusal"]


def test_no_refusal_block_without_a_refusal(llm):
    assert isinstance(llm.refusal_judge, KeywordJudge)
    reply = llm.invoke(PROMPT)
    assert reply.response_metadata["refusal"] is False
    assert [b["type"] for b in reply.content_blocks] == ["text"]


def test_model_refusal_middleware_raises_on_steered_refusal(tiny_engine):
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelRefusalMiddleware
    from langchain_core.exceptions import ModelRefusalError

    refusing = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=4, refusal_judge=lambda p, r: True)
    agent = create_agent(refusing, middleware=[ModelRefusalMiddleware()])
    with pytest.raises(ModelRefusalError):
        agent.invoke({"messages": [HumanMessage(PROMPT)]})
    answering = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=4, refusal_judge=lambda p, r: False)
    result = create_agent(answering, middleware=[ModelRefusalMiddleware()]).invoke({"messages": [HumanMessage(PROMPT)]})
    assert result["messages"][-1].response_metadata["model_provider"] == PROVIDER


def test_verdict_is_logged_and_sent_as_event(llm, caplog):
    handler = Events()
    with caplog.at_level(logging.DEBUG, logger="scans_guard_langchain"):
        reply = llm.invoke(PROMPT, config={"callbacks": [handler]})
    records = [r for r in caplog.records if hasattr(r, "scans_score")]
    assert len(records) == 1 and records[0].scans_score == reply.response_metadata["score"]
    assert not hasattr(records[0], "scans_prompt")
    ((name, data),) = handler.custom
    assert name == EVENT_NAME and data["scans_score"] == reply.response_metadata["score"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="scans_guard_langchain"):
        SafetyConsciousLLM(policy="steer", engine=llm.engine, max_tokens=2, log_prompts=True).invoke(PROMPT)
    assert [r.scans_prompt for r in caplog.records if hasattr(r, "scans_score")] == [PROMPT]


def test_params_tools_and_model_override(llm, tiny_engine):
    ls = llm._get_ls_params(stop=["x"])
    assert ls == {
        "ls_provider": PROVIDER,
        "ls_model_name": tiny_engine.handle.name,
        "ls_model_type": "chat",
        "ls_temperature": 0.0,
        "ls_max_tokens": 8,
        "ls_stop": ["x"],
    }
    assert llm._get_ls_params(model="other")["ls_model_name"] == "other"
    ident = llm._identifying_params
    assert ident["recipe"]["threshold"] == tiny_engine.recipe.threshold
    assert ident["model_name"] == tiny_engine.handle.name
    assert ident["model_fingerprint"] == tiny_engine.artifact.meta.model_fingerprint["weight_probe_sha256"]
    with pytest.raises(ValueError, match="one local model"):
        llm.invoke(PROMPT, model="gpt-x")
    with pytest.raises(TypeError, match="unexpected"):
        llm.invoke(PROMPT, frequency_penalty=1.0)
    with pytest.raises(Exception, match="Extra inputs"):
        SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_token=3)


def test_token_counts_use_the_models_own_tokenizer(llm, tiny_engine):
    tok = tiny_engine.handle.tokenizer
    text = "Count me: <|im_start|> is text here."
    assert llm.get_token_ids(text) == tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert llm.get_num_tokens(text) == len(llm.get_token_ids(text)) > 0
    history = [SystemMessage("Be brief."), HumanMessage("Hello"), AIMessage("Hi there."), HumanMessage(PROMPT)]
    assert llm.get_num_tokens_from_messages(history) == llm.invoke(history).usage_metadata["input_tokens"]
    assert llm.get_num_tokens_from_messages([]) == 0


def test_profile_reports_the_input_cap_and_tools(tiny, tiny_artifact, llm, tiny_engine):
    window = tiny_engine.handle.context_window
    profile = llm.profile
    assert profile["max_input_tokens"] == min(tiny_engine.max_input_tokens, window)
    assert profile["tool_calling"] is True and profile["structured_output"] is True
    uncapped = SafetyConsciousLLM(policy="steer", engine=ScansEngine(tiny, tiny_artifact, max_input_tokens=None))
    assert uncapped.profile["max_input_tokens"] == window
    capped = SafetyConsciousLLM(policy="steer", engine=ScansEngine(tiny, tiny_artifact, max_input_tokens=7))
    assert capped.profile["max_input_tokens"] == 7


async def test_timeout_stops_generation_with_a_typed_error(llm, tiny_engine, no_hooks):
    slow = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=64, timeout=1e-9)
    with pytest.raises(ScansGuardTimeoutError, match="timeout") as err:
        slow.invoke(PROMPT)
    assert isinstance(err.value, TimeoutError) and err.value.elapsed_s > err.value.timeout
    with pytest.raises(TimeoutError):
        list(slow.stream(PROMPT))
    with pytest.raises(TimeoutError):
        await slow.ainvoke(PROMPT)
    with pytest.raises(TimeoutError):
        [c async for c in slow.astream(PROMPT)]
    assert no_hooks(tiny_engine)
    roomy = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=8, timeout=600)
    assert roomy.invoke(PROMPT).content == llm.invoke(PROMPT).content
    with pytest.raises(Exception, match="greater than 0"):
        SafetyConsciousLLM(policy="steer", engine=tiny_engine, timeout=0)


async def test_stream_errors_reach_the_caller(llm):
    image = HumanMessage([{"type": "image", "base64": "AAAA", "mime_type": "image/png"}])
    with pytest.raises(InvalidPromptError):
        list(llm.stream([image]))
    with pytest.raises(InvalidPromptError):
        [c async for c in llm.astream([image])]
    with pytest.raises(InvalidPromptError, match="context window"):
        [c async for c in llm.astream("word " * 600)]


def test_load_needs_an_artifact_for_a_non_default_model(tiny_artifact, tmp_path):
    from scans_guard.errors import ArtifactError, ModelLoadError

    with pytest.raises(ArtifactError, match="needs an artifact"):
        SafetyConsciousLLM.load(tmp_path / "model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        SafetyConsciousLLM.load(tmp_path / "model", tiny_artifact)


# -- fail-safe defaults (docs/guard.md) --------------------------------------------------------------------------------


def test_out_of_domain_and_grey_input_is_answered_unsteered(tiny, tiny_artifact, benign_engine):
    spanish = "¿Cómo se hace pan en casa, paso a paso, sin levadura?"
    reply = SafetyConsciousLLM(policy="steer", engine=benign_engine, max_tokens=4).invoke(spanish)
    meta = reply.response_metadata
    assert meta["in_domain"] is False and meta["direction"] == "none" and meta["domain_reasons"] == ["language:es"]
    english = SafetyConsciousLLM(policy="steer", engine=benign_engine, max_tokens=4).invoke(
        "How do I bake bread at home?"
    )
    assert english.response_metadata["direction"] == "away_from_refusal"
    grey = ScansEngine(tiny, tiny_artifact.with_recipe(threshold=1.5, grey_zone=10.0))  # every score is grey
    meta = (
        SafetyConsciousLLM(policy="steer", engine=grey, max_tokens=4)
        .invoke("How do I bake bread at home?")
        .response_metadata
    )
    assert meta["direction"] == "none" and meta["alpha"] == 0.0


def test_guard_band_of_out_of_domain_input_is_grey(benign_engine):
    from scans_guard_langchain import SafetyClassifier, SafetyPolicy

    verdict = SafetyClassifier(engine=benign_engine).invoke("¿Cómo se hace pan en casa, paso a paso, sin levadura?")
    assert verdict.label == "benign" and SafetyPolicy().band(verdict) == "harmful"  # the guard blocks it
    assert SafetyPolicy(out_of_domain="grey").band(verdict) == "grey"  # unless the caller lets it through
    assert SafetyPolicy(out_of_domain="harmful").band(verdict) == "harmful"
    assert SafetyPolicy(out_of_domain="benign").band(verdict) == "benign"


def test_retry_regenerates_a_refused_steered_reply_and_says_so(benign_engine):
    from scans_guard import RetryPolicy

    once = SafetyConsciousLLM(policy="steer", engine=benign_engine, max_tokens=6).invoke("Paris?")
    policy = RetryPolicy(judge_tokens=2, judge=lambda prompt, reply: True)  # every reply refuses
    retried = SafetyConsciousLLM(policy="steer", engine=benign_engine, max_tokens=6, retry=policy).invoke("Paris?")
    meta = retried.response_metadata
    assert once.response_metadata["alpha"] < 0 and "retried" not in once.response_metadata
    assert meta["retried"] and once.content.startswith(meta["first_reply"])
    assert meta["alpha"] == 2 * once.response_metadata["alpha"]
