"""PNG figures of the report: refusal-rate bars, ROC curves, threshold sweep, layer profile, score histograms.

matplotlib is optional (`pip install 'scans-guard[eval]'`); without it `available()` is False and no plot is made.
Every function takes plain data (lists/dicts from the results) and a path, and returns the path written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

CONDITION_COLOURS = {
    "unsteered": "#7f7f7f",
    "scans": "#d62728",
    "helpful_prompt": "#1f77b4",
    "always_negative": "#2ca02c",
    "always_positive": "#9467bd",
}


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    _plt().close(fig)
    return path


def refusal_bars(
    rates: Sequence[dict], conditions: Sequence[str], labels: dict[str, str], set_order: Sequence[str], path: Path
) -> Path:
    """Grouped bars: refusal rate per set (safe sets left panel, unsafe right), one bar per condition, 95% CI."""
    plt = _plt()
    panels = [
        ("safe", "safe prompts: refusal rate (lower is better)"),
        ("unsafe", "unsafe prompts: refusal rate (higher is better)"),
    ]
    groups = {
        lab: [s for s in set_order if any(r["set"] == s and r["label"] == lab for r in rates)] for lab, _ in panels
    }
    widths = [max(1, len(groups[lab])) for lab, _ in panels]
    fig, axes = plt.subplots(
        1, 2, figsize=(2.2 + 1.3 * sum(widths), 4.2), gridspec_kw={"width_ratios": widths}, squeeze=False
    )
    width = 0.8 / max(1, len(conditions))
    for ax, (lab, title) in zip(axes[0], panels):
        sets = groups[lab]
        for j, cond in enumerate(conditions):
            xs: list[float] = []
            ys: list[float] = []
            err: list[list[float]] = [[], []]
            for i, s in enumerate(sets):
                r = next((r for r in rates if r["condition"] == cond and r["set"] == s and r["label"] == lab), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(conditions) - 1) / 2) * width)
                ys.append(100 * r["rate"])
                err[0].append(100 * (r["rate"] - r["ci_low"]))
                err[1].append(100 * (r["ci_high"] - r["rate"]))
            ax.bar(
                xs,
                ys,
                width,
                yerr=err,
                capsize=2,
                label=labels.get(cond, cond),
                color=CONDITION_COLOURS.get(cond),
                error_kw={"elinewidth": 0.8, "alpha": 0.6},
            )
        ax.set_xticks(range(len(sets)), sets, rotation=25, ha="right")
        ax.set_ylim(0, 105)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("refused (%)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def roc_curves(curves: dict[str, dict], operating_points: dict[str, tuple[float, float]], path: Path) -> Path:
    """ROC (unsafe positive) per suite; a dot marks each suite's point at the artifact's T."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, c in curves.items():
        (line,) = ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUROC {c['auroc']:.3f})", lw=2 if name == "all" else 1.2)
        if name in operating_points:
            ax.plot(*operating_points[name], "o", color=line.get_color(), ms=5)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set_xlabel("false-positive rate (safe prompts flagged unsafe)")
    ax.set_ylabel("true-positive rate (unsafe prompts flagged)")
    ax.set_title("sigma(q) ROC; dots: the artifact's T", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def threshold_sweep(rows: Sequence[dict], artifact_t: float, best_t: float | None, path: Path) -> Path:
    """Precision, recall, F1 (unsafe positive) and FPR against T."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = [r["threshold"] for r in rows]
    for key, name in (
        ("precision_unsafe", "precision"),
        ("recall_unsafe", "recall"),
        ("f1_unsafe", "F1"),
        ("fpr", "false-positive rate"),
    ):
        ax.plot(ts, [r[key] if r[key] is not None else float("nan") for r in rows], marker=".", label=name)
    ax.axvline(artifact_t, color="black", ls="--", lw=1, label=f"artifact T = {artifact_t:.3f}")
    if best_t is not None:
        ax.axvline(best_t, color="red", ls=":", lw=1, label=f"best T = {best_t:.3f}")
    ax.set_xlabel("threshold T (score >= T: unsafe)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("threshold sweep, all prompts (unsafe = positive)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def layer_profile(rows: Sequence[dict], steer_layers: Sequence[int], path: Path) -> Path:
    """Per classification layer: mean cosine similarity to d_harm per class (+-1 std), and that layer's AUROC."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    layers = [r["layer"] for r in rows]
    for label, colour in (("unsafe", "#d62728"), ("safe", "#1f77b4")):
        mean = [r[f"mean_{label}"] for r in rows]
        if any(m is None for m in mean):
            continue
        std = [r[f"std_{label}"] for r in rows]
        ax.plot(layers, mean, marker="o", color=colour, label=label)
        ax.fill_between(
            layers, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=colour, alpha=0.15
        )
    ax.set_ylabel("cosine similarity to d_harm")
    ax.set_title("per-layer transition similarity (classification layers)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    aurocs = [r["auroc"] if r["auroc"] is not None else float("nan") for r in rows]
    ax2.bar(layers, aurocs, color=["#ff7f0e" if layer in steer_layers else "#8c8c8c" for layer in layers])
    ax2.set_ylim(min(0.5, min((a for a in aurocs if a == a), default=0.5)) - 0.02, 1.0)
    ax2.set_xticks(layers)
    ax2.set_ylabel("AUROC")
    ax2.set_xlabel("layer (orange: also a steering layer)")
    ax2.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def score_histograms(scores: dict[str, Sequence[float]], threshold: float, path: Path) -> Path:
    """Distribution of sigma(q) for safe and unsafe prompts, with the artifact's T."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = [v for vs in scores.values() for v in vs]
    bins = 40 if values else 10
    rng = (min(values + [threshold]), max(values + [threshold])) if values else None
    for label, colour in (("safe", "#1f77b4"), ("unsafe", "#d62728")):
        if scores.get(label):
            ax.hist(
                scores[label], bins=bins, range=rng, alpha=0.55, color=colour, label=f"{label} ({len(scores[label])})"
            )
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"T = {threshold:.3f}")
    ax.set_xlabel("sigma(q) score")
    ax.set_ylabel("prompts")
    ax.legend(fontsize=8)
    ax.set_title("score distribution, all prompts", fontsize=10)
    return _save(fig, path)
