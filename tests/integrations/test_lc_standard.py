"""LangChain's standard chat-model suites (langchain-tests), run against the tiny model built in code."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from scans_guard_langchain import SafetyConsciousLLM


class _TinyParams:
    """Feature flags and constructor parameters shared by both suites."""

    _engine = None

    @pytest.fixture(autouse=True)
    def _bind_engine(self, tiny_engine):
        type(self)._engine = tiny_engine

    @property
    def chat_model_class(self) -> type[SafetyConsciousLLM]:
        return SafetyConsciousLLM

    @property
    def chat_model_params(self) -> dict:
        return {"engine": self._engine}

    @property
    def has_tool_calling(self) -> bool:
        return False  # bind_tools raises NotImplementedError

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False  # with_structured_output raises NotImplementedError

    @property
    def supports_model_override(self) -> bool:
        return False  # one local model per instance; `model=` naming another model raises


class TestSafetyConsciousLLMUnit(_TinyParams, ChatModelUnitTests):
    @property
    def standard_chat_model_params(self) -> dict:
        params = dict(super().standard_chat_model_params)
        params.pop("api_key")  # a local model has no API key (and the model forbids unknown fields)
        return params


class TestSafetyConsciousLLMIntegration(_TinyParams, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        return {"engine": self._engine, "max_tokens": 8}  # short replies keep the suite fast
