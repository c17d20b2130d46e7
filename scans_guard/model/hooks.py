"""Forward hooks on decoder blocks, as context managers that always remove themselves.

transformers 5 blocks return a plain Tensor, older ones a tuple whose first item is the hidden state; both are handled.
Hooks live only for the forward passes run inside their `with` block, so a request's steering never outlives it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

BlockOutput = torch.Tensor | tuple[torch.Tensor, ...]


def _hidden(output: BlockOutput) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: BlockOutput, hidden: torch.Tensor) -> BlockOutput:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def capture_block_outputs(
    layers: nn.ModuleList, layer_ids: Sequence[int], columns: Sequence[int]
) -> Iterator[dict[int, torch.Tensor]]:
    """Record block outputs at the given sequence columns (negative allowed) of the next forward pass.

    Yields {layer: tensor [batch, len(columns), hidden]} in float32, filled once the forward pass has run;
    only the requested columns are kept, never the full hidden-state stack.
    """
    captured: dict[int, torch.Tensor] = {}
    cols = list(columns)

    def make_hook(layer_id: int):
        def hook(_module, _args, output):
            captured[layer_id] = _hidden(output)[:, cols, :].detach().float()

        return hook

    with ExitStack() as stack:
        for layer_id in layer_ids:
            handle = layers[layer_id].register_forward_hook(make_hook(layer_id))
            stack.callback(handle.remove)
        yield captured


@dataclass(frozen=True)
class BlockEdit:
    """What one block's output gets, per row b: h + add[b] - ablate[b] * (h . unit) unit.

    `add` is [batch, hidden]; `unit` a [hidden] unit direction and `ablate` [batch] weights (1: remove the row's
    component along `unit`, 0: keep it), both None when no row ablates.
    """

    add: torch.Tensor
    unit: torch.Tensor | None = None
    ablate: torch.Tensor | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [batch, seq, hidden] -> edited copy of the same shape and dtype."""
        out = hidden.float()
        if self.unit is not None and self.ablate is not None:
            unit = self.unit.to(out.device, torch.float32)
            along = out @ unit  # [batch, seq]
            out = out - self.ablate.to(out.device, torch.float32)[:, None, None] * along[..., None] * unit
        return (out + self.add.to(out.device, torch.float32)[:, None, :]).to(hidden.dtype)


@contextmanager
def add_to_block_outputs(
    layers: nn.ModuleList, deltas: Mapping[int, torch.Tensor | BlockEdit], start_column: int = 0
) -> Iterator[None]:
    """Add deltas[l] (shape [batch, hidden]) to block l's output at columns >= start_column of each forward pass;
    a `BlockEdit` may also ablate a direction per row.

    Columns are those of the current forward call (with a KV cache, a decode step has a single column 0).
    The edit is out of place, so the tensors other modules hold are never modified.
    """

    def make_hook(delta: torch.Tensor | BlockEdit):
        def hook(_module, _args, output):
            hidden = _hidden(output)  # [batch, seq, hidden]
            if start_column >= hidden.shape[1]:
                return output
            steered = hidden.clone()
            if isinstance(delta, BlockEdit):
                steered[:, start_column:, :] = delta(hidden[:, start_column:, :])
            else:
                steered[:, start_column:, :] += delta.to(hidden.dtype)[:, None, :]
            return _replace_hidden(output, steered)

        return hook

    with ExitStack() as stack:
        for layer_id, delta in deltas.items():
            handle = layers[layer_id].register_forward_hook(make_hook(delta))
            stack.callback(handle.remove)
        yield
