"""The whole harness on the tiny model: files written, numbers consistent, resume, report-only, the CLI."""

import json

import pytest

from scans_guard.cli import main
from scans_guard.eval import EvalConfig, report_only, run_eval
from scans_guard.eval.plots import available as plots_available
from scans_guard.eval.results import EvalResults
from scans_guard.steering.judge import KeywordJudge, Rule


def _config(out, data, **kw):
    base = dict(
        out_dir=str(out),
        data_dir=str(data),
        limit=2,
        max_new_tokens=3,
        ppl_window=16,
        mmlu_subjects=["cooking"],
        progress=False,
    )
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run_dir(tiny_engine, eval_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    results = run_eval(tiny_engine, _config(out, eval_data))
    return out, results


def test_files_written(run_dir):
    out, results = run_dir
    for name in ("run.json", "results.json", "report.md", "generations.jsonl", "scores.jsonl", "capability.jsonl"):
        assert (out / name).is_file(), name
    if plots_available():
        for png in ("refusal_rates", "roc", "threshold_sweep", "layer_profile", "scores"):
            path = out / "plots" / f"{png}.png"
            assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
        assert set(results.figures) >= {"refusal_rates", "roc", "threshold_sweep", "layer_profile"}
    written = json.loads((out / "results.json").read_text())
    assert written["schema"] == "scans-guard-eval/1"
    assert written["classification"]["artifact_threshold"] == results.run.artifact.recipe.threshold
    assert EvalResults.model_validate(written) == results  # the JSON reads back as the typed results


def test_rows_and_numbers_agree(run_dir):
    out, results = run_dir
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    n_sets = len(results.run.sets)
    assert len(rows) == 6 * 2 * n_sets  # six conditions, two prompts per set
    for r in rows:
        assert {"prompt", "set", "label", "condition", "score", "direction", "response", "refused"} <= r.keys()
    scans = [r for r in rows if r["condition"] == "scans" and r["set"] == "xstest" and r["label"] == "safe"]
    rate = results.refusal.rate("scans", "xstest", "safe")
    assert rate.n == len(scans) and rate.refused == sum(r["refused"] for r in scans)
    guarded = [r for r in rows if r["condition"] == "guard_steer"]
    assert guarded and all(r["reply_of"] in {"guard", "scans"} for r in guarded)  # composed, never decoded
    suites = {e.suite for e in results.classification.suites}
    assert {"xstest", "oktest+harmfulq", "repe_test", "all"} <= suites
    assert results.classification.layer_profile["all"][0].layer == 1
    cap = results.capability
    assert set(cap.perplexity) == {"unsteered", "scans", "always_negative", "always_positive"}
    assert cap.mmlu["unsteered"].n == 2
    first = results.model_dump(by_alias=True)["classification"]["suites"][0]["at_artifact_T"]
    assert results.vocabulary_projection and "positive=safe" in first


def test_report_sections(run_dir):
    out, _ = run_dir
    md = (out / "report.md").read_text()
    for heading in (
        "## Setup",
        "## Refusal rates (Table 2)",
        "## sigma(q) classification",
        "## Threshold sweep (Table 7)",
        "## Layer profile (Figure 5)",
        "## Vocabulary projection (Table 1)",
        "## Capability",
        "Positive class: unsafe",
        "Positive class: safe",
    ):
        assert heading in md, heading
    probe = json.loads((out / "run.json").read_text())["artifact"]["recipe"]["probe_layer"]
    assert probe is not None and f"sigma(q) is the artifact's probe on layer {probe}'s transition" in md
    if plots_available():
        assert "![refusal rates](plots/refusal_rates.png)" in md


def test_second_run_resumes_without_work(run_dir, tiny_engine, eval_data):
    out, results = run_dir
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(tiny_engine, name)

        def generate(self, *a, **kw):
            calls.append("generate")
            return tiny_engine.generate(*a, **kw)

        def classify(self, *a, **kw):
            calls.append("classify")
            return tiny_engine.classify(*a, **kw)

    again = run_eval(Spy(), _config(out, eval_data, plots=False))
    assert calls == []
    assert again.refusal == results.refusal


def test_changed_settings_refuse_to_resume(run_dir, tiny_engine, eval_data):
    out, _ = run_dir
    with pytest.raises(ValueError, match="max_new_tokens"):
        run_eval(tiny_engine, _config(out, eval_data, max_new_tokens=5))


def test_report_only_rejudges(run_dir, tmp_path):
    out, results = run_dir
    everything = KeywordJudge([Rule("")], name="always")  # "" is in every reply: every reply refuses
    rebuilt = report_only(out, plots=False, judge=everything)
    assert all(r.rate == 1.0 for r in rebuilt.refusal.rates)
    assert "always (re-judged" in rebuilt.run.settings.judge
    plain = report_only(out, plots=False)
    assert plain.refusal == results.refusal
    with pytest.raises(FileNotFoundError):
        report_only(tmp_path)


def test_cli_eval(tiny_engine, eval_data, tmp_path, monkeypatch, capsys):
    from scans_guard.engine import ScansEngine

    monkeypatch.setattr(ScansEngine, "load", classmethod(lambda cls, *a, **kw: tiny_engine))
    out = tmp_path / "cli"
    code = main(
        [
            "eval",
            "--out",
            str(out),
            "--data-dir",
            str(eval_data),
            "--sets",
            "xstest,oktest",
            "--conditions",
            "unsteered,scans",
            "--limit",
            "2",
            "--max-new-tokens",
            "2",
            "--no-capability",
            "--no-plots",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "SCANS" in printed and "report:" in printed
    run = json.loads((out / "run.json").read_text())
    assert set(run["sets"]) == {"xstest", "oktest"} and [c["name"] for c in run["conditions"]] == ["unsteered", "scans"]
    assert main(["eval", "--out", str(out), "--report-only", "--no-plots", "--judge", "keyword-reference"]) == 0
    # A narrower rerun reuses the rows it needs; its report (and a report-only rebuild) covers only its prompts.
    args = [
        "eval",
        "--out",
        str(out),
        "--data-dir",
        str(eval_data),
        "--sets",
        "xstest,oktest",
        "--conditions",
        "unsteered,scans",
        "--limit",
        "1",
        "--max-new-tokens",
        "2",
        "--no-capability",
        "--no-plots",
        "--quiet",
    ]
    assert main(args) == 0
    lines = (out / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 2  # nothing new generated
    for results in (EvalResults.model_validate_json((out / "results.json").read_text()), report_only(out, plots=False)):
        assert sum(r.n for r in results.refusal.rates) == 2 * 2
    assert main(["eval", "--out", str(out), "--data-dir", str(eval_data), "--sets", "nope", "--quiet"]) == 2


def test_limit_caps_every_part(tiny_engine, eval_data, tmp_path):
    """--limit N: at most N prompts per set, N MMLU questions in all and N perplexity windows."""
    from scans_guard.eval.capability import load_mmlu, wikitext_windows

    wiki = eval_data / "wikitext2_tokenized" / "test.txt"
    assert len(wikitext_windows(tiny_engine, wiki, 16)) > 2 and len(load_mmlu(eval_data)[0]) > 2  # more than N exist
    out = tmp_path / "limited"
    config = _config(
        out,
        eval_data,
        mmlu_subjects=None,
        ppl_windows=5,
        sets=["xstest", "oktest"],
        conditions=["unsteered", "scans"],
        max_new_tokens=2,
        plots=False,
    )
    results = run_eval(tiny_engine, config)
    assert results.run.settings.ppl_windows == 2  # --limit caps an explicit --ppl-windows too
    for name in ("scores", "generations", "capability"):
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        parts: dict[str, set] = {}
        for r in rows:
            part = r.get("set") or r["task"]
            parts.setdefault(part, set()).add(r.get("prompt") or r.get("item"))
        assert parts and all(len(items) <= 2 for items in parts.values()), (name, parts)
    mmlu = {
        r["item"]
        for r in (json.loads(x) for x in (out / "capability.jsonl").read_text().splitlines())
        if r["task"] == "mmlu"
    }
    assert len(mmlu) == 2 and {i.split("/")[0] for i in mmlu} == {"cooking", "geography"}  # spread over subjects


def test_generation_limit_caps_replies_not_scores(tiny_engine, eval_data, tmp_path):
    """--generation-limit N: sigma(q) scores every prompt, replies go to N per set (label-balanced), a
    --generation-full set is replied to in full; a rerun and a report-only rebuild keep both selections."""
    out = tmp_path / "gen-limited"
    config = _config(
        out,
        eval_data,
        limit=None,
        generation_limit=2,
        generation_full=["harmfulq"],
        capability=False,
        sets=["oktest", "harmfulq", "heldout_harmless"],
        conditions=["unsteered", "scans"],
        max_new_tokens=2,
        plots=False,
    )
    results = run_eval(tiny_engine, config)
    scored = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    replies = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert {s: sum(r["set"] == s for r in scored) for s in config.sets} == {
        "oktest": 4,
        "harmfulq": 4,
        "heldout_harmless": 4,
    }
    assert {s: sum(r["set"] == s for r in replies) for s in config.sets} == {
        "oktest": 2 * 2,
        "harmfulq": 4 * 2,
        "heldout_harmless": 2 * 2,
    }
    stats = results.classification.score_stats  # the sigma(q) metrics cover every scored prompt
    assert sum(v["n"] for labels in stats.values() for v in labels.values()) == 12
    assert sum(r.n for r in results.refusal.rates) == len(replies)
    assert "replies to at most 2 prompts per set (label-balanced), all of harmfulq" in (out / "report.md").read_text()
    assert report_only(out, plots=False).refusal == results.refusal
    assert run_eval(tiny_engine, config).refusal == results.refusal
    assert len((out / "generations.jsonl").read_text().splitlines()) == len(replies)  # resumed: nothing new
    with pytest.raises(ValueError, match="unknown set"):
        _config(out, eval_data, generation_full=["nope"])
