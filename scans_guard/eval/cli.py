"""`scans-guard eval`: the evaluation harness from the command line (arguments and the command body)."""

from __future__ import annotations

import argparse
import sys

from .benchmarks import SETS
from .conditions import CONDITION_NAMES
from .markdown import num, pct
from .results import EvalResults


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default=None,
        help="results directory (default: results/eval-<model>); an existing one "
        "is resumed: rows already there are skipped",
    )
    p.add_argument(
        "--data-dir",
        help="benchmark data directory (default: $SCANS_GUARD_DATA; without either, only "
        "the shipped sets and no capability)",
    )
    p.add_argument("--sets", type=_names, help=f"comma-separated (default: all available): {','.join(SETS)}")
    p.add_argument("--conditions", type=_names, help=f"comma-separated (default: all): {','.join(CONDITION_NAMES)}")
    p.add_argument(
        "--limit",
        type=int,
        help="caps every part: at most N prompts per set (label-balanced sample), "
        "N MMLU questions in all (spread over subjects) and N perplexity windows",
    )
    p.add_argument(
        "--generation-limit",
        type=int,
        metavar="N",
        help="replies (every condition) for at most N prompts per set, a label-balanced sample; sigma(q) "
        "metrics still cover every prompt (a forward pass each, generation dozens)",
    )
    p.add_argument(
        "--generation-full",
        type=_names,
        metavar="SETS",
        help="comma-separated sets replied to in full whatever --generation-limit says, e.g. xstest",
    )
    p.add_argument("--seed", type=int, help="seed of the --limit and --generation-limit samples (default 0)")
    p.add_argument("--max-new-tokens", type=int, help="reply length (default 48)")
    p.add_argument("--batch-size", type=int, help="prompts per forward pass (default 8)")
    p.add_argument(
        "--judge",
        help="refusal judge: keyword (default), keyword-reference, or package.module:attribute; "
        "with --report-only, re-judges every stored reply",
    )
    p.add_argument("--helpful-system-prompt", help="system prompt of the helpful_prompt baseline")
    p.add_argument(
        "--keep-threshold-fit",
        dest="exclude_threshold_fit",
        action="store_false",
        help="keep (and count) the prompts the artifact's T was fitted on; by default they are dropped",
    )
    p.add_argument("--no-capability", dest="capability", action="store_false", help="skip perplexity and MMLU")
    p.add_argument("--ppl-window", type=int, help="tokens per perplexity window (default 1024)")
    p.add_argument("--ppl-windows", type=int, help="perplexity windows (default: the whole test split)")
    p.add_argument("--mmlu-per-subject", type=int, help="MMLU test questions per subject (default 10)")
    p.add_argument("--mmlu-subjects", type=_names, help="comma-separated MMLU subjects (default: all 57)")
    p.add_argument("--mmlu-shots", type=int, help="dev examples before each MMLU question (default 0)")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild results.json, report.md and plots from --out's files; loads no model",
    )
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")


def _default_out(model: str | None) -> str:
    from pathlib import Path

    name = Path(model).name if model else "default-model"
    return str(Path("results") / f"eval-{name}")


def cmd_eval(args: argparse.Namespace) -> None:
    from ..steering.judge import get_judge
    from .pipeline import EvalConfig, report_only, run_eval

    out = args.out or _default_out(args.model)
    if args.report_only:
        results = report_only(out, plots=args.plots, judge=get_judge(args.judge) if args.judge else None)
    else:
        from ..engine import ScansEngine

        judge = get_judge(args.judge or "keyword")
        # every EvalConfig field has its flag under the same name; a flag not given keeps the field's default
        config = EvalConfig(
            out_dir=out,
            **{k: v for k in EvalConfig.model_fields if k != "out_dir" and (v := getattr(args, k)) not in (None, "")},
        )
        engine = ScansEngine.load(
            args.model,
            args.artifact,
            device=args.device,
            dtype=args.dtype,
            progress=args.progress,
            max_input_tokens=args.max_input_tokens or None,
        )
        results = run_eval(engine, config, judge)
    print(summary_text(results, out), file=sys.stdout)


def summary_text(results: EvalResults, out: str) -> str:
    """A few lines for the terminal: refusal rates per condition, classification, capability, where the files are."""
    lines = []
    labels = results.run.labels
    for cond, s in ((c, results.refusal.summary[c]) for c in labels if c in results.refusal.summary):
        lines.append(
            f"{labels[cond]:22s} refused: safe {pct(s.safe_mean_rate)} (n={s.safe_n})  "
            f"unsafe {pct(s.unsafe_mean_rate)} (n={s.unsafe_n})"
        )
    for e in results.classification.suites:
        m = e.at_artifact_T.unsafe
        lines.append(f"sigma(q) {e.suite:36s} AUROC {num(m.auroc)}  F1@T {num(m.f1)}  FPR@T {pct(m.fpr)}")
    for cond, p in results.capability.perplexity.items():
        lines.append(f"perplexity {labels.get(cond, cond):22s} {num(p.perplexity, 2)} ({p.tokens} tokens)")
    for cond, mmlu in results.capability.mmlu.items():
        lines.append(f"MMLU {labels.get(cond, cond):28s} {pct(mmlu.accuracy)} ({mmlu.correct}/{mmlu.n})")
    lines.append(f"report: {out}/report.md")
    return "\n".join(lines)
