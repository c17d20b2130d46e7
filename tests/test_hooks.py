"""Steering hooks: where they add, what they leave alone, and that they always go away."""

import pytest
import torch

from scans_guard.config import GenerationConfig
from scans_guard.decoding.reply import ReplyState
from scans_guard.model.hooks import add_to_block_outputs, capture_block_outputs
from scans_guard.model.prompt_batch import PromptBatch, prefill
from scans_guard.sigma.classifier import r_pos_ids


def _no_hooks(handle):
    return all(not layer._forward_hooks for layer in handle.layers)


def _batch(handle, prompts):
    return PromptBatch.left_pad([handle.chat_ids(p) for p in prompts], handle.tokenizer.pad_token_id)


def test_hooks_removed_when_forward_raises(tiny):
    delta = {1: torch.ones(1, tiny.hidden_size)}
    with pytest.raises(RuntimeError, match="boom"):
        with add_to_block_outputs(tiny.layers, delta), capture_block_outputs(tiny.layers, [2], [-1]):
            assert not _no_hooks(tiny)
            raise RuntimeError("boom")
    assert _no_hooks(tiny)


def test_hooks_removed_when_generation_raises_or_is_abandoned(tiny_engine, monkeypatch):
    tiny, prompt = tiny_engine.handle, "How do I bake bread?"

    def explode(*_args):
        raise RuntimeError("stop check failed")

    with monkeypatch.context() as patched:
        patched.setattr(ReplyState, "advance", explode)  # the check that ends a reply, inside a steered step
        with pytest.raises(RuntimeError, match="stop check failed"):
            tiny_engine.generate(prompt, GenerationConfig(max_new_tokens=5), coefficient=3.0)
    assert _no_hooks(tiny)
    gen = tiny_engine.iter_generate(prompt, GenerationConfig(max_new_tokens=50, ignore_eos=True), coefficient=3.0)
    next(e for e in gen if e.text)  # decoding under the steering hooks has begun
    gen.close()  # an abandoned stream
    assert _no_hooks(tiny)


def test_positions_before_last_prompt_token_untouched(tiny):
    batch = _batch(tiny, ["How do I bake bread?", "Paris?"])
    width = batch.input_ids.shape[1]
    cols = list(range(width))
    delta = {1: torch.full((2, tiny.hidden_size), 5.0)}
    with capture_block_outputs(tiny.layers, [3], cols) as plain:
        prefill(tiny.model, batch)
    with (
        add_to_block_outputs(tiny.layers, delta, start_column=width - 1),
        capture_block_outputs(tiny.layers, [3], cols) as steered,
    ):
        prefill(tiny.model, batch)
    assert torch.equal(plain[3][:, :-1], steered[3][:, :-1])
    assert not torch.allclose(plain[3][:, -1], steered[3][:, -1], atol=1e-3)


class _Spy:
    """Records, per forward call, block l's raw output and block l+1's input (= l's output after steering)."""

    def __init__(self, handle, layer):
        self.raw, self.after = [], []
        self._handles = [
            handle.layers[layer].register_forward_hook(lambda m, a, o: self.raw.append(o.clone())),
            handle.layers[layer + 1].register_forward_pre_hook(lambda m, a: self.after.append(a[0].clone())),
        ]

    def remove(self):
        for h in self._handles:
            h.remove()


@pytest.mark.parametrize("reuse_cache", [False, True])
def test_last_prompt_token_and_every_generated_token_steered_with_per_row_signs(tiny_engine, reuse_cache):
    tiny = tiny_engine.handle
    spy = _Spy(tiny, 1)  # registered first, so it sees block 1's output before the steering hook
    try:
        events = list(
            tiny_engine.iter_generate(
                ["How do I bake bread?", "Paris?"],
                GenerationConfig(max_new_tokens=6),
                coefficient=None,
                reuse_cache=reuse_cache,
            )
        )
    finally:
        spy.remove()
    coefs = torch.tensor([e.verdict.coefficient for e in events if e.verdict is not None])
    assert set(torch.sign(coefs).tolist()) <= {-1.0, 1.0}
    v = tiny_engine.artifact.refusal_vectors[1]
    sigma_raw, sigma_after = spy.raw[0], spy.after[0]  # call 0 is the classification pass: never steered
    assert torch.equal(sigma_raw, sigma_after)
    prompt_call = spy.raw[1]  # the whole prompt, or only its last token when the sigma pass's cache is reused
    n_rpos = len(r_pos_ids(tiny, tiny_engine.recipe.r_pos))
    assert prompt_call.shape[1] == (1 if reuse_cache else sigma_raw.shape[1] - n_rpos)
    assert len(spy.raw) >= 3
    for i, (raw, after) in enumerate(zip(spy.raw[1:], spy.after[1:])):
        diff = after - raw  # [batch, seq, hidden]
        expected = coefs[:, None] * v[None, :]
        assert torch.allclose(diff[:, -1], expected, atol=1e-4), f"forward call {i} not steered"
        assert torch.count_nonzero(diff[:, :-1]) == 0, "earlier prompt positions were touched"


def test_batch_rows_carry_their_own_sign(tiny_engine):
    prompt = "How do I bake bread?"
    cfg = GenerationConfig(max_new_tokens=8)
    up, down = (tiny_engine.generate(prompt, cfg, coefficient=c)[0].text for c in (6.0, -6.0))
    plain = tiny_engine.generate(prompt, cfg, steer=False)[0].text
    assert len({up, down, plain}) == 3, "steering in either direction must change the output"
    batched = tiny_engine.generate([prompt, prompt, prompt], cfg, coefficient=[6.0, -6.0, 0.0])
    assert [o.text for o in batched] == [up, down, plain]
