"""Turn a run's rows into `results.json` (every number) and `report.md` (tables and figures, headline first)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..decision import flags
from . import plots as plotting
from .benchmarks import SETS
from .capability import summarise_capability
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

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
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


def _set_order(run: dict, names: set[str]) -> list[str]:
    order = [s for s in SETS if s in names]
    return order + sorted(names - set(order))


def compute_results(run: dict, score_rows: Sequence[dict], gen_rows: Sequence[dict], cap_rows: Sequence[dict]) -> dict:
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
        e = by_set.setdefault(r["set"], {}).setdefault(r["label"], [])
        e.append(r["score"])
    score_stats = {name: {lab: {"n": len(v), "mean": float(np.mean(v)), "std": float(np.std(v)),
                                "flagged_unsafe": float(np.mean(flags(v, threshold)))}
                          for lab, v in labs.items()} for name, labs in by_set.items()}
    return _clean({
        "run": run,
        "refusal": {"rates": rates, "summary": refusal_summary(rates),
                    "note": "refused = the judge's verdict on each reply; rates per (condition, set, label) with "
                            "95% Wilson intervals; summary means weight each set equally"},
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
    })


# -- markdown -------------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _cell(text: str, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = [{"r": "---:", "c": ":---:"}.get(a, ":---") for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _labels(run: dict) -> dict[str, str]:
    return {c["name"]: c["label"] for c in run.get("conditions", [])}


def _headline(results: dict) -> list[str]:
    run, summary = results["run"], results["refusal"]["summary"]
    lines = []
    u, sc = summary.get("unsteered"), summary.get("scans")
    if u and sc:
        if u["safe_mean_rate"] is not None:
            lines.append(f"- **False refusals** (safe prompts, mean over sets): {_pct(u['safe_mean_rate'])} unsteered "
                         f"→ **{_pct(sc['safe_mean_rate'])} with SCANS**.")
        if u["unsafe_mean_rate"] is not None:
            lines.append(f"- **Refusals of unsafe prompts** (mean over sets): {_pct(u['unsafe_mean_rate'])} unsteered "
                         f"→ **{_pct(sc['unsafe_mean_rate'])} with SCANS**.")
    allsuite = next((e for e in results["classification"]["suites"] if e["suite"] == "all"), None)
    if allsuite and allsuite["at_artifact_T"]["positive=unsafe"]["auroc"] is not None:
        m = allsuite["at_artifact_T"]["positive=unsafe"]
        lines.append(f"- **sigma(q)** on all {allsuite['at_artifact_T']['n']} prompts: AUROC {m['auroc']:.3f}; at the "
                     f"artifact's T = {results['classification']['artifact_threshold']:.4f}: F1 {_num(m['f1'])} "
                     f"(unsafe positive), {_pct(m['fpr'])} of safe prompts flagged unsafe.")
    cap = results["capability"]
    ppl, mmlu = cap.get("perplexity", {}), cap.get("mmlu", {})
    parts = []
    if "unsteered" in ppl and "scans" in ppl:
        parts.append(f"perplexity {_num(ppl['unsteered']['perplexity'], 2)} → {_num(ppl['scans']['perplexity'], 2)}")
    if "unsteered" in mmlu and "scans" in mmlu:
        parts.append(f"MMLU accuracy {_pct(mmlu['unsteered']['accuracy'])} → {_pct(mmlu['scans']['accuracy'])}")
    if parts:
        lines.append(f"- **Capability**, unsteered → SCANS: {'; '.join(parts)}.")
    if run["settings"].get("limit"):
        n = run["settings"]["limit"]
        lines.append(f"- A small run: at most {n} prompts per set, {n} MMLU questions and {n} perplexity windows; "
                     "numbers are noisy.")
    return lines


def _refusal_table(results: dict, set_order: list[str]) -> str:
    run, rates = results["run"], results["refusal"]["rates"]
    labels = _labels(run)
    cols = [(s, lab) for lab in ("safe", "unsafe") for s in set_order
            if any(r["set"] == s and r["label"] == lab for r in rates)]
    header = ["condition"] + [f"{s} {lab} {'↓' if lab == 'safe' else '↑'}" for s, lab in cols] + \
             ["mean safe ↓", "mean unsafe ↑"]
    rows = []
    for cond in [c["name"] for c in run["conditions"]]:
        cells = [labels.get(cond, cond)]
        for s, lab in cols:
            r = next((r for r in rates if r["condition"] == cond and r["set"] == s and r["label"] == lab), None)
            cells.append("–" if r is None else f"{_pct(r['rate'])} ({r['refused']}/{r['n']})")
        summ = results["refusal"]["summary"].get(cond, {})
        cells += [_pct(summ.get("safe_mean_rate")), _pct(summ.get("unsafe_mean_rate"))]
        rows.append(cells)
    return _table(header, rows)


def _classification_tables(results: dict) -> list[str]:
    out = []
    suites = results["classification"]["suites"]
    for positive in ("unsafe", "safe"):
        rows = []
        for e in suites:
            for where, tkey in (("artifact T", "at_artifact_T"), ("best T", "at_best_T")):
                m = e.get(tkey)
                if m is None:
                    continue
                pm = m[f"positive={positive}"]
                rows.append([e["suite"], f"{where} = {m['threshold']:.4f}", str(m["n"]),
                             f"{m['n_safe']}/{m['n_unsafe']}", _num(pm["auroc"]), _num(pm["auprc"]),
                             _num(pm["f1"]), _num(pm["precision"]), _num(pm["recall"]), _pct(pm["fpr"]),
                             _pct(pm["accuracy"])])
        out.append(f"**Positive class: {positive}**\n\n" + _table(
            ["suite", "threshold", "n", "safe/unsafe", "AUROC", "AUPRC", "F1", "precision", "recall", "FPR",
             "accuracy"], rows, "llrrrrrrrrr"))
    return out


def _examples(gen_rows: Sequence[dict], limit: int = 6) -> list[dict]:
    """Prompts where SCANS and the unsteered model disagree on refusing: safe ones first, then unsafe."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in gen_rows:
        by_key.setdefault((r["set"], r["label"], r["prompt"]), {})[r["condition"]] = r
    picked = []
    for label in ("safe", "unsafe"):
        cands = [v for k, v in sorted(by_key.items()) if k[1] == label and "unsteered" in v and "scans" in v
                 and v["unsteered"]["refused"] != v["scans"]["refused"]]
        picked += cands[: limit // 2]
    return picked


def render_markdown(results: dict, gen_rows: Sequence[dict], figures: dict[str, str]) -> str:
    run = results["run"]
    recipe = run["artifact"]["recipe"]
    settings = run["settings"]
    set_order = _set_order(run, set(run.get("sets", {})))
    md = [f"# SCANS evaluation: {run['model']['name']}", ""]
    md += _headline(results) + [""]
    if "refusal_rates" in figures:
        md += [f"![refusal rates]({figures['refusal_rates']})", ""]

    md += ["## Setup", ""]
    md.append(_table(["", ""], [
        ["model", f"{_cell(run['model']['name'])} ({run['model']['n_layers']} layers, {run['model']['dtype']}, "
                  f"{run['model']['device']})"],
        ["artifact", f"T = {recipe['threshold']:.4f}, steer layers {recipe['steer_layers']}, classify layers "
                     f"{recipe['classify_layers']}, alpha −{recipe['alpha_benign']:g}/+{recipe['alpha_harmful']:g}, "
                     f"grey zone {recipe['grey_zone']:g}, r_pos {recipe['r_pos']!r}"],
        ["T fitted on", _cell(str(run["artifact"]["threshold_fit"].get("data", "–")))],
        ["generation", f"greedy, at most {settings['max_new_tokens']} new tokens, batch {settings['batch_size']}"],
        ["refusal judge", f"`{settings['judge']}`"],
        ["sample", f"limit {settings['limit'] or 'none'} per set, seed {settings['seed']}"],
        ["library", f"scans-guard {run['library_version']}"],
    ], "ll"))
    md.append("")
    set_rows = []
    for name in set_order:
        info = run["sets"][name]
        set_rows.append([name, _cell(SETS.get(name, name)), str(info["evaluated"]), str(info["labels"]["safe"]),
                         str(info["labels"]["unsafe"]), str(info["anchors_removed"]),
                         str(info["threshold_fit_removed"] or info["threshold_fit_overlap"]), str(info["total"])])
    fit_col = "T-fit removed" if settings.get("exclude_threshold_fit") else "T-fit kept"
    md += [_table(["set", "benchmark", "evaluated", "safe", "unsafe", "anchors removed", fit_col, "in file"],
                  set_rows, "llrrrrrr"), ""]
    notes = list(run.get("calibration_prompts", {}).get("notes", []))
    if run.get("skipped_sets"):
        notes.append(f"skipped (no data directory with them): {', '.join(run['skipped_sets'])}")
    notes += run.get("capability_notes", [])
    md += [f"- {_cell(n)}" for n in notes] + ([""] if notes else [])
    md += ["Conditions: " + "; ".join(f"**{c['label']}**: {c['description']}" for c in run["conditions"]), ""]

    md += ["## Refusal rates (Table 2)", "",
           "Share of replies the judge calls a refusal; ↓ lower is better (safe prompts), ↑ higher is better "
           "(unsafe prompts).", "", _refusal_table(results, set_order), ""]

    md += ["## sigma(q) classification", "", results["classification"]["positive_class_note"],
           "'best T' maximises F1 (unsafe positive) on the same prompts, so it is an optimistic upper bound.", ""]
    md += [t + "\n" for t in _classification_tables(results)]
    for key, alt in (("roc", "ROC"), ("score_histogram", "score distribution")):
        if key in figures:
            md += [f"![{alt}]({figures[key]})", ""]

    sweep = results["classification"]["threshold_sweep"]["rows"]
    if sweep:
        md += ["## Threshold sweep (Table 7)", "", "All prompts pooled; unsafe is the positive class unless noted.", ""]
        md.append(_table(["T", "flagged unsafe", "precision", "recall", "F1", "FPR", "F1 (safe positive)", "accuracy"],
                         [[f"{r['threshold']:.4f}" + (" (artifact)" if r["threshold"] == results["classification"]
                                                       ["artifact_threshold"] else ""),
                           _pct(r["flagged_unsafe"]), _num(r["precision_unsafe"]), _num(r["recall_unsafe"]),
                           _num(r["f1_unsafe"]), _pct(r["fpr"]), _num(r["f1_safe"]), _pct(r["accuracy"])]
                          for r in sweep]))
        md.append("")
        if "threshold_sweep" in figures:
            md += [f"![threshold sweep]({figures['threshold_sweep']})", ""]

    profile = results["classification"]["layer_profile"].get("all", [])
    if profile:
        md += ["## Layer profile (Figure 5)", "",
               "Cosine similarity of each classification layer's transition to d_harm (mean ± std per class), and "
               "the AUROC of that layer alone; sigma(q) averages these layers.", ""]
        md.append(_table(["layer", "steer", "safe", "unsafe", "gap", "AUROC"], [
            [str(r["layer"]), "✓" if r["layer"] in recipe["steer_layers"] else "",
             f"{_num(r['mean_safe'])} ± {_num(r['std_safe'])}", f"{_num(r['mean_unsafe'])} ± {_num(r['std_unsafe'])}",
             _num(r["mean_unsafe"] - r["mean_safe"]) if r["mean_unsafe"] is not None and r["mean_safe"] is not None
             else "–", _num(r["auroc"])] for r in profile], "lcrrrr"))
        md.append("")
        if "layer_profile" in figures:
            md += [f"![layer profile]({figures['layer_profile']})", ""]

    vocab = results["vocabulary_projection"]
    if vocab:
        md += ["## Vocabulary projection (Table 1)", "",
               "Top tokens of each layer's first principal harmful-vs-benign direction through the final norm and "
               "LM head (from the artifact); refusal tokens count matches of the refusal lexicon.", ""]
        md.append(_table(["layer", "steer", "classify", "refusal tokens", "top tokens"], [
            [str(r["layer"]), "✓" if r["layer"] in recipe["steer_layers"] else "",
             "✓" if r["layer"] in recipe["classify_layers"] else "", str(r["refusal_tokens"]),
             _cell(" ".join(f"`{t.strip() or repr(t)}`" for t in r["top_tokens"][:8]))] for r in vocab], "lccrl"))
        md.append("")

    cap = results["capability"]
    if cap["perplexity"] or cap["mmlu"]:
        md += ["## Capability", "",
               f"Perplexity on WikiText-2 test ({settings['ppl_window']}-token windows; steering at every position) "
               f"and accuracy on a fixed MMLU subset (first {settings['mmlu_per_subject']} test questions of "
               f"{'each subject' if not settings.get('mmlu_subjects') else ', '.join(settings['mmlu_subjects'])}, "
               f"{settings['mmlu_shots']}-shot, chat format; steering from the last prompt token). SCANS steers each "
               "window/question by its own sigma(q).", ""]
        rows = []
        labels = _labels(run)
        for c in run["conditions"]:
            p, m = cap["perplexity"].get(c["name"]), cap["mmlu"].get(c["name"])
            rows.append([labels[c["name"]],
                         f"{_num(p['perplexity'], 2)} ({p['windows']} window{'s' if p['windows'] != 1 else ''}, "
                         f"{p['tokens']} tokens)" if p else "n/a",
                         f"{_pct(m['accuracy'])} ({m['correct']}/{m['n']}"
                         + (f"; {m['skipped_too_long']} too long, skipped" if m.get("skipped_too_long") else "")
                         + ")" if m else "n/a",
                         f"{m['towards_refusal']}/{m['away_from_refusal']}" if m else "–"])
        md += [_table(["condition", "perplexity ↓", "MMLU accuracy ↑", "MMLU steered towards/away"], rows), ""]

    examples = _examples(gen_rows)
    if examples:
        md += ["## Examples where SCANS changes the outcome", ""]
        for ex in examples:
            u, s = ex["unsteered"], ex["scans"]
            md += [f"**{_cell(u['set'])} ({u['label']})** — {_cell(u['prompt'], 200)}  ",
                   f"score {_num(s['score'], 4)}, steered {s['direction'].replace('_', ' ')}",
                   "",
                   f"- unsteered ({'refused' if u['refused'] else 'answered'}): {_cell(u['response'], 240)}",
                   f"- SCANS ({'refused' if s['refused'] else 'answered'}): {_cell(s['response'], 240)}", ""]

    md += ["## Files", "",
           f"`results.json` (every number), `generations.jsonl` (one row per prompt and condition: prompt, set, label, "
           f"condition, score, direction, response, refused), `scores.jsonl` (sigma(q) and per-layer similarities per "
           f"prompt), `capability.jsonl`, `run.json` (settings), `{PLOTS_DIR}/`.", ""]
    return "\n".join(md)


def make_figures(results: dict, score_rows: Sequence[dict], out: Path) -> dict[str, str]:
    """Draw every figure the results allow; returns {name: path relative to `out`}."""
    if not plotting.available():
        log.warning("matplotlib is not installed: no plots (pip install 'scans-guard[eval]')")
        return {}
    run = results["run"]
    recipe = run["artifact"]["recipe"]
    threshold = recipe["threshold"]
    pdir = out / PLOTS_DIR
    figs: dict[str, Path] = {}
    rates = results["refusal"]["rates"]
    sets_in_run = set(run.get("sets", {}))
    score_rows = [r for r in score_rows if r["set"] in sets_in_run]
    if rates:
        conds = [c["name"] for c in run["conditions"] if any(r["condition"] == c["name"] for r in rates)]
        figs["refusal_rates"] = plotting.refusal_bars(rates, conds, _labels(run), _set_order(run, sets_in_run),
                                                   pdir / "refusal_rates.png")
    curves, points = {}, {}
    for e in results["classification"]["suites"]:
        rows = suite_rows(score_rows, e["sets"])
        c = roc_points([r["score"] for r in rows], [r["label"] == "unsafe" for r in rows])
        if c is not None:
            curves[e["suite"]] = {**c, "auroc": e["at_artifact_T"]["positive=unsafe"]["auroc"]}
            m = e["at_artifact_T"]["positive=unsafe"]
            points[e["suite"]] = (m["fpr"], m["recall"])
    if curves:
        figs["roc"] = plotting.roc_curves(curves, points, pdir / "roc.png")
    sweep = results["classification"]["threshold_sweep"]["rows"]
    if len(sweep) > 1:
        best = next((e.get("best_T") for e in results["classification"]["suites"] if e["suite"] == "all"), None)
        figs["threshold_sweep"] = plotting.threshold_sweep(sweep, threshold, best, pdir / "threshold_sweep.png")
    profile = results["classification"]["layer_profile"].get("all", [])
    if profile:
        figs["layer_profile"] = plotting.layer_profile(profile, recipe["steer_layers"], pdir / "layer_profile.png")
    pooled = suite_rows(score_rows, tuple(sets_in_run))
    if pooled:
        figs["score_histogram"] = plotting.score_histograms(
            {lab: [r["score"] for r in pooled if r["label"] == lab] for lab in ("safe", "unsafe")}, threshold,
            pdir / "scores.png")
    return {k: str(v.relative_to(out)) for k, v in figs.items()}


def write_report(out_dir: str | Path, run: dict, score_rows: Sequence[dict], gen_rows: Sequence[dict],
                 cap_rows: Sequence[dict], plots: bool = True) -> dict:
    """Write results.json, report.md and plots/ into `out_dir`; returns the results dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = compute_results(run, score_rows, gen_rows, cap_rows)
    figures = make_figures(results, score_rows, out) if plots else {}
    results["figures"] = figures
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    shown = [r for r in gen_rows if r["set"] in set(run.get("sets", {}))]
    (out / REPORT_FILE).write_text(render_markdown(results, shown, figures))
    return results
