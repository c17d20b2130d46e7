"""`scans-guard classify --server URL` and `chat --server URL`: ask a running `scans-guard serve` instead of loading
the model, so repeated calls skip the load. httpx (extra [client]) is imported only when a server is asked."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from pydantic import ValidationError

from ..config import GenerationConfig, SafetyVerdict
from ..errors import ScansGuardError
from .serve_cli import API_KEY_ENV

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 660.0  # longer than the server's default --request-timeout (600 s): its own 504 answers first
MAX_CLASSIFY_INPUTS = 64  # per /v1/classify request (the server's default limit)


def add_remote_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        metavar="URL",
        help="ask a running `scans-guard serve` at URL (e.g. http://127.0.0.1:8000) instead of loading the "
        "model; --model and --artifact are the server's (extra [client])",
    )
    p.add_argument("--api-key", help=f"the server's API key, with --server (or ${API_KEY_ENV})")


@dataclass(frozen=True)
class RemoteReply:
    """A chat completion's text and what the server's `scans_guard` record says about it."""

    text: str
    verdict: SafetyVerdict | None  # None: the request was not classified
    policy: str  # the policy that ran (a server with a guard keeps it whatever the request asked)
    refused: bool  # the guard answered with its refusal text, without generating
    retried_at: float | None  # the retry's coefficient, when the first reply refused


def check_remote_args(args: argparse.Namespace) -> None:
    """Flags that choose or configure a local model make no sense with --server: refused, not silently ignored."""
    given = [flag for flag in ("model", "artifact") if getattr(args, flag, None) is not None]
    if getattr(args, "model_sampling", False):
        given.append("model_sampling")
    if given:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise ScansGuardError(f"{flags}: the model is the server's with --server")


class RemoteGuard:
    """A client of one scans-guard server: its classify and chat completion routes (docs/server.md)."""

    def __init__(self, url: str, api_key: str | None = None):
        try:
            import httpx
        except ImportError:
            raise ScansGuardError("--server needs httpx: pip install 'scans-guard[client]'") from None
        url = url.strip().rstrip("/")
        url = url if "://" in url else f"http://{url}"
        self.url = url.removesuffix("/v1")
        key = api_key or os.environ.get(API_KEY_ENV)
        self._transport_error = httpx.TransportError
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
        self._model: str | None = None

    def __enter__(self) -> RemoteGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The route's JSON answer; a server that cannot be reached or answers an error is one ScansGuardError."""
        try:
            response = self._http.request(method, path, json=body)
        except self._transport_error as exc:
            raise ScansGuardError(f"cannot reach the scans-guard server at {self.url}: {exc}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else response.text[:200]
            raise ScansGuardError(f"the server at {self.url} answered {response.status_code}: {message}")
        if not isinstance(answer, dict):
            raise ScansGuardError(f"the server at {self.url} did not answer JSON on {path}: is it scans-guard serve?")
        return answer

    @property
    def model(self) -> str:
        """The served model's id (a chat completion names it)."""
        if self._model is None:
            answer = self._call("GET", "/v1/models")
            try:
                self._model = str(answer["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise self._unexpected("/v1/models") from None
        return self._model

    def classify(self, texts: list[str]) -> list[SafetyVerdict]:
        """sigma(q) of each text at the guard point, as `ScansEngine.classify` (without per-layer similarities,
        which the server does not send)."""
        verdicts: list[SafetyVerdict] = []
        for start in range(0, len(texts), MAX_CLASSIFY_INPUTS):
            answer = self._call("POST", "/v1/classify", {"input": texts[start : start + MAX_CLASSIFY_INPUTS]})
            try:
                verdicts += [self._verdict(item) for item in answer["data"]]
            except (KeyError, TypeError):
                raise self._unexpected("/v1/classify") from None
        if len(verdicts) != len(texts):
            raise self._unexpected("/v1/classify")
        return verdicts

    def chat(
        self, conversation: list[dict], config: GenerationConfig, *, steer: bool, retry: bool, policy: str
    ) -> RemoteReply:
        """One chat completion (not streamed: the verdict comes with the whole reply)."""
        body = {
            "model": self.model,
            "messages": conversation,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "scans_guard": {"steer": steer, "retry": retry, "policy": policy},
        }
        body |= {k: v for k in ("top_k", "repetition_penalty", "seed") if (v := getattr(config, k)) is not None}
        answer = self._call("POST", "/v1/chat/completions", body)
        try:
            record = answer["scans_guard"]
            return RemoteReply(
                text=answer["choices"][0]["message"]["content"] or "",
                verdict=None if record["verdict"] is None else self._verdict(record["verdict"]),
                policy=str(record["policy"]),
                refused=bool(record["refused"]),
                retried_at=float(record["steering"]["coefficient"]) if record["retried"] else None,
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise self._unexpected("/v1/chat/completions") from None

    def _verdict(self, item: dict) -> SafetyVerdict:
        try:
            return SafetyVerdict.model_validate({**item, "layer_similarities": {}})
        except ValidationError:
            raise self._unexpected("a verdict") from None

    def _unexpected(self, what: str) -> ScansGuardError:
        return ScansGuardError(f"the server at {self.url} sent an answer on {what} this client cannot read")
