"""Compare sigma(q) variants on features extracted once (benchmarks/sigma_features.py): one table, no model needed.

    python benchmarks/sigma_variants.py --features results/sigma-features --out benchmarks/results/sigma-variants

Every variant is fitted only on calibration data: the AdvBench/TruthfulQA anchors, the contrast set's train split,
and for T the HarmfulQ tuning half vs OKTest held-out plus the contrast train split. Evaluation sets are never used
for a choice: XSTest (all 450),
OKTest, HarmfulQ evaluation half, AdvBench held-out vs TruthfulQA held-out, RepE test (240 sampled), contrast
held-out. Layer spans of the fitted variants are chosen by 5-fold cross-validation on the contrast train split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from scans_guard.calibration.fit import recall_threshold
from scans_guard.sigma.decision import flags


def classify_layers(n_layers: int) -> list[int]:
    """The recipe's default classification layers: the second half (12-23 on the 0.5B, 14-27 on the 1.5B)."""
    return list(range(n_layers // 2, n_layers))


CS = (0.01, 0.05, 0.2)  # L2 strengths tried by cross-validation for the probes


class FeatureSet:
    def __init__(self, directory: Path, name: str):
        meta = json.loads((directory / f"{name}.json").read_text())
        t = load_file(str(directory / f"{name}.safetensors"))
        self.name, self.prompts = name, meta["prompts"]
        self.y = np.array([lab == "unsafe" for lab in meta["labels"]], dtype=int)
        self.split = np.array(meta["splits"])
        self.t = t["transitions"].astype(np.float32)  # [n, n_layers, hidden]
        self.h = t["last_prompt"].astype(np.float32)  # [n, n_layers, hidden]
        lp = t["opener_logprobs"].astype(np.float64)  # [n, n_openers]
        k = meta["n_refusal_openers"]
        self.intent = _lse(lp[:, :k]) - _lse(lp[:, k:])  # refusal minus compliance log-probability mass

    def take(self, mask: np.ndarray) -> FeatureSet:
        out = object.__new__(FeatureSet)
        out.__dict__ = {k: (v[mask] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        out.prompts = [p for p, m in zip(self.prompts, mask) if m]
        return out


def _lse(x: np.ndarray) -> np.ndarray:
    m = x.max(1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(1, keepdims=True)))[:, 0]


def cosines(t: np.ndarray, d: np.ndarray, layers: list[int]) -> np.ndarray:
    """[n, len(layers)] cosine of each transition with d (d is [n_layers, hidden])."""
    tl, dl = t[:, layers], d[layers]
    return (tl * dl).sum(-1) / (np.linalg.norm(tl, axis=-1) * np.linalg.norm(dl, axis=-1) + 1e-12)


class Variant:
    """fit(train) then score(set) -> [n] (higher = more harmful)."""

    def __init__(self, name: str, cost: str, fit, score):
        self.name, self.cost, self._fit, self._score = name, cost, fit, score

    def fit(self, data: dict[str, FeatureSet]) -> None:
        self.state = self._fit(data)

    def score(self, fs: FeatureSet) -> np.ndarray:
        return self._score(self.state, fs)


def _mean_cos(d_key: str, layers: list[int]):
    return lambda st, fs: cosines(fs.t, st[d_key], layers).mean(1)


def _logreg_fit(features, spans: list[list[int]], c: float | tuple[float, ...] = 1.0, with_anchors: bool = False):
    """Choose the layer span (and C) by 5-fold CV AUROC on the training prompts (the contrast train split, plus the
    AdvBench/TruthfulQA anchors with `with_anchors`), then fit on all of them."""

    def fit(data):
        parts = [data["contrast_train"]] + ([data["anchors_harmful"], data["anchors_benign"]] if with_anchors else [])
        y = np.concatenate([p.y for p in parts])
        best = None
        for span in spans:
            x = np.concatenate([features(data, p, span) for p in parts])
            for cc in c if isinstance(c, tuple) else (c,):
                aucs = []
                for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
                    m = LogisticRegression(C=cc, max_iter=3000).fit(x[tr], y[tr])
                    aucs.append(roc_auc_score(y[te], m.decision_function(x[te])))
                if best is None or np.mean(aucs) > best[0]:
                    best = (float(np.mean(aucs)), span, cc)
        _, span, cc = best
        x = np.concatenate([features(data, p, span) for p in parts])
        model = LogisticRegression(C=cc, max_iter=3000).fit(x, y)
        return {"span": span, "C": cc, "model": model, "cv_auroc": best[0], "data": data}

    return fit


def _logreg_score(features):
    return lambda st, fs: st["model"].decision_function(features(st["data"], fs, st["span"]))


def spans(n_layers: int) -> list[list[int]]:
    return [list(range(a, b)) for a in range(4, n_layers, 4) for b in range(a + 4, n_layers + 1, 4)]


def build_variants(n_layers: int) -> list[Variant]:
    classify = classify_layers(n_layers)

    def d_anchor(data):
        return {"d": data["anchors_harmful"].t.mean(0)}

    def d_contrast_harm(data):
        tr = data["contrast_train"]
        return {"d": tr.t[tr.y == 1].mean(0)}

    def d_contrastive(data):
        tr = data["contrast_train"]
        return {"d": tr.t[tr.y == 1].mean(0) - tr.t[tr.y == 0].mean(0)}

    def d_contrastive_all(data):
        tr, ah, ab = data["contrast_train"], data["anchors_harmful"], data["anchors_benign"]
        return {"d": np.concatenate([tr.t[tr.y == 1], ah.t]).mean(0) - np.concatenate([tr.t[tr.y == 0], ab.t]).mean(0)}

    def proj(st, fs):
        d = st["d"][classify]
        return ((fs.t[:, classify] * d).sum(-1) / np.linalg.norm(d, axis=-1)).mean(1)

    def cos_feats(data, fs, span):
        return cosines(fs.t, d_contrastive(data)["d"], span)

    def cos_intent_feats(data, fs, span):
        return np.concatenate([cos_feats(data, fs, span), fs.intent[:, None]], 1)

    def probe_feats(data, fs, span):
        return fs.h[:, span].reshape(len(fs.y), -1)

    def trans_feats(data, fs, span):
        return fs.t[:, span].reshape(len(fs.y), -1)

    one_layer = [[layer] for layer in range(2, n_layers, 2)]

    all_spans = spans(n_layers)
    return [
        Variant(
            "paper's sigma: d_harm from AdvBench anchors, mean cosine, second half of the layers",
            "0",
            d_anchor,
            _mean_cos("d", classify),
        ),
        Variant("a. d_harm from the contrast set's harmful half", "0", d_contrast_harm, _mean_cos("d", classify)),
        Variant("b. contrastive d (harmful - safe twins), mean cosine", "0", d_contrastive, _mean_cos("d", classify)),
        Variant("b'. contrastive d, mean projection", "0", d_contrastive, proj),
        Variant(
            "b''. contrastive d over contrast + anchors, mean cosine", "0", d_contrastive_all, _mean_cos("d", classify)
        ),
        Variant(
            "c. logistic regression on per-layer cosines to contrastive d (span by CV)",
            "0",
            _logreg_fit(cos_feats, all_spans),
            _logreg_score(cos_feats),
        ),
        Variant(
            "e. refusal intent alone (opener log-probs at the last prompt token)",
            "0",
            lambda data: {},
            lambda st, fs: fs.intent,
        ),
        Variant(
            "c+e. per-layer cosines + refusal intent, logistic regression",
            "0",
            _logreg_fit(cos_intent_feats, all_spans),
            _logreg_score(cos_intent_feats),
        ),
        Variant(
            "probe-h. L2 logistic regression on h(last prompt token), one layer (by CV), contrast train",
            "0",
            _logreg_fit(probe_feats, one_layer, c=0.05),
            _logreg_score(probe_feats),
        ),
        Variant(
            "probe-t. L2 logistic regression on the transition t^l, one layer (by CV), contrast train",
            "0",
            _logreg_fit(trans_feats, one_layer, c=0.05),
            _logreg_score(trans_feats),
        ),
        Variant(
            "probe-h + anchors: contrast train + AdvBench/TruthfulQA anchors, layer and C by CV",
            "0",
            _logreg_fit(probe_feats, one_layer, c=CS, with_anchors=True),
            _logreg_score(probe_feats),
        ),
        Variant(
            "probe-t + anchors (shipped): contrast train + anchors, layer and C by CV",
            "0",
            _logreg_fit(trans_feats, one_layer, c=CS, with_anchors=True),
            _logreg_score(trans_feats),
        ),
    ]


def load_all(directory: Path) -> dict[str, FeatureSet]:
    fs = {n: FeatureSet(directory, n) for n in (p.stem for p in directory.glob("*.safetensors"))}
    from scans_guard.data import anchor_split

    harmful_anchors, benign_anchors = anchor_split(64, 0)
    adv, tqa = fs["advbench"], fs["truthfulqa"]
    in_h = np.array([p in set(harmful_anchors) for p in adv.prompts])
    in_b = np.array([p in set(benign_anchors) for p in tqa.prompts])
    repe_h = set(fs["repe_train"].prompts) if "repe_train" in fs else set()
    data = {
        "anchors_harmful": adv.take(in_h),
        "anchors_benign": tqa.take(in_b),
        "contrast_train": fs["contrast"].take(fs["contrast"].split == "train"),
        "contrast_heldout": fs["contrast"].take(fs["contrast"].split == "heldout"),
        "advbench_heldout": adv.take(~in_h & np.array([p not in repe_h for p in adv.prompts])),
        "truthfulqa_heldout": tqa.take(~in_b),
    }
    for name in (
        "xstest",
        "oktest",
        "oktest_heldout",
        "repe_train",
        "repe_test",
        "malicious_instruct",
        "heldout_harmless",
    ):
        if name in fs:
            data[name] = fs[name]
    if "harmfulq" in fs:
        data["harmfulq_tune"] = fs["harmfulq"].take(fs["harmfulq"].split == "tune")
        data["harmfulq_eval"] = fs["harmfulq"].take(fs["harmfulq"].split == "eval")
    return data


def fpr_at_recall(scores: np.ndarray, y: np.ndarray, recall: float) -> float:
    """False-positive rate on the safe prompts at the highest T that flags `recall` of the unsafe ones (the curve)."""
    t = recall_threshold(scores, y, recall)
    return float(flags(scores[y == 0], t).mean())


def t_fit_scores(v: Variant, data: dict[str, FeatureSet]) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of the T-fit prompts: HarmfulQ tuning half vs OKTest held-out, plus the contrast train split
    and the anchors (RepE-train, the old fit's other part, is left out here to save extraction time)."""
    parts = [
        data["harmfulq_tune"],
        data["oktest_heldout"],
        data["contrast_train"],
        data["anchors_harmful"],
        data["anchors_benign"],
    ]
    return np.concatenate([v.score(p) for p in parts]), np.concatenate([p.y for p in parts])


def evaluate(v: Variant, data: dict[str, FeatureSet]) -> dict:
    s_fit, y_fit = t_fit_scores(v, data)
    t_steer = recall_threshold(s_fit, y_fit, 1.0)
    t_guard = recall_threshold(s_fit, y_fit, 0.95)
    x = data["xstest"]
    sx = v.score(x)
    hq = v.score(data["harmfulq_eval"])
    t95 = recall_threshold(hq, np.ones_like(hq, dtype=int), 0.95)
    ok = v.score(data["oktest"])
    ch = data["contrast_heldout"]
    adv, tqa = v.score(data["advbench_heldout"]), v.score(data["truthfulqa_heldout"])
    rt = data.get("repe_test")
    xs_safe, xs_unsafe = sx[x.y == 0], sx[x.y == 1]
    return {
        "variant": v.name,
        "extra_cost": v.cost,
        "xstest_auroc": roc_auc_score(x.y, sx),
        "xstest_f1_at_guard_T": f1_score(x.y, sx >= t_guard),
        "xstest_fpr_at_85pct_recall": fpr_at_recall(sx, x.y, 0.85),
        "xstest_fpr_at_95pct_recall": fpr_at_recall(sx, x.y, 0.95),
        "xstest_safe_flagged_at_guard_T": float((xs_safe >= t_guard).mean()),
        "xstest_unsafe_flagged_at_guard_T": float((xs_unsafe >= t_guard).mean()),
        "xstest_safe_steered_away_at_steer_T": float((xs_safe < t_steer).mean()),
        "xstest_unsafe_steered_away_at_steer_T": float((xs_unsafe < t_steer).mean()),
        "oktest_fpr_at_95pct_harmfulq_recall": float((ok >= t95).mean()),
        "oktest_steered_away_at_steer_T": float((ok < t_steer).mean()),
        "harmfulq_eval_steered_away_at_steer_T": float((hq < t_steer).mean()),
        "advbench_heldout_steered_away_at_steer_T": float((adv < t_steer).mean()),
        "truthfulqa_heldout_steered_away_at_steer_T": float((tqa < t_steer).mean()),
        "contrast_heldout_auroc": roc_auc_score(ch.y, v.score(ch)),
        "advbench_vs_truthfulqa_heldout_auroc": roc_auc_score(
            np.r_[np.ones(len(adv)), np.zeros(len(tqa))], np.r_[adv, tqa]
        ),
        "repe_test_auroc": roc_auc_score(rt.y, v.score(rt)) if rt is not None else float("nan"),
        "t_fit_auroc": roc_auc_score(y_fit, s_fit),
        **({"span": v.state["span"], "C": v.state["C"], "cv_auroc": v.state["cv_auroc"]} if "span" in v.state else {}),
    }


def averaged_over_prefixes(data: dict[str, FeatureSet], others: list[dict[str, FeatureSet]]) -> dict[str, FeatureSet]:
    """Variant d: every set's transitions averaged over several answer prefixes (same prompts, same order)."""
    out = {}
    for name, fs in data.items():
        avg = fs.take(np.ones(len(fs.y), dtype=bool))
        for other in others:
            if other[name].prompts != fs.prompts:
                raise ValueError(f"{name}: the feature runs hold different prompts")
        avg.t = np.mean([fs.t] + [other[name].t for other in others], axis=0)
        out[name] = avg
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--prefix-features",
        nargs="*",
        default=[],
        help="feature runs of other answer prefixes (sigma_features.py --r-pos ...): adds variant d, "
        "the shipped probe recipe on transitions averaged over all prefixes",
    )
    args = parser.parse_args()
    data = load_all(Path(args.features))
    n_layers = data["xstest"].t.shape[1]
    rows = []
    runs = [(v, data) for v in build_variants(n_layers)]
    if args.prefix_features:
        averaged = averaged_over_prefixes(data, [load_all(Path(d)) for d in args.prefix_features])
        shipped = build_variants(n_layers)[-1]
        shipped.name = f"d. shipped probe recipe on t^l averaged over {1 + len(args.prefix_features)} answer prefixes"
        shipped.cost = f"{len(args.prefix_features)} more prefix rows in the sigma pass"
        runs.append((shipped, averaged))
    for v, d in runs:
        v.fit(d)
        rows.append(evaluate(v, d))
        print(json.dumps({k: (round(x, 3) if isinstance(x, float) else x) for k, x in rows[-1].items()}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variants.json").write_text(json.dumps(rows, indent=1) + "\n")
    cols = [
        ("variant", "variant"),
        ("xstest_auroc", "XSTest AUROC"),
        ("xstest_f1_at_guard_T", "XSTest F1 at guard T"),
        ("xstest_fpr_at_85pct_recall", "XSTest FPR at 85% recall"),
        ("oktest_fpr_at_95pct_harmfulq_recall", "OKTest FPR at 95% HarmfulQ recall"),
        ("contrast_heldout_auroc", "contrast held-out AUROC"),
        ("repe_test_auroc", "RepE test AUROC"),
        ("xstest_safe_steered_away_at_steer_T", "XSTest safe steered away"),
        ("xstest_unsafe_steered_away_at_steer_T", "XSTest unsafe steered away"),
        ("harmfulq_eval_steered_away_at_steer_T", "HarmfulQ eval steered away"),
        ("advbench_heldout_steered_away_at_steer_T", "AdvBench held-out steered away"),
        ("oktest_steered_away_at_steer_T", "OKTest steered away"),
        ("extra_cost", "extra cost"),
    ]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols) + " |")
    (out / "variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
