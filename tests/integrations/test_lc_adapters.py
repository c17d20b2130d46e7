"""Route, block and log guards built on sigma(q) (tiny model; thresholds forced through the recipe or the policy)."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from scans_guard_langchain import (
    EVENT_NAME,
    HarmfulPromptError,
    SafetyBlocker,
    SafetyClassifier,
    SafetyConsciousLLM,
    SafetyLogger,
    SafetyPolicy,
    SafetyRouter,
)

from scans_guard import SafetyVerdict
from scans_guard.errors import InvalidPromptError

PROMPT = "What is the capital of France?"
IMAGE = [HumanMessage([{"type": "image", "base64": "AAAA", "mime_type": "image/png"}])]


def _verdict(score: float, threshold: float = 0.5) -> SafetyVerdict:
    return SafetyVerdict(
        score=score,
        label="harmful" if score >= threshold else "benign",
        threshold=threshold,
        layer_similarities={1: score},
        direction="none",
        coefficient=0.0,
        latency_s=0.0,
    )


class Events(BaseCallbackHandler):
    def __init__(self):
        self.custom = []

    def on_custom_event(self, name, data, **kwargs):
        self.custom.append((name, data))


def test_policy_bands():
    plain = SafetyPolicy()
    assert [plain.band(_verdict(s)) for s in (0.49, 0.5, 0.9)] == ["benign", "harmful", "harmful"]
    below = SafetyPolicy(grey_zone=0.1)
    assert [below.band(_verdict(s)) for s in (0.39, 0.4, 0.49, 0.5)] == ["benign", "grey", "grey", "harmful"]
    around = SafetyPolicy(threshold=0.6, grey_zone=(0.05, 0.1))
    assert [around.band(_verdict(s)) for s in (0.54, 0.55, 0.69, 0.7)] == ["benign", "grey", "grey", "harmful"]
    with pytest.raises(ValueError):
        SafetyPolicy(grey_zone=-0.1)


def test_router_sends_bands_to_their_routes(tiny_engine, harmful_engine, benign_engine):
    steered = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=4)
    other = FakeListChatModel(responses=["other model"])

    def router(engine, **kw):
        return SafetyRouter(classifier=SafetyClassifier(engine=engine), benign=other, harmful=steered, **kw)

    to_harmful = router(harmful_engine).invoke(PROMPT)
    assert to_harmful.response_metadata["model_provider"] == "scans_guard"
    assert to_harmful.content == steered.invoke(PROMPT).content
    assert router(benign_engine).invoke(PROMPT).content == "other model"
    canned = SafetyRouter(
        classifier=SafetyClassifier(engine=harmful_engine), benign=other, harmful="I won't help with that."
    ).invoke(PROMPT)
    assert canned.content == "I won't help with that." and canned.content_blocks[-1]["type"] == "refusal"
    assert canned.response_metadata["band"] == "harmful" and canned.response_metadata["label"] == "harmful"


def test_router_grey_zone_around_threshold(tiny_engine):
    score = tiny_engine.classify(PROMPT)[0].score
    clf = SafetyClassifier(engine=tiny_engine)
    routes = {"benign": RunnableLambda(lambda x: "benign"), "harmful": RunnableLambda(lambda x: "harmful")}
    grey = RunnableLambda(lambda x: "grey")

    def route(policy, **kw):
        return SafetyRouter(classifier=clf, policy=policy, **routes, **kw).invoke(PROMPT)

    assert route(SafetyPolicy(threshold=score - 0.01)) == "harmful"
    assert route(SafetyPolicy(threshold=score + 0.01)) == "benign"
    in_grey = SafetyPolicy(threshold=score + 0.001, grey_zone=(0.002, 0.002))
    assert route(in_grey, grey=grey) == "grey"
    assert route(in_grey) == "harmful"  # grey defaults to the harmful route


async def test_router_batches_with_one_classification(tiny_engine):
    prompts = [PROMPT, "Hello", "How do I kill a Python process?", "Write a script that can exploit vulnerabilities."]
    scores = [v.score for v in tiny_engine.classify(prompts)]
    cut = sorted(scores)[1] + 1e-7  # the two lowest scores are benign, the rest harmful
    expected = ["benign" if s < cut else "harmful" for s in scores]
    router = SafetyRouter(
        classifier=SafetyClassifier(engine=tiny_engine),
        policy=SafetyPolicy(threshold=cut),
        benign=lambda x: "benign",
        harmful=lambda x: "harmful",
    )
    with mock.patch.object(tiny_engine, "classify", wraps=tiny_engine.classify) as spy:
        assert router.batch(prompts) == expected
        assert spy.call_count == 1
        assert await router.abatch(prompts) == expected
        assert spy.call_count == 2
    assert [await router.ainvoke(p) for p in prompts] == expected


async def test_router_streams_the_chosen_route(benign_engine):
    llm = SafetyConsciousLLM(policy="steer", engine=benign_engine, max_tokens=6)
    router = SafetyRouter(classifier=llm.classifier, benign=llm, harmful="no")
    chunks = list(router.stream(PROMPT))
    assert len([c for c in chunks if c.content]) >= 3
    assert "".join(c.content for c in chunks) == llm.invoke(PROMPT).content
    achunks = [c async for c in router.astream(PROMPT)]
    assert "".join(c.content for c in achunks) == llm.invoke(PROMPT).content


def test_blocker_raises_with_the_verdict(harmful_engine, benign_engine):
    model = FakeListChatModel(responses=["answer"])
    blocker = SafetyBlocker(classifier=SafetyClassifier(engine=harmful_engine), runnable=model)
    with pytest.raises(HarmfulPromptError) as info:
        blocker.invoke(PROMPT)
    verdict = info.value.verdict
    assert verdict.label == "harmful" and verdict.score >= verdict.threshold
    assert (
        SafetyBlocker(classifier=SafetyClassifier(engine=benign_engine), runnable=model).invoke(PROMPT).content
        == "answer"
    )
    # without a runnable the blocker passes its input through: blocker | model
    chain = SafetyBlocker(classifier=SafetyClassifier(engine=benign_engine)) | model
    assert chain.invoke(PROMPT).content == "answer"
    with pytest.raises(HarmfulPromptError):
        (SafetyBlocker(classifier=SafetyClassifier(engine=harmful_engine)) | model).invoke(PROMPT)


def test_blocker_refusal_message_and_batch(harmful_engine, benign_engine):
    refuse = SafetyBlocker(classifier=SafetyClassifier(engine=harmful_engine), on_block="refuse", refusal="No.")
    reply = refuse.invoke(PROMPT)
    assert isinstance(reply, AIMessage) and reply.content == "No." and reply.response_metadata["refusal"] is True
    raising = SafetyBlocker(classifier=SafetyClassifier(engine=harmful_engine))
    out = raising.batch([PROMPT, "Hello"], return_exceptions=True)
    assert all(isinstance(o, HarmfulPromptError) for o in out)
    with pytest.raises(HarmfulPromptError):
        raising.batch([PROMPT])


def test_blocker_grey_zone(tiny_engine):
    score = tiny_engine.classify(PROMPT)[0].score
    grey = SafetyPolicy(threshold=score + 0.001, grey_zone=0.01)
    clf = SafetyClassifier(engine=tiny_engine)
    assert SafetyBlocker(classifier=clf, policy=grey).invoke(PROMPT) == PROMPT
    with pytest.raises(HarmfulPromptError) as info:
        SafetyBlocker(classifier=clf, policy=grey, block_grey=True).invoke(PROMPT)
    assert info.value.band == "grey"


def test_fail_closed_and_fail_open(benign_engine):
    clf = SafetyClassifier(engine=benign_engine)
    with pytest.raises(InvalidPromptError):  # default: the error propagates
        SafetyBlocker(classifier=clf).invoke(IMAGE)
    with pytest.raises(HarmfulPromptError) as info:
        SafetyBlocker(classifier=clf, on_error="block").invoke(IMAGE)
    assert info.value.verdict is None and isinstance(info.value.cause, InvalidPromptError)
    assert SafetyBlocker(classifier=clf, on_error="allow").invoke(IMAGE) == IMAGE
    # in a batch only the input that fails is affected, and the rest is still classified
    out = SafetyBlocker(classifier=clf, on_error="block").batch([PROMPT, IMAGE], return_exceptions=True)
    assert out[0] == PROMPT and isinstance(out[1], HarmfulPromptError)


def test_logger_records_every_call(tiny_engine, caplog):
    handler = Events()
    guard = SafetyLogger(classifier=SafetyClassifier(engine=tiny_engine))
    verdict = tiny_engine.classify(PROMPT)[0]
    with caplog.at_level(logging.INFO, logger="scans_guard_langchain"):
        assert guard.invoke(PROMPT, config={"callbacks": [handler]}) == PROMPT
        assert guard.batch(["Hello", PROMPT]) == ["Hello", PROMPT]
    records = [r for r in caplog.records if hasattr(r, "scans_score")]
    assert len(records) == 3
    assert records[0].scans_score == pytest.approx(verdict.score, abs=1e-6)
    assert records[0].scans_label == verdict.label and records[0].scans_threshold == verdict.threshold
    assert records[0].scans_layer_similarities and records[0].scans_band in ("harmful", "grey", "benign")
    assert not any(hasattr(r, "scans_prompt") for r in records)
    ((name, data),) = handler.custom
    assert name == EVENT_NAME and data["scans_score"] == pytest.approx(verdict.score, abs=1e-6)
    assert "scans_prompt" not in data
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scans_guard_langchain"):
        SafetyLogger(classifier=SafetyClassifier(engine=tiny_engine), log_prompts=True).invoke([HumanMessage(PROMPT)])
    assert [r.scans_prompt for r in caplog.records if hasattr(r, "scans_score")] == [PROMPT]


def test_logger_in_front_of_a_model_and_failures_logged(tiny_engine, caplog):
    model = FakeListChatModel(responses=["fine"])
    chain = SafetyLogger(classifier=SafetyClassifier(engine=tiny_engine)) | model
    assert chain.invoke(PROMPT).content == "fine"
    with caplog.at_level(logging.INFO, logger="scans_guard_langchain"), pytest.raises(InvalidPromptError):
        SafetyLogger(classifier=SafetyClassifier(engine=tiny_engine)).invoke(IMAGE)
    assert any(
        getattr(r, "scans_error", "").startswith("InvalidPromptError") and r.levelno == logging.WARNING
        for r in caplog.records
    )


async def test_guards_classify_input_key_and_pass_the_dict_on(tiny_engine, harmful_engine, benign_engine):
    """A chain's first step gets a dict: input_key names what to classify; routes get the whole dict."""
    question = {"question": PROMPT, "context": "ignored by sigma"}
    verdict = tiny_engine.classify(PROMPT)[0]
    seen = RunnableLambda(lambda x: x)
    router = SafetyRouter(
        classifier=SafetyClassifier(engine=benign_engine), input_key="question", benign=seen, harmful="no"
    )
    assert router.invoke(question) == question
    assert await router.ainvoke(question) == question
    assert router.batch([question, {"question": "Hello"}]) == [question, {"question": "Hello"}]
    assert list(router.stream(question)) == [question]
    refused = SafetyRouter(
        classifier=SafetyClassifier(engine=harmful_engine), input_key="question", benign=seen, harmful="no"
    ).invoke(question)
    assert refused.content == "no"
    blocker = SafetyBlocker(classifier=SafetyClassifier(engine=harmful_engine), input_key="question")
    with pytest.raises(HarmfulPromptError):
        blocker.invoke(question)
    assert (
        SafetyBlocker(classifier=SafetyClassifier(engine=benign_engine), input_key="question").invoke(question)
        == question
    )
    handler = Events()
    logger = SafetyLogger(classifier=SafetyClassifier(engine=tiny_engine), input_key="question")
    assert logger.invoke(question, config={"callbacks": [handler]}) == question
    assert handler.custom[0][1]["scans_score"] == pytest.approx(verdict.score, abs=1e-6)
    clf = SafetyClassifier(engine=tiny_engine, input_key="question")
    assert clf.invoke(question).score == pytest.approx(verdict.score, abs=1e-6)
    assert clf.invoke(PROMPT).score == pytest.approx(verdict.score, abs=1e-6)  # non-dict inputs as before
    # the classifier's input_key also serves a guard without one
    assert SafetyLogger(classifier=clf).invoke(question) == question


def test_dict_input_without_input_key_names_the_fix(benign_engine):
    clf = SafetyClassifier(engine=benign_engine)
    with pytest.raises(InvalidPromptError, match="input_key"):
        SafetyLogger(classifier=clf).invoke({"question": PROMPT})
    with pytest.raises(InvalidPromptError, match="input_key"):
        clf.invoke({"question": PROMPT})
    with pytest.raises(InvalidPromptError, match="'query' is not in the input"):
        SafetyLogger(classifier=clf, input_key="query").invoke({"question": PROMPT})
    # fail closed applies to it as to any classification failure, per input in a batch
    out = SafetyBlocker(classifier=clf, input_key="q", on_error="block").batch(
        [{"q": PROMPT}, {"x": 1}], return_exceptions=True
    )
    assert out[0] == {"q": PROMPT}
    assert isinstance(out[1], HarmfulPromptError) and isinstance(out[1].cause, InvalidPromptError)
