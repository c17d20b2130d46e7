"""Shared by the SafetyConsciousLLM test modules: the prompt they ask and a handler that records callbacks."""

from __future__ import annotations

from langchain_core.callbacks import BaseCallbackHandler

PROMPT = "What is the capital of France?"


class Events(BaseCallbackHandler):
    def __init__(self):
        self.custom: list[tuple[str, dict]] = []
        self.tokens: list[str] = []

    def on_custom_event(self, name, data, **kwargs):
        self.custom.append((name, data))

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)
