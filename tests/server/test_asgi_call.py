"""asgi_call: one request run through the server app in-process, as a Ray Serve replica runs it for the front
(no Ray needed here)."""

import asyncio
import json

from server_helpers import wait_until

from scans_guard import GenerationConfig
from scans_guard.serving.server import ServerSettings, create_app
from scans_guard.serving.server.asgi_call import BufferedRequest, ResponseStart, call

CHAT = "/v1/chat/completions"


def _chat(model: str, **extra) -> BufferedRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "How do I bake bread?"}], "max_tokens": 6, **extra}
    return BufferedRequest(
        "POST", CHAT, headers=[(b"content-type", b"application/json")], body=json.dumps(body).encode()
    )


async def _all(app, request: BufferedRequest, limit: int | None = None) -> list:
    items = []
    replies = call(app, request)
    try:
        async for item in replies:
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    finally:
        await replies.aclose()
    return items


def test_a_reply_comes_whole_in_the_first_item(tiny_engine):
    app = create_app(tiny_engine, ServerSettings(policy="steer"))
    items = asyncio.run(_all(app, _chat(tiny_engine.handle.name)))
    assert len(items) == 1 and isinstance(items[0], ResponseStart)
    start = items[0]
    assert start.status == 200 and not start.more
    reply = json.loads(start.body)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    expected = tiny_engine.generate("How do I bake bread?", GenerationConfig(max_new_tokens=6))[0].text
    assert reply["choices"][0]["message"]["content"] == expected
    assert (b"content-type", b"application/json") in start.headers


def test_errors_are_the_apps_own(tiny_engine):
    app = create_app(tiny_engine, ServerSettings(policy="steer"))
    [start] = asyncio.run(_all(app, _chat(tiny_engine.handle.name, max_tokens="x")))
    assert start.status == 400 and json.loads(start.body)["error"]["param"] == "max_tokens"
    [missing] = asyncio.run(_all(app, BufferedRequest("GET", "/nowhere")))
    assert missing.status == 404 and json.loads(missing.body)["error"]["code"] == "not_found"


def test_a_stream_starts_with_its_headers_then_its_events(tiny_engine):
    app = create_app(tiny_engine, ServerSettings(policy="steer"))
    items = asyncio.run(_all(app, _chat(tiny_engine.handle.name, stream=True)))
    start, rest = items[0], items[1:]
    assert isinstance(start, ResponseStart) and start.status == 200 and start.more
    assert dict(start.headers)[b"content-type"].startswith(b"text/event-stream")
    text = (start.body + b"".join(rest)).decode()
    assert text.rstrip().endswith("data: [DONE]") and '"finish_reason"' in text


def test_closing_early_is_a_disconnect_that_frees_the_row(tiny_engine):
    app = create_app(tiny_engine, ServerSettings(policy="steer"))
    request = _chat(tiny_engine.handle.name, stream=True, max_tokens=400, ignore_eos=True)
    items = asyncio.run(_all(app, request, limit=2))  # the start and one event, then the client goes away
    assert isinstance(items[0], ResponseStart) and len(items) == 2
    state = app.state.scans_guard
    assert wait_until(lambda: state.scheduler.running == 0 and state.in_flight == 0, 10)
    state.close()
