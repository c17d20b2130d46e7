"""What storing the dequantised weights at half precision changes: σ scores and greedy replies, before and after.

The model cache keeps float16 weights (half the disk) and loads them at float32. This dequantises an embedded
model's GGUF in memory at float32 (the weights the cache held before), scores prompts and decodes the demo prompts,
rounds every weight to float16 and back (exactly what the cache now does), and scores and decodes again.

    python benchmarks/half_precision_cache.py --model qwen2.5-coder-1.5b-instruct \
        --out benchmarks/results/half-precision-1.5b
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from scans_guard import GenerationConfig, ScansEngine
from scans_guard.calibration.artifacts import Artifact, default_artifact_dir
from scans_guard.cli import DEMO_PROMPTS
from scans_guard.data import contrast_set, load_set
from scans_guard.model.embedded import EMBEDDED_MODELS, assemble_gguf
from scans_guard.model.loading import ModelHandle


def _prompts(n: int) -> list[str]:
    xs = load_set("xstest")
    safe = [e.prompt for e in xs if e.label == "safe"][: n // 2]
    unsafe = [e.prompt for e in xs if e.label == "unsafe"][: n // 4]
    look_alikes = [e.prompt for e in contrast_set("heldout")][: n // 4]
    return safe + unsafe + look_alikes


def _run(engine: ScansEngine, prompts: list[str], config: GenerationConfig) -> tuple[list[float], list[str]]:
    scores = [v.score for v in engine.classify(prompts, batch_size=8)]
    replies = [o.text for o in engine.generate(DEMO_PROMPTS, config)]
    return scores, replies


def _engine_from_gguf(name: str) -> ScansEngine:
    """The embedded model dequantised from its GGUF at float32, with its shipped artifact (no cache involved)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf = assemble_gguf(Path(tmp) / "model.gguf", spec=EMBEDDED_MODELS[name])
        kwargs = {"gguf_file": gguf.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(tmp, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, **kwargs)
    handle = ModelHandle.wrap(model, tokenizer, name=f"{name}-q4_k_m")
    return ScansEngine(handle, Artifact.load(default_artifact_dir(name)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", choices=sorted(EMBEDDED_MODELS))
    ap.add_argument(
        "--n",
        type=int,
        default=80,
        help="prompts scored: half XSTest safe, a quarter unsafe, a quarter contrast held-out look-alikes",
    )
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    engine = _engine_from_gguf(args.model)
    prompts, config = _prompts(args.n), GenerationConfig(max_new_tokens=args.max_new_tokens)
    full_scores, full_replies = _run(engine, prompts, config)
    with torch.no_grad():
        for p in engine.handle.model.parameters():
            p.copy_(p.half().float())
    half_scores, half_replies = _run(engine, prompts, config)
    diffs = [abs(a - b) for a, b in zip(full_scores, half_scores)]
    summary = {
        "model": engine.handle.name,
        "n_prompts": len(prompts),
        "max_abs_score_diff": max(diffs),
        "mean_abs_score_diff": sum(diffs) / len(diffs),
    }
    for point in ("steer", "guard"):
        t = engine.artifact.threshold(point)
        summary[f"label_flips_at_{point}_T"] = sum((a >= t) != (b >= t) for a, b in zip(full_scores, half_scores))
    summary["demo_replies_equal"] = sum(a == b for a, b in zip(full_replies, half_replies))
    summary["demo_prompts"] = len(DEMO_PROMPTS)
    summary["max_new_tokens"] = args.max_new_tokens
    summary["demo_replies"] = [
        {"prompt": p, "float32": a, "float16": b} for p, a, b in zip(DEMO_PROMPTS, full_replies, half_replies)
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "demo_replies"}, indent=2))


if __name__ == "__main__":
    main()
