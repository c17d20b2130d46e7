"""Fuzzing of the classifier's input path and the generation numbers, on the tiny model.

The contract: whatever a caller passes as a conversation, `classify` (and `generate`) return results or raise
`InvalidPromptError`; never another exception (see docs/hardening.md). Bad input one case at a time:
test_bad_prompts.py; the artifact loader: test_fuzz_artifact.py.
"""

import math

import pytest
from fuzz_helpers import ANY_CHAR, FUZZ, ODD_TEXT, TEXT, classify_one, fits, truncate_to_fit
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scans_guard import GenerationConfig, InvalidArgumentError, InvalidPromptError
from scans_guard.steering.plan import MAX_COEFFICIENT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@FUZZ
@given(text=st.one_of(TEXT, ODD_TEXT))
def test_fuzz_text_gives_a_verdict_or_invalid_prompt(tiny_engine, text):
    verdict = classify_one(tiny_engine, text)
    if text.strip() and fits(tiny_engine, text):
        assert verdict is not None, f"{text!r} is non-blank text that fits, yet was refused"
    else:
        assert verdict is None


@FUZZ
@given(
    text=st.text(ANY_CHAR, min_size=1, max_size=40).flatmap(
        lambda t: st.integers(1, 4000 // len(t) + 1).map(lambda k: t * k)
    )
)
def test_fuzz_long_text(tiny_engine, text):
    """Very long strings: too long is InvalidPromptError naming the context window; truncated to fit, a verdict."""
    try:
        tiny_engine.classify([text])
    except InvalidPromptError as exc:
        assert "context window" in str(exc) or not text.strip()
    cut = truncate_to_fit(tiny_engine, text)
    verdict = classify_one(tiny_engine, cut)
    assert (verdict is not None) == bool(cut.strip())


CONTENT = st.one_of(
    TEXT,
    ODD_TEXT,
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(max_size=8),
    st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "image_url"]), "text": TEXT}), max_size=3
    ),
    st.dictionaries(st.text(max_size=5), TEXT, max_size=2),
)
ROLE = st.one_of(st.sampled_from(["user", "assistant", "system", "tool", "developer"]), TEXT, st.none(), st.integers())
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLE, "content": CONTENT}),
    st.fixed_dictionaries({"role": ROLE, "content": TEXT}),
    st.fixed_dictionaries({"content": TEXT}),  # no role
    st.fixed_dictionaries({"role": ROLE}),  # no content
    st.fixed_dictionaries({"role": ROLE, "content": TEXT, "name": TEXT, "tool_calls": st.just([])}),
    TEXT,
    st.none(),
    st.integers(),  # not a message at all
)


@FUZZ
@given(messages=st.lists(MESSAGE, max_size=5))
def test_fuzz_message_lists(tiny_engine, messages):
    verdict = classify_one(tiny_engine, messages)
    well_formed = bool(messages) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    if not well_formed or not messages[-1]["content"].strip():
        assert verdict is None, f"malformed conversation {messages!r} was accepted"
    elif fits(tiny_engine, messages):
        assert verdict is not None, f"well-formed conversation {messages!r} that fits was refused"


@settings(max_examples=15, deadline=None)
@given(conversation=st.one_of(TEXT, ODD_TEXT, st.lists(MESSAGE, max_size=3)))
def test_fuzz_generate_path(tiny_engine, conversation):
    """The same contract through generate (sigma pass, KV cache reuse, steered decoding)."""
    try:
        out = tiny_engine.generate([conversation], GenerationConfig(max_new_tokens=2))
    except InvalidPromptError:
        return
    assert len(out) == 1 and out[0].completion_tokens <= 2 and out[0].verdict is not None
    assert all(not layer._forward_hooks for layer in tiny_engine.handle.layers)


# -- numbers on the generation path --------------------------------------------------------------------------------

ANY_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-45, 1e-3, 1.0, 1e30]))


@settings(max_examples=25, deadline=None)
@given(temperature=ANY_FLOAT, top_p=ANY_FLOAT, coefficient=st.one_of(st.none(), ANY_FLOAT))
def test_fuzz_generation_numbers(tiny_engine, temperature, top_p, coefficient):
    """Any temperature, top_p and fixed coefficient: a typed error or a reply, never NaN-driven decoding errors."""
    try:
        config = GenerationConfig(max_new_tokens=2, temperature=temperature, top_p=top_p, seed=0)
    except ValidationError:
        assert not (
            math.isfinite(temperature)
            and (temperature == 0 or temperature >= 1e-3)
            and math.isfinite(top_p)
            and 0 < top_p <= 1
        )
        return
    try:
        out = tiny_engine.generate("Paris?", config, coefficient=coefficient)
    except InvalidArgumentError:
        assert coefficient is not None and not (math.isfinite(coefficient) and abs(coefficient) <= MAX_COEFFICIENT)
        return
    assert len(out) == 1 and out[0].completion_tokens <= 2
