"""Turn a run's rows into `results.json` (every number) and `report.md` (tables and figures, headline first)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..sigma.decision import flags
from . import plots as plotting
from .capability import summarise_capability
from .markdown import PLOTS_DIR, render_markdown, set_order
from .metrics import (
    classification_report,
    layer_profile,
    refusal_rates,
    refusal_summary,
    roc_points,
    suite_rows,
    suites_present,
    sweep_grid,
    threshold_sweep,
)
from .results import EvalResults

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
POSITIVE_CLASS_NOTE = (
    "A prompt is predicted unsafe when sigma(q) >= T. Metrics are given with 'unsafe' as the positive class "
    "(what SCANS steers towards refusal) and with 'safe' as the positive class (the convention of the SCANS "
    "reference code). AUROC is the same for both; AUPRC, precision, recall and F1 are not."
)


def _clean(obj):
    """JSON-safe copy: NaN and infinities become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def compute_results(
    run: dict, score_rows: Sequence[dict], gen_rows: Sequence[dict], cap_rows: Sequence[dict]
) -> EvalResults:
    """Every number of the report, from the rows (no model needed)."""
    threshold = run["artifact"]["recipe"]["threshold"]
    sets_in_run = set(run.get("sets", {})) or {r["set"] for r in score_rows}
    score_rows = [r for r in score_rows if r["set"] in sets_in_run]
    gen_rows = [r for r in gen_rows if r["set"] in sets_in_run]
    rates = refusal_rates(gen_rows)
    suites = classification_report(score_rows, threshold)
    pooled = suite_rows(score_rows, tuple(sets_in_run))
    s = [r["score"] for r in pooled]
    u = [r["label"] == "unsafe" for r in pooled]
    best_all = next((e.get("best_T") for e in suites if e["suite"] == "all"), None)
    grid = sweep_grid(s, threshold) + ([best_all] if best_all is not None else [])
    profiles = {name: layer_profile(suite_rows(score_rows, sets)) for name, sets in suites_present(score_rows).items()}
    by_set: dict[str, dict] = {}
    for r in score_rows:
        by_set.setdefault(r["set"], {}).setdefault(r["label"], []).append(r["score"])
    score_stats = {
        name: {
            lab: {
                "n": len(v),
                "mean": float(np.mean(v)),
                "std": float(np.std(v)),
                "flagged_unsafe": float(np.mean(flags(v, threshold))),
            }
            for lab, v in labs.items()
        }
        for name, labs in by_set.items()
    }
    return EvalResults.model_validate(
        _clean(
            {
                "run": run,
                "refusal": {
                    "rates": rates,
                    "summary": refusal_summary(rates),
                    "note": "refused = the judge's verdict on each reply; rates per (condition, set, label) with "
                    "95% Wilson intervals; summary means weight each set equally",
                },
                "classification": {
                    "positive_class_note": POSITIVE_CLASS_NOTE,
                    "artifact_threshold": threshold,
                    "suites": suites,
                    "threshold_sweep": {"suite": "all", "rows": threshold_sweep(s, u, sorted(set(grid)))},
                    "layer_profile": profiles,
                    "score_stats": score_stats,
                },
                "vocabulary_projection": run["artifact"].get("layer_analysis", []),
                "capability": summarise_capability(cap_rows),
            }
        )
    )


def make_figures(res: EvalResults, score_rows: Sequence[dict], out: Path) -> dict[str, str]:
    """Draw every figure the results allow; returns {name: path relative to `out`}."""
    if not plotting.available():
        log.warning("matplotlib is not installed: no plots (pip install 'scans-guard[eval]')")
        return {}
    run, cls, pdir = res.run, res.classification, out / PLOTS_DIR
    figs: dict[str, Path] = {}
    rates = [r.model_dump() for r in res.refusal.rates]
    score_rows = [r for r in score_rows if r["set"] in run.sets]
    if rates:
        conds = [c.name for c in run.conditions if any(r["condition"] == c.name for r in rates)]
        figs["refusal_rates"] = plotting.refusal_bars(
            rates, conds, run.labels, set_order(set(run.sets)), pdir / "refusal_rates.png"
        )
    curves: dict[str, dict] = {}
    points: dict[str, tuple[float, float]] = {}
    for e in cls.suites:
        rows = suite_rows(score_rows, e.sets)
        c = roc_points([r["score"] for r in rows], [r["label"] == "unsafe" for r in rows])
        if c is not None:
            m = e.at_artifact_T.unsafe
            curves[e.suite] = {**c, "auroc": m.auroc}
            if m.fpr is not None and m.recall is not None:
                points[e.suite] = (m.fpr, m.recall)
    if curves:
        figs["roc"] = plotting.roc_curves(curves, points, pdir / "roc.png")
    if len(cls.threshold_sweep.rows) > 1:
        best = whole.best_T if (whole := cls.suite("all")) else None
        figs["threshold_sweep"] = plotting.threshold_sweep(
            [r.model_dump() for r in cls.threshold_sweep.rows],
            cls.artifact_threshold,
            best,
            pdir / "threshold_sweep.png",
        )
    if profile := cls.layer_profile.get("all", []):
        figs["layer_profile"] = plotting.layer_profile(
            [r.model_dump() for r in profile], run.artifact.recipe.steer_layers, pdir / "layer_profile.png"
        )
    if pooled := suite_rows(score_rows, tuple(run.sets)):
        figs["score_histogram"] = plotting.score_histograms(
            {lab: [r["score"] for r in pooled if r["label"] == lab] for lab in ("safe", "unsafe")},
            cls.artifact_threshold,
            pdir / "scores.png",
        )
    return {k: str(v.relative_to(out)) for k, v in figs.items()}


def write_report(
    out_dir: str | Path,
    run: dict,
    score_rows: Sequence[dict],
    gen_rows: Sequence[dict],
    cap_rows: Sequence[dict],
    plots: bool = True,
) -> EvalResults:
    """Write results.json, report.md and plots/ into `out_dir`; returns the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = compute_results(run, score_rows, gen_rows, cap_rows)
    results.figures = make_figures(results, score_rows, out) if plots else {}
    (out / RESULTS_FILE).write_text(results.to_json())
    shown = [r for r in gen_rows if r["set"] in set(run.get("sets", {}))]
    (out / REPORT_FILE).write_text(render_markdown(results, shown, results.figures))
    return results
