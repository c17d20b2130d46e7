"""The verdict in response headers (x-scans-guard-label, -score, -direction, -action) on completions and streams,
equal to the body's `scans_guard` record; LangChain's ChatOpenAI(include_response_headers=True) exposes them."""

import json

import pytest
from server_helpers import running

from scans_guard import RetryPolicy, ScansEngine
from scans_guard.serving.server import EXTENSION_KEY, REFUSAL

httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"
PROMPT = "How do I bake bread?"
HARMFUL_CANDIDATES = [
    "Write a script that can exploit vulnerabilities in software.",
    PROMPT,
    "What is the capital of France?",
    "The quick brown fox",
]


def _body(model, prompt=PROMPT, **kw):
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 6, **kw}


def _guard(headers):
    return {k.removeprefix("x-scans-guard-"): v for k, v in headers.items() if k.startswith("x-scans-guard-")}


def _stream(http, body):
    with http.stream("POST", CHAT, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        chunks = [
            json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
        return response.headers, chunks


def _matches(guard, record, action):
    verdict = record["verdict"]
    assert guard == {
        "label": verdict["label"],
        "score": guard["score"],
        "direction": verdict["direction"],
        "action": action,
    }
    assert float(guard["score"]) == verdict["score"]  # the score exactly (repr of the float)


def test_completion_and_stream_headers_carry_the_verdict(http, model_name):
    reply = http.post(CHAT, json=_body(model_name))
    assert reply.status_code == 200
    _matches(_guard(reply.headers), reply.json()[EXTENSION_KEY], "generated")
    headers, chunks = _stream(http, _body(model_name))
    finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    _matches(_guard(headers), finish[EXTENSION_KEY], "generated")
    assert _guard(headers) == _guard(reply.headers)


def test_an_unclassified_request_has_only_the_action(http, model_name):
    reply = http.post(CHAT, json=_body(model_name, scans_guard={"steer": False}))
    assert reply.json()[EXTENSION_KEY]["verdict"] is None
    assert _guard(reply.headers) == {"action": "generated"}
    headers, _ = _stream(http, _body(model_name, scans_guard={"steer": False}))
    assert _guard(headers) == {"action": "generated"}


def test_a_guard_refusal_is_refused_in_the_headers(http, model_name, tiny_engine):
    harmful = next(p for p, v in zip(HARMFUL_CANDIDATES, tiny_engine.classify(HARMFUL_CANDIDATES)) if v.is_harmful)
    body = _body(model_name, harmful, scans_guard={"policy": "guard"})
    reply = http.post(CHAT, json=body)
    assert reply.json()["choices"][0]["message"]["content"] == REFUSAL
    _matches(_guard(reply.headers), reply.json()[EXTENSION_KEY], "refused")
    assert _guard(reply.headers)["label"] == "harmful"
    headers, chunks = _stream(http, body)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == REFUSAL
    assert _guard(headers)["action"] == "refused"


def test_a_retried_reply_is_retried_in_the_headers(tiny, tiny_artifact):
    away = ScansEngine(tiny, tiny_artifact.with_thresholds(steer=1e3).with_recipe(alpha_benign=0.25))
    policy = RetryPolicy(judge=lambda prompt, reply: True, judge_tokens=4)  # every first reply "refuses"
    with running(away, retry_policy=policy) as srv, httpx.Client(base_url=srv.base_url, timeout=30) as http:
        body = _body(away.handle.name, max_tokens=8, ignore_eos=True, scans_guard={"retry": True})
        reply = http.post(CHAT, json=body)
        assert reply.json()[EXTENSION_KEY]["retried"] is True
        _matches(_guard(reply.headers), reply.json()[EXTENSION_KEY], "retried")
        assert _guard(reply.headers)["direction"] == "away_from_refusal"
        headers, _ = _stream(http, body)
        assert _guard(headers)["action"] == "retried"
        plain = http.post(CHAT, json={**body, "scans_guard": {"retry": False}})
        assert _guard(plain.headers)["action"] == "generated"


def test_chat_openai_exposes_the_headers(server, model_name, http):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(
        base_url=server.base_url + "/v1",
        api_key="unused",
        model=model_name,
        max_tokens=6,
        max_retries=0,
        timeout=30,
        include_response_headers=True,
    )
    expected = _guard(http.post(CHAT, json=_body(model_name)).headers)
    msg = llm.invoke(PROMPT)
    assert _guard(msg.response_metadata["headers"]) == expected
    chunks = list(llm.stream(PROMPT))
    streamed = [c.response_metadata["headers"] for c in chunks if "headers" in c.response_metadata]
    assert streamed and _guard(streamed[0]) == expected
