"""ScansEngine: one model plus its calibrated artifact; classify prompts with sigma and generate with SCANS steering.

Thread-safe by design: every forward step runs under the model's lock (`ModelHandle.lock`, shared by all engines on
that model) with its own hooks registered and removed inside it, so concurrent requests interleave their steps and
never see each other's steering. Throughput comes from batching
(each row carries its own steering sign), not from running forward passes in parallel on one model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, Unpack, cast

import torch
from pydantic import BaseModel

from .artifacts import Artifact, default_artifact_dir
from .batching import PromptBatch, check_fits
from .classifier import SigmaPass, r_pos_ids, run_sigma_pass, sigma_scores
from .config import GenerationConfig, SafetyVerdict, SteeredOutput, SteeringRecipe
from .decision import DEFAULT_REFUSAL, GuardPolicy, Policy, check_policy, direction, label, policy_blocks, policy_steers
from .domain import check_domain
from .errors import InvalidArgumentError, InvalidPromptError, NonFiniteScoreError, PromptTooLongError
from .loading import ModelHandle, load_model
from .readings import Conversation, framing_signs, readings, user_text, without_system_prompt  # noqa: F401 - re-exported
from .reply import ReplyState
from .retry import RetryPolicy, retry_refused
from .steering import RefusalVector, SteeringPlan

if TYPE_CHECKING:  # `import scans_guard` stays free of transformers
    from transformers import Cache

# Like TGI's --max-input-tokens: on a 2-core CPU an 8k-token prompt takes ~90 s, a 20k one over 10 minutes.
DEFAULT_MAX_INPUT_TOKENS = 4096


class StreamEvent(BaseModel):
    """A piece of a streamed generation: new text of one row; `output` is set on the row's last event."""

    row: int
    text: str = ""
    verdict: SafetyVerdict | None = None
    output: SteeredOutput | None = None


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


class GenerateOptions(TypedDict, total=False):
    """`ScansEngine.iter_generate`'s keyword options, as `generate` passes them on."""

    steer: bool
    coefficient: float | Sequence[float] | None
    reuse_cache: bool
    retry: RetryPolicy | None
    policy: Policy
    guard: GuardPolicy | None
    refusal: str


@dataclass
class _Prepared:
    """A batch ready to decode: its prompts, the plan, the verdicts (if classified) and what the sigma pass left."""

    prompts: PromptBatch
    plan: SteeringPlan
    verdicts: Sequence[SafetyVerdict | None]
    cache: Cache | None = None
    first_logits: torch.Tensor | None = None
    classify_s: float = 0.0
    index: list[int] | None = None  # the conversation of each decoded row (None: row i is conversation i)
    blocked: list[int] = field(default_factory=list)  # conversations the guard blocked: answered without decoding


class ScansEngine:
    """Classify with sigma(q) and generate with safety-conscious steering, on one local model."""

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
    ) -> ScansEngine:
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
        decoding (as `iter_generate` and the continuous batcher do).

        Each conversation is scored as sent and in every reading of `scans_guard.readings` (without its system
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

    def _prepare(
        self,
        conversations: Sequence[Conversation],
        rows: list[list[int]],
        steer: bool,
        coefficient: float | Sequence[float] | None,
        reuse_cache: bool,
        policy: Policy = "steer",
        guard: GuardPolicy | None = None,
    ) -> _Prepared:
        """Classify (its KV cache kept for decoding) or take the fixed plan; block what the policy's guard rejects;
        then set up where decoding starts. `steer` already says whether the policy steers."""
        t0 = time.perf_counter()
        if policy == "steer" and not (steer and coefficient is None):
            plan = SteeringPlan.from_options(len(rows), steer, coefficient)
            prompts = PromptBatch.left_pad(rows, self.handle.tokenizer.pad_token_id, self.handle.device)
            return _Prepared(prompts, plan, [None] * len(rows), classify_s=time.perf_counter() - t0)
        sp, verdicts = self.classify_rows(conversations, rows, keep_cache=reuse_cache)
        plan = SteeringPlan.from_verdicts(verdicts) if steer else SteeringPlan.unsteered(len(rows))
        guard = guard or GuardPolicy()
        blocked = [i for i, v in enumerate(verdicts) if guard.decide(v).blocked] if policy_blocks(policy) else []
        if blocked:  # decode only the rows let through; the sigma pass's cache covers every row, so it is not reused
            keep = [i for i in range(len(rows)) if i not in blocked]
            prompts = PromptBatch.left_pad(
                [rows[i] for i in keep] or [[0]], self.handle.tokenizer.pad_token_id, self.handle.device
            )
            return _Prepared(
                prompts,
                SteeringPlan(tuple(plan.rows[i] for i in keep)),
                verdicts,
                classify_s=time.perf_counter() - t0,
                index=keep,
                blocked=blocked,
            )
        prepared = _Prepared(sp.prompt_batch, plan, verdicts, sp.cache, classify_s=time.perf_counter() - t0)
        if sp.cache is not None:
            if plan.steered:  # steering starts at the last prompt token: recompute it under the hooks
                sp.drop_last_prompt_token()
            else:  # nothing steered: the sigma pass already predicted the first token
                prepared.first_logits = sp.last_prompt_logits
        return prepared

    def iter_generate(
        self,
        conversations: Sequence[Conversation] | Conversation,
        config: GenerationConfig | None = None,
        *,
        steer: bool = True,
        coefficient: float | Sequence[float] | None = None,
        reuse_cache: bool = True,
        retry: RetryPolicy | None = None,
        policy: Policy = "steer",
        guard: GuardPolicy | None = None,
        refusal: str = DEFAULT_REFUSAL,
    ) -> Generator[StreamEvent, None, None]:
        """Stream a batch: classify (one pass, its KV cache reused), then decode with per-row steering.

        policy: "steer" (classify and steer; nothing blocked), "guard+steer" (a prompt `guard` blocks gets `refusal`
        as its output without decoding, `finish_reason` "content_filter"; the rest are steered), "guard" (blocked
        as guard+steer, the rest generated unsteered). guard: the blocking rule (default `GuardPolicy()`: harmful at
        the guard point, out of domain, or unclassifiable).

        steer=False: plain generation, no classification. coefficient=c (or one per row): steer by c * v with no
        classification (the always-positive / always-negative baselines). retry: a row sigma steered away whose
        reply still refuses is generated once more, steered further (`scans_guard.retry`; off by default). Every
        row's output records the steering applied (`SteeredOutput.steering`). Closing the iterator early is safe.
        """
        conversations = _as_batch(conversations)
        config = config or GenerationConfig()
        check_policy(policy)
        if policy != "steer" and coefficient is not None:
            raise InvalidArgumentError(
                "a fixed coefficient skips classification, so it cannot run under a guard policy"
            )
        if not conversations:
            return
        events: Generator[StreamEvent, None, None] = self._iter_generate(
            conversations, config, steer, coefficient, reuse_cache, policy, guard, refusal
        )
        if (retry := RetryPolicy.applies(retry, steer and policy_steers(policy), coefficient)) is not None:
            events = retry_refused(self, conversations, events, config, retry)
        yield from events

    def _iter_generate(
        self,
        conversations: Sequence[Conversation],
        config: GenerationConfig,
        steer: bool,
        coefficient: float | Sequence[float] | None,
        reuse_cache: bool,
        policy: Policy = "steer",
        guard: GuardPolicy | None = None,
        refusal: str = DEFAULT_REFUSAL,
    ) -> Generator[StreamEvent, None, None]:
        rows = self.prompt_rows(conversations, config.max_new_tokens)
        batch = self._prepare(
            conversations, rows, steer and policy_steers(policy), coefficient, reuse_cache, policy, guard
        )
        for i, v in enumerate(batch.verdicts):
            yield StreamEvent(row=i, verdict=v)
        for i in batch.blocked:
            yield StreamEvent(row=i, text=refusal)
            yield StreamEvent(
                row=i,
                output=SteeredOutput.blocked(
                    refusal, batch.verdicts[i], len(rows[i]), {"classify_s": batch.classify_s, "generate_s": 0.0}
                ),
            )
        if batch.index is not None:
            if not batch.index:
                return
            rows = [rows[i] for i in batch.index]
        state = [ReplyState() for _ in rows]
        decoder = self.steering.decode(
            batch.prompts,
            batch.plan,
            config,
            cache=batch.cache,
            should_stop=lambda r: state[r].finish is not None,
            first_logits=batch.first_logits,
        )
        try:
            yield from self._stream(decoder, state, rows, batch, config)
        finally:
            decoder.close()

    def _stream(
        self,
        decoder: Iterator[torch.Tensor],
        state: list[ReplyState],
        rows: list[list[int]],
        batch: _Prepared,
        config: GenerationConfig,
    ) -> Iterator[StreamEvent]:
        """Turn each step's tokens into text events per row, and a row's final event with its SteeredOutput."""
        eos = set() if config.ignore_eos else self.handle.eos_token_ids()
        t1 = time.perf_counter()
        index = batch.index or list(range(len(rows)))
        for step, tokens in enumerate(decoder, start=1):
            for r, token in enumerate(tokens.tolist()):
                row = state[r]
                if row.finish is not None:
                    continue
                if piece := row.advance(token, step, config, eos, self.handle.tokenizer):
                    yield StreamEvent(row=index[r], text=piece)
                if row.finish is not None:
                    yield StreamEvent(
                        row=index[r],
                        output=SteeredOutput(
                            text=row.emitted,
                            verdict=batch.verdicts[index[r]],
                            steering=batch.plan.rows[r],
                            prompt_tokens=len(rows[r]),
                            completion_tokens=len(row.ids),
                            finish_reason=row.finish,
                            timings={"classify_s": batch.classify_s, "generate_s": time.perf_counter() - t1},
                        ),
                    )

    def generate(
        self,
        conversations: Sequence[Conversation] | Conversation,
        config: GenerationConfig | None = None,
        **options: Unpack[GenerateOptions],
    ) -> list[SteeredOutput]:
        """Generate for each conversation (batched); see `iter_generate` for the steering options."""
        conversations = _as_batch(conversations)
        outputs: dict[int, SteeredOutput] = {}
        for event in self.iter_generate(conversations, config, **options):
            if event.output is not None:
                outputs[event.row] = event.output
        return [outputs[i] for i in range(len(conversations))]
