"""Refusal vectors: per block, mean last-prompt-token activation over harmful minus benign anchors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..model.hooks import capture_block_outputs
from ..model.loading import ModelHandle
from ..model.prompt_batch import PromptBatch, prefill


def last_token_activations(
    handle: ModelHandle,
    conversations: Sequence[str | list[dict]],
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "activations",
) -> torch.Tensor:
    """Block outputs at the last token of each chat-formatted prompt: [n_prompts, n_layers, hidden] float32."""
    layer_ids = range(handle.n_layers)
    rows = [handle.chat_ids(c) for c in conversations]
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress):
        batch = PromptBatch.left_pad(rows[start : start + batch_size], handle.tokenizer.pad_token_id, handle.device)
        with capture_block_outputs(handle.layers, layer_ids, columns=[-1]) as acts:
            prefill(handle.model, batch)
        out.append(torch.stack([acts[layer][:, 0, :] for layer in layer_ids], dim=1).cpu())
    return torch.cat(out)


def refusal_vectors(harmful: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
    """Unit v^l = normalise(mean harmful - mean benign) per layer: [n_layers, hidden] float32.

    Inputs are [n, n_layers, hidden]; means are accumulated in float64.
    """
    diff = harmful.double().mean(0) - benign.double().mean(0)
    return torch.nn.functional.normalize(diff, dim=-1).float()


def false_refusal_vectors(look_alikes: torch.Tensor, benign: torch.Tensor, refusal: torch.Tensor) -> torch.Tensor:
    """Unit u^l per layer: mean safe look-alike minus mean plain benign activation, orthogonalised against v^l.

    What makes a safe prompt that sounds dangerous ("how do I kill a Python process") differ from a plain one,
    without the part shared with harmful prompts: subtracting it targets false refusal and leaves v alone.
    Inputs: look_alikes, benign [n, n_layers, hidden]; refusal [n_layers, hidden] unit vectors.
    Output: [n_layers, hidden].
    """
    diff = look_alikes.double().mean(0) - benign.double().mean(0)
    v = refusal.double()
    diff = diff - (diff * v).sum(-1, keepdim=True) * v
    return torch.nn.functional.normalize(diff, dim=-1).float()
