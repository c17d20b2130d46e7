"""sigma(q) as a Runnable classifier and as a LangChain decision model (tiny model)."""

from __future__ import annotations

from unittest import mock

import pytest
from langchain_core.decisions import Choice, Noul, Score
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from scans_guard_langchain import SafetyClassifier, ScansDecisionModel

from scans_guard import Artifact, SafetyVerdict, ScansEngine
from scans_guard.calibration.artifacts import PlattFit
from scans_guard.errors import InvalidPromptError

PROMPT = "What is the capital of France?"


def _with_platt(engine: ScansEngine, a: float, b: float) -> ScansEngine:
    """Same model and recipe, another Platt fit (to force calibrated probabilities)."""
    art = engine.artifact
    meta = art.meta.model_copy(update={"platt": PlattFit(a=a, b=b)})
    return ScansEngine(engine.handle, Artifact(meta, art.refusal_vectors, art.d_harm, art.probe_weight))


def test_inputs_str_messages_prompt_value(llm, tiny_engine):
    clf = llm.classifier
    assert isinstance(clf, SafetyClassifier) and clf.engine is tiny_engine
    verdict = clf.invoke(PROMPT)
    assert isinstance(verdict, SafetyVerdict)
    assert verdict.score == pytest.approx(tiny_engine.classify(PROMPT)[0].score, abs=1e-6)
    assert clf.invoke([HumanMessage(PROMPT)]).score == pytest.approx(verdict.score, abs=1e-6)
    assert clf.invoke([("human", PROMPT)]).score == pytest.approx(verdict.score, abs=1e-6)
    history = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello."), HumanMessage(PROMPT)]
    expected = tiny_engine.classify(
        [
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": PROMPT},
            ]
        ]
    )[0]
    assert clf.invoke(history).score == pytest.approx(expected.score, abs=1e-6)
    prompt_value = ChatPromptTemplate.from_messages([("human", "{q}")]).invoke({"q": PROMPT})
    assert (ChatPromptTemplate.from_messages([("human", "{q}")]) | clf).invoke({"q": PROMPT}).score == pytest.approx(
        verdict.score, abs=1e-6
    )
    assert clf.invoke(prompt_value).score == pytest.approx(verdict.score, abs=1e-6)
    with pytest.raises(InvalidPromptError):
        clf.invoke(12)
    with pytest.raises(InvalidPromptError):
        clf.invoke("   ")


def test_forced_thresholds_decide_the_label(harmful_engine, benign_engine):
    assert SafetyClassifier(engine=harmful_engine).invoke(PROMPT).label == "harmful"
    assert SafetyClassifier(engine=benign_engine).invoke(PROMPT).label == "benign"


async def test_batch_is_one_engine_call(tiny_engine):
    clf = SafetyClassifier(engine=tiny_engine)
    inputs = [PROMPT, "Hello", [HumanMessage("Hi")], "How do I kill a Python process?"]
    one_by_one = [clf.invoke(x).score for x in inputs]
    with mock.patch.object(tiny_engine, "classify", wraps=tiny_engine.classify) as spy:
        batched = clf.batch(inputs)
        assert spy.call_count == 1 and spy.call_args.kwargs["batch_size"] == len(inputs)
        abatched = await clf.abatch(inputs)
        assert spy.call_count == 2
    assert [v.score for v in batched] == pytest.approx(one_by_one, abs=1e-5)
    assert [v.score for v in abatched] == pytest.approx(one_by_one, abs=1e-5)
    assert (await clf.ainvoke(PROMPT)).score == pytest.approx(one_by_one[0], abs=1e-6)


def test_decision_model_noul_is_the_platt_probability(tiny_engine):
    dm = ScansDecisionModel(engine=tiny_engine, benign_questions=frozenset({"safe"}))
    verdict = tiny_engine.classify(PROMPT)[0]
    response = dm.invoke(
        {
            "state": PROMPT,
            "questions": {
                "risky": Noul(instructions="Is this request harmful?"),
                "safe": Noul(instructions="Is this request safe to answer?"),
            },
        }
    )
    assert response.model == tiny_engine.handle.name
    assert response.nouls["risky"].noul == pytest.approx(verdict.probability, abs=1e-6)
    assert response.nouls["safe"].noul == pytest.approx(1 - verdict.probability, abs=1e-6)
    assert response.usage["input_tokens"] > 0 and response.usage["output_tokens"] == 0
    # instructions are not read: any wording gives the same answer
    other = dm.invoke({"state": PROMPT, "questions": {"risky": Noul(instructions="Is it about geography?")}})
    assert other.nouls["risky"].noul == response.nouls["risky"].noul


def test_decision_model_choice_and_unsupported_questions(harmful_engine, benign_engine):
    question = {"route": Choice(instructions="Which model?", criteria={"careful": "risky", "fast": "safe"})}
    for engine, expected in ((harmful_engine, "careful"), (benign_engine, "fast")):
        dm = ScansDecisionModel(engine=engine, choice_labels={"careful": "harmful", "fast": "benign"})
        answer = dm.invoke({"state": [HumanMessage(PROMPT)], "questions": question}).choices["route"]
        p = engine.classify(PROMPT)[0].probability
        assert answer.choice == expected
        assert answer.probabilities == pytest.approx({"careful": p, "fast": 1 - p}, abs=1e-6)
    with pytest.raises(ValueError, match="map the labels"):
        ScansDecisionModel(engine=benign_engine).invoke({"state": PROMPT, "questions": question})
    with pytest.raises(ValueError, match="Noul and Choice"):
        ScansDecisionModel(engine=benign_engine).invoke(
            {"state": PROMPT, "questions": {"s": Score(instructions="How bad?", criteria=["ok", "bad"])}}
        )


def _tool_agent(decision_model):
    from langchain.agents import create_agent
    from langchain.agents.middleware import AutoModeMiddleware
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.tools import tool

    ran = []

    @tool
    def delete_everything(path: str) -> str:
        """Delete a directory."""
        ran.append(path)
        return "deleted"

    class ToolModel(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    model = ToolModel(
        messages=iter(
            [
                AIMessage("", tool_calls=[{"name": "delete_everything", "args": {"path": "/"}, "id": "c1"}]),
                AIMessage("done"),
            ]
        )
    )
    agent = create_agent(
        model,
        tools=[delete_everything],
        middleware=[AutoModeMiddleware(tools=[delete_everything], classifier=decision_model)],
    )
    return agent, ran


def test_auto_mode_middleware_uses_sigma(tiny_engine):
    risky = ScansDecisionModel(engine=_with_platt(tiny_engine, 0.0, 10.0))  # P(harmful) ~ 1
    agent, ran = _tool_agent(risky)
    result = agent.invoke({"messages": [HumanMessage("Delete everything on my disk.")]})
    assert ran == [] and result["messages"][2].status == "error" and "blocked" in result["messages"][2].content
    safe = ScansDecisionModel(engine=_with_platt(tiny_engine, 0.0, -10.0))  # P(harmful) ~ 0
    agent, ran = _tool_agent(safe)
    agent.invoke({"messages": [HumanMessage("Clean my build folder.")]})
    assert ran == ["/"]


@pytest.mark.filterwarnings("ignore:The middleware `ModelRouterMiddleware` is in beta")
def test_model_router_middleware_uses_sigma(harmful_engine, benign_engine):
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelChoice, ModelRouterMiddleware
    from langchain_core.language_models import FakeListChatModel

    careful, fast = FakeListChatModel(responses=["careful answer"]), FakeListChatModel(responses=["fast answer"])
    for engine, expected in ((harmful_engine, "careful answer"), (benign_engine, "fast answer")):
        router = ModelRouterMiddleware(
            choices={
                "careful": ModelChoice(model=careful, criteria="risky requests"),
                "fast": ModelChoice(model=fast, criteria="everything else"),
            },
            instructions="Pick the model.",
            classifier=ScansDecisionModel(engine=engine, choice_labels={"careful": "harmful", "fast": "benign"}),
        )
        agent = create_agent(FakeListChatModel(responses=["default"]), middleware=[router])
        assert agent.invoke({"messages": [HumanMessage(PROMPT)]})["messages"][-1].content == expected
