"""benchmarks/refusal_bands.py: SCANS refusals counted by sigma band, from an eval run and from a sweep (no model)."""

from __future__ import annotations

import json
from pathlib import Path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_an_eval_run_by_band(tmp_path, script):
    module = script("refusal_bands")
    # steer T -1, guard T 1: a (steered, still refused), b (grey, refused), c (blocked band, refused), d (answered)
    scores = {"a": -2.0, "b": 0.0, "c": 2.0, "d": -3.0}
    _jsonl(
        tmp_path / "scores.jsonl",
        [{"set": "xstest", "label": "safe", "prompt": p, "score": s} for p, s in scores.items()],
    )
    gens = []
    for p in scores:
        base = {"set": "xstest", "label": "safe", "prompt": p}
        gens.append({**base, "condition": "unsteered", "refused": p != "d"})
        gens.append({**base, "condition": "scans", "refused": p != "d"})
    gens.append({"set": "xstest", "label": "safe", "prompt": "e", "condition": "unsteered", "refused": True})
    _jsonl(tmp_path / "generations.jsonl", gens)
    (row,) = module.table(module.eval_prompts(tmp_path), -1.0, 1.0)
    assert row["set"] == "xstest_safe" and row["n"] == 4  # "e" has no SCANS reply and no score
    assert row["refused_scans_pct"] == 75.0
    assert [row[f"n_{b}"] for b in module.BANDS] == [2, 1, 1]
    assert [row[f"scans_refused_{b}"] for b in module.BANDS] == [1, 1, 1]


def test_a_sweep_takes_the_steered_reply_below_t(tmp_path, script):
    module = script("refusal_bands")
    scores = {"refused-then-answered": -2.0, "answered": -2.5, "refused-not-yet-steered": -3.0, "grey": 0.0}
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    rows = [{"set": "tune_benign", "prompt": p, "coefficient": 0.0, "refused": p != "answered"} for p in scores]
    rows.append({"set": "tune_benign", "prompt": "refused-then-answered", "coefficient": -2.0, "refused": False})
    _jsonl(tmp_path / "generations.jsonl", rows)
    prompts = module.sweep_prompts(tmp_path, -2.0, -1.0)
    assert sorted(p["score"] for p in prompts) == [-2.5, -2.0, 0.0]  # the unsteered-only refused one is left out
    (row,) = module.table(prompts, -1.0, 1.0)
    assert row["refused_unsteered_pct"] == round(100 * 2 / 3, 1) and row["scans_refused_below_steer"] == 0
    assert row["scans_refused_grey"] == 1
