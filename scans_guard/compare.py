"""Each prompt's guarded, steered reply next to its plain one, from one sigma pass and one decoding batch.

Generating the two separately classifies once and decodes twice. Here sigma runs once, the guard answers the prompts
it blocks, and one batch decodes every plain row (coefficient 0 adds nothing) together with one more row per prompt
that is actually steered; a prompt sigma leaves unsteered shares its plain row. A per-row coefficient is all the
engine needs: a row's steering never touches another row.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence

from .config import GenerationConfig, RowSteering, SafetyVerdict, SteeredOutput
from .decision import DEFAULT_POLICY, DEFAULT_REFUSAL, GuardPolicy, Policy, check_policy, policy_blocks, policy_steers
from .engine import ScansEngine, StreamEvent
from .readings import Conversation
from .retry import RetryPolicy, retry_refused


def steered_and_plain(
    engine: ScansEngine,
    conversations: Sequence[Conversation],
    config: GenerationConfig | None = None,
    *,
    policy: Policy = DEFAULT_POLICY,
    retry: RetryPolicy | None = None,
    guard: GuardPolicy | None = None,
    refusal: str = DEFAULT_REFUSAL,
) -> tuple[list[SteeredOutput], list[SteeredOutput]]:
    """(steered, plain): what `engine.generate(conversations, config, policy=policy, retry=retry)` and
    `engine.generate(conversations, config, steer=False)` return, with one sigma pass and one decoding batch (greedy
    replies are the same up to float rounding of the different batch shape; a seeded sampled row draws from the
    batch's shared generator, so its reply differs from the separate calls')."""
    config = config or GenerationConfig()
    check_policy(policy)
    conversations = list(conversations)
    n = len(conversations)
    if not n:
        return [], []
    rows = engine.prompt_rows(conversations, config.max_new_tokens)
    t0 = time.perf_counter()
    _, verdicts = engine.classify_rows(conversations, rows)
    classify_s = time.perf_counter() - t0
    guard = guard or GuardPolicy()
    blocked = {i for i, v in enumerate(verdicts) if policy_blocks(policy) and guard.decide(v).blocked}
    coefficients = [v.coefficient if policy_steers(policy) else 0.0 for v in verdicts]
    own_row = {i: n + k for k, i in enumerate(i for i in range(n) if i not in blocked and coefficients[i] != 0)}
    batch = conversations + [conversations[i] for i in own_row]
    events = engine.iter_generate(batch, config, coefficient=[0.0] * n + [coefficients[i] for i in own_row])
    if (retry := RetryPolicy.applies(retry, policy_steers(policy), None)) is not None:
        judged = {row: verdicts[i] for i, row in own_row.items() if coefficients[i] < 0}
        events = retry_refused(engine, batch, _announced(judged, events), config, retry)
    outputs = {event.row: event.output for event in events if event.output is not None}
    plain = [outputs[i].model_copy(update={"steering": RowSteering()}) for i in range(n)]  # 0 added: unsteered
    steered = []
    for i, verdict in enumerate(verdicts):
        if i in blocked:
            steered.append(
                SteeredOutput.blocked(refusal, verdict, len(rows[i]), {"classify_s": classify_s, "generate_s": 0.0})
            )
            continue
        out = outputs[own_row[i]] if i in own_row else plain[i]
        if out.steering.source != "retry":  # the retry's output already records its verdict and steering
            out = out.model_copy(update={"verdict": verdict, "steering": _steering(verdict, policy)})
        steered.append(out)
    return steered, plain


def _steering(verdict: SafetyVerdict, policy: Policy) -> RowSteering:
    """What the engine's plan records for a classified row (`SteeringPlan.from_verdicts`, or unsteered)."""
    return RowSteering.of(verdict.coefficient, "sigma", "steer") if policy_steers(policy) else RowSteering()


def _announced(verdicts: dict[int, SafetyVerdict], events: Iterator[StreamEvent]) -> Generator[StreamEvent, None, None]:
    """The rows' verdicts first, as a classifying generation streams them (the retry judges rows by them)."""
    for row, verdict in verdicts.items():
        yield StreamEvent(row=row, verdict=verdict)
    yield from events
