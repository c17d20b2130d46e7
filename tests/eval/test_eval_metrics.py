"""Metrics against values computed by hand."""

import math

import pytest

from scans_guard.eval.metrics import (
    classification_metrics,
    classification_report,
    confusion,
    layer_profile,
    refusal_rates,
    refusal_summary,
    sweep_grid,
    threshold_sweep,
    wilson_interval,
)

# Five prompts: scores and gold labels. With T = 0.5 the prediction is unsafe for 0.9, 0.8, 0.6.
SCORES = [0.9, 0.8, 0.6, 0.3, 0.1]
UNSAFE = [True, False, True, True, False]


def test_confusion_by_hand():
    m = confusion([True, False, True, True, False], [True, True, True, False, False])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_confusion_edge_cases():
    m = confusion([False, False], [False, False])
    assert m["precision"] == 0.0 and m["recall"] is None and m["f1"] is None and m["fpr"] == 0.0
    assert confusion([True], [True])["fpr"] is None


def test_classification_metrics_both_positive_classes():
    m = classification_metrics(SCORES, UNSAFE, threshold=0.5)
    assert (m["n"], m["n_unsafe"], m["n_safe"]) == (5, 3, 2)
    u = m["positive=unsafe"]
    assert (u["tp"], u["fp"], u["tn"], u["fn"]) == (2, 1, 1, 1)
    # AUROC: of the 3 x 2 (unsafe, safe) pairs, the unsafe score is higher in 0.9>0.8, 0.9>0.1, 0.6>0.1, 0.3>0.1:
    assert u["auroc"] == pytest.approx(4 / 6)
    # Average precision (unsafe positive), ranking 0.9(+) 0.8(-) 0.6(+) 0.3(+) 0.1(-):
    # precision at each positive: 1/1, 2/3, 3/4; AP = (1 + 2/3 + 3/4) / 3.
    assert u["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    s = m["positive=safe"]
    # Safe positive: predicted safe = score < 0.5 -> 0.3 (unsafe), 0.1 (safe).
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (1, 1, 2, 1)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["fpr"] == pytest.approx(1 / 3)
    assert s["auroc"] == pytest.approx(4 / 6)
    # Safe positive ranks by -score: 0.1(+) 0.3(-) 0.6(-) 0.8(+) 0.9(-): AP = (1/1 + 2/4) / 2.
    assert s["auprc"] == pytest.approx((1 + 2 / 4) / 2)


def test_single_class_has_no_auroc():
    m = classification_metrics([0.2, 0.9], [True, True], 0.5)
    assert m["positive=unsafe"]["auroc"] is None and m["positive=unsafe"]["recall"] == 0.5


def test_wilson_interval():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 0) == (None, None)
    lo, hi = wilson_interval(0, 4)
    assert lo == 0.0 and 0 < hi < 0.6


def _gen(cond, name, label, refused):
    return {"condition": cond, "set": name, "label": label, "prompt": f"p{refused}", "refused": refused}


def test_refusal_rates_and_summary():
    rows = (
        [_gen("scans", "xstest", "safe", r) for r in (True, False, False, False)]
        + [_gen("scans", "xstest", "unsafe", r) for r in (True, True)]
        + [_gen("scans", "oktest", "safe", r) for r in (True, True)]
    )
    rates = refusal_rates(rows)
    by = {(r["set"], r["label"]): r for r in rates}
    assert by[("xstest", "safe")]["rate"] == 0.25 and by[("xstest", "safe")]["n"] == 4
    assert by[("xstest", "unsafe")]["rate"] == 1.0
    summary = refusal_summary(rates)["scans"]
    assert summary["safe_mean_rate"] == pytest.approx((0.25 + 1.0) / 2)  # each set weighted equally
    assert summary["safe_pooled_rate"] == pytest.approx(3 / 6)
    assert summary["unsafe_mean_rate"] == 1.0 and summary["unsafe_n"] == 2


def test_threshold_sweep_by_hand():
    rows = threshold_sweep(SCORES, UNSAFE, [0.0, 0.5, 1.0])
    low, mid, high = rows
    assert low["recall_unsafe"] == 1.0 and low["fpr"] == 1.0 and low["flagged_unsafe"] == 1.0
    assert mid["f1_unsafe"] == pytest.approx(2 / 3) and mid["fnr"] == pytest.approx(1 / 3)
    assert high["recall_unsafe"] == 0.0 and high["fpr"] == 0.0 and high["precision_unsafe"] == 0.0
    grid = sweep_grid(SCORES, 0.55, n=5)
    assert 0.55 in grid and grid == sorted(grid) and len(grid) == 6


def _score_row(name, label, score, sims):
    return {
        "set": name,
        "label": label,
        "prompt": f"{name}{score}",
        "score": score,
        "layer_similarities": {"3": sims[0], "4": sims[1]},
    }


def test_classification_report_suites_and_best_threshold():
    rows = [_score_row("xstest", "unsafe" if u else "safe", s, (s, 1 - s)) for s, u in zip(SCORES, UNSAFE)]
    report = {e["suite"]: e for e in classification_report(rows, threshold=0.5)}
    assert set(report) == {"xstest", "all"}
    e = report["xstest"]
    assert e["at_artifact_T"]["positive=unsafe"]["f1"] == pytest.approx(2 / 3)
    # The F1-best T flags the top four (0.9, 0.8, 0.6, 0.3): tp 3, fp 1 -> F1 6/7, midway between 0.3 and 0.1.
    assert e["best_T"] == pytest.approx(0.2)
    assert e["at_best_T"]["positive=unsafe"]["f1"] == pytest.approx(6 / 7)


def test_layer_profile_by_hand():
    rows = [_score_row("xstest", "unsafe" if u else "safe", s, (s, 1 - s)) for s, u in zip(SCORES, UNSAFE)]
    prof = {r["layer"]: r for r in layer_profile(rows)}
    assert prof[3]["mean_unsafe"] == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    assert prof[3]["mean_safe"] == pytest.approx((0.8 + 0.1) / 2)
    assert prof[3]["std_safe"] == pytest.approx(0.35)
    assert prof[3]["auroc"] == pytest.approx(4 / 6)
    assert prof[4]["auroc"] == pytest.approx(2 / 6)  # 1 - s reverses the ranking
    assert not math.isnan(prof[4]["mean_unsafe"])


def _wilson_by_hand(k, n, z=1.96):
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 4), (4, 4), (3, 7), (5, 10), (100, 1000), (999, 1000)])
def test_wilson_interval_matches_the_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)


def test_confusion_of_nothing():
    m = confusion([], [])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 0, 0) and m["accuracy"] is None
