"""Each LangChain example runs end to end in tiny mode (the default model is never loaded here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import scans_guard_langchain.testing as lc_testing

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def example(monkeypatch, tiny_engine):
    """Load an example module; its tiny mode reuses the session's tiny engine (built the same way)."""
    monkeypatch.setattr(lc_testing, "tiny_engine", lambda: tiny_engine)
    monkeypatch.delenv(lc_testing.TINY_ENV, raising=False)

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "tiny_engine"):
            monkeypatch.setattr(module, "tiny_engine", lambda: tiny_engine)
        return module

    return load


def test_chain(example, tiny_engine):
    rows = example("langchain_chain").main(["--tiny"])
    assert len(rows) == 2
    for row in rows:
        assert isinstance(row["answer"], str) and row["answer"]
        assert row["score"] == pytest.approx(
            tiny_engine.classify(
                [
                    [
                        {"role": "system", "content": "You are a concise assistant."},
                        {"role": "user", "content": row["question"]},
                    ]
                ]
            )[0].score,
            abs=1e-5,
        )


def test_classifier_guard(example, tiny_engine):
    module = example("langchain_classifier_guard")
    out = module.main(["--tiny"])
    verdicts = tiny_engine.classify(module.PROMPTS)
    assert [v.label for v in out["verdicts"]] == [v.label for v in verdicts]
    assert out["blocked"] == [v.label == "harmful" for v in verdicts]
    for v, reply, from_dict in zip(verdicts, out["routed"], out["from_dicts"]):
        if v.label == "harmful":
            assert reply == from_dict == "I can't help with that."
        else:
            assert from_dict == "(the other model's answer)"


def test_steered_vs_unsteered(example):
    rows = example("langchain_steered_vs_unsteered").main(["--tiny", "-n", "2"])
    assert len(rows) == 2
    for row in rows:
        assert len(row["steered"]) == len(row["unsteered"]) == 2
        assert row["label"] in ("harmful", "benign")
    assert any(r["steered"][0] != r["unsteered"][0] for r in rows)  # steering changes the replies


def test_agent_middleware(example, monkeypatch):
    monkeypatch.setenv(lc_testing.TINY_ENV, "1")  # the environment variable works as well as --tiny
    module = example("langchain_agent_middleware")
    results = module.main([])
    assert set(results) == {"steer", "block", "route"}
    for states in results.values():
        assert len(states) == len(module.PROMPTS)
    for state in results["steer"]:
        assert state["messages"][-1].response_metadata["model_provider"] == "scans_guard"
    for blocked, routed in zip(results["block"], results["route"]):
        harmful = blocked["scans_guard"]["band"] == "harmful"
        assert harmful == (len(blocked["messages"]) == 2)  # a blocked turn never reaches the model or its tools
        assert harmful == (routed["messages"][-1].content == "I can't help with that.")


def test_tools(example):
    out = example("langchain_tools").main(["--tiny"])
    assert out["reply"].response_metadata["score"] is not None  # classified, then generated with the tool schema
    assert out["streamed"].response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    assert set(out["structured"]) == {"raw", "parsed", "parsing_error"}
