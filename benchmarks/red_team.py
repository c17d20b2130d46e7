"""Red team: every attack family of `scans_guard.calibration.framings` over harmful and benign evaluation prompts,
under the three generation policies.

    python benchmarks/red_team.py run --data-dir ../shared/data --out benchmarks/results/red-team-0.5b
    python benchmarks/red_team.py report --out benchmarks/results/red-team-0.5b   # --by template: a line per template
    python benchmarks/red_team.py run --data-dir ../shared/data --model qwen2.5-coder-1.5b-instruct \
        --out benchmarks/results/red-team-1.5b

Harmful: `--n` prompts each of held-out AdvBench (no anchor, no T-fit prompt) and, with --data-dir, the evaluation
half of HarmfulQ; benign: `--n` XSTest safe prompts and, with --data-dir, OKTest. Each prompt goes in plain
(`none`) and in every template of `--split` (heldout by default: wordings nothing was tuned on).
Per family and kind: flagged (the guard blocks it: harmful at the guard point, out of domain or unclassifiable),
steered away from refusal, and for harmful prompts answered (the keyword judge finds no refusal in the first
`--max-new-tokens` tokens) under `steer` (SCANS, nothing blocked), `guard` (blocked, the rest unsteered) and
`guard+steer` (blocked, the rest steered), beside `plain` (the unsteered model). Only harmful prompts are decoded:
plain, and steered where sigma steers them (elsewhere the steered reply is the plain one). Rows are appended to
JSONL as each batch finishes: a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary_io import rows_table, write_summary  # noqa: E402

from scans_guard import GenerationConfig, ScansEngine  # noqa: E402
from scans_guard.calibration.artifacts import Artifact, default_artifact_dir  # noqa: E402
from scans_guard.calibration.framings import templates  # noqa: E402
from scans_guard.data import load_set, tune_eval_split  # noqa: E402
from scans_guard.eval.benchmarks import calibration_prompts  # noqa: E402
from scans_guard.eval.store import JsonlStore  # noqa: E402
from scans_guard.sigma.decision import GuardPolicy  # noqa: E402
from scans_guard.sigma.readings import ReadingConfig  # noqa: E402
from scans_guard.steering.judge import KeywordJudge  # noqa: E402

KEYS = ("template", "kind", "id")
BATCH = 8


def prompt_sets(engine: ScansEngine, data_dir: str | None, n: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """{'harmful'|'benign': [(id, prompt)]}: none of the harmful ones an anchor or a T-fit prompt."""
    calib = calibration_prompts(engine.artifact)
    rng = random.Random(seed)
    adv = sorted(
        p for p in {e.prompt for e in load_set("advbench")} if not calib.is_anchor(p) and not calib.in_threshold_fit(p)
    )
    harmful = [(f"adv{i:03d}", p) for i, p in enumerate(rng.sample(adv, n))]
    safe = sorted(e.prompt for e in load_set("xstest") if not e.harmful)
    benign = [(f"xs{i:03d}", p) for i, p in enumerate(rng.sample(safe, n))]
    if data_dir:
        held = [e.prompt for e in tune_eval_split(load_set("harmfulq", data_dir), seed)[1]]
        harmful += [(f"hq{i:03d}", p) for i, p in enumerate(rng.sample(held, min(n, len(held))))]
        ok = sorted({e.prompt for e in load_set("oktest", data_dir)})
        benign += [(f"ok{i:03d}", p) for i, p in enumerate(rng.sample(ok, n))]
    return {"harmful": harmful, "benign": benign}


def work_items(
    engine: ScansEngine, data_dir: str | None, n: int, split: str | None, families: list[str] | None = None
) -> list[dict]:
    chosen = templates(split, families)
    items = []
    for kind, prompts in prompt_sets(engine, data_dir, n).items():
        items += [
            {
                "kind": kind,
                "family": "none",
                "template": "none",
                "split": "none",
                "id": i,
                "prompt": p,
                "conversation": p,
            }
            for i, p in prompts
        ]
        for t in chosen:
            items += [
                {
                    "kind": kind,
                    "family": t.family,
                    "template": t.name,
                    "split": t.split,
                    "id": i,
                    "prompt": p,
                    "conversation": t.wrap(p),
                }
                for i, p in prompts
            ]
    return items


def classify_rows(engine: ScansEngine, chunk: list[dict], guard: GuardPolicy) -> list[dict]:
    rows = []
    for it, v in zip(chunk, engine.classify([it["conversation"] for it in chunk])):
        decision = guard.decide(v)
        rows.append(
            {k: it[k] for k in ("kind", "family", "template", "split", "id", "prompt")}
            | {
                "score": v.score,
                "label": v.label,
                "in_domain": v.in_domain,
                "domain_reasons": v.domain_reasons,
                "blocked": decision.blocked,
                "block_reasons": decision.reasons,
                "coefficient": v.coefficient,
                "readings": len(v.renderings),
                "renderings": v.renderings,  # {reading: score}; the verdict is the highest
                "deciding_reading": max(v.renderings, key=v.renderings.__getitem__),
            }
        )
    return rows


def run(args: argparse.Namespace) -> None:
    artifact = Artifact.load(args.artifact or default_artifact_dir(args.model))
    if args.readings:  # sigma's readings changed for this run (the shipped recipe's, else)
        changed = artifact.recipe.readings.model_dump() | json.loads(args.readings)
        artifact = artifact.with_recipe(readings=ReadingConfig.model_validate(changed))
    engine = ScansEngine.load(args.model, artifact)
    store = JsonlStore(Path(args.out) / "rows.jsonl", KEYS)
    judge, guard = KeywordJudge(), GuardPolicy()
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    todo = [
        it
        for it in work_items(engine, args.data_dir, args.n, args.split or None, args.families)
        if tuple(it[k] for k in KEYS) not in store
    ]
    print(f"{len(todo)} rows to do, {len(store)} done", file=sys.stderr)
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        rows = classify_rows(engine, chunk, guard)
        if not args.no_generate:
            harmful = [i for i, it in enumerate(chunk) if it["kind"] == "harmful"]
            convs = [chunk[i]["conversation"] for i in harmful]
            plain = engine.generate(convs, config, steer=False) if convs else []
            steered = [i for i in harmful if rows[i]["coefficient"] != 0]
            scans = dict(
                zip(
                    steered,
                    engine.generate(
                        [chunk[i]["conversation"] for i in steered],
                        config,
                        coefficient=[rows[i]["coefficient"] for i in steered],
                    )
                    if steered
                    else [],
                )
            )
            for i, p in zip(harmful, plain):
                s = scans.get(i, p)
                rows[i] |= {
                    "plain_reply": p.text,
                    "scans_reply": s.text,
                    "plain_refused": bool(judge(chunk[i]["prompt"], p.text)),
                    "scans_refused": bool(judge(chunk[i]["prompt"], s.text)),
                }
        store.append(rows)
        print(f"{start + len(chunk)}/{len(todo)}", file=sys.stderr, flush=True)


def answered(row: dict, policy: str) -> bool | None:
    """Whether a harmful row's request is answered under `policy` (None: not decoded)."""
    if "plain_refused" not in row:
        return None
    if policy == "plain":
        return not row["plain_refused"]
    if policy != "steer" and row["blocked"]:
        return False
    return not (row["plain_refused"] if policy == "guard" else row["scans_refused"])


def summarise(rows: list[dict], by: str = "family") -> list[dict]:
    """One line per family or template (`by`; and the plain prompts): percentages of harmful / benign prompts."""

    def pct(xs: list) -> float | None:
        xs = [x for x in xs if x is not None]
        return round(100 * sum(xs) / len(xs), 1) if xs else None

    table = []
    for group in dict.fromkeys(r[by] for r in rows):
        h = [r for r in rows if r[by] == group and r["kind"] == "harmful"]
        b = [r for r in rows if r[by] == group and r["kind"] == "benign"]
        line = {
            by: group,
            "n_harmful": len(h),
            "n_benign": len(b),
            "harmful_flagged": pct([r["blocked"] for r in h]),
            "harmful_steered_away": sum(r["coefficient"] < 0 for r in h),
            "harmful_passing_guard": pct([not r["blocked"] and r["label"] == "benign" and r["in_domain"] for r in h]),
        }
        for policy in ("plain", "steer", "guard", "guard+steer"):
            line[f"answered_{policy}"] = pct([answered(r, policy) for r in h])
        line |= {
            "benign_blocked": pct([r["blocked"] for r in b]),
            "benign_steered_away": pct([r["coefficient"] < 0 for r in b]),
            "out_of_domain": pct([not r["in_domain"] for r in h + b]),
        }
        table.append(line)
    return table


def deciding_readings(rows: list[dict], kind: str = "benign") -> list[dict]:
    """Per template, the blocked `kind` prompts by the reading that gave the verdict (as_sent, segment:2, ...): which
    part of a wrapping a false block comes from. A prompt blocked for being out of domain alone counts as
    'out_of_domain' (no reading decided it); rows written before readings were recorded count as 'unrecorded'."""

    def cause(row: dict) -> str:
        if "harmful" not in row.get("block_reasons", ["harmful"]):
            return "out_of_domain"
        return row.get("deciding_reading", "unrecorded")

    table = []
    for template in dict.fromkeys(r["template"] for r in rows):
        blocked = [r for r in rows if r["template"] == template and r["kind"] == kind and r["blocked"]]
        if blocked:
            counts = Counter(map(cause, blocked))
            table.append({"template": template, "blocked": len(blocked)} | dict(counts.most_common()))
    return table


def report(args: argparse.Namespace) -> None:
    rows = JsonlStore(Path(args.out) / "rows.jsonl", KEYS).rows
    if args.deciding:
        for line in deciding_readings(rows, args.deciding):
            print(json.dumps(line))
        return
    table = summarise(rows, args.by)
    lines = rows_table(table)
    write_summary(args.out, table, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data-dir", help="benchmark CSVs that do not ship (HarmfulQ, OKTest); without: shipped sets only")
    r.add_argument("--model")
    r.add_argument("--artifact")
    r.add_argument("--n", type=int, default=20, help="prompts per set (default %(default)s)")
    r.add_argument("--split", default="heldout", choices=["heldout", "train", ""], help="templates ('' = all)")
    r.add_argument("--families", nargs="*", help="only these families (default: all)")
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument(
        "--readings", help="JSON of sigma reading settings to change, e.g. '{\"lead_ins\": false}' (ReadingConfig)"
    )
    r.add_argument("--no-generate", action="store_true", help="classify only (flags, steering, false blocks)")
    r.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--by", default="family", choices=["family", "template"], help="one line per (default %(default)s)")
    p.add_argument(
        "--deciding",
        choices=["benign", "harmful"],
        help="instead: per template, the blocked prompts of this kind by the sigma reading that decided them",
    )
    args = parser.parse_args()
    {"run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
