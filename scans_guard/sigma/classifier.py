"""sigma(q): does the prompt's hidden state move towards the harmful transition when the answer starts with r_pos?

One forward pass over chat(q) + r_pos gives, per classification layer, the transition
t^l = h^l(last prompt token) - h^l(last r_pos token). The score is the mean cosine similarity to
d_harm^l, the mean transition of harmful anchors. The same pass leaves a KV cache that, cropped to the
prompt minus its last token, seeds the steered generation, so classification costs one extra token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import NonFiniteScoreError
from ..model.hooks import capture_block_outputs
from ..model.loading import ModelHandle
from ..model.prompt_batch import PromptBatch, prefill

if TYPE_CHECKING:  # `import scans_guard` stays free of transformers
    from transformers import Cache


def r_pos_ids(handle: ModelHandle, r_pos: str) -> list[int]:
    """Token ids of the answer prefix as it follows the generation prompt."""
    ids = handle.encode(r_pos, content=False)
    if not ids:
        raise ValueError(f"r_pos {r_pos!r} has no tokens")
    return list(ids)


@dataclass
class SigmaPass:
    """Result of the classification pass over a batch of prompts."""

    transitions: torch.Tensor  # [batch, n_classify_layers, hidden] float32, on CPU
    prompt_batch: PromptBatch  # left-padded prompts without r_pos
    cache: Cache | None  # KV cache over every prompt column (r_pos cropped off), or None
    last_prompt_logits: torch.Tensor | None  # [batch, vocab] unsteered next-token logits after the prompt, or None

    def drop_last_prompt_token(self) -> None:
        """Crop the cache to prompt[:-1], so steered decoding can recompute the last prompt token under steering."""
        if self.cache is not None:
            self.cache.crop(-1)
        self.last_prompt_logits = None


def run_sigma_pass(
    handle: ModelHandle,
    prompt_rows: Sequence[Sequence[int]],
    rpos: Sequence[int],
    classify_layers: Sequence[int],
    keep_cache: bool = False,
) -> SigmaPass:
    """Forward chat(q) + r_pos once; read transitions and optionally keep the prompt's KV cache and the logits after
    the last prompt token (an unsteered row can take its first token from them: no extra forward pass)."""
    n = len(rpos)
    batch = PromptBatch.left_pad(
        [list(r) + list(rpos) for r in prompt_rows], handle.tokenizer.pad_token_id, handle.device
    )
    with capture_block_outputs(handle.layers, classify_layers, columns=[-1 - n, -1]) as h:
        out = prefill(handle.model, batch, use_cache=keep_cache, logits_to_keep=n + 1 if keep_cache else 1)
    transitions = torch.stack([h[layer][:, 0, :] - h[layer][:, 1, :] for layer in classify_layers], dim=1).cpu()
    cache, logits = None, None
    if keep_cache:
        if out.cache is None or out.logits is None:
            raise RuntimeError(f"{handle.name} returned no KV cache or logits with use_cache=True")
        cache = out.cache
        cache.crop(-n)  # drop r_pos: the cache now covers exactly the prompt
        logits = out.logits[:, 0, :].float()  # predicted at the last prompt token
    prompt_batch = PromptBatch(batch.input_ids[:, :-n], batch.attention_mask[:, :-n], [len(r) for r in prompt_rows])
    return SigmaPass(transitions=transitions, prompt_batch=prompt_batch, cache=cache, last_prompt_logits=logits)


def transitions_for(
    handle: ModelHandle,
    conversations: Sequence[str | list[dict]],
    classify_layers: Sequence[int],
    r_pos: str,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "transitions",
) -> torch.Tensor:
    """Transitions of many prompts, batched: [n_prompts, n_classify_layers, hidden] float32."""
    rpos = r_pos_ids(handle, r_pos)
    rows = [handle.chat_ids(c) for c in conversations]
    chunks = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress):
        chunks.append(run_sigma_pass(handle, rows[start : start + batch_size], rpos, classify_layers).transitions)
    return torch.cat(chunks)


def harm_direction(harmful_transitions: torch.Tensor) -> torch.Tensor:
    """d_harm^l: mean transition over harmful anchors, [n_classify_layers, hidden] (accumulated in float64)."""
    return harmful_transitions.double().mean(0).float()


def sigma_scores(
    transitions: torch.Tensor,
    d_harm: torch.Tensor,
    probe: tuple[int, torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score [n], per-layer cosine similarity [n, n_classify_layers]) of transitions against d_harm.

    Without a probe the score is the mean cosine (the paper's sigma); with `probe` = (index among the classify
    layers, weight [hidden], bias) it is the probe's logit w . t + b on that layer's transition.
    A score that is not finite raises NonFiniteScoreError naming the row: `NaN >= T` is false, so a NaN
    returned here would read as benign and be steered away from refusal.
    """
    per_layer = torch.nn.functional.cosine_similarity(transitions.double(), d_harm.double()[None], dim=-1)
    if probe is None:
        scores = per_layer.mean(-1)
    else:
        index, weight, bias = probe
        scores = transitions[:, index].double() @ weight.double() + bias
    bad = (~torch.isfinite(scores)).nonzero().flatten()
    if len(bad):
        raise NonFiniteScoreError(int(bad[0]))
    return scores.float(), per_layer.float()
