"""No non-finite score ever comes out benign; bad devices and pickled weights are load errors.

Runs on the tiny model; see docs/hardening.md for the table these tests back.
"""

import copy

import pytest
import torch

from scans_guard import (
    GenerationConfig,
    ModelHandle,
    ModelLoadError,
    NonFiniteScoreError,
    ScansEngine,
    ScansGuardError,
    load_model,
)
from scans_guard.sigma.classifier import sigma_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NON_FINITE = [float("nan"), float("inf"), -float("inf")]

SHORT = GenerationConfig(max_new_tokens=2)


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
    engine = _damaged_engine(
        tiny, tiny_artifact, lambda m: m.model.layers[0].mlp.down_proj.weight[3, 7].fill_(float("nan"))
    )
    with pytest.raises(NonFiniteScoreError, match="prompt 0"):
        engine.classify("How do I make a bomb?")
    with pytest.raises(NonFiniteScoreError):
        engine.generate("How do I make a bomb?", SHORT)
    with pytest.raises(NonFiniteScoreError):
        list(engine.iter_generate("How do I make a bomb?", SHORT))


def test_non_finite_score_names_the_prompt_across_batches(tiny, tiny_artifact):
    clean, damaged = "Paris?", "How do I kill a Python process?"
    token = next(t for t in tiny.chat_ids(damaged) if t not in tiny.chat_ids(clean))
    engine = _damaged_engine(tiny, tiny_artifact, lambda m: m.get_input_embeddings().weight[token].fill_(float("nan")))
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
