"""The safe-steering sweep of the tiny model and the scripts that read a sweep: its analyses (also on a redacted
copy), steer_span.py, retry_end_to_end.py and verify_after_steering.py.

Every benchmark script still runs against the library (a library refactor once broke one unnoticed): each script's
main path runs here, with tiny sizes in tmp dirs. The sweep needs the unshipped data directory and skips without it
(`$SCANS_GUARD_DATA`, ../shared/data). The tiny model's replies are gibberish: these tests check structure and
bookkeeping, not measurements. The committed summaries: test_benchmark_summaries.py; the other scripts that run a
model: test_benchmark_models.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import LIMIT, REPO, load_module, read_jsonl, run_main


def _generate_sweep(script, tiny_args: list[str], data_dir: Path, out: Path) -> None:
    """safe_steering_sweep.py generate: LIMIT prompts of every set, 2-token replies, the NLL of one prompt per set."""
    run_main(
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


@pytest.fixture(scope="module")
def sweep(script, tiny_args, data_dir, tmp_path_factory) -> Path:
    """A safe-steering sweep of the tiny model: LIMIT prompts of every set, replies at 0, -1, +1 and -2."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    _generate_sweep(script, tiny_args, data_dir, out)
    return out


# -- safe_steering_sweep.py, steer_threshold.py, scripts/redact_results.py ------------------------------------------


def test_sweep_generates_each_needed_reply_once_and_resumes(script, sweep, tiny_args, data_dir):
    sets = json.loads((sweep / "sets.json").read_text())
    scores = json.loads((sweep / "scores.json").read_text())
    rows = read_jsonl(sweep / "generations.jsonl")
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
    _generate_sweep(script, tiny_args, data_dir, sweep)
    assert len(read_jsonl(sweep / "generations.jsonl")) == len(rows)  # resumed: nothing generated twice


def test_analyses_of_a_sweep_match_on_its_redacted_copy(script, sweep, data_dir, tmp_path, capsys):
    """README: the analyses give the same numbers on a copy redacted by scripts/redact_results.py."""
    redact = load_module(REPO / "scripts" / "redact_results.py")
    assert redact.main([str(sweep), "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    redacted = tmp_path / sweep.name
    assert any(p.startswith("sha256:") for p in json.loads((redacted / "scores.json").read_text()))
    sweep_script, threshold = script("safe_steering_sweep"), script("steer_threshold")
    summaries = []
    for run in (sweep, redacted):
        run_main(
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
        run_main(threshold, "--contrast-run", run, "--eval-run", run, "--report", run / "threshold")
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


def test_steer_span_artifacts_nll_and_analyze(script, sweep, tiny_on_disk, tiny_args, tmp_path, capsys):
    from scans_guard.calibration.artifacts import Artifact

    span = script("steer_span")
    run_main(
        span, "artifacts", "--artifact", tiny_on_disk / "artifact", "--spans", "0-1", "2-3", "--out-root", tmp_path
    )
    assert Artifact.load(tmp_path / "artifact-0-1").recipe.steer_layers == [0, 1]
    run = Path(shutil.copytree(sweep, tmp_path / "span-0-1"))
    run_main(span, "nll", *tiny_args, "--runs", run)
    rows = read_jsonl(run / "generations.jsonl")
    assert all(r["nll_tokens"] > 0 for r in rows if r["coefficient"] < 0 and r["response"])
    capsys.readouterr()
    run_main(span, "analyze", "--steer-t", 0, "--runs", f"a={run}", f"b={sweep}", "--report", tmp_path / "report")
    table = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [(r["span"], r["coefficient"]) for r in table] == [("a", -1.0), ("a", -2.0), ("b", -1.0), ("b", -2.0)]
    assert all(v["n"] == LIMIT and v["missing"] == 0 for r in table for v in r["sets"].values())
    assert capsys.readouterr().out.startswith("| span | coefficient | advbench_heldout |")


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
    run_main(retry, *args)
    n = len(read_jsonl(tmp_path / "rows.jsonl"))
    assert n == len(retry.SETS) * LIMIT
    run_main(retry, *args)
    assert len(read_jsonl(tmp_path / "rows.jsonl")) == n
    run_main(retry, "report", "--out", tmp_path, "--sweep", sweep, "--report", tmp_path / "report")
    table = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert list(table) == retry.SETS and all(
        row["n"] == LIMIT and row["missing_unsteered"] == 0 for row in table.values()
    )
    compared = sum(row["compared"] for row in table.values())
    assert compared == sum(row["steered"] for row in table.values()) > 0
    assert sum(row["agree"] for row in table.values()) == compared


def test_verify_after_steering_features_and_analyze(script, sweep, tiny_args, tmp_path, monkeypatch, capsys):
    verify = script("verify_after_steering")
    monkeypatch.setattr(verify, "LAYERS", [1, 2])  # the default model's blocks 12-22; the tiny model has 4
    args = ["--runs", str(sweep), "--out", str(tmp_path)]
    run_main(verify, "features", *args, *tiny_args)
    keys = json.loads((tmp_path / "index.json").read_text())
    assert np.load(tmp_path / "states.npy").shape == (len(keys), len(verify.KS), 2, 64)
    assert len(keys) == sum(r["coefficient"] == -1.0 for r in read_jsonl(sweep / "generations.jsonl"))
    run_main(verify, "features", *args, *tiny_args)
    assert "already done" in capsys.readouterr().out
    run_main(verify, "analyze", *args, "--report", tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["verifier"]["layer"] in (1, 2) and summary["verifier"]["k"] in verify.KS
    assert len(summary["recipes"]) == 6
    assert all(res.keys() == set(verify.EVAL_SETS) for res in summary["recipes"].values())


def test_retry_rows_take_the_second_reply_only_where_the_first_refused(script):
    span = script("steer_span")
    row = lambda refused: {"refused": refused}  # noqa: E731
    by_key = {("s", "a", -2.0): row(True), ("s", "a", -4.0): row(False), ("s", "b", -2.0): row(False)}
    by_key[("s", "b", -4.0)] = row(True)
    composed = span.with_retry(by_key)
    assert composed[("s", "a", span.RETRY)] is by_key[("s", "a", -4.0)]  # refused at -2: the retry's reply
    assert composed[("s", "b", span.RETRY)] is by_key[("s", "b", -2.0)]  # answered at -2: kept, never retried
    assert span.with_retry({("s", "a", -2.0): row(True)}) == {("s", "a", -2.0): row(True)}  # no -4 run: no retry
