"""Issue 9 (items 5, 6): every bad input gets a typed error, and no non-finite number ever comes out benign.

Runs on the tiny model; see docs/hardening.md for the table these tests back.
"""

import copy
import hashlib
import json
import logging
import struct
import threading
import time

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from scans_guard import (
    Artifact,
    ArtifactError,
    CalibrationConfig,
    GenerationConfig,
    InvalidPromptError,
    ModelHandle,
    ModelLoadError,
    NonFiniteScoreError,
    PromptTooLongError,
    ScansEngine,
    ScansGuardError,
    SteeringRecipe,
    default_model,
    load_model,
)
from scans_guard import engine as engine_module
from scans_guard.artifacts import default_artifact_dir
from scans_guard.classifier import sigma_scores
from scans_guard.cli import main
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
    with caplog.at_level(logging.WARNING, logger="scans_guard.artifacts"):
        loaded = Artifact.load(path)
    assert torch.equal(loaded.refusal_vectors, tiny_artifact.refusal_vectors)
    assert "records no tensors_sha256" in caplog.text


def test_shipped_artifact_still_loads():
    """It predates tensors_sha256 (the lead re-saves it); it must keep loading, with the warning."""
    assert Artifact.load(default_artifact_dir()).refusal_vectors.shape == (24, 896)


# -- the default model's cache --------------------------------------------------------------------------------------


def _cache_target(cache_dir):
    return cache_dir / "models" / default_model.DEFAULT_MODEL.cache_name


@pytest.fixture
def fake_build(tiny, monkeypatch):
    """Stands in for the minute-long GGUF dequantisation: writes the tiny model; records each build."""
    builds = []

    def build(work, get_gguf, progress):
        builds.append(work)
        time.sleep(0.3)  # long enough for a second builder to arrive while this one holds the lock
        tiny.model.save_pretrained(work / "model")
        tiny.tokenizer.save_pretrained(work / "model")

    monkeypatch.setattr(default_model, "_build_cache", build)
    return builds


def _write_float(path, tensor_name, index, value):
    """Overwrite one float32 of a tensor inside a safetensors file, in place (same size, header untouched)."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        start = json.loads(f.read(n))[tensor_name]["data_offsets"][0]
        f.seek(8 + n + start + 4 * index)
        f.write(struct.pack("<f", value))


def test_cached_weights_damaged_with_nan_are_rebuilt_not_used(tiny, tmp_path, fake_build):
    target = _cache_target(tmp_path)
    tiny.model.save_pretrained(target)
    tiny.tokenizer.save_pretrained(target)
    default_model._write_marker(target)
    weights = target / "model.safetensors"
    _write_float(weights, "model.layers.1.mlp.down_proj.weight", 5, float("nan"))
    assert torch.isnan(load_file(str(weights))["model.layers.1.mlp.down_proj.weight"]).any()  # loads fine as is
    handle = load_model(None, cache_dir=tmp_path, progress=False)
    assert len(fake_build) == 1
    assert all(bool(torch.isfinite(p).all()) for p in handle.model.parameters())


def test_cache_marked_by_an_older_version_is_rebuilt(tiny, tmp_path, fake_build):
    target = _cache_target(tmp_path)
    tiny.model.save_pretrained(target)
    (target / default_model._COMPLETE).write_text(json.dumps({"gguf_sha256": default_model.DEFAULT_MODEL.gguf_sha256}))
    assert default_model.default_model_dir(cache_dir=tmp_path, progress=False) == target
    assert len(fake_build) == 1 and default_model._is_complete(target)


@pytest.mark.parametrize("damage", ["unreadable", "missing", "extra"])
def test_cache_with_unreadable_missing_or_extra_weights_is_rebuilt(tiny, tmp_path, fake_build, damage):
    target = _cache_target(tmp_path)
    tiny.model.save_pretrained(target)
    default_model._write_marker(target)
    weights = target / "model.safetensors"
    if damage == "unreadable":
        weights.unlink()
        weights.mkdir()  # open() fails with IsADirectoryError
    elif damage == "missing":
        weights.unlink()
    else:
        (target / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert not default_model._is_complete(target)
    default_model.default_model_dir(cache_dir=tmp_path, progress=False)
    assert len(fake_build) == 1 and default_model._is_complete(target)


def test_a_build_removes_what_a_killed_build_left(tmp_path, fake_build):
    stale = tmp_path / "models" / ".build-abc123"
    (stale / "model").mkdir(parents=True)
    (stale / "model.gguf").write_bytes(b"half a model")
    target = default_model.default_model_dir(cache_dir=tmp_path, progress=False)
    assert sorted(p.name for p in target.parent.iterdir()) == [default_model._LOCK, target.name]


def test_two_builders_at_once_build_once(tmp_path, fake_build, caplog):
    barrier, results, errors = threading.Barrier(2), [], []

    def use_cache():
        barrier.wait()
        try:
            results.append(default_model.default_model_dir(cache_dir=tmp_path, progress=False))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use_cache) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="scans_guard.default_model"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(fake_build) == 1, "the second builder waited and used the first one's copy"
    assert "waiting for it" in caplog.text
    assert default_model._is_complete(results[0])


# -- scores ---------------------------------------------------------------------------------------------------------


def _damaged_engine(tiny, tiny_artifact, damage):
    """An engine on a copy of the tiny model with `damage(model)` applied (the shared fixture stays intact)."""
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        damage(model)
    return ScansEngine(ModelHandle.wrap(model, tiny.tokenizer), tiny_artifact, check_fingerprint=False)


@pytest.mark.parametrize("value", NON_FINITE)
def test_sigma_scores_of_non_finite_transitions_raise(tiny_artifact, value):
    transitions = torch.randn(3, *tiny_artifact.d_harm.shape)
    transitions[2, 1, 5] = value
    with pytest.raises(NonFiniteScoreError, match="prompt 2") as info:
        sigma_scores(transitions, tiny_artifact.d_harm)
    assert info.value.index == 2 and isinstance(info.value, ScansGuardError)


def test_nan_weight_is_an_error_never_a_benign_verdict(tiny, tiny_artifact):
    engine = _damaged_engine(tiny, tiny_artifact, lambda m: m.model.layers[0].mlp.down_proj.weight[3, 7].fill_(
        float("nan")))
    with pytest.raises(NonFiniteScoreError, match="prompt 0"):
        engine.classify("How do I make a bomb?")
    with pytest.raises(NonFiniteScoreError):
        engine.generate("How do I make a bomb?", SHORT)
    with pytest.raises(NonFiniteScoreError):
        list(engine.iter_generate("How do I make a bomb?", SHORT))


def test_non_finite_score_names_the_prompt_across_batches(tiny, tiny_artifact):
    clean, damaged = "Paris?", "How do I kill a Python process?"
    token = next(t for t in tiny.chat_ids(damaged) if t not in tiny.chat_ids(clean))
    engine = _damaged_engine(tiny, tiny_artifact, lambda m: m.get_input_embeddings().weight[token].fill_(
        float("nan")))
    assert engine.classify(clean)[0].label in {"harmful", "benign"}
    with pytest.raises(NonFiniteScoreError, match="prompt 3"):
        engine.classify([clean, clean, clean, damaged], batch_size=2)


# -- loading --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu:abc", "cuda:x", "", "cpu:", "tpu", "meta", "cuda:99"])
def test_a_bad_device_string_is_a_model_load_error(tmp_path, device):
    with pytest.raises(ModelLoadError, match="device"):
        load_model(tmp_path, device=device)


def test_pickled_weights_are_refused_not_unpickled(tiny, tmp_path, monkeypatch):
    # transformers 5 writes safetensors even with safe_serialization=False: pickle the weights by hand
    tiny.model.config.save_pretrained(tmp_path)
    torch.save(tiny.model.state_dict(), tmp_path / "pytorch_model.bin")
    tiny.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file() and not list(tmp_path.glob("*.safetensors"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on pickled weights"))
    with pytest.raises(ModelLoadError, match="only safetensors or GGUF"):
        load_model(tmp_path)


# -- input-length cap -----------------------------------------------------------------------------------------------


@pytest.fixture
def capped_engine(tiny, tiny_artifact):
    return ScansEngine(tiny, tiny_artifact, max_input_tokens=40)


def _text_of_tokens(engine, n):
    """A prompt of exactly n tokens after chat formatting."""
    text = ""
    while len(engine.handle.chat_ids(text + "a")) <= n:
        text += "a"
    assert len(engine.handle.chat_ids(text)) == n
    return text


@pytest.mark.parametrize("call", ["classify", "generate", "iter_generate"])
def test_prompt_longer_than_max_input_tokens(capped_engine, call, monkeypatch):
    at_cap, over = _text_of_tokens(capped_engine, 40), _text_of_tokens(capped_engine, 41)
    assert len(list(getattr(capped_engine, call)(at_cap, SHORT) if call != "classify"
                    else capped_engine.classify(at_cap))) >= 1
    for forward in ("run_sigma_pass", "steered_decode"):  # refused before any forward pass
        monkeypatch.setattr(engine_module, forward, lambda *a, **k: pytest.fail("a forward pass ran"))
    with pytest.raises(PromptTooLongError, match="prompt 1 has 41 tokens.*max_input_tokens=40") as info:
        list(getattr(capped_engine, call)(["short", over]))
    assert isinstance(info.value, InvalidPromptError)


def test_max_input_tokens_default_and_none(tiny, tiny_artifact, tiny_engine):
    assert tiny_engine.max_input_tokens == 4096
    uncapped = ScansEngine(tiny, tiny_artifact, max_input_tokens=None)
    assert uncapped.classify(_text_of_tokens(uncapped, 200))[0].label in {"harmful", "benign"}


@pytest.mark.parametrize("cap", [0, -5, 1.5, "100", True])
def test_max_input_tokens_must_be_a_positive_integer(tiny, tiny_artifact, cap):
    with pytest.raises(InvalidArgumentError, match="max_input_tokens"):
        ScansEngine(tiny, tiny_artifact, max_input_tokens=cap)


def test_engine_load_passes_max_input_tokens(tiny_on_disk):
    engine = ScansEngine.load(tiny_on_disk / "model", tiny_on_disk / "artifact", max_input_tokens=33)
    assert engine.max_input_tokens == 33


# -- the command line -----------------------------------------------------------------------------------------------


def _cli(tiny_on_disk, command, *args):
    return [command, "--model", str(tiny_on_disk / "model"), "--artifact", str(tiny_on_disk / "artifact"), *args]


@pytest.mark.parametrize("argv, match", [
    (["chat", "--temperature", "1e-45", "hi"], "temperature: temperature must be 0 (greedy) or at least 0.001"),
    (["chat", "--temperature", "inf", "hi"], "temperature: Input should be a finite number"),
    (["demo", "--temperature", "nan"], "temperature: Input should be a finite number"),
    (["chat", "--max-new-tokens", "0", "hi"], "max_new_tokens"),
    (["classify", "--device", "cpu:abc", "hi"], "device must be cpu, cuda, cuda:N or mps, got 'cpu:abc'"),
    (["chat", "--device", "cpu:abc", "hi"], "device must be"),
    (["classify", "--max-input-tokens", "10", "a long enough prompt for ten tokens"], "max_input_tokens=10"),
    (["classify", "--max-input-tokens", "-3", "hi"], "max_input_tokens must be a positive integer"),
])
def test_cli_errors_are_one_line(tiny_on_disk, capsys, argv, match):
    assert main(_cli(tiny_on_disk, *argv)) == 2
    err = capsys.readouterr().err
    error = err[err.index("scans-guard: error:"):]  # after transformers' progress bar, if the model loaded
    assert error.count("\n") == 1 and error.endswith("\n"), err
    assert match in error


def test_cli_validation_error_lists_every_field_on_one_line(tiny_on_disk, capsys):
    assert main(["calibrate", "--model", str(tiny_on_disk / "model"), "--out", "x", "--alpha-benign", "inf",
                 "--grey-zone", "nan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid CalibrationConfig: alpha_benign: " in err and "; grey_zone: " in err


def test_cli_max_input_tokens_zero_disables_the_cap(tiny_on_disk, capsys):
    prompt = "x " * 40
    assert main(_cli(tiny_on_disk, "classify", "--max-input-tokens", "20", prompt)) == 2
    assert main(_cli(tiny_on_disk, "classify", "--max-input-tokens", "0", "--json", prompt)) == 0
    assert json.loads(capsys.readouterr().out)["label"] in {"harmful", "benign"}
