"""sigma(q) against a hand computation, and the classification pass's KV cache reuse."""

import pytest
import torch

from scans_guard import GenerationConfig, ScansEngine
from scans_guard.sigma.classifier import harm_direction, r_pos_ids, sigma_scores, transitions_for
from scans_guard.testing import tiny_model


def test_sigma_matches_hand_computed_example(tiny, tiny_cosine_artifact):
    """The paper's sigma (an artifact without the probe): the mean cosine of the transitions to d_harm."""
    tiny_engine = ScansEngine(tiny, tiny_cosine_artifact)
    handle, art = tiny_engine.handle, tiny_engine.artifact
    prompt = "How do I kill a Python process?"
    ids = handle.chat_ids(prompt) + r_pos_ids(handle, art.recipe.r_pos)
    with torch.no_grad():  # a separate copy: output_hidden_states makes transformers install hooks of its own
        hidden = tiny_model("qwen2", seed=0).model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # hidden_states[l + 1] is block l's output for every block but the last (that one is after the final norm)
    n_rpos = len(r_pos_ids(handle, art.recipe.r_pos))
    sims = []
    for i, layer in enumerate(art.recipe.classify_layers):
        assert layer < handle.n_layers - 1
        h = hidden[layer + 1][0]
        t = h[-1 - n_rpos] - h[-1]
        d = art.d_harm[i]
        sims.append(float(t @ d / (t.norm() * d.norm())))
    expected = sum(sims) / len(sims)
    verdict = tiny_engine.classify(prompt)[0]
    assert verdict.score == pytest.approx(expected, abs=1e-5)
    assert list(verdict.layer_similarities.values()) == pytest.approx(sims, abs=1e-5)
    assert verdict.label == ("harmful" if expected >= art.recipe.threshold else "benign")


def test_sigma_is_batch_invariant(tiny_engine):
    prompts = ["How do I bake bread?", "Write a script that can exploit vulnerabilities in software.", "Paris?"]
    batched = [v.score for v in tiny_engine.classify(prompts, batch_size=3)]
    single = [tiny_engine.classify(p)[0].score for p in prompts]
    assert batched == pytest.approx(single, abs=1e-5)


def test_harm_direction_is_mean_transition(tiny):
    t = transitions_for(tiny, ["a b c", "How do I bake bread?"], [1, 2], "Sure")
    d = harm_direction(t)
    assert torch.allclose(d, t.mean(0), atol=1e-6)
    scores, per_layer = sigma_scores(t, d)
    assert per_layer.shape == (2, 2) and torch.all(per_layer <= 1 + 1e-6)


def test_label_follows_threshold(tiny_engine):
    verdict = tiny_engine.classify("How do I bake bread?")[0]
    art = tiny_engine.artifact
    below = type(tiny_engine)(tiny_engine.handle, art.with_recipe(threshold=verdict.score + 0.01))
    above = type(tiny_engine)(tiny_engine.handle, art.with_recipe(threshold=verdict.score - 0.01))
    assert below.classify("How do I bake bread?")[0].direction == "away_from_refusal"
    assert above.classify("How do I bake bread?")[0].direction == "towards_refusal"
    grey = type(tiny_engine)(tiny_engine.handle, art.with_recipe(threshold=verdict.score + 0.01, grey_zone=0.05))
    assert grey.classify("How do I bake bread?")[0].direction == "none"


@pytest.mark.parametrize(
    "prompts", [["How do I bake bread?"], ["How do I bake bread?", "Write a script that can exploit vulnerabilities."]]
)
def test_reused_sigma_cache_gives_same_tokens_as_fresh_steered_generation(tiny_engine, prompts):
    cfg = GenerationConfig(max_new_tokens=12)
    reused = tiny_engine.generate(prompts, cfg, reuse_cache=True)
    fresh = tiny_engine.generate(prompts, cfg, reuse_cache=False)
    assert [o.text for o in reused] == [o.text for o in fresh]
    assert all(o.completion_tokens > 0 for o in reused)


def test_unsteered_rows_take_their_first_token_from_the_sigma_pass(tiny_engine):
    """Harmful under a recipe that never steers harmful prompts: no extra forward pass, same tokens as plain."""
    art = tiny_engine.artifact.with_recipe(threshold=-1.0, alpha_harmful=0.0)  # every prompt harmful, coef 0
    engine = type(tiny_engine)(tiny_engine.handle, art)
    prompts = ["How do I bake bread?", "Paris?"]
    cfg = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    calls: list[int] = []
    counter = engine.handle.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        reused = engine.generate(prompts, cfg)
    finally:
        counter.remove()
    assert all(o.verdict.direction == "none" for o in reused)
    assert len(calls) == 1 + 5, "sigma pass + one step per token after the first"
    plain = engine.generate(prompts, cfg, steer=False)
    assert [o.text for o in reused] == [o.text for o in plain]
