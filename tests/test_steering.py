"""The steering seam: the plan each row records, `RefusalVector.apply` (lock and hooks), and that nothing else hooks."""

import ast
import threading
from pathlib import Path

import pytest
import torch

from scans_guard.config import GenerationConfig
from scans_guard.errors import InvalidArgumentError
from scans_guard.model.prompt_batch import PromptBatch, prefill
from scans_guard.steering.plan import SteeringPlan

ROOT = Path(__file__).resolve().parents[1]
SHORT = GenerationConfig(max_new_tokens=3)


def test_plans_record_coefficient_direction_and_source(tiny_engine):
    fixed = SteeringPlan.fixed([2.0, -1.5, 0.0], 3)
    assert [r.direction for r in fixed.rows] == ["towards_refusal", "away_from_refusal", "none"]
    assert {r.source for r in fixed.rows} == {"fixed"} and fixed.steered
    assert fixed.coefficients.tolist() == [2.0, -1.5, 0.0]
    off = SteeringPlan.from_options(2, steer=False, coefficient=3.0)  # steer=False wins, as in generate
    assert not off.steered and {r.source for r in off.rows} == {"none"}
    verdicts = tiny_engine.classify(["How do I bake bread?", "Paris?"])
    sigma = SteeringPlan.from_verdicts(verdicts)
    assert [r.coefficient for r in sigma.rows] == [v.coefficient for v in verdicts]
    assert {(r.source, r.operating_point) for r in sigma.rows} == {("sigma", "steer")}
    with pytest.raises(InvalidArgumentError, match="2 coefficients for 3 prompts"):
        SteeringPlan.fixed([1.0, 2.0], 3)


def test_every_output_carries_the_steering_applied(tiny_engine):
    prompts = ["How do I bake bread?", "Paris?"]
    fixed = tiny_engine.generate(prompts, SHORT, coefficient=[4.0, -4.0])
    assert [(o.steering.coefficient, o.steering.source) for o in fixed] == [(4.0, "fixed"), (-4.0, "fixed")]
    scans = tiny_engine.generate(prompts, SHORT)
    assert [o.steering.coefficient for o in scans] == [o.verdict.coefficient for o in scans]
    assert [o.steering.direction for o in scans] == [o.verdict.direction for o in scans]
    plain = tiny_engine.generate(prompts, SHORT, steer=False)
    assert all(o.steering.source == "none" and o.steering.coefficient == 0 for o in plain)
    assert tiny_engine.steering_plan(prompts).rows == tuple(o.steering for o in scans)


def test_apply_holds_the_model_lock_and_removes_its_hooks(tiny_engine):
    handle = tiny_engine.handle
    batch = PromptBatch.left_pad([handle.chat_ids("Paris?")], handle.tokenizer.pad_token_id)
    plain = prefill(handle.model, batch).logits[:, -1]
    taken_elsewhere = []
    with tiny_engine.steering.apply(SteeringPlan.fixed(4.0, 1)):
        steered = prefill(handle.model, batch).logits[:, -1]
        thread = threading.Thread(target=lambda: taken_elsewhere.append(handle.lock.acquire(blocking=False)))
        thread.start()
        thread.join()
    assert taken_elsewhere == [False] and not torch.allclose(plain, steered)
    assert all(not layer._forward_hooks for layer in handle.layers)
    with tiny_engine.steering.apply(SteeringPlan.unsteered(1)):  # nothing steered: no hooks at all
        assert all(not layer._forward_hooks for layer in handle.layers)
    assert torch.equal(prefill(handle.model, batch).logits[:, -1], plain)


def test_only_the_core_imports_the_hooks():
    """Steering goes through `RefusalVector`; capture hooks belong to the classifier and the vectors."""
    allowed = {"scans_guard/steering/plan.py", "scans_guard/sigma/classifier.py", "scans_guard/calibration/vectors.py"}
    importers = set()
    for path in [*ROOT.glob("scans_guard/**/*.py"), *ROOT.glob("integrations/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "hooks":
                importers.add(str(path.relative_to(ROOT)))
    assert importers <= allowed, importers - allowed
