"""The benchmark scripts that run a model, on the tiny one (tiny sizes, tmp dirs): output_check.py,
guard_robustness.py, sigma_auroc.py, request_form.py, the sigma feature scripts, eval_vs_sweep.py and
structured_output.py.

What needs the unshipped data directory skips without it (`$SCANS_GUARD_DATA`, ../shared/data). The tiny model's
replies are gibberish: these tests check structure and bookkeeping, not measurements.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import read_jsonl, run_main

from scans_guard.data import contrast_pairs, contrast_set


def test_output_check_generates_with_a_given_model(script, tiny_args, tmp_path):
    out = tmp_path / "oc.json"
    got = script("output_check").main(
        ["--set", "xstest", "--limit", "2", "--max-new-tokens", "2", *tiny_args, "--out", str(out)]
    )
    assert {lab: row["n"] for lab, row in got["by_label"].items()} == {"harmful": 2, "benign": 2}
    assert json.loads(out.read_text()) == got


def test_guard_robustness_runs_resumes_and_reports(script, tiny_args, data_dir, tmp_path, capsys):
    guard = script("guard_robustness")
    args = ["run", "--data-dir", data_dir, "--out", tmp_path, *tiny_args, "--every", 100]
    run_main(guard, *args)
    rows = read_jsonl(tmp_path / "rows.jsonl")
    conditions = guard.FRAMING_NAMES + [f"lang:{lang}" for lang in guard.LANGUAGES]
    assert {r["condition"] for r in rows} == set(conditions)
    assert all(int(r["id"][1:]) % 100 == 0 for r in rows)
    assert all("scans_refused" in r for r in rows if r["kind"] == "harmful" and r["coefficient"] != 0)
    run_main(guard, *args)
    assert len(read_jsonl(tmp_path / "rows.jsonl")) == len(rows)
    assert "0 rows to do" in capsys.readouterr().err
    run_main(guard, "report", "--out", tmp_path, "--every", 100)
    table = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(r["condition"] for r in table) == sorted(conditions)
    assert sum(r["n_harmful"] + r["n_benign"] for r in table) == len(rows)


def test_request_form_scores_every_prompt_by_form(script, tiny_args, tmp_path):
    module = script("request_form")
    run_main(module, *tiny_args, "--report", tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["scores"]) == {p for ps in module.PROMPTS.values() for p in ps}
    for form, prompts in module.PROMPTS.items():
        scores = [summary["scores"][p] for p in prompts]
        assert summary[form]["n"] == len(prompts)
        assert summary[form]["mean_score"] == pytest.approx(sum(scores) / len(scores), abs=1e-3)
        for name, t in summary["thresholds"].items():
            assert summary[form][f"flagged_at_{name}"] == pytest.approx(
                sum(s >= t for s in scores) / len(scores), abs=1e-3
            )


def test_sigma_auroc_scores_every_set_once(script, tiny_args, data_dir, tmp_path):
    auroc = script("sigma_auroc")
    args = [
        *tiny_args,
        "--data-dir",
        data_dir,
        "--out",
        tmp_path / "scores",
        "--report",
        tmp_path / "report",
        "--batch-size",
        64,
    ]
    run_main(auroc, *args)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    n_contrast = len(contrast_set("heldout"))
    n_requests = len(contrast_set("heldout", "contrast_requests.csv"))
    assert summary["n"] == {
        "xstest": 450,
        "contrast_heldout": n_contrast,
        "contrast_requests_heldout": n_requests,
        "oktest": 150,
        "harmfulq_eval": 100,
    }
    assert n_contrast > 100 and 0 <= summary["contrast_heldout_auroc"] <= 1
    assert n_requests == 24 and 0 <= summary["contrast_requests_heldout_auroc"] <= 1
    assert 0 <= summary["xstest_auroc"] <= 1 and set(summary["operating_points"]) == {"steer", "guard"}
    n = len(read_jsonl(tmp_path / "scores" / "scores.jsonl"))
    run_main(auroc, *args)
    assert len(read_jsonl(tmp_path / "scores" / "scores.jsonl")) == n  # resumed: nothing scored twice


@pytest.fixture(scope="module")
def eight_blocks(tmp_path_factory) -> Path:
    """sigma_variants.py's layer spans start at block 4: a tiny model with 8 blocks, on disk."""
    from scans_guard.testing import tiny_model

    handle = tiny_model("qwen2", seed=1, n_layers=8, hidden=32)
    path = tmp_path_factory.mktemp("eight-blocks")
    handle.model.save_pretrained(path)
    handle.tokenizer.save_pretrained(path)
    return path


def test_sigma_features_variants_and_learning_curve(script, eight_blocks, data_dir, tmp_path, monkeypatch):
    features, variants, curve = script("sigma_features"), script("sigma_variants"), script("sigma_learning_curve")
    pair = contrast_pairs()
    full_sets = features.sets

    def few(data_dir: str, seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
        """Every 4th contrast pair, and 8 prompts of each (label, split) of the other sets: ~250 prompts."""
        out = {}
        for name, rows in full_sets(data_dir, seed).items():
            if name == "contrast":
                out[name] = [r for r in rows if pair[r[0]] % 4 == 0]
            else:
                kept: dict[tuple[str, str], int] = {}
                out[name] = []
                for r in rows:
                    kept[r[1:]] = kept.get(r[1:], 0) + 1
                    if kept[r[1:]] <= 8:
                        out[name].append(r)
        return out

    monkeypatch.setattr(features, "sets", few)
    feats = tmp_path / "features"
    run_main(features, "--data-dir", data_dir, "--out", feats, "--model", eight_blocks, "--batch-size", 64)
    names = {
        "contrast",
        "advbench",
        "truthfulqa",
        "xstest",
        "oktest",
        "oktest_heldout",
        "harmfulq",
        "repe_train",
        "repe_test",
    }
    assert {p.stem for p in feats.glob("*.safetensors")} == names and not list(feats.glob("*.tmp"))
    stamps = {p: p.stat().st_mtime_ns for p in feats.iterdir()}
    run_main(features, "--data-dir", data_dir, "--out", feats, "--model", eight_blocks)
    assert {p: p.stat().st_mtime_ns for p in feats.iterdir()} == stamps  # every set done: nothing redone
    run_main(variants, "--features", feats, "--out", tmp_path / "variants")
    rows = json.loads((tmp_path / "variants" / "variants.json").read_text())
    assert len(rows) == len(variants.build_variants(8)) == 12
    assert all(0 <= r["xstest_auroc"] <= 1 and 0 <= r["contrast_heldout_auroc"] <= 1 for r in rows)
    assert (tmp_path / "variants" / "variants.md").read_text().startswith("| variant | XSTest AUROC |")
    run_main(curve, "--features", feats, "--out", tmp_path / "curve")
    points = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert [p["fraction"] for p in points] == [f for f in curve.FRACTIONS for _ in range(5 if f < 1 else 1)]
    assert len((tmp_path / "curve" / "summary.md").read_text().splitlines()) == 2 + len(curve.FRACTIONS)


def test_eval_vs_sweep_reads_an_eval_run(script, tiny_engine, tmp_path, capsys):
    """`scans-guard eval`'s rows, set against a sweep of the same prompts (cut to one character), by the script."""
    from scans_guard.eval.pipeline import EvalConfig, run_eval

    evs = script("eval_vs_sweep")
    run_eval(
        tiny_engine,
        EvalConfig(
            out_dir=str(tmp_path / "eval"),
            sets=["xstest"],
            conditions=["unsteered", "scans"],
            limit=4,
            max_new_tokens=2,
            capability=False,
            plots=False,
            progress=False,
        ),
    )
    eval_rows = read_jsonl(tmp_path / "eval" / "generations.jsonl")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "generations.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "set": evs.SWEEP_SET[(r["set"], r["label"])],
                    "prompt": r["prompt"],
                    "coefficient": r["coefficient"],
                    "response": r["response"][:1],
                    "refused": False,
                }
            )
            + "\n"
            for r in eval_rows
        )
    )
    run_main(evs, "--eval", tmp_path / "eval", "--sweep", sweep, "--report", tmp_path / "report")
    counts = json.loads((tmp_path / "report" / "counts.json").read_text())
    assert {(s, c): v["n"] for s, conds in counts.items() for c, v in conds.items()} == {
        ("xstest_safe", "unsteered"): 2,
        ("xstest_unsafe", "unsteered"): 2,
        ("xstest_safe", "scans"): 2,
        ("xstest_unsafe", "scans"): 2,
    }
    assert all(v["same_opening"] == v["n"] for conds in counts.values() for v in conds.values())
    assert "| xstest_safe | unsteered | 2 |" in (tmp_path / "report" / "summary.md").read_text()


def test_structured_output_measures_speed_and_validity(script, tiny_long_engine):
    pytest.importorskip("llguidance")
    module = script("structured_output")
    table = module.measure(tiny_long_engine, n_prompts=3, max_new_tokens=24, batch_size=2, speed_prompts=1, repeats=1)
    speed = table["speed"]
    # 24 tokens: the prefill gives the first, 23 decoding steps the rest; the first step's timing (it also holds
    # the prefill) is dropped
    assert speed["plain"]["steps"] == 22 and speed["constrained"]["steps"] >= 1
    assert set(table["validity"]) == {
        f"{m}/{c}" for m in ("tool_choice_required", "json_schema") for c in ("constrained", "free")
    }
    assert all(v["n"] == 3 and 0 <= v["valid"] <= 3 for v in table["validity"].values())
    assert module.lines(table)[-1].startswith("| json_schema/free | 3 |")
    assert len(set(module.prompts(50))) == 50
