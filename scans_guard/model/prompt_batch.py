"""Left-padded batches of token ids, so every row's last prompt token sits in the same column."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidPromptError

if TYPE_CHECKING:  # `import scans_guard` stays free of transformers
    from transformers import Cache
    from transformers.modeling_outputs import CausalLMOutputWithPast


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # [batch, seq] left-padded
    attention_mask: torch.Tensor  # [batch, seq] 1 = real token
    lengths: list[int]  # real tokens per row

    @classmethod
    def left_pad(cls, rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> PromptBatch:
        if not rows or any(len(r) == 0 for r in rows):
            raise InvalidPromptError("every prompt needs at least one token")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return cls(ids.to(device), mask.to(device), [len(r) for r in rows])

    @property
    def position_ids(self) -> torch.Tensor:
        """[batch, seq] positions counted over real tokens only (pads get 0)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def check_fits(lengths: Sequence[int], extra_tokens: int, context_window: int) -> None:
    """Refuse a prompt that, with the tokens to be added, would not fit the context window."""
    longest = max(lengths)
    if longest + extra_tokens > context_window:
        raise InvalidPromptError(
            f"prompt of {longest} tokens plus {extra_tokens} more exceeds the context window of {context_window}"
        )


@torch.inference_mode()
def prefill(
    model: torch.nn.Module, batch: PromptBatch, use_cache: bool = False, logits_to_keep: int = 1
) -> CausalLMOutputWithPast:
    """One forward pass over a left-padded batch with correct positions; logits only for the last columns."""
    return model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=use_cache,
        logits_to_keep=logits_to_keep,
    )


@torch.inference_mode()
def forward_step(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Cache | None,
) -> tuple[Cache, torch.Tensor]:
    """One decoding forward pass, the one every decoding step runs: `input_ids` [batch, new] after the columns `cache`
    holds (None: none), `attention_mask` [batch, cached + new]; the grown cache and the last column's logits, [batch,
    vocab] float32."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.cache, out.logits[:, -1, :].float()
