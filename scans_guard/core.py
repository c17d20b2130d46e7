"""ScansCore: one model plus its calibrated artifact; classifies prompts with sigma and holds the steering vector.

It is what the step scheduler (`scans_guard.serving.scheduler`) decodes with and `ScansEngine` builds on. Thread-safe:
every forward pass runs under the model's lock (`ModelHandle.lock`, shared by all engines on that model) with its own
hooks registered and removed inside it, so concurrent requests interleave their steps and never see each other's
steering.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Self, cast

from .calibration.artifacts import Artifact, default_artifact_dir
from .config import SafetyVerdict, SteeringRecipe
from .errors import InvalidArgumentError, InvalidPromptError, NonFiniteScoreError, PromptTooLongError
from .model.loading import ModelHandle, load_model
from .model.prompt_batch import check_fits
from .sigma.classifier import SigmaPass, r_pos_ids, run_sigma_pass, sigma_scores
from .sigma.decision import direction, label
from .sigma.domain import check_domain
from .sigma.readings import Conversation, framing_signs, readings, user_text
from .steering.plan import RefusalVector, SteeringPlan

# Like TGI's --max-input-tokens: on a 2-core CPU an 8k-token prompt takes ~90 s, a 20k one over 10 minutes.
DEFAULT_MAX_INPUT_TOKENS = 4096


def _as_batch(conversations: Sequence[Conversation] | Conversation) -> Sequence[Conversation]:
    """One conversation (a string, or a list of message dicts) becomes a batch of one.

    Anything else that is not a list or tuple is an InvalidPromptError, never an empty result: a guard doing
    `any(v.is_harmful for v in ...)` over `[]` would pass everything.
    """
    if isinstance(conversations, str):
        return [conversations]
    if isinstance(conversations, dict):
        raise InvalidPromptError(
            "a conversation is a list of messages: wrap a single message dict in a list, "
            "[{'role': 'user', 'content': ...}]"
        )
    if not isinstance(conversations, (list, tuple)):
        raise InvalidPromptError(
            "conversations must be a string, a list of messages or a list of conversations, "
            f"got {type(conversations).__name__}"
        )
    if conversations and isinstance(conversations[0], dict):
        return [cast("list[dict]", conversations)]
    return cast("Sequence[Conversation]", conversations)


class ScansCore:
    """One model and its calibrated artifact: sigma(q) classification, prompt checks and the steering vector."""

    def __init__(
        self,
        handle: ModelHandle,
        artifact: Artifact,
        *,
        check_fingerprint: bool = True,
        max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS,
    ):
        """`max_input_tokens`: longest prompt accepted, in tokens after chat formatting (None: up to the context
        window); a longer one is a PromptTooLongError before any forward pass."""
        if max_input_tokens is not None and (
            isinstance(max_input_tokens, bool) or not isinstance(max_input_tokens, int) or max_input_tokens < 1
        ):
            raise InvalidArgumentError(f"max_input_tokens must be a positive integer or None, got {max_input_tokens!r}")
        if check_fingerprint:
            artifact.check_model(handle)
        self.handle = handle
        self.artifact = artifact
        self.max_input_tokens = max_input_tokens
        self._rpos = r_pos_ids(handle, artifact.recipe.r_pos)
        self.steering = RefusalVector(
            handle,
            artifact.refusal_vectors,
            artifact.recipe.steer_layers,
            away_vectors=artifact.away_vectors if artifact.recipe.away_direction != "refusal" else None,
            away_step=artifact.recipe.away_step,
        )

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        artifact: str | os.PathLike | Artifact | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        progress: bool = True,
        max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS,
        verbose: bool = True,
    ) -> Self:
        """Load a model (None: the embedded default; or an embedded model's name) and its artifact (None: the one
        shipped for that embedded model; any other model needs its own, from `scans-guard calibrate`).
        `progress` and `verbose`: as `load_model` (bars of a cache build; transformers' own output while loading)."""
        if artifact is None:
            artifact = default_artifact_dir(model)  # before the model loads: a missing artifact fails fast
        handle = load_model(model, device=device, dtype=dtype, progress=progress, verbose=verbose)
        if not isinstance(artifact, Artifact):
            artifact = Artifact.load(artifact)
        return cls(handle, artifact, max_input_tokens=max_input_tokens)

    @property
    def recipe(self) -> SteeringRecipe:
        return self.artifact.recipe

    # -- classification -------------------------------------------------------------------------------------
    def classify_rows(
        self,
        conversations: Sequence[Conversation],
        rows: list[list[int]],
        *,
        keep_cache: bool = False,
        operating_point: str = "guard",
    ) -> tuple[SigmaPass, list[SafetyVerdict]]:
        """One sigma pass over `rows` (from `prompt_rows`) and the verdicts; `keep_cache` keeps its KV cache for
        decoding (as the step scheduler does).

        Each conversation is scored as sent and in every reading of `scans_guard.sigma.readings` (without its system
        prompt, its user turns joined and alone, each sentence alone, decoded text), the most harmful score counting:
        wrapping cannot launder a request. The readings of the whole batch share one extra pass; a single-turn,
        single-sentence prompt without a system prompt has none.
        """
        threshold = self.artifact.threshold(operating_point)
        layers = self.recipe.classify_layers
        # every reading but the one as sent, of every conversation, goes into one more batched pass
        extra: list[tuple[int, str]] = []
        extra_rows: list[list[int]] = []
        for i, conv in enumerate(conversations):
            for name, reading in readings(conv, self.recipe.readings).items():
                if name != "as_sent":
                    extra.append((i, name))
                    extra_rows.append(self.handle.chat_ids(reading))
        t0 = time.perf_counter()
        with self.handle.lock:
            sp = run_sigma_pass(self.handle, rows, self._rpos, layers, keep_cache=keep_cache)
            extra_t = run_sigma_pass(self.handle, extra_rows, self._rpos, layers).transitions if extra else None
        latency = time.perf_counter() - t0
        scores, sims = sigma_scores(sp.transitions, self.artifact.d_harm, self.artifact.probe)
        rendered: list[dict[str, tuple[float, list[float]]]] = [
            {"as_sent": (s, sim)} for s, sim in zip(scores.tolist(), sims.tolist())
        ]
        if extra_t is not None:
            try:
                extra_scores = sigma_scores(extra_t, self.artifact.d_harm, self.artifact.probe)
            except NonFiniteScoreError as exc:  # name the conversation, not its row in the second pass
                raise NonFiniteScoreError(extra[exc.index][0]) from None
            for (i, name), s, sim in zip(extra, *(x.tolist() for x in extra_scores)):
                rendered[i][name] = (s, sim)
        verdicts, platt = [], self.artifact.meta.platt
        for conv, row, by_name in zip(conversations, rows, rendered):
            score, sims_l = max(by_name.values(), key=lambda r: r[0])  # finite: sigma_scores raises otherwise
            domain = check_domain(user_text(conv), len(row), self.recipe.domain, self.handle.special_tokens)
            reasons = domain.reasons + [r for r in framing_signs(conv) if r not in domain.reasons]
            in_domain = not reasons
            coef = self.recipe.coefficient(score, in_domain)
            verdicts.append(
                SafetyVerdict(
                    score=score,
                    label=label(score, threshold),
                    threshold=threshold,
                    operating_point=operating_point,
                    probability=platt.probability(score) if platt else None,
                    layer_similarities=dict(zip(layers, sims_l)),
                    renderings={k: v[0] for k, v in by_name.items()},
                    in_domain=in_domain,
                    domain_reasons=reasons,
                    direction=direction(coef),
                    coefficient=coef,
                    latency_s=latency,
                )
            )
        return sp, verdicts

    def prompt_rows(self, conversations: Sequence[Conversation], extra_tokens: int) -> list[list[int]]:
        """Token ids of each chat-formatted conversation; typed errors if one is longer than `max_input_tokens` or
        would not fit the context window with `extra_tokens` more."""
        rows = [self.handle.chat_ids(c) for c in conversations]
        check_fits([len(r) for r in rows], len(self._rpos) + extra_tokens, self.handle.context_window)
        cap = self.max_input_tokens
        for i, row in enumerate(rows):
            if cap is not None and len(row) > cap:
                raise PromptTooLongError(
                    f"prompt {i} has {len(row)} tokens after chat formatting, more than max_input_tokens={cap}"
                )
        return rows

    def classify(
        self,
        conversations: Sequence[Conversation] | Conversation,
        batch_size: int = 8,
        *,
        operating_point: str = "guard",
    ) -> list[SafetyVerdict]:
        """sigma(q) for each conversation (a string is one user turn), labelled at `operating_point`."""
        conversations = _as_batch(conversations)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not conversations:
            return []
        rows = self.prompt_rows(conversations, 0)
        verdicts: list[SafetyVerdict] = []
        for start in range(0, len(rows), batch_size):
            end = start + batch_size
            try:
                verdicts += self.classify_rows(
                    conversations[start:end], rows[start:end], operating_point=operating_point
                )[1]
            except NonFiniteScoreError as exc:  # name the prompt in the caller's list, not in this batch
                raise NonFiniteScoreError(start + exc.index) from None
        return verdicts

    # -- generation -----------------------------------------------------------------------------------------
    def steering_plan(
        self,
        conversations: Sequence[Conversation] | Conversation,
        *,
        steer: bool = True,
        coefficient: float | Sequence[float] | None = None,
    ) -> SteeringPlan:
        """What `iter_generate` with these options would add to each row (sigma classifies, when it decides);
        for scoring under steering without generating: `with engine.steering.apply(plan): ...`."""
        conversations = _as_batch(conversations)
        if steer and coefficient is None:
            return SteeringPlan.from_verdicts(self.classify(conversations, batch_size=max(1, len(conversations))))
        return SteeringPlan.from_options(len(conversations), steer, coefficient)
