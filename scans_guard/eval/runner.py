"""Resumable runs over the evaluation prompts: sigma(q) for every prompt, and one reply per prompt and condition.

Rows go to `scores.jsonl` (classification) and `generations.jsonl` (replies); a row already in its file is never
recomputed. Prompts are batched in order of length, so a batch pads little.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..config import GenerationConfig
from ..engine import ScansEngine
from ..steering.judge import RefusalJudge
from .benchmarks import EvalPrompt
from .conditions import Condition
from .store import JsonlStore

SCORES_FILE = "scores.jsonl"
GENERATIONS_FILE = "generations.jsonl"
SCORE_KEY = ("set", "label", "prompt")
GENERATION_KEY = ("condition", "set", "label", "prompt")


def scores_store(out_dir: str | Path) -> JsonlStore:
    return JsonlStore(Path(out_dir) / SCORES_FILE, SCORE_KEY)


def generations_store(out_dir: str | Path) -> JsonlStore:
    return JsonlStore(Path(out_dir) / GENERATIONS_FILE, GENERATION_KEY)


def _batches(items: Sequence[EvalPrompt], batch_size: int) -> Iterator[list[EvalPrompt]]:
    ordered = sorted(items, key=lambda p: (len(p.prompt), p.set, p.index))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


def _base(p: EvalPrompt) -> dict:
    return {"set": p.set, "label": p.label, "prompt": p.prompt, "index": p.index}


def run_classification(
    engine: ScansEngine, prompts: Sequence[EvalPrompt], store: JsonlStore, batch_size: int = 8, progress: bool = True
) -> list[dict]:
    """sigma(q) of every prompt not yet in `store`; returns all of the store's rows for `prompts`."""
    todo = [p for p in prompts if p.key not in store]
    with tqdm(total=len(todo), desc="classify", unit="prompt", disable=not progress) as bar:
        for batch in _batches(todo, batch_size):
            verdicts = engine.classify([p.prompt for p in batch], batch_size=len(batch))
            # the verdict's one serialisation; its label is stored as "predicted" (the row's "label" is the truth)
            store.append(
                {**{k: x for k, x in v.record().items() if k != "label"}, **_base(p), "predicted": v.label}
                for p, v in zip(batch, verdicts)
            )
            bar.update(len(batch))
    wanted = {p.key for p in prompts}
    return [r for r in store.rows if store.key(r) in wanted]


def run_generations(
    engine: ScansEngine,
    prompts: Sequence[EvalPrompt],
    conditions: Sequence[Condition],
    store: JsonlStore,
    judge: RefusalJudge,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    scores: dict[tuple, float] | None = None,
    progress: bool = True,
) -> list[dict]:
    """One greedy reply per prompt and condition, judged; rows already in `store` are skipped.

    `scores` ({(set, label, prompt): sigma}) fills the score column of conditions that do not classify.
    """
    scores = scores or {}
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    todo = [(c, p) for c in conditions for p in prompts if (c.name, *p.key) not in store]
    with tqdm(total=len(todo), desc="generate", unit="reply", disable=not progress) as bar:
        for cond in conditions:
            mine = [p for c, p in todo if c is cond]
            for batch in _batches(mine, batch_size):
                bar.set_postfix_str(cond.name)
                outputs = engine.generate(
                    [cond.conversation(p.prompt) for p in batch], config, **cond.generate_kwargs()
                )
                rows = []
                for p, out in zip(batch, outputs):
                    v = out.verdict
                    rows.append(
                        {
                            **_base(p),
                            "condition": cond.name,
                            "score": v.score if v is not None else scores.get(p.key),
                            "direction": out.steering.direction,
                            "coefficient": out.steering.coefficient,
                            "response": out.text,
                            "refused": bool(judge(p.prompt, out.text)),
                            "finish_reason": out.finish_reason,
                            "completion_tokens": out.completion_tokens,
                        }
                    )
                store.append(rows)
                bar.update(len(batch))
    wanted = {(c.name, *p.key) for c in conditions for p in prompts}
    return [r for r in store.rows if store.key(r) in wanted]


def rejudge(rows: Sequence[dict], judge: RefusalJudge) -> list[dict]:
    """Copies of generation rows with `refused` recomputed by another judge (no regeneration needed)."""
    return [{**r, "refused": bool(judge(r["prompt"], r["response"]))} for r in rows]
