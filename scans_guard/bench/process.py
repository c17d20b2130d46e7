"""Process-level sections of `scans-guard bench`: peak memory per mode and load time, each in a fresh interpreter
(so each gets its own peak), plus the machine and library versions the numbers were taken on.

    python -m scans_guard.bench.process --child SPEC_JSON   # internal: what the subprocesses run
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .speed import Summary

if TYPE_CHECKING:
    from .config import BenchConfig


class MemoryResult(BaseModel):
    """Peak RSS per mode, as each subprocess reported it (or its error), and the difference compared."""

    method: str | None = None
    plain: dict[str, Any] | None = None
    scans: dict[str, Any] | None = None
    compared: str | None = None
    scans_minus_plain_mb: float | None = None
    skipped: str | None = None


class LoadResult(BaseModel):
    in_process_s: float | None
    warm_subprocess_s: Summary | None
    cold_s: float | None
    cold_skipped: str | None = None
    cold_error: str | None = None
    skipped: str | None = None


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
    import importlib.util

    import torch

    cpu_model = None
    with contextlib.suppress(OSError):
        cpu_model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
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
        "psutil": importlib.util.find_spec("psutil") is not None,
    }


def versions() -> dict:
    import torch
    import transformers

    from ..version import __version__

    return {
        "scans_guard": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _child(spec: dict) -> dict:
    """Runs in a fresh interpreter: load the engine, then (mode plain/scans) generate; report times and RSS."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rss_start = _current_rss_mb()
    from ..config import GenerationConfig
    from ..engine import ScansEngine

    t0 = time.perf_counter()
    engine = ScansEngine.load(
        spec["model"], spec["artifact"], device=spec["device"], dtype=spec["dtype"], progress=False
    )
    load_s = time.perf_counter() - t0
    out = {
        "mode": spec["mode"],
        "load_s": load_s,
        "rss_start_mb": rss_start,
        "rss_after_load_mb": _current_rss_mb(),
        "peak_rss_after_load_mb": _peak_rss_mb(),
    }
    if spec["mode"] in ("plain", "scans"):
        gen = GenerationConfig(max_new_tokens=spec["max_new_tokens"], ignore_eos=spec["force_length"])
        kwargs = {"steer": spec["mode"] == "scans"}
        # Safetensors weights are memory-mapped and become resident on first use: one short warm-up request first,
        # so the peak below measures generation (activations, KV cache, steering) rather than page-ins.
        engine.generate([spec["prompts"][0]], GenerationConfig(max_new_tokens=2), **kwargs)
        out["rss_after_warmup_mb"] = _current_rss_mb()
        reset = _reset_peak_rss()
        engine.generate(spec["prompts"], gen, **kwargs)  # the end-to-end prompts as one batch
        out.update(
            {
                "hwm_reset": reset,
                "generation_peak_rss_mb": _status_kib("VmHWM") if reset else None,
                "peak_rss_mb": _peak_rss_mb(),
                "rss_after_generation_mb": _current_rss_mb(),
            }
        )
        if reset and out["rss_after_warmup_mb"] is not None:
            out["generation_delta_mb"] = out["generation_peak_rss_mb"] - out["rss_after_warmup_mb"]
    return out


def _run_child(spec: dict, env: dict | None = None, timeout: float = 1800) -> dict:
    cmd = [sys.executable, "-m", "scans_guard.bench.process", "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return {"mode": spec["mode"], "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"mode": spec["mode"], "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def _spec(cfg: BenchConfig, mode: str, **extra: object) -> dict:
    """What a child process loads (the bench's model, artifact, device, dtype, threads) and does (`mode`)."""
    return {**cfg.model_dump(include={"model", "artifact", "device", "dtype", "threads"}), "mode": mode, **extra}


def bench_memory(prompts: Sequence[str], cfg: BenchConfig) -> MemoryResult:
    p, s = (
        _run_child(
            _spec(cfg, mode, max_new_tokens=cfg.max_new_tokens, force_length=cfg.force_length, prompts=list(prompts))
        )
        for mode in ("plain", "scans")
    )
    result = MemoryResult(
        method="one subprocess per mode: load, one warm-up request (weights are memory-mapped and page in on first "
        "use), reset /proc VmHWM, then the end-to-end prompts as one batch; generation_peak_rss_mb = VmHWM after "
        "that (falls back to ru_maxrss, which includes the load peak)",
        plain=p,
        scans=s,
    )
    key = (
        "generation_peak_rss_mb"
        if p.get("generation_peak_rss_mb") and s.get("generation_peak_rss_mb")
        else "peak_rss_mb"
    )
    if key in p and key in s:
        result.compared, result.scans_minus_plain_mb = key, s[key] - p[key]
    return result


def bench_load(cfg: BenchConfig, in_process_s: float | None, memory: MemoryResult | None) -> LoadResult:
    """Warm load: fresh interpreters loading from the existing cache. Cold: a first load into an empty cache."""
    spec = _spec(cfg, "load")
    warm = [m["load_s"] for m in (memory.plain, memory.scans) if m and "load_s" in m] if memory else []
    if not warm:
        child = _run_child(spec)
        warm = [child["load_s"]] if "load_s" in child else []
    result = LoadResult(in_process_s=in_process_s, warm_subprocess_s=Summary.maybe(warm), cold_s=None)
    if not cfg.cold:
        result.cold_skipped = "not requested (--cold)"
    elif cfg.model is not None:
        result.cold_skipped = "cold start (GGUF -> cache) applies to the default model only"
    else:
        tmp = tempfile.mkdtemp(prefix="scans-guard-cold-")
        try:
            child = _run_child({**spec, "model": None}, env={"SCANS_GUARD_CACHE": tmp})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result.cold_s, result.cold_error = child.get("load_s"), child.get("error")
    return result


def _child_main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--child":
        print(
            "usage: python -m scans_guard.bench.process --child SPEC_JSON (internal; use `scans-guard bench`)",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(_child(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
