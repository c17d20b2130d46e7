"""`scans-guard bench`: plain vs SCANS generation side by side, sigma latency, batched per-row steering, memory, load.

Every section runs on the same engine in one process (memory and load time in subprocesses, so each gets its own
peak), times with `time.perf_counter`, excludes warm-up runs, and writes one JSON document (also printed as a table).

Equal work. By default the timed runs decode with `GenerationConfig(ignore_eos=True)` (as vLLM's `ignore_eos`), so
plain and SCANS produce exactly `max_new_tokens` per prompt.
`--natural-length` keeps EOS; compare `ms_per_token` (wall / completion tokens) then. Either way both are reported.

    scans-guard bench --out results/bench.json          # default model, 48 new tokens, 3 repeats
    scans-guard bench --quick                            # a sanity run of a few seconds of work
    scans-guard bench --model DIR --artifact DIR --cold  # another model; --cold: first load into a fresh cache
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = "scans-guard-bench/1"
THROUGHPUT_GOAL = 0.99  # SCANS tokens/s >= 99% of plain tokens/s


@dataclass
class BenchConfig:
    """What to measure and how often. `quick()` shrinks it to a sanity run."""

    model: str | None = None  # None: the embedded default model
    artifact: str | None = None  # None: the artifact shipped for the default model
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens: int = 48
    repeats: int = 3
    warmup: int = 1
    n_prompts: int = 8  # end-to-end prompts (half harmful, half benign)
    sigma_prompts: int = 32  # prompts classified at each sigma batch size
    sigma_batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    steer_batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    force_length: bool = True  # suppress EOS while timing so both modes generate max_new_tokens per row
    memory: bool = True  # peak RSS plain vs SCANS, one subprocess each
    load_time: bool = True  # warm load time in a fresh process (reuses the memory subprocesses when they run)
    cold: bool = False  # time a first load (GGUF -> cache) into a temporary SCANS_GUARD_CACHE
    threads: int | None = None  # torch.set_num_threads; None: leave torch's default
    seed: int = 0
    quick: bool = False
    serve: bool = True  # the serve section: the HTTP server under concurrent clients (needs the [serve] extra)

    @classmethod
    def quick_config(cls, **overrides: object) -> BenchConfig:
        base = dict(max_new_tokens=8, repeats=1, warmup=1, n_prompts=2, sigma_prompts=8, sigma_batch_sizes=[1, 8],
                    steer_batch_sizes=[1, 2], quick=True)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "repeats", "n_prompts", "sigma_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"bench: {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError("bench: warmup must be >= 0")
        if not self.sigma_batch_sizes or not self.steer_batch_sizes or \
                min(self.sigma_batch_sizes + self.steer_batch_sizes) < 1:
            raise ValueError("bench: batch sizes must be >= 1")


# -- measurement helpers -----------------------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, float]:
    """mean / median / min / max / p90 of a list of seconds (or any unit)."""
    vals = sorted(values)
    p90 = vals[min(len(vals) - 1, int(round(0.9 * (len(vals) - 1))))]
    return {"mean": statistics.fmean(vals), "median": statistics.median(vals), "min": vals[0], "max": vals[-1],
            "p90": p90, "n": len(vals)}


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _current_rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / (1 << 20)
    except ImportError:
        pass
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return None


def _status_kib(key: str) -> float | None:
    """A `VmHWM`/`VmRSS` style line of /proc/self/status in MiB (Linux only)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def machine_info() -> dict:
    import torch

    cpu_model = None
    with contextlib.suppress(OSError):
        cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name")), None)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": cpu_model or platform.processor(),
        "os_cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "psutil": _has_psutil(),
    }


def _has_psutil() -> bool:
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def versions() -> dict:
    import torch
    import transformers

    from . import __version__

    return {"scans_guard": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def bench_prompts(engine, n: int, seed: int) -> list[str]:
    """n prompts alternating harmful (AdvBench) and benign (TruthfulQA), none of them a calibration anchor."""
    from .data import anchor_split, load_set, sample_prompts

    anchors = engine.artifact.meta.anchors
    exclude: set[str] = set()
    if "harmful" in anchors:
        harmful_anchors, benign_anchors = anchor_split(anchors["harmful"].n, anchors["harmful"].seed)
        exclude = set(harmful_anchors) | set(benign_anchors)
    n_harm = (n + 1) // 2
    harmful = sample_prompts(load_set("advbench"), n_harm, seed, exclude)
    benign = sample_prompts(load_set("truthfulqa"), n - n_harm, seed, exclude)
    out = []
    for i in range(n_harm):
        out.append(harmful[i])
        if i < len(benign):
            out.append(benign[i])
    return out


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


# -- sections ----------------------------------------------------------------------------------------------------


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
    first = 1 if kwargs.get("steer", True) and kwargs.get("coefficient") is None else 0
    gc.collect()
    with step_clock(engine) as stamps:
        t0 = time.perf_counter()
        out = engine.generate([prompt], gen, **kwargs)[0]
        wall = time.perf_counter() - t0
    decode_steps = len(stamps) - first - 1
    return {"wall_s": wall, "completion_tokens": out.completion_tokens, "forwards": len(stamps),
            "ttft_s": stamps[first] - t0, "decode_steps": decode_steps,
            "decode_s": stamps[-1] - stamps[first] if decode_steps > 0 else 0.0,
            "classify_s": out.timings.get("classify_s", 0.0) if first else 0.0,
            "direction": out.verdict.direction if out.verdict else None}


def bench_end_to_end(engine, prompts: Sequence[str], cfg: BenchConfig) -> dict:
    """Plain (steer=False) vs SCANS (sigma pass + steered decode from its KV cache), one prompt per request.

    The two modes alternate (ABBA over prompts and repeats), so drift in machine load hits both alike. Reported per
    mode: end-to-end tokens/s and latency, time to first token, and decode-only tokens/s (every forward after the one
    that yields the first token), which isolates the per-step cost of the steering hooks from the sigma pass.
    """
    from .config import GenerationConfig

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
    result: dict = {"equal_work": "eos_suppressed" if cfg.force_length else "natural_length_per_token",
                    "n_prompts": len(prompts), "max_new_tokens": cfg.max_new_tokens, "repeats": cfg.repeats,
                    "batch_size": 1}
    for mode, rs in runs.items():
        tokens = sum(r["completion_tokens"] for r in rs)
        wall = sum(r["wall_s"] for r in rs)
        decode_steps, decode_s = sum(r["decode_steps"] for r in rs), sum(r["decode_s"] for r in rs)
        per_token = [r["wall_s"] / r["completion_tokens"] * 1e3 for r in rs if r["completion_tokens"]]
        step_ms = [r["decode_s"] / r["decode_steps"] * 1e3 for r in rs if r["decode_steps"] > 0]
        result[mode] = {
            "requests": len(rs), "completion_tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall if wall > 0 else None,
            "latency_s": _summary([r["wall_s"] for r in rs]),
            "ms_per_token": _summary(per_token) if per_token else None,
            "ttft_s": _summary([r["ttft_s"] for r in rs]),
            "decode_tokens_per_s": decode_steps / decode_s if decode_s > 0 else None,
            "decode_ms_per_token": _summary(step_ms) if step_ms else None,
            "classify_s": _summary([r["classify_s"] for r in rs]),
            "forwards_per_request": _summary([r["forwards"] for r in rs]),
            "completion_tokens_per_request": _summary([r["completion_tokens"] for r in rs]),
        }
        if mode == "scans":
            dirs = [r["direction"] for r in rs if r["repeat"] == 0]
            result[mode]["directions"] = {d: dirs.count(d) for d in sorted(set(dirs), key=str)}
    plain, scans = result["plain"], result["scans"]
    # Paired per-request ratios of per-token time: robust to one slow outlier and to unequal lengths.
    paired = [p["wall_s"] / p["completion_tokens"] / (s["wall_s"] / s["completion_tokens"])
              for p, s in zip(runs["plain"], runs["scans"]) if p["completion_tokens"] and s["completion_tokens"]]
    ratio = (scans["tokens_per_s"] / plain["tokens_per_s"]
             if scans["tokens_per_s"] and plain["tokens_per_s"] else None)
    decode_ratio = (scans["decode_tokens_per_s"] / plain["decode_tokens_per_s"]
                    if scans["decode_tokens_per_s"] and plain["decode_tokens_per_s"] else None)
    # A steered SCANS request runs one forward more than plain (the last prompt token again, under steering; an
    # unsteered one takes token 1 from the sigma pass). If that were its only cost, the end-to-end ratio would be
    # wall / (wall + one decode step):
    step_s = (plain["decode_ms_per_token"] or {}).get("median", 0.0) / 1e3
    one_extra = plain["latency_s"]["median"] / (plain["latency_s"]["median"] + step_s) if step_s else None
    result["scans_vs_plain"] = {
        "throughput_ratio": ratio,
        "per_token_ratio_median": statistics.median(paired) if paired else None,
        "latency_ratio_median": scans["latency_s"]["median"] / plain["latency_s"]["median"],
        "decode_throughput_ratio": decode_ratio,
        "ttft_ratio_median": scans["ttft_s"]["median"] / plain["ttft_s"]["median"],
        "ratio_if_only_one_extra_forward": one_extra,
        "same_token_counts": [r["completion_tokens"] for r in runs["plain"]]
        == [r["completion_tokens"] for r in runs["scans"]],
        "goal": THROUGHPUT_GOAL,
        "meets_goal": ratio is not None and ratio >= THROUGHPUT_GOAL,
        "decode_meets_goal": decode_ratio is not None and decode_ratio >= THROUGHPUT_GOAL,
    }
    return result


def bench_sigma(engine, prompts: Sequence[str], cfg: BenchConfig) -> dict:
    """engine.classify alone: latency per prompt and prompts/s at each batch size, over the same prompts."""
    rows = []
    for b in cfg.sigma_batch_sizes:
        batch_prompts = list(prompts[:max(b, cfg.sigma_prompts)])
        for _ in range(cfg.warmup):
            engine.classify(batch_prompts[:b], batch_size=b)
        walls, pass_latencies = [], []
        for _ in range(cfg.repeats):
            wall, verdicts = _timed(lambda: engine.classify(batch_prompts, batch_size=b))
            walls.append(wall)
            pass_latencies += [v.latency_s for v in verdicts[::b]]  # one forward pass per batch
        n = len(batch_prompts)
        rows.append({"batch_size": b, "n_prompts": n, "passes": -(-n // b) * cfg.repeats,
                     "prompts_per_s": n * cfg.repeats / sum(walls),
                     "ms_per_prompt": _summary([w / n * 1e3 for w in walls]),
                     "pass_latency_ms": _summary([x * 1e3 for x in pass_latencies])})
    return {"batches": rows}


def bench_batched_steering(engine, prompts: Sequence[str], cfg: BenchConfig) -> dict:
    """Fixed per-row signs (coefficient=[+a, -a, ...], no classification) at each batch size; and whether a batch
    gives every row the same greedy tokens as that row alone."""
    from .config import GenerationConfig

    recipe = engine.recipe
    a = max(recipe.alpha_benign, recipe.alpha_harmful) or 1.0
    n = max(cfg.steer_batch_sizes)
    rows = list(prompts[:n])
    coefs = [a if i % 2 == 0 else -a for i in range(len(rows))]
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, ignore_eos=cfg.force_length)
    out_rows = []
    for b in cfg.steer_batch_sizes:
        chunks = [(rows[i:i + b], coefs[i:i + b]) for i in range(0, len(rows), b)]
        for _ in range(cfg.warmup):
            engine.generate(chunks[0][0], gen, coefficient=chunks[0][1])
        walls, tokens = [], 0
        for _ in range(cfg.repeats):
            for chunk, c in chunks:
                wall, outs = _timed(lambda: engine.generate(chunk, gen, coefficient=c))
                walls.append(wall)
                tokens += sum(o.completion_tokens for o in outs)
        out_rows.append({"batch_size": b, "n_prompts": len(rows), "calls": len(walls), "completion_tokens": tokens,
                         "tokens_per_s": tokens / sum(walls), "call_latency_s": _summary(walls)})
    # Equality check with real EOS handling (what a user gets), greedy, untimed.
    batched = engine.generate(rows, gen, coefficient=coefs)
    single = [engine.generate([p], gen, coefficient=[c])[0] for p, c in zip(rows, coefs)]
    mismatched = [i for i, (x, y) in enumerate(zip(batched, single))
                  if x.text != y.text or x.completion_tokens != y.completion_tokens]
    return {"coefficients": coefs, "batches": out_rows, "same_tokens_as_unbatched": not mismatched,
            "mismatched_rows": mismatched, "checked_batch_size": len(rows)}


# -- subprocess measurements (memory, load time) -----------------------------------------------------------------


def _child(spec: dict) -> dict:
    """Runs in a fresh interpreter: load the engine, then (mode plain/scans) generate; report times and RSS."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rss_start = _current_rss_mb()
    from .config import GenerationConfig
    from .engine import ScansEngine

    t0 = time.perf_counter()
    engine = ScansEngine.load(spec["model"], spec["artifact"], device=spec["device"], dtype=spec["dtype"],
                              progress=False)
    load_s = time.perf_counter() - t0
    out = {"mode": spec["mode"], "load_s": load_s, "rss_start_mb": rss_start, "rss_after_load_mb": _current_rss_mb(),
           "peak_rss_after_load_mb": _peak_rss_mb()}
    if spec["mode"] in ("plain", "scans"):
        gen = GenerationConfig(max_new_tokens=spec["max_new_tokens"], ignore_eos=spec["force_length"])
        kwargs = {"steer": spec["mode"] == "scans"}
        # Safetensors weights are memory-mapped and become resident on first use: one short warm-up request first,
        # so the peak below measures generation (activations, KV cache, steering) rather than page-ins.
        engine.generate([spec["prompts"][0]], GenerationConfig(max_new_tokens=2), **kwargs)
        out["rss_after_warmup_mb"] = _current_rss_mb()
        reset = _reset_peak_rss()
        engine.generate(spec["prompts"], gen, **kwargs)  # the end-to-end prompts as one batch
        out.update({
            "hwm_reset": reset,
            "generation_peak_rss_mb": _status_kib("VmHWM") if reset else None,
            "peak_rss_mb": _peak_rss_mb(),
            "rss_after_generation_mb": _current_rss_mb(),
        })
        if reset and out["rss_after_warmup_mb"] is not None:
            out["generation_delta_mb"] = out["generation_peak_rss_mb"] - out["rss_after_warmup_mb"]
    return out


def _run_child(spec: dict, env: dict | None = None, timeout: float = 1800) -> dict:
    cmd = [sys.executable, "-m", "scans_guard.bench", "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    except subprocess.TimeoutExpired:
        return {"mode": spec["mode"], "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"mode": spec["mode"], "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def bench_memory(prompts: Sequence[str], cfg: BenchConfig) -> dict:
    spec = {"model": cfg.model, "artifact": cfg.artifact, "device": cfg.device, "dtype": cfg.dtype,
            "max_new_tokens": cfg.max_new_tokens, "force_length": cfg.force_length, "threads": cfg.threads,
            "prompts": list(prompts)}
    result = {"method": "one subprocess per mode: load, one warm-up request (weights are memory-mapped and page in "
                        "on first use), reset /proc VmHWM, then the end-to-end prompts as one batch; "
                        "generation_peak_rss_mb = VmHWM after that (falls back to ru_maxrss, which includes the "
                        "load peak)"}
    for mode in ("plain", "scans"):
        result[mode] = _run_child({**spec, "mode": mode})
    p, s = result["plain"], result["scans"]
    key = "generation_peak_rss_mb" if p.get("generation_peak_rss_mb") and s.get("generation_peak_rss_mb") \
        else "peak_rss_mb"
    if key in p and key in s:
        result["compared"] = key
        result["scans_minus_plain_mb"] = s[key] - p[key]
    return result


def bench_load(cfg: BenchConfig, in_process_s: float | None, memory: dict | None) -> dict:
    """Warm load: fresh interpreters loading from the existing cache. Cold: a first load into an empty cache."""
    warm = [m["load_s"] for m in (memory or {}).values() if isinstance(m, dict) and "load_s" in m]
    if not warm:
        child = _run_child({"model": cfg.model, "artifact": cfg.artifact, "device": cfg.device, "dtype": cfg.dtype,
                            "threads": cfg.threads, "mode": "load"})
        warm = [child["load_s"]] if "load_s" in child else []
    result: dict = {"in_process_s": in_process_s, "warm_subprocess_s": _summary(warm) if warm else None,
                    "cold_s": None}
    if not cfg.cold:
        result["cold_skipped"] = "not requested (--cold)"
    elif cfg.model is not None:
        result["cold_skipped"] = "cold start (GGUF -> cache) applies to the default model only"
    else:
        tmp = tempfile.mkdtemp(prefix="scans-guard-cold-")
        try:
            child = _run_child({"model": None, "artifact": cfg.artifact, "device": cfg.device, "dtype": cfg.dtype,
                                "threads": cfg.threads, "mode": "load"}, env={"SCANS_GUARD_CACHE": tmp})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result["cold_s"] = child.get("load_s")
        if "error" in child:
            result["cold_error"] = child["error"]
    return result


# -- driver ------------------------------------------------------------------------------------------------------


def run_benchmark(cfg: BenchConfig, engine=None, progress: Callable[[str], None] | None = None) -> dict:
    """Run every section and return the JSON-ready result. `engine`: use this one instead of loading cfg.model.

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


def _run_sections(cfg: BenchConfig, engine, say: Callable[[str], None]) -> dict:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    load_s = None
    if engine is None:
        from .engine import ScansEngine

        say("loading the engine")
        load_s, engine = _timed(lambda: ScansEngine.load(cfg.model, cfg.artifact, device=cfg.device,
                                                          dtype=cfg.dtype, progress=False))
    handle = engine.handle
    pool = bench_prompts(engine, max(cfg.n_prompts, cfg.sigma_prompts, max(cfg.sigma_batch_sizes),
                                     max(cfg.steer_batch_sizes)), cfg.seed)
    random.Random(cfg.seed).shuffle(pool)
    e2e_prompts = pool[:cfg.n_prompts]
    result: dict = {
        "schema": SCHEMA,
        "started": started,
        "config": asdict(cfg),
        "machine": machine,
        "versions": versions(),
        "model": {"name": handle.name, "n_layers": handle.n_layers, "hidden_size": handle.hidden_size,
                  "parameters": sum(p.numel() for p in handle.model.parameters()), "dtype": str(handle.dtype),
                  "device": str(handle.device)},
        "recipe": engine.recipe.model_dump(),
        "prompts": {"end_to_end": e2e_prompts},
    }
    say("end to end: plain vs SCANS")
    result["end_to_end"] = bench_end_to_end(engine, e2e_prompts, cfg)
    say("sigma alone")
    result["sigma"] = bench_sigma(engine, pool, cfg)
    say("batched steering with per-row signs")
    result["batched_steering"] = bench_batched_steering(engine, pool, cfg)
    if cfg.serve:
        from .bench_serve import bench_serve

        say("serve: the HTTP server, one client vs concurrent clients, /v1/classify, idle memory")
        result["serve"] = bench_serve(engine, e2e_prompts, cfg, _current_rss_mb)
    else:
        result["serve"] = {"skipped": "--no-serve"}
    memory = None
    if cfg.memory:
        say("memory: one subprocess per mode")
        memory = bench_memory(e2e_prompts, cfg)
        result["memory"] = memory
    else:
        result["memory"] = {"skipped": "--no-memory"}
    if cfg.load_time:
        say("load time")
        result["load"] = bench_load(cfg, load_s, {k: v for k, v in (memory or {}).items() if k in ("plain", "scans")})
    else:
        result["load"] = {"in_process_s": load_s, "warm_subprocess_s": None, "cold_s": None,
                          "skipped": "--no-load-time"}
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["notes"] = [
        "times: time.perf_counter, warm-up runs excluded",
        "equal work: EOS suppressed while timing, every row generates max_new_tokens" if cfg.force_length else
        "natural length: rows stop at EOS; compare ms_per_token (wall / completion tokens)",
        "a loadavg above the thread count means other processes shared the CPUs: treat timings as noisy",
    ]
    return result


def _child_main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--child":
        print("usage: python -m scans_guard.bench --child SPEC_JSON (internal; use `scans-guard bench`)",
              file=sys.stderr)
        return 2
    print(json.dumps(_child(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
