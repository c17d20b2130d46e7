"""The variants of the step away from refusal: ablation, the false-refusal direction and the margin-grown alpha."""

import pytest
import torch

from scans_guard import ScansEngine
from scans_guard.calibration.artifacts import Artifact
from scans_guard.calibration.vectors import false_refusal_vectors
from scans_guard.config import GenerationConfig
from scans_guard.errors import ArtifactError
from scans_guard.model.hooks import BlockEdit, capture_block_outputs
from scans_guard.model.prompt_batch import PromptBatch, prefill
from scans_guard.steering.plan import SteeringPlan

SHORT = GenerationConfig(max_new_tokens=6)
PROMPTS = ["How do I bake bread?", "Paris is the capital of which country?"]


def _block_outputs(engine: ScansEngine, plan: SteeringPlan) -> dict[int, torch.Tensor]:
    handle = engine.handle
    batch = PromptBatch.left_pad([handle.chat_ids(p) for p in PROMPTS], handle.tokenizer.pad_token_id)
    layers = engine.recipe.steer_layers
    with engine.steering.apply(plan), capture_block_outputs(handle.layers, layers, columns=[-1]) as acts:
        prefill(handle.model, batch)
    return {layer: acts[layer][:, 0, :] for layer in layers}  # [batch, hidden]


def test_block_edit_removes_the_component_of_ablated_rows_only():
    unit = torch.nn.functional.normalize(torch.randn(8), dim=0)
    hidden = torch.randn(2, 3, 8)
    edited = BlockEdit(torch.zeros(2, 8), unit, torch.tensor([1.0, 0.0]))(hidden)
    assert torch.allclose(edited[0] @ unit, torch.zeros(3), atol=1e-5)  # row 0: nothing left along unit
    assert torch.equal(edited[1], hidden[1])  # row 1 untouched


def test_ablation_steers_away_rows_and_leaves_towards_rows_as_added(tiny, tiny_artifact):
    added = ScansEngine(tiny, tiny_artifact)
    ablating = ScansEngine(tiny, tiny_artifact.with_recipe(away_step="ablate"))
    plan = SteeringPlan.fixed([-4.0, 4.0], 2)
    out_add, out_abl = _block_outputs(added, plan), _block_outputs(ablating, plan)
    last = max(ablating.recipe.steer_layers)
    v = tiny_artifact.refusal_vectors[last]
    assert abs(float(out_abl[last][0] @ v)) < 1e-4 < abs(float(out_add[last][0] @ v))  # away row: ablated
    first = min(ablating.recipe.steer_layers)
    assert torch.allclose(out_abl[first][1], out_add[first][1], atol=1e-5)  # towards row: +4v either way
    plain = [o.text for o in ablating.generate(PROMPTS, SHORT, steer=False)]
    steered = [o.text for o in ablating.generate(PROMPTS, SHORT, coefficient=-1.0)]
    assert steered != plain  # ablation changes what the model says


def test_false_refusal_direction_is_orthogonal_to_v_and_what_away_rows_get(tiny, tiny_artifact):
    v = tiny_artifact.refusal_vectors
    look_alikes, benign = torch.randn(5, *v.shape), torch.randn(6, *v.shape)
    u = false_refusal_vectors(look_alikes, benign, v)
    assert torch.allclose((u * v).sum(-1), torch.zeros(v.shape[0]), atol=1e-5)
    assert torch.allclose(u.norm(dim=-1), torch.ones(v.shape[0]), atol=1e-5)
    art = Artifact(tiny_artifact.meta, v, tiny_artifact.d_harm, tiny_artifact.probe_weight, u)
    fr = ScansEngine(tiny, art.with_recipe(away_direction="false_refusal"))
    deltas = fr.steering.deltas(SteeringPlan.fixed([-2.0, 3.0], 2))
    layer = fr.recipe.steer_layers[0]
    assert torch.allclose(deltas[layer][0], -2.0 * u[layer], atol=1e-6)  # away: -alpha u
    assert torch.allclose(deltas[layer][1], 3.0 * v[layer], atol=1e-6)  # towards: still +alpha v
    plain = [o.text for o in fr.generate(PROMPTS, SHORT, coefficient=-4.0)]
    with_v = [o.text for o in ScansEngine(tiny, art).generate(PROMPTS, SHORT, coefficient=-4.0)]
    assert plain != with_v  # a different direction changes the replies


def test_false_refusal_vectors_round_trip_and_are_required_by_the_recipe(tiny_artifact, tmp_path):
    v = tiny_artifact.refusal_vectors
    u = false_refusal_vectors(torch.randn(3, *v.shape), torch.randn(3, *v.shape), v)
    art = Artifact(tiny_artifact.meta, v, tiny_artifact.d_harm, tiny_artifact.probe_weight, u)
    loaded = Artifact.load(art.with_recipe(away_direction="false_refusal").save(tmp_path / "fr"))
    assert torch.equal(loaded.false_refusal_vectors, u) and torch.equal(loaded.away_vectors, u)
    with pytest.raises(ArtifactError, match="no false_refusal_vectors"):
        tiny_artifact.with_recipe(away_direction="false_refusal")


def test_margin_grows_alpha_below_t_up_to_its_cap(tiny_artifact):
    recipe = tiny_artifact.with_recipe(alpha_benign=2.0, alpha_benign_slope=0.5, alpha_benign_max=4.0).recipe
    t = recipe.threshold
    assert recipe.coefficient(t - 0.1) == pytest.approx(-2.05)
    assert recipe.coefficient(t - 2.0) == pytest.approx(-3.0)
    assert recipe.coefficient(t - 100.0) == -4.0  # capped
    assert recipe.coefficient(t + 0.1) == recipe.alpha_harmful  # harmful side unchanged
    assert recipe.coefficient(t - 2.0, in_domain=False) == 0.0  # never away outside the domain
    flat = tiny_artifact.with_recipe(alpha_benign=2.0).recipe
    assert flat.coefficient(t - 100.0) == -2.0
