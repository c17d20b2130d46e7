"""`scans_guard.steering.retry` through the server: a real `openai` client gets the retried reply and its record, never
the first reply; the server-wide default (`--retry`) and the retries counter of /metrics."""

import pytest
from server_helpers import running

from scans_guard import GenerationConfig, RetryPolicy, ScansEngine
from scans_guard.serving.server import EXTENSION_KEY

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

PROMPTS = ["How do I bake bread?", "Tell me about the moon."]
CONFIG = GenerationConfig(max_new_tokens=10, ignore_eos=True)


def refuses_always(prompt: str, reply: str) -> bool:
    return True


POLICY = RetryPolicy(judge=refuses_always, judge_tokens=4)


@pytest.fixture(scope="module")
def away_engine(tiny, tiny_artifact):
    """Every prompt steered away from refusal, at -0.25 (as tests/test_retry.py)."""
    return ScansEngine(tiny, tiny_artifact.with_thresholds(steer=1e3).with_recipe(alpha_benign=0.25))


def _ask(client, model, prompt, **kw):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=CONFIG.max_new_tokens,
        extra_body={"ignore_eos": True, **kw},
    )


def _streamed(client, model, prompt, **kw):
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=CONFIG.max_new_tokens,
            stream=True,
            extra_body={"ignore_eos": True, **kw},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, next(c.model_extra[EXTENSION_KEY] for c in chunks if c.choices and c.choices[0].finish_reason)


def test_a_request_asks_for_the_retry(away_engine):
    model = away_engine.handle.name
    with (
        running(away_engine, retry_policy=POLICY) as server,
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="-", max_retries=0, timeout=30) as client,
    ):
        for prompt in PROMPTS:
            first = away_engine.generate(prompt, CONFIG)[0]
            retried = away_engine.generate(prompt, CONFIG, retry=POLICY)[0]
            assert retried.text != first.text
            reply = _ask(client, model, prompt, **{EXTENSION_KEY: {"retry": True}})
            record = reply.model_extra[EXTENSION_KEY]
            assert reply.choices[0].message.content == retried.text
            assert reply.usage.completion_tokens == retried.completion_tokens
            assert record["retry"] is True and record["retried"] is True and record["steered"] is True
            assert record["steering"] == {
                "coefficient": 2 * first.steering.coefficient,
                "direction": "away_from_refusal",
                "source": "retry",
                "operating_point": "steer",
            }
            assert record["verdict"]["coefficient"] == first.verdict.coefficient  # the one sigma verdict
            text, streamed_record = _streamed(client, model, prompt, **{EXTENSION_KEY: {"retry": True}})
            assert text == retried.text and not text.startswith(first.text[:4])  # the first reply never sent
            assert streamed_record == {**record, "verdict": streamed_record["verdict"]}
            plain = _ask(client, model, prompt)  # the server's default: no retry
            assert plain.choices[0].message.content == first.text
            assert plain.model_extra[EXTENSION_KEY]["retried"] is False
            assert plain.model_extra[EXTENSION_KEY]["steering"]["source"] == "sigma"
        metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    assert "scans_guard_retries_total 4.0" in metrics


def test_the_server_wide_default_and_a_request_that_declines(away_engine):
    model = away_engine.handle.name
    prompt = PROMPTS[0]
    with (
        running(away_engine, retry=True, retry_policy=POLICY) as server,
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="-", max_retries=0, timeout=30) as client,
    ):
        by_default = _ask(client, model, prompt)
        assert by_default.choices[0].message.content == away_engine.generate(prompt, CONFIG, retry=POLICY)[0].text
        assert by_default.model_extra[EXTENSION_KEY]["retried"] is True
        declined = _ask(client, model, prompt, **{EXTENSION_KEY: {"retry": False}})
        assert declined.choices[0].message.content == away_engine.generate(prompt, CONFIG)[0].text
        assert declined.model_extra[EXTENSION_KEY]["retried"] is False
        with pytest.raises(openai.BadRequestError) as err:  # strictly a boolean
            _ask(client, model, prompt, **{EXTENSION_KEY: {"retry": "yes"}})
        assert err.value.status_code == 400


def test_langchain_chat_openai_gets_the_retried_reply(away_engine):
    lc = pytest.importorskip("langchain_openai")
    prompt = PROMPTS[1]
    with running(away_engine, retry_policy=POLICY) as server:
        llm = lc.ChatOpenAI(
            base_url=server.base_url + "/v1",
            api_key="-",
            model=away_engine.handle.name,
            max_tokens=CONFIG.max_new_tokens,
            max_retries=0,
            timeout=30,
            extra_body={"ignore_eos": True, EXTENSION_KEY: {"retry": True}},
        )
        expected = away_engine.generate(prompt, CONFIG, retry=POLICY)[0].text
        assert llm.invoke(prompt).content == expected
        assert "".join(c.content for c in llm.stream(prompt)) == expected
