"""Constrained decoding on a real model: what a JSON-schema constraint costs per token, and how often a forced tool call
or a schema-constrained reply is valid, with and without the constraint.

    nice -n 10 python benchmarks/structured_output.py --report benchmarks/results/structured-output   # default model
    python benchmarks/structured_output.py --model DIR --artifact DIR --prompts 20 --max-new-tokens 48

Speed (`speed`): `--speed-prompts` prompts decoded greedily one at a time (`decode_token_ids`, unsteered: the
engine's decoding loop alone), plain and under `Constraint.matching(CITY)` alternating, `--repeats` times; ms per
token is the mean time of every step after the first (the first holds the prefill). Plain decodes `--max-new-tokens`
tokens (ignore_eos); a constrained reply ends when its JSON does, so the comparison is per step. Goal: constrained
tokens/s >= 90% of plain.
Step times on a shared machine move with its load, so `mask_ms_per_token` also replays the constrained replies' tokens
through the mask alone (compute, apply, advance): the constraint's own cost, and its share of a plain step.

Validity (`validity`): `--prompts` varied prompts (cities x request kinds), decoded in batches of `--batch-size` under
the engine's "steer" policy (sigma classifies and steers every row; nothing is blocked, so every reply is the
model's): with the tools in the chat template and `tool_choice` "required", `parallel_tool_calls` false (a call is
valid when it names a tool and its arguments validate strictly against that tool's parameters; unconstrained, the
same with the calls read from free text; with parallel calls allowed the 0.5B model writes "\n" rather than
end-of-turn after each call and repeats calls until max_new_tokens, measured), and with `response_format` CITY (the
reply validates as a CITY object). `cut`: replies that ran out of `--max-new-tokens` (a constrained reply cut short
is invalid); `--free-prompts N` runs the unconstrained baseline on the first N prompts only. Progress goes to
stderr. Timings only: nothing here asserts a speed.
"""

# No `from __future__ import annotations`: pydantic must resolve the models' Literal fields when this is loaded by path.
import argparse
import json
import statistics
import sys
import time
from typing import Literal

import torch
from pydantic import BaseModel, ValidationError
from summary_io import write_summary

from scans_guard import GenerationConfig, ScansEngine
from scans_guard.decoding.constraints import Constraint
from scans_guard.decoding.grammar_mask import ConstrainedRows, vocabulary
from scans_guard.decoding.tool_calls import parse_tool_calls
from scans_guard.model.loading import ToolConversation
from scans_guard.serving.scheduler import decode_token_ids


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


class Add(BaseModel):
    """Add two numbers."""

    a: float
    b: float


class Search(BaseModel):
    """Search the web."""

    query: str


class City(BaseModel):
    name: str
    country: str


TOOL_MODELS = {"get_weather": GetWeather, "add": Add, "search": Search}
TOOLS = [
    {
        "type": "function",
        "function": {"name": n, "description": m.__doc__, "parameters": m.model_json_schema()},
    }
    for n, m in TOOL_MODELS.items()
]
CITY = City.model_json_schema()
CITIES = ["Paris", "Tokyo", "Madrid", "Cairo", "Lima", "Oslo", "Nairobi", "Hanoi", "Ottawa", "Canberra"]
KINDS = [
    "What's the weather like in {city} today?",
    "{city} is the capital of which country? Answer as JSON with name and country.",
    "Add {n} and {m}.",
    "Find me recent news about {city}.",
    "Tell me one interesting fact about {city}.",
]


def prompts(n: int) -> list[str]:
    """n varied prompts: each request kind with each city in turn."""
    out = [k.format(city=c, n=i + 3, m=7 * i + 2) for i, c in enumerate(CITIES) for k in KINDS]
    return out[:n]


def _call_valid(text: str) -> bool:
    _content, calls, invalid = parse_tool_calls(text, TOOLS)
    if not calls or invalid:
        return False
    try:
        for call in calls:
            TOOL_MODELS[call.name].model_validate(call.arguments, strict=True)
    except ValidationError:
        return False
    return True


def _json_valid(text: str) -> bool:
    try:
        City.model_validate_json(text.strip())
    except ValidationError:
        return False
    return True


def validity(
    engine: ScansEngine, items: list[str], max_new_tokens: int, batch_size: int, free_prompts: int | None = None
) -> dict:
    """Valid-call and schema-valid rates over `items` under the constraint, and without it over the first
    `free_prompts` of them (None: all)."""
    modes = {
        "tool_choice_required": (
            lambda p: ToolConversation([{"role": "user", "content": p}], TOOLS),
            Constraint.tool_call(TOOLS, parallel=False),
            _call_valid,
        ),
        "json_schema": (lambda p: [{"role": "user", "content": p}], Constraint.matching(CITY), _json_valid),
    }
    table = {}
    for name, (conversation, constraint, valid) in modes.items():
        for constrained in (True, False):
            config = GenerationConfig(max_new_tokens=max_new_tokens, constraint=constraint if constrained else None)
            subset = items if constrained or free_prompts is None else items[:free_prompts]
            outputs, t0 = [], time.perf_counter()
            for start in range(0, len(subset), batch_size):
                batch = [conversation(p) for p in subset[start : start + batch_size]]
                outputs += engine.generate(batch, config)
                done = f"{len(outputs)}/{len(subset)}, {sum(valid(o.text) for o in outputs)} valid"
                print(f"{name} constrained={constrained}: {done}", file=sys.stderr, flush=True)
            ok = [valid(o.text) for o in outputs]
            table[f"{name}/{'constrained' if constrained else 'free'}"] = {
                "n": len(outputs),
                "valid": sum(ok),
                "valid_rate": sum(ok) / len(outputs),
                "cut": sum(o.finish_reason == "length" for o in outputs),
                "mean_tokens": statistics.fmean(o.completion_tokens for o in outputs),
                "seconds": time.perf_counter() - t0,
                "examples": [o.text for o in outputs[:3]],
            }
    return table


def _step_ms(engine: ScansEngine, prompt: str, config: GenerationConfig, tokens: list[int]) -> list[float]:
    """ms of each decoding step after the first (whose timing also holds the prefill); the tokens go to `tokens`."""
    times, last = [], [time.perf_counter()]

    def stepped(_rows: int) -> None:
        now = time.perf_counter()
        times.append(1e3 * (now - last[0]))
        last[0] = now

    scheduler = engine.scheduler
    scheduler.add_step_listener(stepped)
    try:
        tokens += decode_token_ids(scheduler, [prompt], config)[0]
    finally:
        scheduler.remove_step_listener(stepped)
    return times[1:]


def mask_ms(engine: ScansEngine, constraint: Constraint, replies: list[list[int]]) -> float:
    """The constraint's own cost per token, ms: computing, applying and advancing the mask over `replies` (tokens
    decoded under it) on logits of the model's width; unlike step times, hardly moved by other load on the machine."""
    width = vocabulary(engine.handle).size
    total, n = 0.0, 0
    for reply in replies:
        rows = ConstrainedRows.build(engine.handle, [constraint])
        for token in reply:
            logits = torch.zeros(1, width)
            t = time.perf_counter()
            rows.mask(logits)
            rows.consume(torch.tensor([token]))
            total, n = total + time.perf_counter() - t, n + 1
    return 1e3 * total / max(n, 1)


def speed(engine: ScansEngine, items: list[str], max_new_tokens: int, repeats: int) -> dict:
    """ms per decoding step, plain vs under the CITY constraint (see the module docstring)."""
    vocabulary(engine.handle)  # built once per model, before timing
    plain = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    constrained = GenerationConfig(max_new_tokens=max_new_tokens, constraint=Constraint.matching(CITY))
    steps: dict[str, list[float]] = {"plain": [], "constrained": []}
    replies: list[list[int]] = []
    _step_ms(engine, items[0], constrained, [])  # warm-up
    for _ in range(repeats):
        for prompt in items:
            steps["plain"] += _step_ms(engine, prompt, plain, [])
            replies.append([])
            steps["constrained"] += _step_ms(engine, prompt, constrained, replies[-1])
    out = {
        mode: {"steps": len(ms), "ms_per_token": statistics.fmean(ms), "tokens_per_s": 1e3 / statistics.fmean(ms)}
        for mode, ms in steps.items()
    }
    ratio = out["constrained"]["tokens_per_s"] / out["plain"]["tokens_per_s"]
    mask = mask_ms(engine, constrained.constraint, replies)
    return {
        **out,
        "constrained_vs_plain": ratio,
        "meets_goal": ratio >= 0.9,
        "mask_ms_per_token": mask,
        "mask_share_of_plain_step": mask / out["plain"]["ms_per_token"],
    }


def measure(
    engine: ScansEngine,
    n_prompts: int,
    max_new_tokens: int,
    batch_size: int,
    speed_prompts: int,
    repeats: int,
    free_prompts: int | None = None,
) -> dict:
    items = prompts(n_prompts)
    table = {"model": engine.handle.name, "threads": torch.get_num_threads(), "max_new_tokens": max_new_tokens}
    table["speed"] = speed(engine, items[:speed_prompts], max_new_tokens, repeats)
    print(json.dumps(table["speed"]), file=sys.stderr, flush=True)  # a long run shows its first result early
    table["validity"] = validity(engine, items, max_new_tokens, batch_size, free_prompts)
    return table


def lines(table: dict) -> list[str]:
    s = table["speed"]
    out = [
        f"model {table['model']}, {table['threads']} threads, max_new_tokens {table['max_new_tokens']}",
        "",
        "| decoding | steps | ms/token | tokens/s |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {m} | {s[m]['steps']} | {s[m]['ms_per_token']:.1f} | {s[m]['tokens_per_s']:.1f} |"
        for m in ("plain", "constrained")
    ]
    out += [
        f"\nconstrained / plain tokens/s: {s['constrained_vs_plain']:.3f} (goal >= 0.9: {s['meets_goal']}); the "
        f"constraint's own cost: {s['mask_ms_per_token']:.3f} ms per token, "
        f"{100 * s['mask_share_of_plain_step']:.2f}% of a plain step",
        "",
    ]
    out += ["| reply | n | valid | valid rate | cut by max_new_tokens | mean tokens |", "|---|---|---|---|---|---|"]
    out += [
        f"| {k} | {v['n']} | {v['valid']} | {100 * v['valid_rate']:.0f}% | {v['cut']} | {v['mean_tokens']:.1f} |"
        for k, v in table["validity"].items()
    ]
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model directory or embedded name (default: the default model)")
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--free-prompts", type=int, default=None, help="unconstrained baseline on the first N (all)")
    parser.add_argument("--speed-prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = ScansEngine.load(args.model, args.artifact, progress=False)
    table = measure(
        engine,
        args.prompts,
        args.max_new_tokens,
        args.batch_size,
        args.speed_prompts,
        args.repeats,
        args.free_prompts,
    )
    write_summary(args.report, table, lines(table))
    return table


if __name__ == "__main__":
    main()
