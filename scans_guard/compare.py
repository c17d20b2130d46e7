"""Each prompt's guarded, steered reply next to its plain one, decoded together on the engine's step scheduler.

Generating the two separately runs two batches one after the other. Here both sets of requests are queued at once:
sigma runs once per prompt (the plain requests are not classified), the guard answers the prompts it blocks, and the
steered and plain rows share the decoding batch (a row's steering never touches another row), each reply being the
one its own generate call gives.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import GenerationConfig, SteeredOutput
from .engine import ScansEngine, outputs_of
from .sigma.decision import DEFAULT_POLICY, DEFAULT_REFUSAL, GuardPolicy, Policy, check_policy
from .sigma.readings import Conversation
from .steering.retry import RetryPolicy


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
    `engine.generate(conversations, config, steer=False)` return, decoded in one go."""
    config = config or GenerationConfig()
    check_policy(policy)
    conversations = list(conversations)
    if not conversations:
        return [], []
    steered = engine.submit(conversations, config, policy=policy, retry=retry, guard=guard, refusal=refusal)
    plain = engine.submit(conversations, config, steer=False)
    outputs = outputs_of(steered + plain)
    return outputs[: len(conversations)], outputs[len(conversations) :]
