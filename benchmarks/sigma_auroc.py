"""sigma(q) of an engine (model + artifact) on evaluation sets: AUROC and the rates at the artifact's operating points.

Resumable: scores are appended to <out>/scores.jsonl as they come, and a rerun skips the prompts already scored.

    python benchmarks/sigma_auroc.py --model qwen2.5-coder-1.5b-instruct --data-dir ../shared/data \
        --out results/sigma-auroc-1.5b --report benchmarks/results/sigma-auroc-1.5b
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary_io import write_json_summary  # noqa: E402

from scans_guard import ScansEngine  # noqa: E402
from scans_guard.data import contrast_set, load_set, tune_eval_split  # noqa: E402
from scans_guard.sigma.decision import flags  # noqa: E402


def eval_sets(data_dir: str | None, seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """(prompt, 1 = unsafe) per set: all of XSTest and the held-out split of each contrast file (the project's own
    safe look-alikes and their unsafe twins, never trained on); with the data directory, OKTest (150) and HarmfulQ's
    evaluation half (the T fit uses the other half)."""
    sets = {
        "xstest": [(e.prompt, int(e.harmful)) for e in load_set("xstest")],
        "contrast_heldout": [(e.prompt, int(e.harmful)) for e in contrast_set("heldout")],
        "contrast_requests_heldout": [
            (e.prompt, int(e.harmful)) for e in contrast_set("heldout", "contrast_requests.csv")
        ],
    }
    if data_dir:
        ok = [e.prompt for e in load_set("oktest", data_dir)]
        sets["oktest"] = [(p, 0) for p in random.Random(seed).sample(sorted(set(ok)), min(150, len(set(ok))))]
        sets["harmfulq_eval"] = [(e.prompt, 1) for e in tune_eval_split(load_set("harmfulq", data_dir))[1]]
    return sets


def score_all(engine: ScansEngine, prompts: list[str], store: Path, batch_size: int) -> dict[str, float]:
    done = {}
    if store.exists():
        done = {r["prompt"]: r["score"] for r in map(json.loads, store.read_text().splitlines())}
    todo = [p for p in dict.fromkeys(prompts) if p not in done]
    with open(store, "a") as f:
        for i in tqdm(range(0, len(todo), batch_size), desc="sigma"):
            chunk = todo[i : i + batch_size]
            for p, v in zip(chunk, engine.classify(chunk, batch_size=batch_size)):
                done[p] = v.score
                f.write(json.dumps({"prompt": p, "score": v.score}) + "\n")
            f.flush()
    return done


def summarise(sets: dict, scores: dict, points: dict[str, float]) -> dict:
    out = {}
    x = sets["xstest"]
    y, s = np.array([lab for _, lab in x]), np.array([scores[p] for p, _ in x])
    out["xstest_auroc"] = float(roc_auc_score(y, s))
    for name in ("contrast_heldout", "contrast_requests_heldout"):
        if name in sets:
            c = sets[name]
            out[f"{name}_auroc"] = float(roc_auc_score([lab for _, lab in c], [scores[p] for p, _ in c]))
    for name, t in points.items():
        flagged = flags(s, t)
        out[f"xstest_unsafe_recall_at_{name}"] = float(flagged[y == 1].mean())
        out[f"xstest_safe_flagged_at_{name}"] = float(flagged[y == 0].mean())
        out[f"xstest_f1_at_{name}"] = f1(y, flagged)
        for other in ("oktest", "harmfulq_eval"):
            if other in sets:
                out[f"{other}_flagged_at_{name}"] = float(flags([scores[p] for p, _ in sets[other]], t).mean())
    for recall in (0.85, 0.95):  # false positives on XSTest safe at a given recall of XSTest unsafe
        t = np.quantile(s[y == 1], 1 - recall)
        out[f"xstest_fpr_at_{int(recall * 100)}pct_recall"] = float((s[y == 0] >= t).mean())
    # The way guard models are compared: the best prompt F1 (unsafe positive) of any threshold at FPR <= 5 %, an
    # optimistic bound for σ, whose guard T is fitted on tuning splits, not on XSTest.
    out["xstest_best_f1_at_fpr_5pct"] = max(
        (f1(y, flags(s, t)) for t in np.unique(s) if flags(s, t)[y == 0].mean() <= 0.05), default=0.0
    )
    return out


def f1(y: np.ndarray, flagged: np.ndarray) -> float:
    """Prompt F1 with unsafe as the positive class."""
    tp = int((flagged & (y == 1)).sum())
    return 2 * tp / (2 * tp + int((flagged & (y == 0)).sum()) + int((~flagged & (y == 1)).sum()) or 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="embedded model name, HF directory or .gguf (default: the default model)")
    ap.add_argument("--artifact", help="default: the one shipped for the model")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    engine = ScansEngine.load(args.model, args.artifact)
    sets = eval_sets(args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = score_all(engine, [p for rows in sets.values() for p, _ in rows], out / "scores.jsonl", args.batch_size)
    points = {name: p.threshold for name, p in engine.artifact.meta.operating_points.items()}
    summary = {
        "model": args.model or "default",
        "artifact": args.artifact or "shipped",
        "operating_points": points,
        "n": {k: len(v) for k, v in sets.items()},
        **summarise(sets, scores, points),
    }
    write_json_summary(args.report, summary)


if __name__ == "__main__":
    main()
