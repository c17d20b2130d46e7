"""Issue 9 (items 5, 6): every bad input gets a typed error, and no non-finite number ever comes out benign.

Runs on the tiny model; see docs/hardening.md for the table these tests back.
"""

import hashlib
import json
import logging

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from scans_guard import (
    Artifact,
    ArtifactError,
    CalibrationConfig,
    GenerationConfig,
    InvalidPromptError,
    SteeringRecipe,
)
from scans_guard.artifacts import default_artifact_dir
from scans_guard.config import MIN_TEMPERATURE
from scans_guard.errors import InvalidArgumentError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT = GenerationConfig(max_new_tokens=2)


# -- conversations and batch arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, None, 1.5, b"bytes", {"hi"}, iter(["hi"])], ids=repr)
@pytest.mark.parametrize("call", ["classify", "generate", "iter_generate"])
def test_a_non_conversation_is_an_invalid_prompt_in_every_path(tiny_engine, call, bad):
    with pytest.raises(InvalidPromptError, match="conversations must be"):
        result = getattr(tiny_engine, call)(bad)
        list(result)  # iter_generate is lazy


@pytest.mark.parametrize("call", ["classify", "generate", "iter_generate"])
def test_a_bare_message_dict_says_to_wrap_it_in_a_list(tiny_engine, call):
    with pytest.raises(InvalidPromptError, match="wrap a single message dict in a list"):
        list(getattr(tiny_engine, call)({"role": "user", "content": "hi"}))


@pytest.mark.parametrize("batch_size", [-1, 0, 1.5, "8", True])
def test_batch_size_must_be_a_positive_integer(tiny_engine, batch_size):
    with pytest.raises(InvalidArgumentError, match="batch_size") as info:
        tiny_engine.classify(["x"], batch_size=batch_size)
    assert isinstance(info.value, ValueError)


def test_iter_generate_treats_a_string_as_one_conversation(tiny_engine):
    events = list(tiny_engine.iter_generate("hey", SHORT))
    assert {e.row for e in events} == {0}
    verdict = next(e.verdict for e in events if e.verdict is not None)
    assert verdict.score == pytest.approx(tiny_engine.classify("hey")[0].score, abs=1e-5)
    assert [o.text for o in tiny_engine.generate("hey", SHORT)] == [next(e.output for e in events if e.output).text]


@pytest.mark.parametrize("call", ["classify", "generate", "iter_generate"])
def test_an_empty_batch_is_still_empty(tiny_engine, call):
    assert list(getattr(tiny_engine, call)([])) == []


@pytest.mark.parametrize("coefficient", [float("nan"), float("inf"), -float("inf"), [1.0, float("nan")], "1", None],
                         ids=repr)
def test_steering_coefficients_must_be_finite_numbers(tiny_engine, coefficient):
    if coefficient is None:  # None means "classify": the control case
        assert len(tiny_engine.generate(["a", "b"], SHORT, coefficient=coefficient)) == 2
        return
    with pytest.raises(InvalidArgumentError, match="finite"):
        tiny_engine.generate(["a", "b"], SHORT, coefficient=coefficient)


def test_one_coefficient_per_prompt(tiny_engine):
    with pytest.raises(InvalidArgumentError, match="3 coefficients for 2 prompts"):
        tiny_engine.generate(["a", "b"], SHORT, coefficient=[1.0, 2.0, 3.0])


# -- configuration numbers ------------------------------------------------------------------------------------------

NON_FINITE = [float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("field, value", [
    ("stop", [""]), ("stop", ["ok", ""]),
    *[("temperature", v) for v in [*NON_FINITE, 1e-45, 5e-324, 1e-4, -1.0]],
    *[("top_p", v) for v in [*NON_FINITE, 0.0, 1.5]],
])
def test_generation_config_rejects(field, value):
    with pytest.raises(ValidationError, match=field):
        GenerationConfig(**{field: value})


def test_smallest_sampling_temperature_samples(tiny_engine):
    config = GenerationConfig(max_new_tokens=3, temperature=MIN_TEMPERATURE, seed=1)
    sampled = tiny_engine.generate("How do I bake bread?", config, steer=False)[0]
    greedy = tiny_engine.generate("How do I bake bread?", GenerationConfig(max_new_tokens=3), steer=False)[0]
    assert sampled.completion_tokens > 0 and sampled.text == greedy.text  # T=1e-3 is greedy in all but name


@pytest.mark.parametrize("field", ["threshold", "alpha_benign", "alpha_harmful", "grey_zone"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_steering_recipe_numbers_must_be_finite(tiny_artifact, field, value):
    with pytest.raises(ValidationError, match="finite"):
        SteeringRecipe.model_validate({**tiny_artifact.recipe.model_dump(), field: value})
    with pytest.raises(ValidationError, match="finite"):
        tiny_artifact.with_recipe(**{field: value})


@pytest.mark.parametrize("field", ["alpha_benign", "alpha_harmful", "grey_zone", "threshold", "target_recall"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_calibration_config_numbers_must_be_finite(field, value):
    with pytest.raises(ValidationError, match="finite"):
        CalibrationConfig(**{field: value})


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


@pytest.mark.parametrize("key", ["weight_probe", "architecture", "n_layers", "hidden_size", "vocab_size",
                                 "weight_probe_sha256"])
def test_fingerprint_without_a_key(tiny_artifact, tmp_path, key):
    path = tiny_artifact.save(tmp_path / "art")
    _edit_json(path, lambda m: m["model_fingerprint"].pop(key))
    with pytest.raises(ArtifactError, match=f"model_fingerprint.*{key}"):
        Artifact.load(path)


@pytest.mark.parametrize("tensor", ["refusal_vectors", "d_harm"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_tensors(tiny_artifact, tmp_path, tensor, value):
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
    with caplog.at_level(logging.WARNING, logger="scans_guard.artifacts"):
        loaded = Artifact.load(path)
    assert torch.equal(loaded.refusal_vectors, tiny_artifact.refusal_vectors)
    assert "records no tensors_sha256" in caplog.text


def test_shipped_artifact_still_loads():
    """It predates tensors_sha256 (the lead re-saves it); it must keep loading, with the warning."""
    assert Artifact.load(default_artifact_dir()).refusal_vectors.shape == (24, 896)
