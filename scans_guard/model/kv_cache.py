"""The running batch of continuous batching: per-layer KV tensors, masks and positions, rows joining and leaving.

Rows are left-padded to a common cache length; joining pads the shorter side on the left, leaving index-selects the
batch dimension and drops columns that are padding in every remaining row. The padding is masked out, so a row's
attention sees only its own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import UnsupportedArchitectureError

if TYPE_CHECKING:  # `import scans_guard` stays free of transformers
    from transformers import Cache


@dataclass
class KVBatch:
    """The running batch: per-layer KV tensors, masks and positions, one row per active request."""

    keys: list[torch.Tensor]  # per layer [batch, heads, seq, head_dim]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [batch, seq] 1 = real token
    positions: torch.Tensor  # [batch] position of the next input token
    inputs: torch.Tensor  # [batch] next input token
    rows: list  # the scheduler's per-row state, in batch order

    def select(self, index: Sequence[int], rows: list | None = None) -> KVBatch:
        """Rows `index` only (named `rows`, default: their own), without columns that are padding in all of them."""
        idx = torch.tensor(list(index), dtype=torch.long, device=self.mask.device)
        rows = rows if rows is not None else [self.rows[i] for i in index]
        batch = KVBatch(
            [k[idx] for k in self.keys],
            [v[idx] for v in self.values],
            self.mask[idx],
            self.positions[idx],
            self.inputs[idx],
            rows,
        )
        batch._trim()
        return batch

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        if self.mask.shape[1] == 0 or not self.rows:
            return
        first = int((self.mask != 0).int().argmax(dim=1).min()) if bool(self.mask.any()) else self.mask.shape[1]
        if first > 0:
            self.keys = [k[:, :, first:] for k in self.keys]
            self.values = [v[:, :, first:] for v in self.values]
            self.mask = self.mask[:, first:]

    @staticmethod
    def merge(a: KVBatch | None, b: KVBatch) -> KVBatch:
        """Rows of `a` then `b`, left-padded to a common cache length."""
        if a is None or not a.rows:
            return b
        width = max(a.mask.shape[1], b.mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        return KVBatch(
            [torch.cat([pad(x, 2), pad(y, 2)]) for x, y in zip(a.keys, b.keys)],
            [torch.cat([pad(x, 2), pad(y, 2)]) for x, y in zip(a.values, b.values)],
            torch.cat([pad(a.mask, 1), pad(b.mask, 1)]),
            torch.cat([a.positions, b.positions]),
            torch.cat([a.inputs, b.inputs]),
            a.rows + b.rows,
        )


def cache_tensors(cache: object) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values of a transformers DynamicCache of full-attention layers."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise UnsupportedArchitectureError(
            f"continuous batching needs a dynamic full-attention KV cache, got {type(cache).__name__}"
        )
    return [layer.keys for layer in layers], [layer.values for layer in layers]


def make_cache(keys: list[torch.Tensor], values: list[torch.Tensor]) -> Cache:
    """A DynamicCache whose layers hold these tensors (no copy; the forward pass appends to them)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for k, v in zip(keys, values):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache
