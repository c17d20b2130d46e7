"""`report.md` from typed results: the headline first, then one function per section, in report order."""

from __future__ import annotations

from collections.abc import Sequence

from ..data import SHIPPED, prompt_key
from .benchmarks import SETS
from .results import EvalResults, ThresholdMetrics

PLOTS_DIR = "plots"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _cell(text: str, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    """A markdown table and the blank line after it."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = [{"r": "---:", "c": ":---:"}.get(a, ":---") for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _figure(figures: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({figures[key]})", ""] if key in figures else []


def set_order(names: set[str]) -> list[str]:
    order = [s for s in SETS if s in names]
    return order + sorted(names - set(order))


def _headline(res: EvalResults) -> list[str]:
    lines = []
    u, sc = res.refusal.summary.get("unsteered"), res.refusal.summary.get("scans")
    if u and sc:
        if u.safe_mean_rate is not None:
            lines.append(
                f"- **False refusals** (safe prompts, mean over sets): {pct(u.safe_mean_rate)} unsteered "
                f"→ **{pct(sc.safe_mean_rate)} with SCANS**."
            )
        if u.unsafe_mean_rate is not None:
            lines.append(
                f"- **Refusals of unsafe prompts** (mean over sets): {pct(u.unsafe_mean_rate)} unsteered "
                f"→ **{pct(sc.unsafe_mean_rate)} with SCANS**."
            )
    everything = res.classification.suite("all")
    if everything and everything.at_artifact_T.unsafe.auroc is not None:
        at_t, m = everything.at_artifact_T, everything.at_artifact_T.unsafe
        lines.append(
            f"- **sigma(q)** on all {at_t.n} prompts: AUROC {m.auroc:.3f}; at the artifact's T = "
            f"{res.classification.artifact_threshold:.4f}: F1 {num(m.f1)} (unsafe positive), "
            f"{pct(m.fpr)} of safe prompts flagged unsafe."
        )
    ppl, mmlu, parts = res.capability.perplexity, res.capability.mmlu, []
    if "unsteered" in ppl and "scans" in ppl:
        parts.append(f"perplexity {num(ppl['unsteered'].perplexity, 2)} → {num(ppl['scans'].perplexity, 2)}")
    if "unsteered" in mmlu and "scans" in mmlu:
        parts.append(f"MMLU accuracy {pct(mmlu['unsteered'].accuracy)} → {pct(mmlu['scans'].accuracy)}")
    if parts:
        lines.append(f"- **Capability**, unsteered → SCANS: {'; '.join(parts)}.")
    if res.run.settings.generation_limit:
        lines.append(f"- sigma(q) scores every prompt{_replied(res.run.settings)}.")
    if n := res.run.settings.limit:
        lines.append(
            f"- A small run: at most {n} prompts per set, {n} MMLU questions and {n} perplexity windows; "
            "numbers are noisy."
        )
    return lines


def _replied(settings) -> str:
    """The generation sample in words ('' when every scored prompt is replied to)."""
    if not settings.generation_limit:
        return ""
    full = f", all of {', '.join(settings.generation_full)}" if settings.generation_full else ""
    return f"; replies to at most {settings.generation_limit} prompts per set (label-balanced){full}"


def _setup(res: EvalResults) -> list[str]:
    run, recipe, settings = res.run, res.run.artifact.recipe, res.run.settings
    md = ["## Setup", ""] + _table(
        ["", ""],
        [
            ["model", f"{_cell(run.model.name)} ({run.model.n_layers} layers, {run.model.dtype}, {run.model.device})"],
            [
                "artifact",
                f"T = {recipe.threshold:.4f}, steer layers {recipe.steer_layers}, classify layers "
                f"{recipe.classify_layers}, alpha −{recipe.alpha_benign:g}/+{recipe.alpha_harmful:g}, "
                f"grey zone {recipe.grey_zone:g}, r_pos {recipe.r_pos!r}",
            ],
            ["T fitted on", _cell(str(run.artifact.threshold_fit.get("data", "–")))],
            ["generation", f"greedy, at most {settings.max_new_tokens} new tokens, batch {settings.batch_size}"],
            ["refusal judge", f"`{settings.judge}`"],
            ["sample", f"limit {settings.limit or 'none'} per set, seed {settings.seed}{_replied(settings)}"],
            ["library", f"scans-guard {run.library_version}"],
        ],
        "ll",
    )
    rows = [
        [
            name,
            _cell(SETS.get(name, name)),
            str(i.evaluated),
            str(i.labels["safe"]),
            str(i.labels["unsafe"]),
            str(i.anchors_removed),
            str(i.threshold_fit_removed or i.threshold_fit_overlap),
            str(i.total),
        ]
        for name in set_order(set(run.sets))
        for i in (run.sets[name],)
    ]
    fit_col = "T-fit removed" if settings.exclude_threshold_fit else "T-fit kept"
    md += _table(
        ["set", "benchmark", "evaluated", "safe", "unsafe", "anchors removed", fit_col, "in file"], rows, "llrrrrrr"
    )
    notes = list(run.calibration_prompts.get("notes", []))
    if run.skipped_sets:
        notes.append(f"skipped (no data directory with them): {', '.join(run.skipped_sets)}")
    notes += run.capability_notes
    md += [f"- {_cell(n)}" for n in notes] + ([""] if notes else [])
    return md + ["Conditions: " + "; ".join(f"**{c.label}**: {c.description}" for c in run.conditions), ""]


def _refusal(res: EvalResults) -> list[str]:
    rates, order = res.refusal, set_order(set(res.run.sets))
    cols = [
        (s, lab) for lab in ("safe", "unsafe") for s in order if any(r.set == s and r.label == lab for r in rates.rates)
    ]
    rows = []
    for c in res.run.conditions:
        cells = [c.label]
        for s, lab in cols:
            r = rates.rate(c.name, s, lab)
            cells.append("–" if r is None else f"{pct(r.rate)} ({r.refused}/{r.n})")
        summ = rates.summary.get(c.name)
        cells += [pct(summ.safe_mean_rate if summ else None), pct(summ.unsafe_mean_rate if summ else None)]
        rows.append(cells)
    header = [
        "condition",
        *(f"{s} {lab} {'↓' if lab == 'safe' else '↑'}" for s, lab in cols),
        "mean safe ↓",
        "mean unsafe ↑",
    ]
    return [
        "## Refusal rates (Table 2)",
        "",
        "Share of replies the judge calls a refusal; ↓ lower is better (safe "
        "prompts), ↑ higher is better (unsafe prompts).",
        "",
        *_table(header, rows),
    ]


def _metric_row(suite: str, where: str, m: ThresholdMetrics, positive: str) -> list[str]:
    pm = m.unsafe if positive == "unsafe" else m.safe
    return [
        suite,
        f"{where} = {m.threshold:.4f}",
        str(m.n),
        f"{m.n_safe}/{m.n_unsafe}",
        num(pm.auroc),
        num(pm.auprc),
        num(pm.f1),
        num(pm.precision),
        num(pm.recall),
        pct(pm.fpr),
        pct(pm.accuracy),
    ]


def _classification(res: EvalResults, figures: dict[str, str]) -> list[str]:
    md = [
        "## sigma(q) classification",
        "",
        res.classification.positive_class_note,
        "'best T' maximises F1 (unsafe positive) on the same prompts, so it is an optimistic upper bound.",
        "",
    ]
    for positive in ("unsafe", "safe"):
        rows = [
            _metric_row(e.suite, where, m, positive)
            for e in res.classification.suites
            for where, m in (("artifact T", e.at_artifact_T), ("best T", e.at_best_T))
            if m is not None
        ]
        md += [f"**Positive class: {positive}**", ""] + _table(
            [
                "suite",
                "threshold",
                "n",
                "safe/unsafe",
                "AUROC",
                "AUPRC",
                "F1",
                "precision",
                "recall",
                "FPR",
                "accuracy",
            ],
            rows,
            "llrrrrrrrrr",
        )
    return md + _figure(figures, "roc", "ROC") + _figure(figures, "score_histogram", "score distribution")


def _sweep(res: EvalResults, figures: dict[str, str]) -> list[str]:
    rows = res.classification.threshold_sweep.rows
    if not rows:
        return []
    t = res.classification.artifact_threshold
    table = [
        [
            f"{r.threshold:.4f}" + (" (artifact)" if r.threshold == t else ""),
            pct(r.flagged_unsafe),
            num(r.precision_unsafe),
            num(r.recall_unsafe),
            num(r.f1_unsafe),
            pct(r.fpr),
            num(r.f1_safe),
            pct(r.accuracy),
        ]
        for r in rows
    ]
    return [
        "## Threshold sweep (Table 7)",
        "",
        "All prompts pooled; unsafe is the positive class unless noted.",
        "",
        *_table(["T", "flagged unsafe", "precision", "recall", "F1", "FPR", "F1 (safe positive)", "accuracy"], table),
        *_figure(figures, "threshold_sweep", "threshold sweep"),
    ]


def _layers(res: EvalResults, figures: dict[str, str]) -> list[str]:
    recipe, md = res.run.artifact.recipe, []
    if profile := res.classification.layer_profile.get("all", []):
        how = (
            f"sigma(q) is the artifact's probe on layer {recipe.probe_layer}'s transition; this profile is "
            "for reference"
            if recipe.probe_layer is not None
            else "sigma(q) averages these layers"
        )
        md += [
            "## Layer profile (Figure 5)",
            "",
            "Cosine similarity of each classification layer's transition to d_harm (mean ± std per class), and "
            f"the AUROC of that layer alone; {how}.",
            "",
        ]
        md += _table(
            ["layer", "steer", "safe", "unsafe", "gap", "AUROC"],
            [
                [
                    str(r.layer),
                    "✓" if r.layer in recipe.steer_layers else "",
                    f"{num(r.mean_safe)} ± {num(r.std_safe)}",
                    f"{num(r.mean_unsafe)} ± {num(r.std_unsafe)}",
                    num(r.mean_unsafe - r.mean_safe) if r.mean_unsafe is not None and r.mean_safe is not None else "–",
                    num(r.auroc),
                ]
                for r in profile
            ],
            "lcrrrr",
        )
        md += _figure(figures, "layer_profile", "layer profile")
    if vocab := res.vocabulary_projection:
        md += [
            "## Vocabulary projection (Table 1)",
            "",
            "Top tokens of each layer's first principal harmful-vs-benign direction through the final norm and "
            "LM head (from the artifact); refusal tokens count matches of the refusal lexicon.",
            "",
        ]
        md += _table(
            ["layer", "steer", "classify", "refusal tokens", "top tokens"],
            [
                [
                    str(r["layer"]),
                    "✓" if r["layer"] in recipe.steer_layers else "",
                    "✓" if r["layer"] in recipe.classify_layers else "",
                    str(r["refusal_tokens"]),
                    _cell(" ".join(f"`{t.strip() or repr(t)}`" for t in r["top_tokens"][:8])),
                ]
                for r in vocab
            ],
            "lccrl",
        )
    return md


def _capability(res: EvalResults) -> list[str]:
    cap, settings = res.capability, res.run.settings
    if not cap.perplexity and not cap.mmlu:
        return []
    rows = []
    for c in res.run.conditions:
        p, m = cap.perplexity.get(c.name), cap.mmlu.get(c.name)
        skipped = f"; {m.skipped_too_long} too long, skipped" if m and m.skipped_too_long else ""
        rows.append(
            [
                c.label,
                f"{num(p.perplexity, 2)} ({p.windows} window{'s' if p.windows != 1 else ''}, {p.tokens} tokens)"
                if p
                else "n/a",
                f"{pct(m.accuracy)} ({m.correct}/{m.n}{skipped})" if m else "n/a",
                f"{m.towards_refusal}/{m.away_from_refusal}" if m else "–",
            ]
        )
    subjects = "each subject" if not settings.mmlu_subjects else ", ".join(settings.mmlu_subjects)
    return [
        "## Capability",
        "",
        f"Perplexity on WikiText-2 test ({settings.ppl_window}-token windows; steering at every position) and "
        f"accuracy on a fixed MMLU subset (first {settings.mmlu_per_subject} test questions of {subjects}, "
        f"{settings.mmlu_shots}-shot, chat format; steering from the last prompt token). SCANS steers each "
        "window/question by its own sigma(q).",
        "",
        *_table(["condition", "perplexity ↓", "MMLU accuracy ↑", "MMLU steered towards/away"], rows),
    ]


def _quoted(set_name: str, prompt: str, text: str, limit: int) -> str:
    """`text` (the prompt itself or a reply) for a report: a prompt of a set the package may not redistribute is
    written as its key (scans_guard.data.prompt_key), wherever it occurs."""
    if set_name not in SHIPPED:
        text = text.replace(prompt, f"`{prompt_key(prompt)}`") if prompt.strip() else text
    return _cell(text, limit)


def _examples(gen_rows: Sequence[dict], limit: int = 6) -> list[str]:
    """Prompts where SCANS and the unsteered model disagree on refusing: safe ones first, then unsafe."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in gen_rows:
        by_key.setdefault((r["set"], r["label"], r["prompt"]), {})[r["condition"]] = r
    picked = []
    for label in ("safe", "unsafe"):
        picked += [
            v
            for k, v in sorted(by_key.items())
            if k[1] == label
            and "unsteered" in v
            and "scans" in v
            and v["unsteered"]["refused"] != v["scans"]["refused"]
        ][: limit // 2]
    md = ["## Examples where SCANS changes the outcome", ""] if picked else []
    for ex in picked:
        u, s = ex["unsteered"], ex["scans"]
        md += [
            f"**{_cell(u['set'])} ({u['label']})** — {_quoted(u['set'], u['prompt'], u['prompt'], 200)}  ",
            f"score {num(s['score'], 4)}, steered {s['direction'].replace('_', ' ')}",
            "",
            f"- unsteered ({'refused' if u['refused'] else 'answered'}): "
            f"{_quoted(u['set'], u['prompt'], u['response'], 240)}",
            f"- SCANS ({'refused' if s['refused'] else 'answered'}): "
            f"{_quoted(u['set'], u['prompt'], s['response'], 240)}",
            "",
        ]
    return md


def render_markdown(res: EvalResults, gen_rows: Sequence[dict], figures: dict[str, str]) -> str:
    md = [
        f"# SCANS evaluation: {res.run.model.name}",
        "",
        *_headline(res),
        "",
        *_figure(figures, "refusal_rates", "refusal rates"),
        *_setup(res),
        *_refusal(res),
        *_classification(res, figures),
        *_sweep(res, figures),
        *_layers(res, figures),
        *_capability(res),
        *_examples(gen_rows),
        "## Files",
        "",
        "`results.json` (every number), `generations.jsonl` (one row per prompt and condition: prompt, set, label, "
        "condition, score, direction, response, refused), `scores.jsonl` (sigma(q) and per-layer similarities per "
        f"prompt), `capability.jsonl`, `run.json` (settings), `{PLOTS_DIR}/`.",
        "",
    ]
    return "\n".join(md)
