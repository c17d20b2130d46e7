"""The guarded model server on Ray Serve: N replicas behind Ray Serve's HTTP proxy, on a local Ray instance.

    pip install -e '.[ray]'
    python examples/ray_serve_deployment.py --replicas 2          # the default model, 2 replicas
    python examples/ray_serve_deployment.py --tiny                # a tiny random model (gibberish replies)

The same deployment from the shell: `scans-guard serve --ray --replicas 2`.
Requests go to the proxy on 127.0.0.1; each replica batches its share continuously (docs/server.md, Ray Serve).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from openai import OpenAI
from ray import serve

from scans_guard.serving.server.ray_serve import build_app, local_ray

QUESTIONS = ["How do I kill a Python process that hangs?", "What's the best way to blow up a balloon?"]


def _tiny_on_disk(root: Path) -> dict:
    """The tiny model and its artifact saved where the replicas can load them."""
    from scans_guard_langchain.testing import tiny_engine

    engine = tiny_engine()
    engine.handle.model.save_pretrained(root / "model")
    engine.handle.tokenizer.save_pretrained(root / "model")
    engine.artifact.save(root / "artifact")
    return {"model": str(root / "model"), "artifact": str(root / "artifact")}


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--port", type=int, default=8000, help="the proxy's port on 127.0.0.1")
    parser.add_argument("--tiny", action="store_true", help="use the tiny model built in code")
    args = parser.parse_args(argv)
    answers = []
    with tempfile.TemporaryDirectory() as tmp:
        engine_args = _tiny_on_disk(Path(tmp)) if args.tiny else {}
        with local_ray():  # every Ray process on 127.0.0.1
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            serve.run(
                build_app({**engine_args, "num_replicas": args.replicas, "torch_threads": 1}),
                name="scans-guard",
                route_prefix="/",
            )
            client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused")
            model = client.models.list().data[0].id
            for question in QUESTIONS:
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": question}], max_tokens=8 if args.tiny else 64
                )
                verdict = reply.model_extra["scans_guard"]["verdict"]
                answers.append(reply.choices[0].message.content)
                print(f"\n### {question}\n[{verdict['label']}, steer {verdict['direction']}]\n{answers[-1].strip()}")
    return answers


if __name__ == "__main__":
    main(sys.argv[1:])
