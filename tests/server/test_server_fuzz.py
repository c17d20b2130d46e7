"""Schema fuzzing: schemathesis reads the server's own /openapi.json and sends every operation bodies, parameters and
headers generated from it, on the tiny model over 127.0.0.1. Positive cases fit the schema (the served model's name
is put in about half of them, so they reach the model); negative cases break it (wrong types, missing fields, out of
range). The contract: never a 5xx, and every 4xx is OpenAI's error JSON, `{"error": {"message", "type", "param",
"code"}}`. Bounded: EXAMPLES cases per operation and mode, each reply at most 16 tokens; the server keeps serving.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")

from schemathesis import GenerationMode  # noqa: E402
from server_helpers import running, scheduler_of, wait_until  # noqa: E402

EXAMPLES = 30  # per operation and generation mode
ERROR_KEYS = {"message", "type", "param", "code"}
MODEL_ROUTES = ("/v1/chat/completions", "/v1/classify")


@pytest.fixture(scope="module")
def fuzzed(tiny_engine):
    """Fixed coefficients allowed (their range checks are fuzzed too); replies short; timeouts far off."""
    with running(tiny_engine, allow_fixed_coefficient=True, max_tokens_limit=16, default_max_tokens=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(fuzzed):
    return schemathesis.openapi.from_url(fuzzed.base_url + "/openapi.json")


def test_openapi_describes_the_model_routes(fuzzed):
    """The routes read their raw body, so their request models are added to the document by hand: check they are."""
    doc = requests.get(fuzzed.base_url + "/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/classify", "ClassifyRequest")):
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert {"model", "messages"} <= set(schemas["ChatCompletionRequest"]["required"])
    assert schemas["ChatCompletionRequest"]["properties"]["scans_guard"]["anyOf"][0]["$ref"].endswith(
        "/ScansGuardOptions"
    )
    assert set(schemas["ErrorDetail"]["required"]) == ERROR_KEYS
    # every $ref resolves inside the document
    refs = {r for r in json.dumps(doc).split('"') if r.startswith("#/components/schemas/")}
    assert refs and all(r.rsplit("/", 1)[1] in schemas for r in refs)


def _with_served_model(case, name: str) -> None:
    """Put the served model's name in about half the cases (those whose generated name has an even length), so
    they pass the model check and reach validation of the rest and the model; the others stay 404s."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 2 == 0:
        body["model"] = name
    params = case.path_parameters
    if params and isinstance(params.get("model"), str) and len(params["model"]) % 2 == 0:
        params["model"] = name


def _check(response, case) -> None:
    where = f"{case.method} {case.formatted_path} body={case.body!r}"
    assert response.status_code < 500, f"{response.status_code} on {where}: {response.content[:500]!r}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) >= {"error"}, where
        err = body["error"]
        assert set(err) == ERROR_KEYS, f"{sorted(err)} on {where}"
        assert isinstance(err["message"], str) and err["message"], where
        assert isinstance(err["type"], str), where
        assert err["param"] is None or isinstance(err["param"], str), where
        assert err["code"] is None or isinstance(err["code"], str), where


def _fuzz(op, mode, prepare, call, statuses: Counter) -> None:
    """EXAMPLES cases of one operation in one generation mode, each sent and checked."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        prepare(case)
        response = call(case)
        _check(response, case)
        statuses[(op.path, response.status_code)] += 1

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_error_and_openai_error_shape(fuzzed, api, tiny_engine, mode):
    name = tiny_engine.handle.name
    statuses: Counter = Counter()
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= set(MODEL_ROUTES)
    with requests.Session() as session:
        for op in operations:
            if mode is GenerationMode.NEGATIVE and op.path not in MODEL_ROUTES:
                continue  # the GETs have nothing to break but a path's free string

            _fuzz(
                op,
                mode,
                lambda case: _with_served_model(case, name),
                lambda case: case.call(base_url=fuzzed.base_url, session=session, timeout=60),
                statuses,
            )
    print(f"\n{mode}: {sum(statuses.values())} requests: {dict(sorted(statuses.items()))}")
    model_ok = sum(n for (path, code), n in statuses.items() if path in MODEL_ROUTES and code == 200)
    if mode is GenerationMode.POSITIVE:
        assert model_ok > 0, "no fuzzed request reached the model"
    scheduler = scheduler_of(fuzzed)
    assert wait_until(lambda: scheduler.running == 0 and scheduler.waiting == 0, timeout=30)
    assert requests.get(fuzzed.base_url + "/healthz", timeout=30).status_code == 200
