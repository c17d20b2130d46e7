"""Extract, once, everything the sigma(q) variants are computed from: one forward pass over chat(q) + r_pos per prompt.

    python benchmarks/sigma_features.py --data-dir ../shared/data --out results/sigma-features

Per prompt and per decoder block l: the transition t^l = h^l(last prompt token) - h^l(last r_pos token) and
h^l(last prompt token) (float16), plus the log-probabilities of refusal and compliance openers predicted at the last
prompt token (the model's own refusal intent, free from the same pass). One safetensors + JSON file per set, written
when the set is done: a killed run redoes only the set in flight. benchmarks/sigma_variants.py reads them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from scans_guard.data import anchor_split, load_set, read_csv, tune_eval_split
from scans_guard.model.hooks import capture_block_outputs
from scans_guard.model.loading import load_model
from scans_guard.model.prompt_batch import PromptBatch, prefill
from scans_guard.sigma.classifier import r_pos_ids

REFUSAL_OPENERS = ["I", "Sorry", "As", "Unfortunately", "No", "I'm", "It", "This", "Please"]
COMPLIANCE_OPENERS = [
    "Sure",
    "Certainly",
    "Here",
    "To",
    "Yes",
    "Absolutely",
    "Of",
    "The",
    "1",
    "**",
    "#",
    "Creating",
    "Writing",
    "In",
    "A",
    "Step",
    "There",
]


def opener_ids(tokenizer) -> list[int]:
    """First token of each opener (the vocabulary has every one of them as a single token or a prefix)."""
    return [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in REFUSAL_OPENERS + COMPLIANCE_OPENERS]


def sets(data_dir: str, seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
    """{set: [(prompt, label, split)]}: the calibration sets, then samples of the evaluation sets (XSTest whole)."""
    contrast = Path(__file__).resolve().parents[1] / "scans_guard" / "data" / "contrast.csv"
    import csv

    with open(contrast, newline="", encoding="utf-8") as f:
        out = {"contrast": [(r["prompt"], r["label"], r["split"]) for r in csv.DictReader(f)]}
    adv_anchors, tqa_anchors = anchor_split(64, seed)
    adv = sorted({e.prompt for e in load_set("advbench")} - set(adv_anchors))
    out["advbench"] = [(p, "unsafe", "anchor") for p in adv_anchors] + [
        (p, "unsafe", "") for p in random.Random(seed).sample(adv, 120)
    ]
    tqa = sorted({e.prompt for e in load_set("truthfulqa")} - set(tqa_anchors))
    out["truthfulqa"] = [(p, "safe", "anchor") for p in tqa_anchors] + [
        (p, "safe", "") for p in random.Random(seed).sample(tqa, 120)
    ]
    out["xstest"] = [(e.prompt, e.label, "") for e in load_set("xstest")]
    out["oktest"] = [(e.prompt, e.label, "") for e in random.Random(seed).sample(load_set("oktest", data_dir), 150)]
    out["oktest_heldout"] = [(e.prompt, e.label, "") for e in load_set("oktest_heldout", data_dir)]
    tune, held = tune_eval_split(load_set("harmfulq", data_dir), seed)
    out["harmfulq"] = [(e.prompt, e.label, "tune") for e in tune] + [(e.prompt, e.label, "eval") for e in held]
    out["repe_train"] = [(e.prompt, e.label, "") for e in load_set("repe_train", data_dir)]
    test = read_csv(Path(data_dir) / "repe_harmful_harmless_test.csv")
    out["repe_test"] = [(e.prompt, e.label, "") for e in random.Random(seed).sample(test, 160)]
    return out


@torch.inference_mode()
def extract(handle, prompts: list[str], r_pos: str, batch_size: int, desc: str) -> dict[str, torch.Tensor]:
    rpos = r_pos_ids(handle, r_pos)
    n, layers, ids = len(rpos), list(range(handle.n_layers)), opener_ids(handle.tokenizer)
    t_all, h_all, lp_all = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, file=sys.stderr):
        rows = [handle.chat_ids(p) + rpos for p in prompts[start : start + batch_size]]
        batch = PromptBatch.left_pad(rows, handle.tokenizer.pad_token_id, handle.device)
        with capture_block_outputs(handle.layers, layers, columns=[-1 - n, -1]) as h:
            out = prefill(handle.model, batch, logits_to_keep=n + 1)
        t_all.append(torch.stack([h[layer][:, 0] - h[layer][:, 1] for layer in layers], 1).half())
        h_all.append(torch.stack([h[layer][:, 0] for layer in layers], 1).half())
        lp_all.append(torch.log_softmax(out.logits[:, 0].float(), -1)[:, ids])
    return {"transitions": torch.cat(t_all), "last_prompt": torch.cat(h_all), "opener_logprobs": torch.cat(lp_all)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--r-pos", default="Sure")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sets", nargs="*", help="only these sets")
    parser.add_argument("--model", help="local HF model directory or .gguf (default: the embedded default model)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model(args.model)
    for name, rows in sets(args.data_dir).items():
        if args.sets and name not in args.sets:
            continue
        target = out / f"{name}.safetensors"
        if target.exists():
            continue
        tensors = extract(handle, [r[0] for r in rows], args.r_pos, args.batch_size, name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(target.with_suffix(".tmp")))
        (out / f"{name}.json").write_text(
            json.dumps(
                {
                    "prompts": [r[0] for r in rows],
                    "labels": [r[1] for r in rows],
                    "splits": [r[2] for r in rows],
                    "r_pos": args.r_pos,
                    "openers": REFUSAL_OPENERS + COMPLIANCE_OPENERS,
                    "n_refusal_openers": len(REFUSAL_OPENERS),
                },
                ensure_ascii=False,
            )
        )
        target.with_suffix(".tmp").rename(target)


if __name__ == "__main__":
    main()
