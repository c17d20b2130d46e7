"""An artifact with a non-finite number, a missing key or modified tensors is refused with an
ArtifactError; it never loads as something that would label prompts benign.

Runs on the tiny model; see docs/hardening.md for the table these tests back.
"""

import hashlib
import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from scans_guard import Artifact, ArtifactError
from scans_guard.calibration.artifacts import default_artifact_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NON_FINITE = [float("nan"), float("inf"), -float("inf")]


# -- artifacts ------------------------------------------------------------------------------------------------------


def _edit_json(path, edit):
    meta = json.loads((path / "artifact.json").read_text())
    edit(meta)
    (path / "artifact.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("field", ["threshold", "alpha_benign", "alpha_harmful", "grey_zone"])
def test_non_finite_recipe_number_in_artifact_json(tiny_artifact, tmp_path, field, value):
    path = tiny_artifact.save(tmp_path / "art")
    _edit_json(path, lambda m: m["recipe"].__setitem__(field, value))  # json writes NaN / Infinity literals
    with pytest.raises(ArtifactError, match=f"recipe.{field}: .*finite"):
        Artifact.load(path)


@pytest.mark.parametrize("field", ["a", "b"])
def test_non_finite_platt_fit(tiny_artifact, tmp_path, field):
    path = tiny_artifact.save(tmp_path / "art")
    _edit_json(path, lambda m: m.__setitem__("platt", {"a": 1.0, "b": 0.0, field: float("nan")}))
    with pytest.raises(ArtifactError, match="finite"):
        Artifact.load(path)


@pytest.mark.parametrize(
    "key", ["weight_probe", "architecture", "n_layers", "hidden_size", "vocab_size", "weight_probe_sha256"]
)
def test_fingerprint_without_a_key(tiny_artifact, tmp_path, key):
    path = tiny_artifact.save(tmp_path / "art")
    _edit_json(path, lambda m: m["model_fingerprint"].pop(key))
    with pytest.raises(ArtifactError, match=f"model_fingerprint.*{key}"):
        Artifact.load(path)


@pytest.mark.parametrize("tensor", ["refusal_vectors", "d_harm"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_tensors(tiny_cosine_artifact, tmp_path, tensor, value):
    tiny_artifact = tiny_cosine_artifact
    vectors, d_harm = tiny_artifact.refusal_vectors.clone(), tiny_artifact.d_harm.clone()
    (vectors if tensor == "refusal_vectors" else d_harm)[0, 3] = value
    with pytest.raises(ArtifactError, match=f"{tensor} contains NaN or infinite"):
        Artifact(tiny_artifact.meta, vectors, d_harm)
    # The same damage written by another tool into a saved artifact (its recorded hash updated to match).
    path = tiny_artifact.save(tmp_path / "art")
    save_file({"refusal_vectors": vectors, "d_harm": d_harm}, str(path / "tensors.safetensors"))
    digest = hashlib.sha256((path / "tensors.safetensors").read_bytes()).hexdigest()
    _edit_json(path, lambda m: m.__setitem__("tensors_sha256", digest))
    with pytest.raises(ArtifactError, match=f"{tensor} contains NaN or infinite"):
        Artifact.load(path)


def test_tensors_hash_is_recorded_and_checked(tiny_artifact, tmp_path):
    path = tiny_artifact.save(tmp_path / "art")
    recorded = json.loads((path / "artifact.json").read_text())["tensors_sha256"]
    assert recorded == hashlib.sha256((path / "tensors.safetensors").read_bytes()).hexdigest()
    vectors = tiny_artifact.refusal_vectors.clone()
    vectors[2] *= -1  # finite, right shape: only the hash can tell
    save_file({"refusal_vectors": vectors, "d_harm": tiny_artifact.d_harm}, str(path / "tensors.safetensors"))
    with pytest.raises(ArtifactError, match="tensors were modified"):
        Artifact.load(path)


def test_artifact_without_a_tensors_hash_loads_with_a_warning(tiny_artifact, tmp_path, caplog):
    path = tiny_artifact.save(tmp_path / "art")
    _edit_json(path, lambda m: m.pop("tensors_sha256"))  # the format before the hash was recorded
    with caplog.at_level(logging.WARNING, logger="scans_guard.calibration.artifacts"):
        loaded = Artifact.load(path)
    assert torch.equal(loaded.refusal_vectors, tiny_artifact.refusal_vectors)
    assert "records no tensors_sha256" in caplog.text


def test_shipped_artifact_still_loads():
    """It predates tensors_sha256 (the lead re-saves it); it must keep loading, with the warning."""
    assert Artifact.load(default_artifact_dir()).refusal_vectors.shape == (28, 1536)  # the 1.5B's
