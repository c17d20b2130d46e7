"""Which layers are safety-critical: project each layer's harmful-vs-benign direction onto the vocabulary.

Per layer, the first principal component of the paired activation differences (uncentered, sign aligned with the
mean difference) is passed through the final norm and the LM head; middle layers of aligned models map to refusal
tokens ("sorry", "cannot", ...), which marks them as the ones worth steering.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel

from ..model.loading import ModelHandle

REFUSAL_STEMS = (
    "sorry",
    "apolog",
    "cannot",
    "can't",
    "cant",
    "unable",
    "refus",
    "illegal",
    "unethical",
    "harm",
    "inappropriate",
    "dangerous",
    "against",
    "not",
    "no",
    "unfortunately",
    "decline",
    "impossible",
    "forbidden",
    "prohibit",
    "抱歉",
    "不能",
    "无法",
    "拒绝",
)


class LayerProjection(BaseModel):
    layer: int
    top_tokens: list[str]
    refusal_tokens: int  # how many of top_tokens match the refusal lexicon


def is_refusal_token(token: str) -> bool:
    word = token.strip().lower().lstrip("▁Ġ ")
    return bool(word) and any(word.startswith(stem) for stem in REFUSAL_STEMS)


def principal_directions(harmful: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
    """First PC per layer of the paired differences: [n_layers, hidden]. Inputs [n, n_layers, hidden]."""
    m = min(len(harmful), len(benign))
    diffs = (harmful[:m] - benign[:m]).double().transpose(0, 1)  # [n_layers, m, hidden]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    pc = vh[:, 0, :]  # [n_layers, hidden]
    mean_diff = diffs.mean(1)
    sign = torch.sign((pc * mean_diff).sum(-1, keepdim=True))
    return (pc * torch.where(sign == 0, 1.0, sign)).float()


@torch.inference_mode()
def vocabulary_projection(handle: ModelHandle, directions: torch.Tensor, top_k: int = 10) -> list[LayerProjection]:
    """Top tokens of lm_head(final_norm(direction)) for each layer's direction."""
    scale = 10.0  # RMSNorm divides by the norm; the scale only keeps eps negligible
    x = (directions * scale).to(handle.device, handle.dtype)[:, None, :]  # [n_layers, 1, hidden]
    logits = handle.lm_head(handle.final_norm(x))[:, 0, :].float()  # [n_layers, vocab]
    top = logits.topk(top_k, dim=-1).indices.cpu()
    rows = []
    for layer, ids in enumerate(top.tolist()):
        tokens = [handle.decode([i]) for i in ids]
        rows.append(
            LayerProjection(layer=layer, top_tokens=tokens, refusal_tokens=sum(is_refusal_token(t) for t in tokens))
        )
    return rows


def middle_third(n_layers: int) -> list[int]:
    """The default steering layers: the middle third of the blocks (8-15 of 24)."""
    return list(range(n_layers // 3, 2 * n_layers // 3))


def second_half(n_layers: int) -> list[int]:
    """The default classification layers: the second half of the blocks (12-23 of 24)."""
    return list(range(n_layers // 2, n_layers))


def refusal_span(projection: list[LayerProjection], min_tokens: int = 1) -> list[int] | None:
    """The contiguous span from the first to the last layer with >= min_tokens refusal tokens, or None."""
    hits = [p.layer for p in projection if p.refusal_tokens >= min_tokens]
    return list(range(hits[0], hits[-1] + 1)) if hits else None
