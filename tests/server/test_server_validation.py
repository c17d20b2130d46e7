"""Every number of a chat completion request has a range, checked before any model work: out of range is a 400 in
OpenAI's error shape naming the field, never a 500. The seed range is what torch.Generator.manual_seed accepts."""

import contextlib
import json

import pytest
from pydantic import ValidationError

from scans_guard import GenerationConfig
from scans_guard.config import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY, SEED_MAX, SEED_MIN

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"
NAN, INF = "NaN", "Infinity"  # Python's JSON reads these literals; the server refuses them as numbers


def _body(model, **fields):
    return {"model": model, "messages": [{"role": "user", "content": "Paris?"}], "max_tokens": 2, **fields}


# field, value, the param the error names
OUT_OF_RANGE = [
    ("seed", 2**64, "seed"),
    ("seed", 2**70, "seed"),
    ("seed", -(2**63) - 1, "seed"),
    ("seed", 1.5, "seed"),
    ("temperature", -0.1, "temperature"),
    ("temperature", 2.5, "temperature"),
    ("temperature", NAN, "temperature"),
    ("temperature", INF, "temperature"),
    ("top_p", 0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("top_p", NAN, "top_p"),
    ("top_k", 0, "top_k"),
    ("top_k", -3, "top_k"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", -1, "max_tokens"),
    ("max_tokens", 2**70, "max_tokens"),
    ("max_completion_tokens", 0, "max_completion_tokens"),
    ("max_completion_tokens", 2**70, "max_completion_tokens"),
    ("repetition_penalty", 0, "repetition_penalty"),
    ("repetition_penalty", -1.0, "repetition_penalty"),
    ("repetition_penalty", INF, "repetition_penalty"),
    ("repetition_penalty", 1e-300, "repetition_penalty"),  # found by fuzzing: infinite logits, NaN probabilities
    ("repetition_penalty", 1e308, "repetition_penalty"),
    ("n", 0, "n"),
    ("n", 2, "n"),
    ("presence_penalty", 0.5, "presence_penalty"),
    ("presence_penalty", NAN, "presence_penalty"),
    ("frequency_penalty", -1, "frequency_penalty"),
    ("top_logprobs", 3, "logprobs"),
    ("scans_guard", {"coefficient": 1e9}, "scans_guard.coefficient"),
    ("scans_guard", {"coefficient": -1001}, "scans_guard.coefficient"),
    ("scans_guard", {"coefficient": NAN}, "scans_guard.coefficient"),
]


def _raw(body: dict) -> bytes:
    """JSON with the NaN / Infinity markers written as the bare literals."""
    text = json.dumps(body)
    for literal in (NAN, INF):
        text = text.replace(f'"{literal}"', literal)
    return text.encode()


@contextlib.contextmanager
def _forward_passes(engine):
    calls = []
    hook = engine.handle.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


@pytest.mark.parametrize(
    ("field", "value", "param"),
    OUT_OF_RANGE,
    ids=[f"{f}={v if not isinstance(v, dict) else next(iter(v.values()))}" for f, v, _ in OUT_OF_RANGE],
)
def test_out_of_range_numbers_are_400_before_model_work(http, model_name, tiny_engine, field, value, param):
    # where the field matters: sampling (a tiny repetition penalty made a sampled row's probabilities NaN)
    extra = {"temperature": 1.0} if field in ("seed", "top_k", "repetition_penalty") else {}
    with _forward_passes(tiny_engine) as calls:
        response = http.post(
            CHAT,
            content=_raw(_body(model_name, **extra, **{field: value})),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    assert "Traceback" not in err["message"]
    assert calls == []  # refused before any forward pass: no sigma pass, no prefill


@pytest.mark.parametrize("penalty", [MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY])
def test_repetition_penalty_bounds_sample_finite(http, model_name, penalty):
    """At either end of its range, with the hottest temperature and the sharpest top_p, a sampled reply comes back."""
    body = _body(model_name, repetition_penalty=penalty, temperature=2, top_p=1e-6, max_tokens=8, seed=1)
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text


def test_seed_bounds_are_accepted_and_reproducible(client, model_name):
    for seed in (SEED_MIN, -1, 0, 2**63, SEED_MAX):
        kw = {"max_tokens": 6, "temperature": 1.0, "seed": seed}
        first = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Paris?"}], **kw)
        again = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Paris?"}], **kw)
        assert first.choices[0].message.content == again.choices[0].message.content


def test_openai_client_sees_the_seed_param(client, model_name):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Paris?"}], seed=2**64, temperature=1.0
        )
    assert err.value.status_code == 400 and err.value.body["param"] == "seed"
    assert err.value.body["code"] == "invalid_value"


def test_top_k_above_the_vocabulary_is_no_limit(http, model_name):
    assert http.post(CHAT, json=_body(model_name, top_k=2**70, temperature=1.0, seed=1)).status_code == 200


@pytest.mark.parametrize("seed", [2**70, 2**64, SEED_MIN - 1])
def test_generation_config_refuses_a_seed_torch_cannot_take(seed):
    with pytest.raises(ValidationError) as err:
        GenerationConfig(seed=seed)
    assert err.value.errors()[0]["loc"] == ("seed",)


def test_generation_config_seed_bounds_build_a_generator():
    import torch

    for seed in (SEED_MIN, SEED_MAX):
        torch.Generator().manual_seed(GenerationConfig(seed=seed, temperature=1.0).seed)
