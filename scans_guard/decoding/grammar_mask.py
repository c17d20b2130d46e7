"""Constrained decoding: each step, the tokens a row's `Constraint` allows next (llguidance computes the mask) and
nothing else; the tokens it emitted advance its grammar.

`ConstrainedRows` is a logits processor over a batch: each row has its own grammar matcher or none (rows of one batch
may have different constraints, or none), so a constraint only ever masks logits: sigma, the steering hooks and the
forward pass are the same with and without it. Decoding uses it through `steering._TokenChooser`, for each
row of the step scheduler (the engine, LangChain, the server).

Fails closed: a row whose grammar can take no further token (it errored) may only end (EOS); a constraint that does
not compile for the model is an InvalidArgumentError before decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..model.loading import ModelHandle
from .constraints import Constraint, llguidance


class GrammarVocabulary:
    """A model's tokens as llguidance reads them, and how its chat template writes tool calls (built once per model:
    about a second for a 150k-token vocabulary)."""

    def __init__(self, handle: ModelHandle):
        from llguidance.hf import from_tokenizer

        llguidance()  # the install hint, if missing
        self.size = handle.vocab_size  # the logits' width (may exceed the tokenizer's length)
        self.eos = sorted(handle.eos_token_ids())
        self.pad = handle.tokenizer.pad_token_id
        # llguidance annotates a transformers fast tokenizer's backend class; it takes the tokenizer itself
        self.tokenizer = from_tokenizer(handle.tokenizer, n_vocab=self.size, eos_token=self.eos)  # type: ignore[arg-type]
        self.call_tags = call_tags(handle.tokenizer)


def call_tags(tokenizer: Any) -> tuple[str, str] | None:
    """The Lark atoms that open and close a tool call, if the chat template writes calls in <tool_call> tags (a
    single token each where the vocabulary has one, as Qwen2.5's); None: a call is a bare JSON object."""
    if "<tool_call>" not in str(getattr(tokenizer, "chat_template", "") or ""):
        return None
    vocab = tokenizer.get_vocab()
    opening, closing = (f"<[{vocab[tag]}]>" if tag in vocab else f'"{tag}"' for tag in ("<tool_call>", "</tool_call>"))
    return opening, closing


def vocabulary(handle: ModelHandle) -> GrammarVocabulary:
    """The model's GrammarVocabulary, built on first use and kept with the model."""
    return handle.cached("grammar_vocabulary", lambda: GrammarVocabulary(handle))


class CompiledConstraint:
    """A Constraint compiled for one model; every row decoded under it starts from a fresh copy of its matcher."""

    def __init__(self, handle: ModelHandle, constraint: Constraint):
        self.constraint = constraint
        self.vocab = vocabulary(handle)
        matcher = llguidance().LLMatcher(self.vocab.tokenizer, constraint.grammar(self.vocab.call_tags), log_level=0)
        if matcher.is_error():
            first = (matcher.get_error().strip().splitlines() or ["invalid grammar"])[0]
            raise InvalidArgumentError(f"the constraint cannot be enforced on this model: {first}")
        self._matcher = matcher

    def matcher(self) -> object:
        return self._matcher.deep_copy()


def compile_constraints(
    handle: ModelHandle, constraints: Sequence[Constraint | CompiledConstraint | None]
) -> list[CompiledConstraint | None]:
    """Each row's constraint compiled (one compilation per distinct constraint)."""
    done: dict[int, CompiledConstraint] = {}
    out: list[CompiledConstraint | None] = []
    for c in constraints:
        if c is None or isinstance(c, CompiledConstraint):
            out.append(c)
            continue
        if id(c) not in done:
            done[id(c)] = CompiledConstraint(handle, c)
        out.append(done[id(c)])
    return out


class ConstrainedRows:
    """The token masks of a batch's constrained rows (`mask`) and their grammars' progress (`consume`)."""

    def __init__(self, compiled: Sequence[CompiledConstraint | None]):
        vocab = next((c.vocab for c in compiled if c is not None), None)
        if vocab is None:
            raise ValueError("ConstrainedRows needs at least one constrained row")
        self.size, self.eos = vocab.size, vocab.eos
        self.ends = set(vocab.eos) | ({vocab.pad} if vocab.pad is not None else set())
        self.matchers: list[Any] = [c.matcher() if c is not None else None for c in compiled]  # llguidance LLMatcher
        self.bitmask = torch.full((len(compiled), (self.size + 31) // 32), -1, dtype=torch.int32)

    @classmethod
    def build(
        cls, handle: ModelHandle, constraints: Sequence[Constraint | CompiledConstraint | None]
    ) -> ConstrainedRows | None:
        """The processor of rows with these constraints; None when no row has one (no cost at all)."""
        if all(c is None for c in constraints):
            return None
        return cls(compile_constraints(handle, constraints))

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [batch, vocab] with every token a row's grammar does not allow next at -inf (a copy)."""
        rows = [i for i, m in enumerate(self.matchers) if m is not None]
        if not rows:
            return logits
        for i in rows:  # llguidance.torch.fill_next_token_bitmask, without that module's torch.compile at import
            row = self.bitmask[i]
            self.matchers[i].unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        # numpy, single-threaded: torch's intra-op threads made these small ops 20x slower on a loaded CPU (measured)
        width = logits.shape[-1]
        allowed = np.unpackbits(self.bitmask[rows].numpy().view(np.uint8), axis=-1, bitorder="little")[:, :width]
        allowed = allowed.astype(bool)  # token 32 * i + j is bit j of word i (little-endian int32)
        dead = ~allowed.any(axis=1)
        if dead.any():  # the grammar can go no further (it errored): the row may only end
            allowed[np.ix_(np.flatnonzero(dead), np.asarray(self.eos, dtype=np.int64))] = True
        if logits.device.type != "cpu":
            keep = torch.from_numpy(allowed).to(logits.device)
            out = logits.clone()
            out[rows] = torch.where(keep, logits[rows], float("-inf"))
            return out
        masked = logits.numpy().copy()
        masked[rows] = np.where(allowed, masked[rows], -np.inf)
        return torch.from_numpy(masked)

    def consume(self, tokens: torch.Tensor) -> None:
        """Advance each constrained row's grammar by its token; an end-of-turn (or pad) token ends the row."""
        for i, token in enumerate(tokens.reshape(-1).tolist()):
            matcher = self.matchers[i]
            if matcher is None:
                continue
            if token in self.ends:
                self.matchers[i] = None
            else:
                matcher.consume_token(token)  # a refused token leaves it in error: the row may then only end


__all__ = ["CompiledConstraint", "ConstrainedRows", "GrammarVocabulary", "call_tags", "compile_constraints"]
