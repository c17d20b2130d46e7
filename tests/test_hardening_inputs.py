"""Every bad argument of the engine (conversations, batch sizes, coefficients, configuration
numbers, prompt length) is a typed error before any forward pass.

Runs on the tiny model; see docs/hardening.md for the table these tests back.
"""

import pytest
from pydantic import ValidationError

from scans_guard import (
    CalibrationConfig,
    GenerationConfig,
    InvalidPromptError,
    PromptTooLongError,
    ScansEngine,
    SteeringRecipe,
)
from scans_guard import core as core_module
from scans_guard.config import MIN_TEMPERATURE
from scans_guard.errors import InvalidArgumentError
from scans_guard.serving import admission as admission_module
from scans_guard.serving import stepping as stepping_module

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


@pytest.mark.parametrize(
    "coefficient", [float("nan"), float("inf"), -float("inf"), [1.0, float("nan")], "1", None], ids=repr
)
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


@pytest.mark.parametrize(
    "field, value",
    [
        ("stop", [""]),
        ("stop", ["ok", ""]),
        *[("temperature", v) for v in [*NON_FINITE, 1e-45, 5e-324, 1e-4, -1.0]],
        *[("top_p", v) for v in [*NON_FINITE, 0.0, 1.5]],
    ],
)
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
    assert (
        len(list(getattr(capped_engine, call)(at_cap, SHORT) if call != "classify" else capped_engine.classify(at_cap)))
        >= 1
    )
    passes = ((core_module, "run_sigma_pass"), (admission_module, "prefill"), (stepping_module, "forward_step"))
    for module, forward in passes:
        monkeypatch.setattr(module, forward, lambda *a, **k: pytest.fail("a forward pass ran"))  # none may run
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
