"""Evaluation harness: refusal rates under SCANS and baselines, sigma(q) classification, capability, a report.

    from scans_guard import ScansEngine
    from scans_guard.eval import EvalConfig, run_eval
    results = run_eval(ScansEngine.load(), EvalConfig(out_dir="results/eval", limit=20))

Modules: benchmarks (sets, anchor exclusion), conditions (unsteered, SCANS, baselines), store (resumable JSONL),
runner (classification and generation runs), metrics, capability (perplexity, MMLU), report (JSON, Markdown),
plots (PNG), pipeline (all of it), cli (`scans-guard eval`).
"""

from .benchmarks import SETS, SUITES, EvalPrompt, calibration_prompts, load_benchmarks
from .conditions import CONDITION_NAMES, HELPFUL_SYSTEM_PROMPT, Condition, build_conditions
from .metrics import classification_metrics, confusion, refusal_rates
from .pipeline import EvalConfig, report_only, run_eval

__all__ = [
    "CONDITION_NAMES",
    "Condition",
    "EvalConfig",
    "EvalPrompt",
    "HELPFUL_SYSTEM_PROMPT",
    "SETS",
    "SUITES",
    "build_conditions",
    "calibration_prompts",
    "classification_metrics",
    "confusion",
    "load_benchmarks",
    "refusal_rates",
    "report_only",
    "run_eval",
]
