"""The server's OpenAPI description (GET /openapi.json): request bodies and error responses of the model routes.

The chat and classify routes read their raw body (a size limit while it streams, then strict pydantic validation), so
FastAPI cannot see their request models; `request_body` names each route's model in the route's `openapi_extra`, and
`install` adds those models' JSON schemas to the document's components. Every documented error is OpenAI's error
JSON (`ErrorResponse`), so a client generator or a schema fuzzer (tests/server/test_server_fuzz.py) sees real bodies.

The models validate types; what the routes check after that (roles, the fields accepted only at their neutral value,
stop sequences, the server's own token and input limits, the coefficient's range) is written into their schemas here
(`accepted`), so a body that fits the document is one the server answers; pydantic's range keywords on unions
(`ge`, `le`, ...) become JSON Schema's (`minimum`, `maximum`, ...).
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from ...steering.plan import MAX_COEFFICIENT
from .schemas import MAX_STOP, ROLES

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    model_config = ConfigDict(title="ErrorDetail")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error JSON, the body of every 4xx and 5xx answer."""

    error: ErrorDetail


def _error(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


# The statuses a model route answers besides 200 (docs/server.md, "Errors").
MODEL_ERRORS: dict[int | str, dict] = {
    400: _error("malformed JSON, a wrong type, a number out of range, an unsupported field or an invalid prompt"),
    401: _error("--api-key set and the Bearer token missing or wrong"),
    404: _error("a model other than the served one"),
    413: _error("a body over --max-body-bytes, a prompt over --max-input-tokens, too many classify inputs"),
    429: _error("the queue is full (Retry-After: 1)"),
    500: _error("a non-finite sigma score, or anything unexpected"),
    503: _error("the model is loading or failed to load, or the server is shutting down (Retry-After: 1)"),
    504: _error("the request ran past --request-timeout"),
}


# A chat completion answers JSON, or server-sent events with `"stream": true`.
CHAT_RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "a chat completion, or its stream of chunks",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    **MODEL_ERRORS,
}


def request_body(model: type[BaseModel], description: str) -> dict:
    """A route's `openapi_extra`: its JSON request body is `model` (added to the components by `install`)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
        }
    }


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _kind(kind: str, **properties: dict) -> dict:
    """A response_format object of type `kind` (with these further properties, all required)."""
    return {
        "type": "object",
        "properties": {"type": {"const": kind}, **properties},
        "required": ["type", *properties],
    }


def accepted(max_tokens: int, max_inputs: int) -> dict[str, dict[str, dict]]:
    """Per model and field, the JSON schema of the values the server accepts (replacing the generated one)."""
    text = {"type": "string"}
    stop = {"type": "string", "minLength": 1}
    tokens = _nullable({"type": "integer", "minimum": 1, "maximum": max_tokens})
    conversation = {"type": "array", "minItems": 1, "items": {"$ref": REF.format(model="ChatMessage")}}
    return {
        "TextPart": {"type": {"const": "text"}, "text": text},
        "ChatMessage": {
            "role": {"enum": list(ROLES)},
            "content": {
                "anyOf": [text, {"type": "array", "items": {"$ref": REF.format(model="TextPart")}}, {"type": "null"}]
            },
        },
        "ChatCompletionRequest": {
            "max_tokens": tokens,
            "max_completion_tokens": tokens,
            "stop": {"anyOf": [stop, {"type": "array", "maxItems": MAX_STOP, "items": stop}, {"type": "null"}]},
            "n": {"enum": [1, None]},
            "logprobs": {"enum": [False, None]},
            "top_logprobs": {"enum": [0, None]},
            "presence_penalty": {"enum": [0, None]},
            "frequency_penalty": {"enum": [0, None]},
            "functions": _nullable({"type": "array", "maxItems": 0}),
            "response_format": _nullable(
                {
                    "anyOf": [
                        _kind("text"),
                        _kind("json_object"),
                        _kind(
                            "json_schema", json_schema={"type": "object", "properties": {"schema": {"type": "object"}}}
                        ),
                    ]
                }
            ),
        },
        "ScansGuardOptions": {
            "coefficient": _nullable({"type": "number", "minimum": -MAX_COEFFICIENT, "maximum": MAX_COEFFICIENT})
        },
        "ClassifyRequest": {
            "input": {
                "anyOf": [
                    text,
                    {"type": "array", "minItems": 1, "maxItems": max_inputs, "items": {"anyOf": [text, conversation]}},
                ]
            }
        },
    }


_RANGE = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_ranges(node: object) -> None:
    """pydantic writes a range on a union (`StrictInt | StrictFloat`) as `ge`/`le`/...: JSON Schema's names instead."""
    if isinstance(node, dict):
        for short, name in _RANGE.items():
            if short in node and isinstance(node[short], (int, float)) and name not in node:
                node[name] = node.pop(short)
        for value in node.values():
            _standard_ranges(value)
    elif isinstance(node, list):
        for value in node:
            _standard_ranges(value)


def install(app: FastAPI, models: list[type[BaseModel]], max_tokens: int, max_inputs: int) -> None:
    """Make `app.openapi()` (served at app.openapi_url) carry the JSON schemas of `models` and their sub-models, as
    tightened by `accepted` for a server whose token limit is `max_tokens` and classify limit `max_inputs`."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                doc = model.model_json_schema(ref_template=REF, mode="validation")
                components.update(doc.pop("$defs", {}))
                components[model.__name__] = doc
            for name, fields in accepted(max_tokens, max_inputs).items():
                props = components[name]["properties"]
                for field, value in fields.items():
                    keep = {k: props[field][k] for k in ("title", "description", "default") if k in props[field]}
                    props[field] = {**keep, **value}
            components["TextPart"]["required"] = ["type", "text"]  # a missing text or content is a 400
            components["ChatMessage"]["required"] = ["role", "content"]
            _standard_ranges(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
