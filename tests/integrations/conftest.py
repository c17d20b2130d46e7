"""Fixtures of the LangChain integration tests: chat models and engines on the tiny model (tests/conftest.py)."""

from __future__ import annotations

import pytest

from scans_guard import ScansEngine

pytest.importorskip("langchain_core")

from scans_guard_langchain import SafetyConsciousLLM  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every integration test runs the tiny model on one thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def harmful_engine(tiny, tiny_artifact):
    """Every prompt is harmful (T = -1 <= any cosine score): steered towards refusal."""
    return ScansEngine(tiny, tiny_artifact.with_thresholds(steer=-1.0, guard=-1.0))


@pytest.fixture(scope="session")
def benign_engine(tiny, tiny_artifact):
    """Every prompt is benign (T above any cosine score): steered away from refusal."""
    return ScansEngine(tiny, tiny_artifact.with_thresholds(steer=1.5, guard=1.5))


@pytest.fixture
def llm(tiny_engine):
    return SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=8)


@pytest.fixture
def no_hooks():
    def check(engine: ScansEngine) -> bool:
        return all(not layer._forward_hooks for layer in engine.handle.layers)

    return check
