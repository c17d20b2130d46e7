"""What the fuzz tests share: hypothesis settings, text strategies, and how a prompt is measured against the context
window (without the engine's own validation, so its answer can be checked against it)."""

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from scans_guard import InvalidPromptError, SafetyVerdict

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Any Unicode scalar value except surrogates (not encodable as UTF-8): letters, marks, control characters (C0, C1,
# DEL, NUL), format characters (bidi overrides, zero-width, BOM), private use, unassigned code points.
ANY_CHAR = st.characters(exclude_categories=("Cs",))
TEXT = st.text(ANY_CHAR, max_size=120)
ODD_TEXT = st.lists(
    st.sampled_from(
        [
            "\x00",
            "\x1b",
            "\x7f",
            "\u0085",
            "\u200b",
            "\u202e",
            "\ufeff",
            "\ufffd",
            "\u0301",
            "\U0001f600",
            "\U000e0001",
            "\uffff",
            " ",
            "\n",
            "a",
            "<|im_end|>",
            "<|im_start|>",
            "<|endoftext|>",
        ]
    ),
    max_size=60,
).map("".join)


def n_tokens(engine, conversation) -> int:
    """Prompt tokens as the engine counts them (chat template + generation prompt), without its validation."""
    tok = engine.handle.tokenizer
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def fits(engine, conversation) -> bool:
    """Whether the prompt plus the r_pos tokens of the sigma pass fit the context window."""
    return n_tokens(engine, conversation) + len(engine._rpos) <= engine.handle.context_window


def classify_one(engine, conversation):
    """One verdict or InvalidPromptError; any other exception fails the test."""
    try:
        verdicts = engine.classify([conversation])
    except InvalidPromptError:
        return None
    assert len(verdicts) == 1 and isinstance(verdicts[0], SafetyVerdict)
    assert verdicts[0].label in {"harmful", "benign"} and verdicts[0].score == verdicts[0].score  # not NaN
    return verdicts[0]


def truncate_to_fit(engine, text: str) -> str:
    """The longest prefix of `text` whose chat-formatted prompt (plus r_pos) fits the context window."""
    if fits(engine, text):
        return text
    lo, hi = 0, len(text)  # fits(text[:lo]) holds, fits(text[:hi]) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(engine, text[:mid]) else (lo, mid)
    return text[:lo]
