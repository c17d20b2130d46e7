"""`scans-guard bench`: plain vs SCANS generation side by side, sigma latency, batched per-row steering, memory, load.

Every section runs on the same engine in one process (memory and load time in subprocesses, so each gets its own
peak), times with `time.perf_counter`, excludes warm-up runs, and returns one typed `BenchResult` (written as JSON,
printed as a table). The sections: `speed` (end to end, sigma, batched steering), `threads` (concurrent
`generate` calls vs one static batch), `serve` (the HTTP server under concurrent clients) and `process` (memory,
load time, machine facts).

Equal work. By default the timed runs decode with `GenerationConfig(ignore_eos=True)` (as vLLM's `ignore_eos`), so
plain and SCANS produce exactly `max_new_tokens` per prompt.
`--natural-length` keeps EOS; compare `ms_per_token` (wall / completion tokens) then. Either way both are reported.

    scans-guard bench --out results/bench.json          # default model, 48 new tokens, 3 repeats
    scans-guard bench --quick                            # a sanity run of a few seconds of work
    scans-guard bench --model DIR --artifact DIR --cold  # another model; --cold: first load into a fresh cache
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import zip_longest

from pydantic import BaseModel, ConfigDict, Field

from .config import BenchConfig
from .process import LoadResult, MemoryResult, _current_rss_mb, bench_load, bench_memory, machine_info, versions
from .serve import ServeResult, bench_serve
from .speed import (
    BatchedSteering,
    EndToEnd,
    SigmaResult,
    bench_batched_steering,
    bench_end_to_end,
    bench_sigma,
    timed,
)
from .threads import ThreadsResult, bench_threads

# 2: typed sections (BenchResult); plain requests report direction "none"; memory/load list every field
# 3: the serve section (HTTP server under concurrent clients; `skipped` when --no-serve or without the [serve] extra)
# 4: the threads section (N threads each calling generate on one prompt vs one static batch of N)
SCHEMA = "scans-guard-bench/4"


class ModelInfo(BaseModel):
    name: str
    n_layers: int
    hidden_size: int
    parameters: int
    dtype: str
    device: str


class BenchResult(BaseModel):
    """One benchmark run: what ran where, and every section's numbers. JSON: `model_dump_json(by_alias=True)`."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    schema_id: str = Field(SCHEMA, alias="schema")
    started: str
    config: dict
    machine: dict
    versions: dict[str, str]
    model: ModelInfo
    recipe: dict
    prompts: dict[str, list[str]]
    end_to_end: EndToEnd
    sigma: SigmaResult
    batched_steering: BatchedSteering
    threads: ThreadsResult
    serve: ServeResult
    memory: MemoryResult
    load: LoadResult
    notes: list[str]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


def bench_prompts(engine, n: int, seed: int) -> list[str]:
    """n prompts alternating harmful (AdvBench) and benign (TruthfulQA), none of them a calibration anchor (as the
    artifact records them)."""
    from ..calibration.artifacts import text_sha256
    from ..data import load_set, sample_prompts

    anchors = engine.artifact.meta.anchor_hashes()
    harmful_set, benign_set = (
        [e for e in load_set(name) if text_sha256(e.prompt) not in anchors] for name in ("advbench", "truthfulqa")
    )
    n_harm = (n + 1) // 2
    harmful, benign = sample_prompts(harmful_set, n_harm, seed), sample_prompts(benign_set, n - n_harm, seed)
    return [p for pair in zip_longest(harmful, benign) for p in pair if p is not None]


def run_benchmark(cfg: BenchConfig, engine=None, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Run every section. `engine`: use this one instead of loading cfg.model.

    Memory and warm/cold load run in subprocesses that load `cfg.model` / `cfg.artifact` themselves.
    """
    import torch

    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_sections(cfg, engine, progress or (lambda _msg: None))
    finally:
        torch.set_num_threads(threads_before)


def _model_info(handle) -> ModelInfo:
    return ModelInfo(
        name=handle.name,
        n_layers=handle.n_layers,
        hidden_size=handle.hidden_size,
        parameters=sum(p.numel() for p in handle.model.parameters()),
        dtype=str(handle.dtype),
        device=str(handle.device),
    )


def _run_sections(cfg: BenchConfig, engine, say: Callable[[str], None]) -> BenchResult:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    load_s = None
    if engine is None:
        from ..engine import ScansEngine

        say("loading the engine")
        load_s, engine = timed(
            lambda: ScansEngine.load(cfg.model, cfg.artifact, device=cfg.device, dtype=cfg.dtype, progress=False)
        )
    pool = bench_prompts(
        engine, max(cfg.n_prompts, cfg.sigma_prompts, max(cfg.sigma_batch_sizes), max(cfg.steer_batch_sizes)), cfg.seed
    )
    random.Random(cfg.seed).shuffle(pool)
    e2e_prompts = pool[: cfg.n_prompts]
    say("end to end: plain vs SCANS")
    end_to_end = bench_end_to_end(engine, e2e_prompts, cfg)
    say("sigma alone")
    sigma = bench_sigma(engine, pool, cfg)
    say("batched steering with per-row signs")
    batched = bench_batched_steering(engine, pool, cfg)
    say(f"threads: {cfg.generate_threads} threads calling generate vs one static batch")
    threads = bench_threads(engine, pool, cfg)
    serve = ServeResult(skipped="--no-serve")
    if cfg.serve:
        say("serve: the HTTP server, one client vs concurrent clients, /v1/classify, idle memory")
        serve = bench_serve(engine, e2e_prompts, cfg, _current_rss_mb)
    memory = MemoryResult(skipped="--no-memory")
    if cfg.memory:
        say("memory: one subprocess per mode")
        memory = bench_memory(e2e_prompts, cfg)
    load = LoadResult(in_process_s=load_s, warm_subprocess_s=None, cold_s=None, skipped="--no-load-time")
    if cfg.load_time:
        say("load time")
        load = bench_load(cfg, load_s, memory if cfg.memory else None)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return BenchResult(
        started=started,
        config=cfg.model_dump(),
        machine=machine,
        versions=versions(),
        model=_model_info(engine.handle),
        recipe=engine.recipe.model_dump(),
        prompts={"end_to_end": e2e_prompts},
        end_to_end=end_to_end,
        sigma=sigma,
        batched_steering=batched,
        threads=threads,
        serve=serve,
        memory=memory,
        load=load,
        notes=[
            "times: time.perf_counter, warm-up runs excluded",
            "equal work: EOS suppressed while timing, every row generates max_new_tokens"
            if cfg.force_length
            else "natural length: rows stop at EOS; compare ms_per_token (wall / completion tokens)",
            "a loadavg above the thread count means other processes shared the CPUs: treat timings as noisy",
        ],
    )
