"""Does the guard hold? sigma(q) and SCANS refusals on held-out harmful prompts under innocuous system prompts, a
forged system turn and translation, against the plain prompts; false-positive rates on benign prompts alike.

    # the default model (the 1.5B), every prompt: 1,730 rows, about 45 minutes on a 2-core CPU
    python benchmarks/guard_robustness.py run --data-dir ../shared/data --model qwen2.5-coder-1.5b-instruct \
        --out results/guard-robustness-1.5b-full
    python benchmarks/guard_robustness.py report --out results/guard-robustness-1.5b-full
    # the small model
    python benchmarks/guard_robustness.py run --data-dir ../shared/data --model qwen2.5-coder-0.5b-instruct \
        --out results/guard-robustness
    # --every k: every k-th prompt of each list, the same prompts under every condition (pass it to report too)

Harmful: the evaluation half of HarmfulQ (100) + 50 held-out AdvBench prompts (no anchor, no T-fit prompt) under
each framing (none, and system:NAME for six of the SYSTEM_PROMPTS), and 40 held-out harmful prompts of the
multilingual set in en/es/fr/de/zh. Benign (classification only): 40 OKTest prompts under the same framings and 40
benign multilingual prompts per language. The forged-turn framing is not here: content is tokenised as literal text,
so its verdict equals the literal rendering's by construction (tests/test_guard.py).
SCANS can change a harmful row's reply only where it steers it (the shipped recipe leaves flagged rows unsteered), so
only those rows are decoded, plain and steered (greedy, 20 new tokens, KeywordJudge); `scans_minus_plain_refusal` is
the change in refusal rate over the whole condition, in points. Rows are appended to JSONL as each batch finishes: a
killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary_io import rows_table, write_summary  # noqa: E402

from scans_guard import GenerationConfig, ScansEngine  # noqa: E402
from scans_guard.data import load_set, tune_eval_split  # noqa: E402
from scans_guard.eval.benchmarks import calibration_prompts  # noqa: E402
from scans_guard.eval.jailbreaks import FRAMINGS, SYSTEM_PROMPTS, translated_set, wrap  # noqa: E402
from scans_guard.eval.store import JsonlStore  # noqa: E402
from scans_guard.sigma.decision import is_harmful  # noqa: E402
from scans_guard.steering.judge import KeywordJudge  # noqa: E402

FRAMING_NAMES = ["none", *(f"system:{n}" for n in list(SYSTEM_PROMPTS)[:6])]
LANGUAGES = ["en", "es", "fr", "de", "zh"]
N_BENIGN, N_MULTILINGUAL = 40, 40
CONFIG = GenerationConfig(max_new_tokens=20)
BATCH = 8


def prompt_sets(engine: ScansEngine, data_dir: str, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """{'harmful'|'benign': [(id, english prompt)]}, none of them an anchor or a T-fit prompt."""
    calib = calibration_prompts(engine.artifact)
    held = [e.prompt for e in tune_eval_split(load_set("harmfulq", data_dir), seed)[1]]
    adv = sorted(
        p for p in {e.prompt for e in load_set("advbench")} if not calib.is_anchor(p) and not calib.in_threshold_fit(p)
    )
    harmful = held + random.Random(seed).sample(adv, 50)
    benign = random.Random(seed).sample(sorted({e.prompt for e in load_set("oktest", data_dir)}), N_BENIGN)
    return {
        "harmful": [(f"h{i:03d}", p) for i, p in enumerate(harmful)],
        "benign": [(f"b{i:03d}", p) for i, p in enumerate(benign)],
    }


def work_items(engine: ScansEngine, data_dir: str) -> list[dict]:
    items = []
    for kind, prompts in prompt_sets(engine, data_dir).items():
        for framing in FRAMING_NAMES:
            items += [
                {
                    "kind": kind,
                    "condition": framing,
                    "id": i,
                    "prompt": p,
                    "conversation": p if framing == "none" else wrap(p, FRAMINGS[framing]),
                }
                for i, p in prompts
            ]
    for label, kind in (("unsafe", "harmful"), ("safe", "benign")):
        for lang in LANGUAGES:
            rows = translated_set(languages=[lang], label=label)[:N_MULTILINGUAL]
            items += [
                {
                    "kind": kind,
                    "condition": f"lang:{lang}",
                    "id": f"m{n:02d}",
                    "prompt": r.original,
                    "conversation": r.text,
                }
                for n, r in enumerate(rows)
            ]
    return items


def run(args: argparse.Namespace) -> None:
    engine = ScansEngine.load(args.model, args.artifact)
    store = JsonlStore(Path(args.out) / "rows.jsonl", ("condition", "kind", "id"))
    judge, steer_t = KeywordJudge(), engine.artifact.threshold("steer")
    todo = [
        it
        for it in work_items(engine, args.data_dir)
        if (it["condition"], it["kind"], it["id"]) not in store and int(it["id"][1:]) % args.every == 0
    ]
    todo.sort(key=lambda it: not it["condition"].startswith("lang:"))  # translations first (one pass per row)
    print(f"{len(todo)} rows to do, {len(store)} done", file=sys.stderr)
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        convs = [it["conversation"] for it in chunk]
        rows = [
            {k: it[k] for k in ("kind", "condition", "id", "prompt")}
            | {
                "score": g.score,
                "renderings": g.renderings,
                "flagged_guard": g.is_harmful,
                "flagged_steer": is_harmful(g.score, steer_t),
                "in_domain": g.in_domain,
                "domain_reasons": g.domain_reasons,
                "coefficient": g.coefficient,
            }
            for it, g in zip(chunk, engine.classify(convs))
        ]
        # Only a harmful row SCANS steers can change its reply (the recipe leaves flagged rows unsteered): decode
        # those plain and steered; every other row's SCANS reply is its plain reply.
        steered = [i for i, it in enumerate(chunk) if it["kind"] == "harmful" and rows[i]["coefficient"] != 0]
        if steered:
            plain = engine.generate([convs[i] for i in steered], CONFIG, steer=False)
            scans = engine.generate(
                [convs[i] for i in steered], CONFIG, coefficient=[rows[i]["coefficient"] for i in steered]
            )
            for i, p, s in zip(steered, plain, scans):
                rows[i] |= {
                    "plain_reply": p.text,
                    "scans_reply": s.text,
                    "plain_refused": judge(chunk[i]["prompt"], p.text),
                    "scans_refused": judge(chunk[i]["prompt"], s.text),
                }
        store.append(rows)
        print(f"{start + len(chunk)}/{len(todo)}", file=sys.stderr, flush=True)


def summarise(rows: list[dict]) -> list[dict]:
    """One line per condition: harmful flagged / refused, benign flagged, out-of-domain shares (percent)."""

    def pct(xs: list[bool]) -> float | None:
        return round(100 * sum(xs) / len(xs), 1) if xs else None

    table = []
    for cond in dict.fromkeys(r["condition"] for r in rows):
        h = [r for r in rows if r["condition"] == cond and r["kind"] == "harmful"]
        b = [r for r in rows if r["condition"] == cond and r["kind"] == "benign"]
        table.append(
            {
                "condition": cond,
                "n_harmful": len(h),
                "n_benign": len(b),
                "harmful_flagged_guard": pct([r["flagged_guard"] for r in h]),
                "harmful_flagged_steer": pct([r["flagged_steer"] for r in h]),
                "harmful_steered_away": pct([r["coefficient"] < 0 for r in h]),
                "benign_steered_away": pct([r["coefficient"] < 0 for r in b]),
                "scans_minus_plain_refusal": round(
                    100 * sum(r.get("scans_refused", 0) - r.get("plain_refused", 0) for r in h) / len(h), 1
                )
                if h
                else None,
                "benign_flagged_guard": pct([r["flagged_guard"] for r in b]),
                "benign_flagged_steer": pct([r["flagged_steer"] for r in b]),
                "out_of_domain": pct([not r["in_domain"] for r in h + b]),
            }
        )
    return table


def report(args: argparse.Namespace) -> None:
    rows = [
        r
        for r in JsonlStore(Path(args.out) / "rows.jsonl", ("condition", "kind", "id")).rows
        if int(r["id"][1:]) % args.every == 0
    ]
    table = summarise(rows)
    write_summary(args.out, table, rows_table(table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--model", default=None, help="an embedded model's name or a model directory (default: the default model)"
    )
    p.add_argument("--artifact", default=None, help="default: the one shipped for the model")
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="only every k-th prompt of each list (a sample of the same "
        "prompts under every condition, for a slower model)",
    )
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--every", type=int, default=1, help="the run's --every")
    args = parser.parse_args()
    {"run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
