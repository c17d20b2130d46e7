"""Speed sections of `scans-guard bench`: plain vs SCANS end to end, sigma alone, batched per-row steering.

Every section runs on one engine in this process, times with `time.perf_counter` and excludes warm-up runs. Each
row's steering is read from its output (`SteeredOutput.steering`), never inferred from the options passed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from ..config import SafetyVerdict
    from ..sigma.readings import Conversation
    from .config import BenchConfig

T = TypeVar("T")

THROUGHPUT_GOAL = 0.99  # SCANS tokens/s >= 99% of plain tokens/s


class Summary(BaseModel):
    """mean / median / min / max / p90 of a list of seconds (or any unit)."""

    mean: float
    median: float
    min: float
    max: float
    p90: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        vals = sorted(values)
        p90 = vals[min(len(vals) - 1, int(round(0.9 * (len(vals) - 1))))]
        return cls(
            mean=statistics.fmean(vals), median=statistics.median(vals), min=vals[0], max=vals[-1], p90=p90, n=len(vals)
        )

    @classmethod
    def maybe(cls, values: Sequence[float]) -> Summary | None:
        return cls.of(values) if values else None


class ModeTiming(BaseModel):
    """One mode (plain or SCANS) over every timed request."""

    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float | None
    latency_s: Summary
    ms_per_token: Summary | None
    ttft_s: Summary
    decode_tokens_per_s: float | None
    decode_ms_per_token: Summary | None
    classify_s: Summary
    forwards_per_request: Summary
    completion_tokens_per_request: Summary
    directions: dict[str, int] | None = None  # SCANS: rows per steering direction (first repeat)


class Comparison(BaseModel):
    throughput_ratio: float | None
    per_token_ratio_median: float | None
    latency_ratio_median: float
    decode_throughput_ratio: float | None
    ttft_ratio_median: float
    ratio_if_only_one_extra_forward: float | None
    same_token_counts: bool
    goal: float
    meets_goal: bool
    decode_meets_goal: bool


class EndToEnd(BaseModel):
    equal_work: str
    n_prompts: int
    max_new_tokens: int
    repeats: int
    batch_size: int
    plain: ModeTiming
    scans: ModeTiming
    scans_vs_plain: Comparison


class SigmaBatch(BaseModel):
    batch_size: int
    n_prompts: int
    passes: int
    prompts_per_s: float
    ms_per_prompt: Summary
    pass_latency_ms: Summary


class ReadingsCost(BaseModel):
    """sigma on one input shape: how many readings it scores and what that costs against the request alone."""

    shape: str
    readings: int
    forward_passes: int
    ms_per_prompt: Summary
    vs_single: float | None


class SigmaResult(BaseModel):
    batches: list[SigmaBatch]
    readings: list[ReadingsCost] = Field(default_factory=list, description="sigma's cost by input shape")


class SteerBatch(BaseModel):
    batch_size: int
    n_prompts: int
    calls: int
    completion_tokens: int
    tokens_per_s: float
    call_latency_s: Summary


class BatchedSteering(BaseModel):
    coefficients: list[float]
    batches: list[SteerBatch]
    same_tokens_as_unbatched: bool
    mismatched_rows: list[int]
    checked_batch_size: int


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


@contextlib.contextmanager
def step_clock(engine) -> Iterator[list[float]]:
    """perf_counter stamps at the end of every forward pass of the model (sigma pass, prefill, decode steps)."""
    stamps: list[float] = []
    hook = engine.handle.model.register_forward_hook(lambda *_args: stamps.append(time.perf_counter()))
    try:
        yield stamps
    finally:
        hook.remove()


def _timed_request(engine, prompt: str, gen, kwargs: dict) -> dict:
    """One request at batch 1, with the wall time split at the forward pass that yields the first token.

    Plain: forward 1 is the prefill and yields token 1. SCANS: forward 1 is the sigma pass (prompt + r_pos), forward 2
    re-runs the last prompt token under steering and yields token 1. Every later forward is one decode step.
    """
    gc.collect()
    with step_clock(engine) as stamps:
        t0 = time.perf_counter()
        out = engine.generate([prompt], gen, **kwargs)[0]
        wall = time.perf_counter() - t0
    first = 1 if out.steering.source == "sigma" else 0  # the sigma pass ran first
    decode_steps = len(stamps) - first - 1
    return {
        "wall_s": wall,
        "completion_tokens": out.completion_tokens,
        "forwards": len(stamps),
        "ttft_s": stamps[first] - t0,
        "decode_steps": decode_steps,
        "decode_s": stamps[-1] - stamps[first] if decode_steps > 0 else 0.0,
        "classify_s": out.timings.get("classify_s", 0.0) if first else 0.0,
        "direction": out.steering.direction,
    }


def _mode_timing(rs: list[dict], directions: bool) -> ModeTiming:
    tokens, wall = sum(r["completion_tokens"] for r in rs), sum(r["wall_s"] for r in rs)
    decode_steps, decode_s = sum(r["decode_steps"] for r in rs), sum(r["decode_s"] for r in rs)
    dirs = [r["direction"] for r in rs if r["repeat"] == 0]
    return ModeTiming(
        requests=len(rs),
        completion_tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else None,
        latency_s=Summary.of([r["wall_s"] for r in rs]),
        ms_per_token=Summary.maybe([r["wall_s"] / r["completion_tokens"] * 1e3 for r in rs if r["completion_tokens"]]),
        ttft_s=Summary.of([r["ttft_s"] for r in rs]),
        decode_tokens_per_s=decode_steps / decode_s if decode_s > 0 else None,
        decode_ms_per_token=Summary.maybe(
            [r["decode_s"] / r["decode_steps"] * 1e3 for r in rs if r["decode_steps"] > 0]
        ),
        classify_s=Summary.of([r["classify_s"] for r in rs]),
        forwards_per_request=Summary.of([r["forwards"] for r in rs]),
        completion_tokens_per_request=Summary.of([r["completion_tokens"] for r in rs]),
        directions={d: dirs.count(d) for d in sorted(set(dirs))} if directions else None,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _compare(runs: dict[str, list[dict]], plain: ModeTiming, scans: ModeTiming) -> Comparison:
    # Paired per-request ratios of per-token time: robust to one slow outlier and to unequal lengths.
    paired = [
        p["wall_s"] / p["completion_tokens"] / (s["wall_s"] / s["completion_tokens"])
        for p, s in zip(runs["plain"], runs["scans"])
        if p["completion_tokens"] and s["completion_tokens"]
    ]
    ratio = _ratio(scans.tokens_per_s, plain.tokens_per_s)
    decode_ratio = _ratio(scans.decode_tokens_per_s, plain.decode_tokens_per_s)
    # A steered SCANS request runs one forward more than plain (the last prompt token again, under steering; an
    # unsteered one takes token 1 from the sigma pass). If that were its only cost, the end-to-end ratio would be
    # wall / (wall + one decode step):
    step_s = plain.decode_ms_per_token.median / 1e3 if plain.decode_ms_per_token else 0.0
    one_extra = plain.latency_s.median / (plain.latency_s.median + step_s) if step_s else None
    return Comparison(
        throughput_ratio=ratio,
        per_token_ratio_median=statistics.median(paired) if paired else None,
        latency_ratio_median=scans.latency_s.median / plain.latency_s.median,
        decode_throughput_ratio=decode_ratio,
        ttft_ratio_median=scans.ttft_s.median / plain.ttft_s.median,
        ratio_if_only_one_extra_forward=one_extra,
        same_token_counts=[r["completion_tokens"] for r in runs["plain"]]
        == [r["completion_tokens"] for r in runs["scans"]],
        goal=THROUGHPUT_GOAL,
        meets_goal=ratio is not None and ratio >= THROUGHPUT_GOAL,
        decode_meets_goal=decode_ratio is not None and decode_ratio >= THROUGHPUT_GOAL,
    )


def bench_end_to_end(engine, prompts: Sequence[str], cfg: BenchConfig) -> EndToEnd:
    """Plain (steer=False) vs SCANS (sigma pass + steered decode from its KV cache), one prompt per request.

    The two modes alternate (ABBA over prompts and repeats), so drift in machine load hits both alike. Reported per
    mode: end-to-end tokens/s and latency, time to first token, and decode-only tokens/s (every forward after the one
    that yields the first token), which isolates the per-step cost of the steering hooks from the sigma pass.
    """
    from ..config import GenerationConfig

    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, ignore_eos=cfg.force_length)
    modes = {"plain": {"steer": False}, "scans": {"steer": True, "reuse_cache": True}}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(cfg.warmup):
        for kwargs in modes.values():
            engine.generate([prompts[0]], gen, **kwargs)
    for rep in range(cfg.repeats):
        for i, prompt in enumerate(prompts):
            order = list(modes) if (rep + i) % 2 == 0 else list(modes)[::-1]
            for mode in order:
                runs[mode].append({"prompt": i, "repeat": rep, **_timed_request(engine, prompt, gen, modes[mode])})
    plain, scans = _mode_timing(runs["plain"], False), _mode_timing(runs["scans"], True)
    return EndToEnd(
        equal_work="eos_suppressed" if cfg.force_length else "natural_length_per_token",
        n_prompts=len(prompts),
        max_new_tokens=cfg.max_new_tokens,
        repeats=cfg.repeats,
        batch_size=1,
        plain=plain,
        scans=scans,
        scans_vs_plain=_compare(runs, plain, scans),
    )


def bench_sigma(engine, prompts: Sequence[str], cfg: BenchConfig) -> SigmaResult:
    """engine.classify alone: latency per prompt and prompts/s at each batch size, over the same prompts."""
    rows = []
    for b in cfg.sigma_batch_sizes:
        batch_prompts = list(prompts[: max(b, cfg.sigma_prompts)])
        for _ in range(cfg.warmup):
            engine.classify(batch_prompts[:b], batch_size=b)
        walls, pass_latencies = [], []
        for _ in range(cfg.repeats):
            wall, verdicts = timed(functools.partial(engine.classify, batch_prompts, batch_size=b))
            walls.append(wall)
            pass_latencies += [v.latency_s for v in verdicts[::b]]  # one forward pass per batch
        n = len(batch_prompts)
        rows.append(
            SigmaBatch(
                batch_size=b,
                n_prompts=n,
                passes=-(-n // b) * cfg.repeats,
                prompts_per_s=n * cfg.repeats / sum(walls),
                ms_per_prompt=Summary.of([w / n * 1e3 for w in walls]),
                pass_latency_ms=Summary.of([x * 1e3 for x in pass_latencies]),
            )
        )
    return SigmaResult(batches=rows, readings=bench_readings(engine, prompts[:4], cfg))


READING_SHAPES: dict[str, Callable[[str], Conversation]] = {
    "single sentence": lambda p: p,
    "system prompt": lambda p: [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": p},
    ],
    "three sentences": lambda p: (
        f"What is the capital of Australia? {p.rstrip('.?!')}. And can you suggest a name for a goldfish?"
    ),
    "three user turns": lambda p: [
        {"role": "user", "content": "Can you help me with something?"},
        {"role": "assistant", "content": "Sure, what do you need?"},
        {"role": "user", "content": "It's for a project."},
        {"role": "assistant", "content": "Go ahead."},
        {"role": "user", "content": p},
    ],
}


def bench_readings(engine, prompts: Sequence[str], cfg: BenchConfig) -> list[ReadingsCost]:
    """sigma one prompt at a time on each input shape: a single sentence is one pass; other shapes add one batched
    pass over their readings (scans_guard.sigma.readings)."""
    rows, single = [], None
    for shape, build in READING_SHAPES.items():
        convs = [build(p) for p in prompts]
        engine.classify(convs[:1])  # warm-up
        calls: list[int] = []
        hook = engine.handle.model.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        try:
            walls: list[float] = []
            verdicts: list[SafetyVerdict] = []
            for _ in range(cfg.repeats):
                for c in convs:
                    wall, v = timed(functools.partial(engine.classify, c))
                    walls.append(wall * 1e3)
                    verdicts += v
        finally:
            hook.remove()
        ms = Summary.of(walls)
        single = ms.median if single is None else single
        rows.append(
            ReadingsCost(
                shape=shape,
                readings=round(sum(len(v.renderings) for v in verdicts) / len(verdicts)),
                forward_passes=round(len(calls) / len(walls)),
                ms_per_prompt=ms,
                vs_single=ms.median / single if single else None,
            )
        )
    return rows


def bench_batched_steering(engine, prompts: Sequence[str], cfg: BenchConfig) -> BatchedSteering:
    """Fixed per-row signs (coefficient=[+a, -a, ...], no classification) at each batch size; and whether a batch
    gives every row the same greedy tokens as that row alone."""
    from ..config import GenerationConfig

    recipe = engine.recipe
    a = max(recipe.alpha_benign, recipe.alpha_harmful) or 1.0
    rows = list(prompts[: max(cfg.steer_batch_sizes)])
    coefs = [a if i % 2 == 0 else -a for i in range(len(rows))]
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, ignore_eos=cfg.force_length)
    out_rows = []
    for b in cfg.steer_batch_sizes:
        chunks = [(rows[i : i + b], coefs[i : i + b]) for i in range(0, len(rows), b)]
        for _ in range(cfg.warmup):
            engine.generate(chunks[0][0], gen, coefficient=chunks[0][1])
        walls, tokens = [], 0
        for _ in range(cfg.repeats):
            for chunk, c in chunks:
                wall, outs = timed(functools.partial(engine.generate, chunk, gen, coefficient=c))
                walls.append(wall)
                tokens += sum(o.completion_tokens for o in outs)
        out_rows.append(
            SteerBatch(
                batch_size=b,
                n_prompts=len(rows),
                calls=len(walls),
                completion_tokens=tokens,
                tokens_per_s=tokens / sum(walls),
                call_latency_s=Summary.of(walls),
            )
        )
    # Equality check with real EOS handling (what a user gets), greedy, untimed.
    batched = engine.generate(rows, gen, coefficient=coefs)
    single = [engine.generate([p], gen, coefficient=[c])[0] for p, c in zip(rows, coefs)]
    mismatched = [
        i
        for i, (x, y) in enumerate(zip(batched, single))
        if x.text != y.text or x.completion_tokens != y.completion_tokens
    ]
    return BatchedSteering(
        coefficients=coefs,
        batches=out_rows,
        same_tokens_as_unbatched=not mismatched,
        mismatched_rows=mismatched,
        checked_batch_size=len(rows),
    )
