"""examples/openai_client_server.py runs end to end in tiny mode against a server it starts on 127.0.0.1."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("langchain_openai")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_client_server.py"


def test_openai_client_server_example(monkeypatch, tiny_engine):
    import scans_guard_langchain.testing as lc_testing

    monkeypatch.delenv(lc_testing.TINY_ENV, raising=False)
    spec = importlib.util.spec_from_file_location("example_openai_client_server", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "tiny_engine", lambda: tiny_engine)
    out = module.main(["--tiny"])
    verdicts = tiny_engine.classify(module.QUESTIONS)
    assert [r["label"] for r in out["openai"]] == [v.label for v in verdicts]
    assert out["langchain"][0] == out["openai"][0]["answer"]  # greedy: streamed through ChatOpenAI == created
    for row, v in zip(out["guarded"], verdicts):
        assert (row["finish_reason"] == "content_filter") == v.is_harmful
