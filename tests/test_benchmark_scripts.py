"""Every benchmark script still runs against the library: its commands on the tiny model (tiny sizes, tmp dirs), and
its analyses on the per-prompt runs behind the committed summaries, which they must reproduce number for number.

A library refactor once broke guard_robustness.py unnoticed (a changed signature no test called); each script's main
path runs here. What needs the unshipped data directory skips without it (`$SCANS_GUARD_DATA`, ../shared/data); the
per-prompt runs are not committed either and are read from `$SCANS_GUARD_RUNS` (default ../shared/results; how to
make them: benchmarks/results/README.md), skipping without them.
The analyses of the tiny model's replies check structure and bookkeeping (its gibberish measures nothing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from scans_guard.data import contrast_pairs

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
RUNS = Path(os.environ.get("SCANS_GUARD_RUNS", REPO.parent / "shared" / "results"))
LIMIT = 5  # prompts per sweep set: StratifiedKFold(5) in verify_after_steering.py needs 5 per tuning set


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script(one_torch_thread) -> Iterator[Callable[[str], ModuleType]]:
    """Loads benchmarks/NAME.py; the scripts import their siblings (`from safe_steering_sweep import ...`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))
        yield lambda name: _load(BENCH / f"{name}.py")


def _main(module: ModuleType, *argv: str | Path) -> object:
    """The script's command line, in process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, argv)])
        return module.main()


@pytest.fixture(scope="module")
def data_dir(shared_data) -> Path:
    """The scripts' sets need the benchmark data (conftest's `shared_data` skips without it)."""
    return shared_data


@pytest.fixture(scope="module")
def tiny_args(tiny_on_disk) -> list[str]:
    return ["--model", str(tiny_on_disk / "model"), "--artifact", str(tiny_on_disk / "artifact")]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep(script, tiny_args, data_dir, tmp_path_factory) -> Path:
    """A safe-steering sweep of the tiny model: LIMIT prompts of every set, replies at 0, -1, +1 and -2."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    _main(
        script("safe_steering_sweep"),
        "generate",
        *tiny_args,
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--limit",
        LIMIT,
        "--max-new-tokens",
        2,
        "--nll-limit",
        1,
    )
    return out


# -- safe_steering_sweep.py, steer_threshold.py, scripts/redact_results.py ------------------------------------------


def test_sweep_generates_each_needed_reply_once_and_resumes(script, sweep, tiny_args, data_dir):
    sets = json.loads((sweep / "sets.json").read_text())
    scores = json.loads((sweep / "scores.json").read_text())
    rows = _lines(sweep / "generations.jsonl")
    assert len(sets) == 12 and all(len(p) == LIMIT for p in sets.values())
    assert scores.keys() == {p for ps in sets.values() for p in ps}
    # defaults: -1 and -2 below --max-t 0.93, +1 at or above --min-t 0.90, 0 always
    wanted = {
        (s, p, c)
        for s, ps in sets.items()
        for p in ps
        for c in (0.0, -1.0, 1.0, -2.0)
        if c == 0 or (c < 0 and scores[p] < 0.93) or (c > 0 and scores[p] >= 0.90)
    }
    assert sorted((r["set"], r["prompt"], r["coefficient"]) for r in rows) == sorted(wanted)
    assert all(r["nll_tokens"] > 0 for r in rows if r["prompt"] == sets[r["set"]][0] and r["response"])
    _main(
        script("safe_steering_sweep"),
        "generate",
        *tiny_args,
        "--data-dir",
        data_dir,
        "--out",
        sweep,
        "--limit",
        LIMIT,
        "--max-new-tokens",
        2,
        "--nll-limit",
        1,
    )
    assert len(_lines(sweep / "generations.jsonl")) == len(rows)  # resumed: nothing generated twice


def test_analyses_of_a_sweep_match_on_its_redacted_copy(script, sweep, data_dir, tmp_path, capsys):
    """README: the analyses give the same numbers on a copy redacted by scripts/redact_results.py."""
    redact = _load(REPO / "scripts" / "redact_results.py")
    assert redact.main([str(sweep), "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    redacted = tmp_path / sweep.name
    assert any(p.startswith("sha256:") for p in json.loads((redacted / "scores.json").read_text()))
    sweep_script, threshold = script("safe_steering_sweep"), script("steer_threshold")
    summaries = []
    for run in (sweep, redacted):
        _main(
            sweep_script,
            "analyze",
            "--out",
            run,
            "--threshold",
            0.0,
            "--t-from",
            -0.01,
            "--t-to",
            0.0,
            "--plot",
            run / "tradeoff.png",
        )
        assert (run / "tradeoff.png").stat().st_size > 0
        _main(threshold, "--contrast-run", run, "--eval-run", run, "--report", run / "threshold")
        summaries.append(
            (
                json.loads((run / "analysis.json").read_text()),
                json.loads((run / "threshold" / "summary.json").read_text()),
            )
        )
    assert summaries[0] == summaries[1]
    analysis, chosen = summaries[0]
    assert analysis["n"] == dict.fromkeys(json.loads((sweep / "sets.json").read_text()), LIMIT)
    assert set(chosen["chosen_T"]) == {"-1", "retry -2.0 if refused"}
    assert "| recipe | xstest_safe (n=5) |" in capsys.readouterr().out


# -- the committed summaries: the analyses reproduce them from their runs without a model -----------------------------


def _run(name: str) -> Path:
    """A per-prompt run behind a committed summary; skips where it has not been made or restored here."""
    if not (RUNS / name).is_dir():
        pytest.skip(
            f"per-prompt run {name!r} not found in {RUNS} (set SCANS_GUARD_RUNS): the repository keeps summaries "
            f"only; benchmarks/results/README.md says how to regenerate or restore it"
        )
    return RUNS / name


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(_run(name), tmp_path / name))


def test_sweep_analyze_reproduces_the_committed_probe_sweep(script, tmp_path):
    run = _copy("sweep-probe", tmp_path)  # docs/results.md's command
    _main(
        script("safe_steering_sweep"),
        "analyze",
        "--out",
        run,
        "--threshold",
        -2.2494,
        "--t-from",
        -3.5,
        "--t-to",
        -2.2494,
        "--reference-threshold",
        0,
    )
    assert (run / "analysis.json").read_text() == (RESULTS / "sweep-probe" / "analysis.json").read_text()


def test_steer_threshold_reproduces_the_committed_table(script, tmp_path):
    _main(
        script("steer_threshold"),
        "--contrast-run",
        _run("sweep-contrast-heldout"),
        "--eval-run",
        _run("sweep-wide"),
        "--report",
        tmp_path,
    )
    for name in ("summary.json", "summary.md"):
        assert (tmp_path / name).read_text() == (RESULTS / "steer-threshold" / name).read_text(), name


def test_output_check_from_the_committed_sweep(script, tmp_path):
    """The shipped artifact's operating points on the committed sweep's replies (no model loads)."""
    got = script("output_check").main(["--from-sweep", str(_run("sweep-wide")), "--out", str(tmp_path / "o.json")])
    committed = json.loads((RESULTS / "output-check" / "summary.json").read_text())
    assert {k: got[k] for k in ("steer_T", "guard_T", "by_set")} == {
        k: committed[k] for k in ("steer_T", "guard_T", "by_set")
    }
    assert json.loads((tmp_path / "o.json").read_text()) == got


def test_guard_robustness_report_reproduces_the_committed_summary(script, tmp_path):
    run = _copy("guard-robustness", tmp_path)
    _main(script("guard_robustness"), "report", "--out", run)
    for name in ("summary.json", "summary.md"):
        assert (run / name).read_text() == (RESULTS / "guard-robustness" / name).read_text(), name


def test_domain_language_reproduces_the_committed_table(script, data_dir, tmp_path):
    _main(script("domain_language"), "--data-dir", data_dir, "--report", tmp_path)
    for name in ("summary.json", "summary.md"):
        assert (tmp_path / name).read_text() == (RESULTS / "domain-language" / name).read_text(), name


# -- the scripts that run the model, on the tiny one ------------------------------------------------------------------


def test_steer_span_artifacts_nll_and_analyze(script, sweep, tiny_on_disk, tiny_args, tmp_path, capsys):
    from scans_guard.artifacts import Artifact

    span = script("steer_span")
    _main(span, "artifacts", "--artifact", tiny_on_disk / "artifact", "--spans", "0-1", "2-3", "--out-root", tmp_path)
    assert Artifact.load(tmp_path / "artifact-0-1").recipe.steer_layers == [0, 1]
    run = Path(shutil.copytree(sweep, tmp_path / "span-0-1"))
    _main(span, "nll", *tiny_args, "--runs", run)
    rows = _lines(run / "generations.jsonl")
    assert all(r["nll_tokens"] > 0 for r in rows if r["coefficient"] < 0 and r["response"])
    capsys.readouterr()
    _main(span, "analyze", "--steer-t", 0, "--runs", f"a={run}", f"b={sweep}", "--report", tmp_path / "report")
    table = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [(r["span"], r["coefficient"]) for r in table] == [("a", -1.0), ("a", -2.0), ("b", -1.0), ("b", -2.0)]
    assert all(v["n"] == LIMIT and v["missing"] == 0 for r in table for v in r["sets"].values())
    assert capsys.readouterr().out.startswith("| span | coefficient | advbench_heldout |")


def test_output_check_generates_with_a_given_model(script, tiny_args, tmp_path):
    out = tmp_path / "oc.json"
    got = script("output_check").main(
        ["--set", "xstest", "--limit", "2", "--max-new-tokens", "2", *tiny_args, "--out", str(out)]
    )
    assert {lab: row["n"] for lab, row in got["by_label"].items()} == {"harmful": 2, "benign": 2}
    assert json.loads(out.read_text()) == got


def test_retry_end_to_end_matches_the_sweep_and_resumes(script, sweep, tiny_args, data_dir, tmp_path):
    """The engine's steered reply (and retry) equals the sweep's reply at that coefficient, as its report claims."""
    retry = script("retry_end_to_end")
    args = [
        "run",
        *tiny_args,
        "--data-dir",
        data_dir,
        "--out",
        tmp_path,
        "--limit",
        LIMIT,
        "--xstest-limit",
        LIMIT,
        "--max-new-tokens",
        2,
    ]
    _main(retry, *args)
    n = len(_lines(tmp_path / "rows.jsonl"))
    assert n == len(retry.SETS) * LIMIT
    _main(retry, *args)
    assert len(_lines(tmp_path / "rows.jsonl")) == n
    _main(retry, "report", "--out", tmp_path, "--sweep", sweep, "--report", tmp_path / "report")
    table = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert list(table) == retry.SETS and all(
        row["n"] == LIMIT and row["missing_unsteered"] == 0 for row in table.values()
    )
    compared = sum(row["compared"] for row in table.values())
    assert compared == sum(row["steered"] for row in table.values()) > 0
    assert sum(row["agree"] for row in table.values()) == compared


def test_guard_robustness_runs_resumes_and_reports(script, tiny_args, data_dir, tmp_path, capsys):
    guard = script("guard_robustness")
    args = ["run", "--data-dir", data_dir, "--out", tmp_path, *tiny_args, "--every", 100]
    _main(guard, *args)
    rows = _lines(tmp_path / "rows.jsonl")
    conditions = guard.FRAMING_NAMES + [f"lang:{lang}" for lang in guard.LANGUAGES]
    assert {r["condition"] for r in rows} == set(conditions)
    assert all(int(r["id"][1:]) % 100 == 0 for r in rows)
    assert all("scans_refused" in r for r in rows if r["kind"] == "harmful" and r["coefficient"] != 0)
    _main(guard, *args)
    assert len(_lines(tmp_path / "rows.jsonl")) == len(rows)
    assert "0 rows to do" in capsys.readouterr().err
    _main(guard, "report", "--out", tmp_path, "--every", 100)
    table = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(r["condition"] for r in table) == sorted(conditions)
    assert sum(r["n_harmful"] + r["n_benign"] for r in table) == len(rows)


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
    _main(auroc, *args)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["n"] == {"xstest": 450, "oktest": 150, "harmfulq_eval": 100}
    assert 0 <= summary["xstest_auroc"] <= 1 and set(summary["operating_points"]) == {"steer", "guard"}
    n = len(_lines(tmp_path / "scores" / "scores.jsonl"))
    _main(auroc, *args)
    assert len(_lines(tmp_path / "scores" / "scores.jsonl")) == n  # resumed: nothing scored twice


def test_verify_after_steering_features_and_analyze(script, sweep, tiny_args, tmp_path, monkeypatch, capsys):
    verify = script("verify_after_steering")
    monkeypatch.setattr(verify, "LAYERS", [1, 2])  # the default model's blocks 12-22; the tiny model has 4
    args = ["--runs", str(sweep), "--out", str(tmp_path)]
    _main(verify, "features", *args, *tiny_args)
    keys = json.loads((tmp_path / "index.json").read_text())
    assert np.load(tmp_path / "states.npy").shape == (len(keys), len(verify.KS), 2, 64)
    assert len(keys) == sum(r["coefficient"] == -1.0 for r in _lines(sweep / "generations.jsonl"))
    _main(verify, "features", *args, *tiny_args)
    assert "already done" in capsys.readouterr().out
    _main(verify, "analyze", *args, "--report", tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["verifier"]["layer"] in (1, 2) and summary["verifier"]["k"] in verify.KS
    assert len(summary["recipes"]) == 6
    assert all(res.keys() == set(verify.EVAL_SETS) for res in summary["recipes"].values())


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
    _main(features, "--data-dir", data_dir, "--out", feats, "--model", eight_blocks, "--batch-size", 64)
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
    _main(features, "--data-dir", data_dir, "--out", feats, "--model", eight_blocks)
    assert {p: p.stat().st_mtime_ns for p in feats.iterdir()} == stamps  # every set done: nothing redone
    _main(variants, "--features", feats, "--out", tmp_path / "variants")
    rows = json.loads((tmp_path / "variants" / "variants.json").read_text())
    assert len(rows) == len(variants.build_variants(8)) == 12
    assert all(0 <= r["xstest_auroc"] <= 1 and 0 <= r["contrast_heldout_auroc"] <= 1 for r in rows)
    assert (tmp_path / "variants" / "variants.md").read_text().startswith("| variant | XSTest AUROC |")
    _main(curve, "--features", feats, "--out", tmp_path / "curve")
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
    eval_rows = _lines(tmp_path / "eval" / "generations.jsonl")
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
    _main(evs, "--eval", tmp_path / "eval", "--sweep", sweep, "--report", tmp_path / "report")
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
    assert speed["plain"]["steps"] == 23 and speed["constrained"]["steps"] >= 1  # the first step holds the prefill
    assert set(table["validity"]) == {
        f"{m}/{c}" for m in ("tool_choice_required", "json_schema") for c in ("constrained", "free")
    }
    assert all(v["n"] == 3 and 0 <= v["valid"] <= 3 for v in table["validity"].values())
    assert module.lines(table)[-1].startswith("| json_schema/free | 3 |")
    assert len(set(module.prompts(50))) == 50
