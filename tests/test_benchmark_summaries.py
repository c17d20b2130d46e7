"""The committed summaries: each analysis reproduces its summary, number for number, from the per-prompt run behind
it, without a model. The runs are not committed (`$SCANS_GUARD_RUNS`, benchmarks/results/README.md); a test skips
without its run, and domain_language.py without the data directory.
"""

from __future__ import annotations

import json

from benchmark_scripts import RESULTS, copy_run, per_prompt_run, run_main


def test_sweep_analyze_reproduces_the_committed_probe_sweep(script, tmp_path):
    run = copy_run("sweep-probe", tmp_path)  # docs/results.md's command
    run_main(
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
    run_main(
        script("steer_threshold"),
        "--contrast-run",
        per_prompt_run("sweep-contrast-heldout"),
        "--eval-run",
        per_prompt_run("sweep-wide"),
        "--report",
        tmp_path,
    )
    for name in ("summary.json", "summary.md"):
        assert (tmp_path / name).read_text() == (RESULTS / "steer-threshold" / name).read_text(), name


def test_output_check_from_the_committed_sweep(script, tmp_path):
    """The shipped artifact's operating points on the committed sweep's replies (no model loads)."""
    got = script("output_check").main(
        ["--from-sweep", str(per_prompt_run("sweep-wide")), "--out", str(tmp_path / "o.json")]
    )
    committed = json.loads((RESULTS / "output-check" / "summary.json").read_text())
    assert {k: got[k] for k in ("steer_T", "guard_T", "by_set")} == {
        k: committed[k] for k in ("steer_T", "guard_T", "by_set")
    }
    assert json.loads((tmp_path / "o.json").read_text()) == got


def test_guard_robustness_report_reproduces_the_committed_summary(script, tmp_path):
    run = copy_run("guard-robustness", tmp_path)
    run_main(script("guard_robustness"), "report", "--out", run)
    for name in ("summary.json", "summary.md"):
        assert (run / name).read_text() == (RESULTS / "guard-robustness" / name).read_text(), name


def test_domain_language_reproduces_the_committed_table(script, data_dir, tmp_path):
    run_main(script("domain_language"), "--data-dir", data_dir, "--report", tmp_path)
    for name in ("summary.json", "summary.md"):
        assert (tmp_path / name).read_text() == (RESULTS / "domain-language" / name).read_text(), name
