"""Token choice: transformers' logits processors as `generate` applies them, seeded sampling, model defaults."""

import math

import pytest
from pydantic import ValidationError
from transformers import GenerationConfig as HFGenerationConfig

from scans_guard import GenerationConfig
from scans_guard.model.prompt_batch import PromptBatch
from scans_guard.serving.scheduler import decode_token_ids

PROMPTS = ["How do I bake bread at home?", "Paris?"]  # unequal lengths: left padding must be ignored


def _batch(handle):
    return PromptBatch.left_pad([handle.chat_ids(p) for p in PROMPTS], handle.tokenizer.pad_token_id)


def _until_eos(ids, eos):
    out = []
    for t in ids:
        if t in eos:
            break
        out.append(t)
    return out


def _ours(engine, config):
    """The engine's decoding loop (its step scheduler), plain: each reply's token ids."""
    return [
        _until_eos(ids, engine.handle.eos_token_ids()) for ids in decode_token_ids(engine.scheduler, PROMPTS, config)
    ]


def _hf(handle, n, **kwargs):
    batch = _batch(handle)
    out = handle.model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=n,
        pad_token_id=handle.tokenizer.pad_token_id,
        **kwargs,
    )
    return [_until_eos(row.tolist(), handle.eos_token_ids()) for row in out[:, batch.input_ids.shape[1] :]]


@pytest.mark.parametrize("penalty", [None, 1.5, 0.7])
def test_greedy_matches_transformers_generate(tiny_engine, penalty):
    config = GenerationConfig(max_new_tokens=10, repetition_penalty=penalty)
    hf = {"repetition_penalty": penalty} if penalty is not None else {}
    assert _ours(tiny_engine, config) == _hf(tiny_engine.handle, 10, do_sample=False, **hf)


def test_repetition_penalty_changes_greedy_output(tiny_engine):
    plain = _ours(tiny_engine, GenerationConfig(max_new_tokens=12))
    assert _ours(tiny_engine, GenerationConfig(max_new_tokens=12, repetition_penalty=3.0)) != plain
    assert _ours(tiny_engine, GenerationConfig(max_new_tokens=12, repetition_penalty=1.0)) == plain  # 1 = off


def test_seeded_sampling_is_reproducible(tiny_engine):
    cfg = dict(max_new_tokens=10, temperature=1.3, top_p=0.95, top_k=40, repetition_penalty=1.2)
    runs = [tiny_engine.generate(PROMPTS, GenerationConfig(**cfg, seed=s)) for s in (5, 5, 6, 7, 8)]
    texts = [[o.text for o in run] for run in runs]
    assert texts[0] == texts[1]
    assert len({tuple(t) for t in texts}) > 1, "different seeds should draw different replies"


def test_top_k_one_samples_the_greedy_token(tiny_engine):
    greedy = [o.text for o in tiny_engine.generate(PROMPTS, GenerationConfig(max_new_tokens=8))]
    sampled = tiny_engine.generate(PROMPTS, GenerationConfig(max_new_tokens=8, temperature=2.0, top_k=1, seed=1))
    assert [o.text for o in sampled] == greedy


@pytest.mark.parametrize(
    "bad",
    [
        {"top_k": 0},
        {"repetition_penalty": 0.0},
        {"repetition_penalty": -1.0},
        {"repetition_penalty": math.inf},
        {"repetition_penalty": math.nan},
        {"repetition_penalty": 1e-300},
        {"repetition_penalty": 1e308},
    ],
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValidationError):
        GenerationConfig(**bad)


def test_model_defaults_only_when_asked():
    model_gc = HFGenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    cfg = GenerationConfig.from_model_defaults(model_gc)
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty) == (0.7, 0.8, 20, 1.05)
    mine = GenerationConfig.from_model_defaults(model_gc, temperature=0.0, top_k=None, max_new_tokens=5)
    assert (mine.temperature, mine.top_p, mine.top_k, mine.max_new_tokens) == (0.0, 0.8, None, 5)
    greedy_model = HFGenerationConfig(do_sample=False, temperature=0.7, repetition_penalty=1.1)
    assert GenerationConfig.from_model_defaults(greedy_model).temperature == 0.0
    assert GenerationConfig.from_model_defaults(greedy_model).repetition_penalty == 1.1
    assert GenerationConfig().temperature == 0.0 and GenerationConfig().top_k is None  # the default stays greedy


def test_model_defaults_from_a_handle(tiny):
    before = tiny.model.generation_config
    try:
        tiny.model.generation_config = HFGenerationConfig(do_sample=True, top_k=7)
        cfg = GenerationConfig.from_model_defaults(tiny, seed=3)
        assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed) == (1.0, 7, 1.0, 3)
    finally:
        tiny.model.generation_config = before
    assert GenerationConfig.from_model_defaults(tiny) == GenerationConfig()  # the tiny model asks for nothing
