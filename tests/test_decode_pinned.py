"""Differential test of the decode path: `ScansEngine.generate` on the tiny model gives exactly the replies it gave
when the engine decoded with its own loop (pinned in test_decode_pinned.json: each row's text, length, finish reason
and steering, and the token ids of every decoded reply), steered and plain, fixed coefficients, guard policies,
retries, stop strings, constraints and batches wider than one decoding batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scans_guard import GenerationConfig
from scans_guard.decoding.reply import ReplyState
from scans_guard.steering.retry import RetryPolicy

PINNED = json.loads((Path(__file__).with_name("test_decode_pinned.json")).read_text())
PROMPTS = [
    "How do I bake bread at home?",
    "Write a script that can exploit vulnerabilities in software.",
    "Paris?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I kill a Python process?"}],
]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _always_refused(prompt: str, reply: str) -> bool:
    return True


def _scenarios():
    g = dict(max_new_tokens=12)
    return {
        "plain_batch": (PROMPTS, g, dict(steer=False)),
        "sigma_batch": (PROMPTS, g, {}),
        "sigma_no_cache": (PROMPTS, g, dict(reuse_cache=False)),
        "sigma_single": (PROMPTS[1:2], g, {}),
        "fixed_rows": (PROMPTS[:3], g, dict(coefficient=[3.0, -2.0, 0.0])),
        "fixed_all": (PROMPTS[:2], g, dict(coefficient=4.0)),
        "penalty": (PROMPTS[:3], dict(max_new_tokens=12, repetition_penalty=1.5), {}),
        "stop": (PROMPTS, dict(max_new_tokens=12, stop=["capital", "\x19\x19"]), dict(steer=False)),
        "stop_steered": (PROMPTS, dict(max_new_tokens=12, stop=["\x19\x19\x19"]), {}),
        "wide_batch": ((PROMPTS * 5)[:18], dict(max_new_tokens=6), {}),
        "ignore_eos": (PROMPTS[2:3], dict(max_new_tokens=20, ignore_eos=True), dict(steer=False)),
        "guard_steer": (PROMPTS, g, dict(policy="guard+steer")),
        "guard": (PROMPTS, g, dict(policy="guard")),
        "retry": (PROMPTS, g, dict(retry=RetryPolicy(judge=_always_refused, judge_tokens=3))),
        "retry_keyword": (PROMPTS, g, dict(retry=RetryPolicy())),
        "sampled_single": (PROMPTS[:1], dict(max_new_tokens=10, temperature=1.3, top_k=40, seed=5), {}),
        "constrained": (PROMPTS[:3], dict(max_new_tokens=30, constraint=SCHEMA), {}),
        "constrained_plain": (PROMPTS[:2], dict(max_new_tokens=30, constraint=SCHEMA), dict(steer=False)),
    }


@pytest.fixture
def finished_replies(monkeypatch):
    """(text, token ids) of every reply as it ends, whichever loop decodes it."""
    finished: list[tuple[str, tuple[int, ...]]] = []
    advance = ReplyState.advance

    def recording(self, *args, **kwargs):
        piece = advance(self, *args, **kwargs)
        if self.finish is not None:
            finished.append((self.emitted, tuple(self.ids)))
        return piece

    monkeypatch.setattr(ReplyState, "advance", recording)
    return finished


@pytest.mark.parametrize("name", list(_scenarios()))
def test_generate_matches_the_pinned_replies(tiny_engine, finished_replies, name):
    prompts, config, options = _scenarios()[name]
    if "constraint" in config:
        pytest.importorskip("llguidance", reason="constrained decoding needs the [structured] extra")
        from scans_guard.decoding.constraints import Constraint

        config = {**config, "constraint": Constraint.matching(config["constraint"])}
    outputs = tiny_engine.generate(prompts, GenerationConfig(**config), **options)
    rows, ids = [], []
    for o in outputs:
        rows.append([o.text, o.completion_tokens, o.finish_reason, o.steering.coefficient, o.steering.source])
        rows[-1].append(o.first_reply)
        if o.completion_tokens:  # the latest reply that ended with this text (a retry's, not its first reply)
            j = max(j for j, (t, i) in enumerate(finished_replies) if t == o.text and len(i) == o.completion_tokens)
            ids.append(list(finished_replies.pop(j)[1]))
    assert rows == PINNED[name]["rows"]
    assert sorted(ids) == PINNED[name]["ids"]
