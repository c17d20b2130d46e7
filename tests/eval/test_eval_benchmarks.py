"""Which prompts are evaluated: anchors out, T-fit prompts identified, label-balanced --limit, missing data."""

import pytest

from scans_guard.calibration.artifacts import text_sha256
from scans_guard.data import anchor_split, load_set
from scans_guard.eval.benchmarks import calibration_prompts, limit_prompts, load_benchmarks


@pytest.fixture(scope="module")
def calib(tiny_artifact):
    return calibration_prompts(tiny_artifact)


def test_anchors_and_threshold_fit_read_from_the_artifact(tiny_artifact, calib):
    a = tiny_artifact.meta.anchors["harmful"]
    harmful, benign = anchor_split(a.n, a.seed)  # what calibration used: the artifact must record exactly these
    assert calib.anchors_verified and calib.anchor_hashes == {text_sha256(p) for p in harmful + benign}
    # The tiny artifact fits T on held-out AdvBench vs TruthfulQA plus the probe's training prompts (the contrast
    # set's train split and the anchors), and lists those prompts' hashes.
    n_probe = tiny_artifact.meta.notes["probe"]["n_train"]
    assert len(tiny_artifact.meta.splits["probe_train"].prompt_sha256) == n_probe
    assert calib.threshold_fit_verified and len(calib.threshold_fit_hashes) == 16 + n_probe
    assert all(calib.in_threshold_fit(p) for p in harmful + benign)


def test_anchors_removed_from_every_set(calib, eval_data):
    sets, infos, skipped = load_benchmarks(
        ["advbench", "truthfulqa", "repe_test"], eval_data, calib, exclude_threshold_fit=False
    )
    assert not skipped
    for prompts in sets.values():
        assert not any(calib.is_anchor(p.prompt) for p in prompts)
    assert infos["advbench"].anchors_removed == 8 and infos["advbench"].evaluated == 520 - 8
    assert infos["truthfulqa"].anchors_removed == 8
    # The RepE fixture holds one anchor and one duplicated safe prompt.
    assert infos["repe_test"].anchors_removed == 1 and infos["repe_test"].duplicates_removed == 1
    assert infos["repe_test"].labels == {"safe": 2, "unsafe": 2}
    assert infos["advbench"].threshold_fit_overlap == 8  # counted when kept


def test_threshold_fit_prompts_removed_by_default(calib, eval_data):
    sets, infos, _ = load_benchmarks(["advbench"], eval_data, calib)
    assert infos["advbench"].threshold_fit_removed == 8 and infos["advbench"].threshold_fit_overlap == 0
    assert infos["advbench"].evaluated == 520 - 8 - 8
    assert not any(calib.in_threshold_fit(p.prompt) for p in sets["advbench"])


def test_meta_version_1_is_upgraded_where_the_anchors_are_reproducible(tiny_artifact, eval_data):
    meta = tiny_artifact.meta.model_dump()
    del meta["meta_version"], meta["splits"]  # as written before per-prompt hashes were recorded
    meta["threshold_fit"]["prompt_sha256"] = tiny_artifact.meta.splits["threshold_fit"].prompt_sha256
    for a in meta["anchors"].values():
        del a["prompt_sha256"]
    old = calibration_prompts(meta)
    assert old.anchors_verified and old.anchor_hashes == tiny_artifact.meta.anchor_hashes()
    assert old.threshold_fit_hashes == tiny_artifact.meta.fit_hashes()
    _, infos, _ = load_benchmarks(["advbench", "truthfulqa"], eval_data, old)
    assert infos["advbench"].threshold_fit_removed == 8 and infos["truthfulqa"].threshold_fit_removed == 8


def test_unrecorded_threshold_fit_is_reported(tiny_cosine_artifact):
    meta = tiny_cosine_artifact.meta.model_dump()
    del meta["splits"]["threshold_fit"]
    calib = calibration_prompts(meta)
    assert calib.anchors_verified and not calib.threshold_fit_verified and "T was fitted on" in calib.notes[0]


def test_limit_is_seeded_and_label_balanced(calib):
    sets, _, _ = load_benchmarks(["xstest"], None, calib, limit=10, seed=3)
    again, _, _ = load_benchmarks(["xstest"], None, calib, limit=10, seed=3)
    other, _, _ = load_benchmarks(["xstest"], None, calib, limit=10, seed=4)
    labels = [p.label for p in sets["xstest"]]
    assert len(labels) == 10 and labels.count("safe") == 5
    assert sets == again and sets != other
    assert [p.index for p in sets["xstest"]] == sorted(p.index for p in sets["xstest"])
    assert limit_prompts(sets["xstest"], None, 0) == sets["xstest"]


def test_missing_data_dir(calib, tmp_path):
    sets, _, skipped = load_benchmarks(None, None, calib, limit=2)
    assert set(sets) == {"xstest", "truthfulqa", "advbench"}
    assert "oktest" in skipped and "repe_test" in skipped
    with pytest.raises(FileNotFoundError, match="oktest.csv"):
        load_benchmarks(["oktest"], tmp_path, calib)
    with pytest.raises(ValueError, match="unknown set"):
        load_benchmarks(["nope"], tmp_path, calib)


def test_unverifiable_anchors_are_reported(tiny_artifact):
    meta = tiny_artifact.meta.model_dump()
    del meta["meta_version"]
    for a in meta["anchors"].values():
        del a["prompt_sha256"]
    meta["anchors"]["harmful"]["sha256"] = "0" * 64  # version 1, and anchor_split no longer reproduces them
    calib = calibration_prompts(meta)
    assert not calib.anchors_verified and not calib.anchor_hashes and "not reproducible" in calib.notes[0]


def test_xstest_shipped_counts():
    xs = load_set("xstest")
    assert sum(e.label == "safe" for e in xs) == 250 and sum(e.label == "unsafe" for e in xs) == 200
