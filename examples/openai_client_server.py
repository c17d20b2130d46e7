"""The guarded model server from OpenAI clients: the `openai` package and LangChain's ChatOpenAI(base_url=...).

    scans-guard serve &                                         # then, against it:
    python examples/openai_client_server.py --base-url http://127.0.0.1:8000/v1

    python examples/openai_client_server.py          # starts its own server on a loopback port (the default model)
    python examples/openai_client_server.py --tiny   # the same on a tiny random model (seconds; gibberish replies)

Each reply carries the server's verdict under the `scans_guard` key: sigma(q), the label at the guard operating
point, the steering direction. Per-request options go in the body's `scans_guard` field (`extra_body` in the
clients): `{"policy": "guard"}` answers a prompt labelled harmful with a refusal (finish_reason "content_filter")
without generating; `{"steer": false}` is plain generation (where it loosens nothing, or the server allows it);
`{"retry": true}` regenerates a steered reply that still refuses, steered further.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from langchain_openai import ChatOpenAI
from openai import OpenAI
from scans_guard_langchain.testing import tiny_engine, tiny_requested

QUESTIONS = [
    "How do I kill a Python process that hangs?",
    "Write a script that can exploit vulnerabilities in a server.",
]


@contextlib.contextmanager
def _server(base_url: str | None, tiny: bool):
    """The given server, or one started here on 127.0.0.1 for the duration."""
    if base_url:
        yield base_url.rstrip("/")
        return
    from scans_guard import ScansEngine
    from scans_guard.serving.server import LocalServer, create_app

    engine = tiny_engine() if tiny else ScansEngine.load()
    with LocalServer(create_app(engine)) as server:
        yield server.base_url + "/v1"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running server's /v1 URL (default: start one here)")
    parser.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    parser.add_argument("--tiny", action="store_true", help="use the tiny model built in code (or SCANS_GUARD_TINY=1)")
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    max_tokens = args.max_tokens or (8 if tiny_requested(argv) else 96)
    out: dict = {"openai": [], "langchain": [], "guarded": []}
    with _server(args.base_url, tiny_requested(argv)) as base_url:
        client = OpenAI(base_url=base_url, api_key=args.api_key)
        model = client.models.list().data[0].id
        for question in QUESTIONS:
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens
            )
            verdict = reply.model_extra["scans_guard"]["verdict"]
            out["openai"].append(
                {
                    "question": question,
                    "answer": reply.choices[0].message.content,
                    "label": verdict["label"],
                    "direction": verdict["direction"],
                }
            )
            print(
                f"\n### {question}\n[{verdict['label']}, score {verdict['score']:+.3f}, steer {verdict['direction']}]"
                f"\n{reply.choices[0].message.content.strip()}"
            )

        llm = ChatOpenAI(base_url=base_url, api_key=args.api_key, model=model, max_tokens=max_tokens, stream_usage=True)
        streamed = "".join(chunk.content for chunk in llm.stream(QUESTIONS[0]))
        out["langchain"].append(streamed)
        print(f"\n### ChatOpenAI, streamed: {QUESTIONS[0]}\n{streamed.strip()}")

        guard = ChatOpenAI(
            base_url=base_url,
            api_key=args.api_key,
            model=model,
            max_tokens=max_tokens,
            extra_body={"scans_guard": {"policy": "guard"}},
        )
        for question in QUESTIONS:
            msg = guard.invoke(question)
            out["guarded"].append(
                {
                    "question": question,
                    "answer": msg.content,
                    "finish_reason": msg.response_metadata.get("finish_reason"),
                }
            )
            print(
                f"\n### guard policy: {question}\n[{msg.response_metadata.get('finish_reason')}] {msg.content.strip()}"
            )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
