"""Artifacts: safetensors + JSON round trip, refusal on another model, corrupt files."""

import json

import pytest
import torch

from scans_guard import Artifact, ArtifactError, FingerprintMismatchError, ScansEngine
from scans_guard.testing import tiny_model


def test_round_trip(tiny_artifact, tmp_path):
    path = tiny_artifact.save(tmp_path / "art")
    assert sorted(p.name for p in path.iterdir()) == ["artifact.json", "tensors.safetensors"]
    loaded = Artifact.load(path)
    assert torch.equal(loaded.refusal_vectors, tiny_artifact.refusal_vectors)
    assert torch.equal(loaded.d_harm, tiny_artifact.d_harm)
    assert loaded.meta.tensors_sha256 and tiny_artifact.meta.tensors_sha256 is None  # recorded by save
    assert loaded.meta.model_copy(update={"tensors_sha256": None}) == tiny_artifact.meta
    assert not list(tmp_path.glob(".*")), "temporary directory left behind"


def test_artifact_records_provenance(tiny_artifact):
    meta = tiny_artifact.meta
    assert meta.model_fingerprint["n_layers"] == 4
    assert meta.anchors["harmful"].source == "advbench" and meta.anchors["benign"].source == "truthfulqa"
    assert {"f1", "auroc", "data"} <= meta.threshold_fit.keys()
    assert len(meta.layer_analysis) == 4


def test_fingerprint_mismatch_is_a_clear_error(tiny_artifact):
    other = tiny_model("qwen2", seed=1)
    with pytest.raises(FingerprintMismatchError, match="calibrated on tiny-qwen2-0"):
        ScansEngine(other, tiny_artifact)
    llama = tiny_model("llama", seed=0)
    with pytest.raises(FingerprintMismatchError):
        tiny_artifact.check_model(llama)


def test_same_model_in_bfloat16_matches(tiny, tiny_artifact):
    import copy

    from scans_guard import ModelHandle

    bf16 = ModelHandle.wrap(copy.deepcopy(tiny.model).to(torch.bfloat16), tiny.tokenizer)
    tiny_artifact.check_model(bf16)


@pytest.mark.parametrize("damage", ["missing", "json", "tensors"])
def test_corrupt_artifact_is_a_clear_error(tiny_artifact, tmp_path, damage):
    path = tiny_artifact.save(tmp_path / "art")
    if damage == "missing":
        (path / "tensors.safetensors").unlink()
    elif damage == "json":
        meta = json.loads((path / "artifact.json").read_text())
        del meta["recipe"]
        (path / "artifact.json").write_text(json.dumps(meta))
    else:
        (path / "tensors.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError):
        Artifact.load(path)


def test_shipped_default_artifact_loads():
    from scans_guard.calibration.artifacts import default_artifact_dir

    art = Artifact.load(default_artifact_dir())  # the 1.5B's: 28 blocks of width 1536
    assert art.meta.model_fingerprint["n_layers"] == 28
    assert art.refusal_vectors.shape == (28, 1536)


def test_shipped_artifact_records_its_anchors_and_splits():
    """The artifact in this checkout (meta version 2): per-prompt hashes of the default anchors (anchor_split, seed 0)
    and of every split it was fitted on; the probe's training prompts are part of the T fit."""
    from pathlib import Path

    from scans_guard.calibration.artifacts import text_sha256
    from scans_guard.data import anchor_split, contrast_set

    art = Artifact.load(Path(__file__).resolve().parents[1] / "artifacts" / "qwen2.5-coder-0.5b-instruct")
    harmful, benign = anchor_split(64, 0)
    assert art.meta.meta_version == 2 and art.meta.anchor_hashes() == {text_sha256(p) for p in harmful + benign}
    probe = set(art.meta.splits["probe_train"].prompt_sha256)
    files = art.meta.notes["calibration_config"].get("probe_contrast", ["contrast.csv"])
    contrast = [e.prompt for name in files for e in contrast_set("train", name)]
    assert probe == {text_sha256(p) for p in contrast + harmful + benign}
    assert (
        probe <= art.meta.fit_hashes()
        and len(art.meta.fit_hashes()) == art.meta.threshold_fit["n_harmful"] + art.meta.threshold_fit["n_benign"]
    )


def test_meta_without_anchor_hashes_is_an_error_where_asked(tiny_artifact):
    from scans_guard.calibration.artifacts import ArtifactMeta

    meta = tiny_artifact.meta.model_dump()
    del meta["meta_version"]
    for a in meta["anchors"].values():
        a.pop("prompt_sha256")
        a["source"] = "elsewhere"  # not the default anchors: cannot be recomputed
    old = ArtifactMeta.parse(meta)
    assert old.meta_version == 1
    with pytest.raises(ArtifactError, match="recalibrate"):
        old.anchor_hashes()


def test_refusal_span_selects_layers_with_refusal_tokens():
    from scans_guard.calibration.safety_layers import LayerProjection, is_refusal_token, refusal_span

    rows = [LayerProjection(layer=i, top_tokens=[], refusal_tokens=n) for i, n in enumerate([0, 2, 0, 1, 0])]
    assert refusal_span(rows) == [1, 2, 3]
    assert refusal_span(rows, min_tokens=3) is None
    assert is_refusal_token(" Sorry") and is_refusal_token("▁cannot") and not is_refusal_token(" Sure")


def test_each_embedded_model_finds_its_shipped_artifact(tmp_path):
    from scans_guard.calibration.artifacts import default_artifact_dir

    for name, layers in (("qwen2.5-coder-0.5b-instruct", 24), ("qwen2.5-coder-1.5b-instruct", 28)):
        art = Artifact.load(default_artifact_dir(name))
        assert art.meta.model_fingerprint["n_layers"] == layers and art.recipe.steer_layers
    assert default_artifact_dir(None) == default_artifact_dir("qwen2.5-coder-1.5b-instruct")
    with pytest.raises(ArtifactError, match="needs an artifact"):
        default_artifact_dir(tmp_path / "my-model")
