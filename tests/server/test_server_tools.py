"""Tools and structured output through the server with the official client, on the tiny random model: its free text
is gibberish, so every valid call or schema-valid JSON below is the constraint's doing."""

from __future__ import annotations

import json

import pytest
from server_helpers import running
from tool_schemas import ARGS, PROMPTS, TOOLS, City

from scans_guard.model.loading import ToolConversation
from scans_guard.serving.server import EXTENSION_KEY, REFUSAL
from scans_guard.sigma.decision import GuardPolicy

openai = pytest.importorskip("openai")
pytest.importorskip("llguidance", reason="constrained decoding needs the [structured] extra")


CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": City.model_json_schema()}}


@pytest.fixture(scope="module")
def server(tiny_long_engine):
    with running(tiny_long_engine) as srv:
        yield srv


def _ask(client, model, prompt, **kw):
    kw.setdefault("max_tokens", 150)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)


def _valid(calls) -> list[str]:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        ARGS[call.function.name].model_validate_json(call.function.arguments)
    return [c.function.name for c in calls]


def test_required_tool_choice_is_a_valid_call_on_every_prompt(client, model_name):
    for prompt in PROMPTS:
        reply = _ask(client, model_name, prompt, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
        assert len(_valid(choice.message.tool_calls)) == 1
        several = _ask(client, model_name, prompt, tools=TOOLS, tool_choice="required").choices[0]
        _valid(several.message.tool_calls)  # parallel calls allowed: one or more, each valid


def test_named_tool_choice_calls_that_tool(client, model_name):
    named = {"type": "function", "function": {"name": "add"}}
    for prompt in PROMPTS[:6]:
        reply = _ask(client, model_name, prompt, tools=TOOLS, tool_choice=named, parallel_tool_calls=False)
        assert _valid(reply.choices[0].message.tool_calls) == ["add"]


def test_auto_leaves_the_reply_free(client, model_name):
    replies = [_ask(client, model_name, p, tools=TOOLS, max_tokens=30).choices[0] for p in PROMPTS[:4]]
    assert not any(c.message.tool_calls for c in replies)  # the random model writes no call by itself
    assert all(c.finish_reason in ("stop", "length") and c.message.content for c in replies)


def test_response_format_json_schema_and_json_object(client, model_name):
    for prompt in PROMPTS[:8]:
        reply = _ask(client, model_name, prompt, response_format=CITY_FORMAT)
        City.model_validate_json(reply.choices[0].message.content)
    for prompt in PROMPTS[:3]:
        reply = _ask(client, model_name, prompt, response_format={"type": "json_object"}, max_tokens=200)
        if reply.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(reply.choices[0].message.content), dict)
        else:  # cut by max_tokens: still the start of one object
            assert reply.choices[0].message.content.startswith("{")


def test_streamed_tool_calls_match_the_whole_reply(client, model_name):
    for prompt in PROMPTS[:3]:
        kw = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
        whole = _ask(client, model_name, prompt, **kw).choices[0].message.tool_calls
        chunks = list(_ask(client, model_name, prompt, stream=True, **kw))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert not "".join(d.content or "" for d in deltas).strip()  # the call markup is never sent as text
        calls = [t for d in deltas for t in d.tool_calls or []]
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            (c.function.name, json.loads(c.function.arguments)) for c in whole
        ]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["tool_calls"]


def test_a_tool_turn_continues_the_conversation(client, model_name):
    first = _ask(
        client, model_name, "Weather in Paris?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    reply = client.chat.completions.create(model=model_name, messages=messages, tools=TOOLS, max_tokens=8)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_bad_tools_and_formats_are_400_before_model_work(client, model_name):
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    bad_tool = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": 3}}}]
    cases = [
        ({"response_format": bad_schema}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"tools": bad_tool}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "rm"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS + TOOLS[:1]}, "tools"),
        ({"tools": TOOLS, "tool_choice": "required", "extra_body": {"ignore_eos": True}}, None),
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            _ask(client, model_name, "hi", **kw)
        body = err.value.body
        assert err.value.status_code == 400 and set(body) == {"message", "type", "param", "code"}, body
        if param is not None:
            assert body["param"] == param, (kw, body)


def test_a_blocked_request_gets_the_refusal_not_a_call(tiny_long_engine, model_name):
    guard = GuardPolicy()
    convs = [ToolConversation([{"role": "user", "content": p}], TOOLS) for p in PROMPTS]
    blocked = [p for p, v in zip(PROMPTS, tiny_long_engine.classify(convs)) if guard.decide(v).blocked]
    assert blocked  # the tiny model's random sigma blocks some of them
    with (
        running(tiny_long_engine, policy="guard+steer") as srv,
        openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=60) as client,
    ):
        for prompt in blocked[:3]:
            for stream in (False, True):
                kw = {"tools": TOOLS, "tool_choice": "required"}
                if not stream:
                    reply = _ask(client, model_name, prompt, **kw)
                    choice = reply.choices[0]
                    assert choice.finish_reason == "content_filter" and not choice.message.tool_calls
                    assert choice.message.content == REFUSAL and reply.model_extra[EXTENSION_KEY]["refused"]
                    continue
                chunks = [c for c in _ask(client, model_name, prompt, stream=True, **kw) if c.choices]
                assert "".join(c.choices[0].delta.content or "" for c in chunks) == REFUSAL
                assert not any(c.choices[0].delta.tool_calls for c in chunks)
                assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_langchain_chat_openai_structured_output(server, model_name):
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(
        model=model_name, base_url=server.base_url + "/v1", api_key="unused", max_retries=0, max_tokens=150
    )
    for prompt in PROMPTS[:4]:
        assert isinstance(llm.with_structured_output(City).invoke(prompt), City)  # OpenAI's json_schema method
        called = llm.with_structured_output(City, method="function_calling").invoke(prompt)
        assert isinstance(called, City)
