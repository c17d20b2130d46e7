"""Steering: the refusal vector and the plan of what each row gets, the one seam every steered forward goes through.

`SteeringPlan` records per row the coefficient, its direction and what decided it (sigma at an operating point, a
fixed value, or nothing); `RefusalVector.apply(plan)` adds coef_b * v^l at the steering layers for the forward
passes run inside it, under the model's lock, from the last prompt token on (the prompt tokens before it are never
touched). Each forward step registers its hooks inside the lock and removes them before releasing it, so requests
that share one model interleave their steps without ever running under each other's steering. `_TokenChooser` picks
each row's token for the step scheduler (`scans_guard.serving.scheduler`), the one place that decodes: the engine,
LangChain, the server and the benchmarks all decode there.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import GenerationConfig, RowSteering, SafetyVerdict
from ..decoding.grammar_mask import ConstrainedRows
from ..errors import InvalidArgumentError
from ..model.hooks import BlockEdit, add_to_block_outputs
from ..model.loading import ModelHandle
from ..model.prompt_batch import PromptBatch

if TYPE_CHECKING:
    from transformers import LogitsProcessorList

MAX_COEFFICIENT = 1e3  # refusal vectors are unit vectors; the paper's alphas are single digits


@dataclass(frozen=True)
class SteeringPlan:
    """Per row of a batch: the coefficient applied, its direction and what decided it."""

    rows: tuple[RowSteering, ...]

    @classmethod
    def from_verdicts(cls, verdicts: Sequence[SafetyVerdict]) -> SteeringPlan:
        """Each row by its verdict's coefficient (decided at the artifact's `steer` point)."""
        return cls(tuple(RowSteering.of(v.coefficient, "sigma", "steer") for v in verdicts))

    @classmethod
    def unsteered(cls, n_rows: int) -> SteeringPlan:
        return cls((RowSteering(),) * n_rows)

    @classmethod
    def fixed(cls, coefficients: float | Sequence[float], n_rows: int) -> SteeringPlan:
        """The caller's coefficients (one for all rows, or one per row); NaN or inf would turn every hidden state
        into NaN, and a unit vector times 1e38 overflows them: both are refused."""
        given = coefficients.tolist() if hasattr(coefficients, "tolist") else coefficients  # numpy, tensors
        values = list(given) if isinstance(given, Sequence) and not isinstance(given, str) else [given] * n_rows
        if len(values) != n_rows:
            raise InvalidArgumentError(f"{len(values)} coefficients for {n_rows} prompts")
        if not all(isinstance(c, numbers.Real) and not isinstance(c, bool) and math.isfinite(c) for c in values):
            raise InvalidArgumentError(f"steering coefficients must be finite numbers, got {coefficients!r}")
        reals = [float(c) for c in values]
        if any(abs(c) > MAX_COEFFICIENT for c in reals):
            raise InvalidArgumentError(
                f"steering coefficients must lie within +-{MAX_COEFFICIENT:g}, got {coefficients!r}"
            )
        return cls(tuple(RowSteering.of(c, "fixed") for c in reals))

    @classmethod
    def from_options(cls, n_rows: int, steer: bool, coefficient: float | Sequence[float] | None) -> SteeringPlan:
        """The plan of the engine's options when no classification runs: steer=False, or a fixed coefficient."""
        return cls.fixed(coefficient, n_rows) if steer and coefficient is not None else cls.unsteered(n_rows)

    @property
    def coefficients(self) -> torch.Tensor:
        """[batch] float32 signed magnitudes."""
        return torch.tensor([r.coefficient for r in self.rows], dtype=torch.float32)

    @property
    def steered(self) -> bool:
        return any(r.coefficient != 0 for r in self.rows)


def steering_deltas(
    vectors: torch.Tensor, steer_layers: Sequence[int], coefficients: torch.Tensor, handle: ModelHandle
) -> dict[int, torch.Tensor]:
    """{layer: coef[:, None] * v^l[None, :]} as [batch, hidden] tensors on the model's device and dtype.

    vectors: [n_layers, hidden] unit refusal vectors; coefficients: [batch] signed magnitudes.
    """
    coefs = coefficients.to(handle.device, torch.float32)[:, None]
    return {
        layer: (coefs * vectors[layer].to(handle.device, torch.float32)[None, :]).to(handle.dtype)
        for layer in steer_layers
    }


class RefusalVector:
    """v^l of one model at its steering layers: the only owner of steering hooks and of the lock they run under.

    Rows steered towards refusal get +c * v^l. Rows steered away get c * away^l (c < 0; `away_vectors`: v itself,
    or the artifact's false-refusal direction), or with `away_step="ablate"` lose their component along v^l instead.
    """

    def __init__(
        self,
        handle: ModelHandle,
        vectors: torch.Tensor,
        steer_layers: Sequence[int],
        *,
        away_vectors: torch.Tensor | None = None,
        away_step: str = "add",
    ):
        self.handle = handle
        self.vectors = vectors.to(handle.device)  # [n_layers, hidden]
        self.away_vectors = None if away_vectors is None else away_vectors.to(handle.device)  # [n_layers, hidden]
        self.away_step = away_step
        # [n_layers, hidden]: the directions ablation removes, normalised once rather than at every steered step
        self.units = torch.nn.functional.normalize(self.vectors, dim=-1) if away_step == "ablate" else None
        self.steer_layers = list(steer_layers)

    def deltas(self, plan: SteeringPlan) -> dict[int, torch.Tensor | BlockEdit]:
        """The per-layer edits of `plan`; none at all when no row is steered (no hooks, no cost)."""
        if not plan.steered:
            return {}
        coefs = plan.coefficients  # [batch]
        away = coefs < 0
        if not bool(away.any()) or (self.away_step == "add" and self.away_vectors is None):
            added: dict[int, torch.Tensor | BlockEdit] = dict(
                steering_deltas(self.vectors, self.steer_layers, coefs, self.handle)
            )
            return added
        towards = steering_deltas(self.vectors, self.steer_layers, coefs.clamp(min=0), self.handle)
        if self.units is not None:  # away_step == "ablate"
            return {layer: BlockEdit(towards[layer], self.units[layer], away.float()) for layer in self.steer_layers}
        assert self.away_vectors is not None  # add with no away vectors returned above
        away_add = steering_deltas(self.away_vectors, self.steer_layers, coefs.clamp(max=0), self.handle)
        return {layer: towards[layer] + away_add[layer] for layer in self.steer_layers}

    @contextlib.contextmanager
    def apply(self, plan: SteeringPlan, start_column: int = 0) -> Iterator[None]:
        """Forward passes run inside are steered by `plan` (columns >= start_column), holding the model's lock."""
        with self.handle.lock, add_to_block_outputs(self.handle.layers, self.deltas(plan), start_column):
            yield


def logits_processors(config: GenerationConfig, attention_mask: torch.Tensor) -> LogitsProcessorList:
    """transformers' processors for `config`, in `generate`'s order: the repetition penalty (greedy too, left
    padding ignored as `generate` does), then, when sampling, temperature, top-k and top-p."""
    from transformers import (  # imported here: `import scans_guard` stays free of transformers
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        padding = (attention_mask != 0).int().argmax(dim=1)
        processors.append(RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty), padding))
    if config.temperature > 0:
        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(config.temperature)))
        if config.top_k is not None:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


class _TokenChooser:
    """Each step's token per row: the constrained rows' masks (`constrained`), the processors over the ids so far
    (prompt + reply), then argmax at temperature 0, else a draw seeded by `config.seed` and made on the CPU, so a seed
    gives the same tokens on every device. The mask comes first, so top-k and top-p choose among allowed tokens."""

    def __init__(self, config: GenerationConfig, prompts: PromptBatch, constrained: ConstrainedRows | None = None):
        self.constrained = constrained
        self.greedy = config.temperature == 0
        self.processors = logits_processors(config, prompts.attention_mask)
        self.seen = prompts.input_ids if self.processors else None  # what the repetition penalty looks at
        self.generator = (
            None
            if self.greedy
            else torch.Generator().manual_seed(config.seed if config.seed is not None else torch.seed())
        )

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [batch, vocab] -> [batch] token ids."""
        if self.constrained is not None:
            logits = self.constrained.mask(logits)
        # seen is set iff there are processors; transformers types input_ids as torch.LongTensor, which no tensor is
        scores = self.processors(self.seen, logits) if self.seen is not None else logits  # type: ignore[arg-type]
        if self.greedy:
            return scores.argmax(-1)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(-1).to(logits.device)

    def emitted(self, token: torch.Tensor) -> None:
        """Record this step's tokens (pads for finished rows) for the repetition penalty and the constraints."""
        if self.constrained is not None:
            self.constrained.consume(token)
        if self.seen is not None:
            self.seen = torch.cat([self.seen, token[:, None]], dim=1)
