"""Resumable runs over the evaluation prompts: sigma(q) for every prompt, and one reply per prompt and condition.

Rows go to `scores.jsonl` (classification) and `generations.jsonl` (replies); a row already in its file is never
recomputed. Prompts are batched in order of length, so a batch pads little.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..config import GenerationConfig, SafetyVerdict
from ..engine import ScansEngine
from ..sigma.decision import DEFAULT_REFUSAL, GuardPolicy
from ..steering.judge import RefusalJudge
from .benchmarks import EvalPrompt
from .conditions import Condition
from .store import JsonlStore

SCORES_FILE = "scores.jsonl"
GENERATIONS_FILE = "generations.jsonl"
SCORE_KEY = ("set", "label", "prompt")
GENERATION_KEY = ("condition", "set", "label", "prompt")
ORDER = {"plain": 0, "fixed": 1, "scans": 1, "guard+steer": 2}  # a condition after those whose replies it reuses


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
    verdicts: Mapping[tuple, Mapping] | None = None,
    progress: bool = True,
) -> list[dict]:
    """One greedy reply per prompt and condition, judged; rows already in `store` are skipped.

    `verdicts` ({(set, label, prompt): score row of `run_classification`}) fills the score column of conditions that
    do not classify, and lets SCANS skip work the classification already did: a prompt's SCANS reply is decoded at
    its verdict's coefficient without a second sigma pass, and where that coefficient is 0 it is the unsteered
    reply of the same run (the same greedy decode; its row says `reply_of: "unsteered"`). Guard+steer decodes
    nothing where it can be composed: a prompt the guard blocks gets the refusal message (`reply_of: "guard"`), any
    other the run's SCANS reply (`reply_of: "scans"`).
    """
    verdicts = verdicts or {}
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    todo = [(c, p) for c in conditions for p in prompts if (c.name, *p.key) not in store]
    with tqdm(total=len(todo), desc="generate", unit="reply", disable=not progress) as bar:
        for cond in sorted(conditions, key=lambda c: ORDER.get(c.mode, 1)):  # what the later ones reuse comes first
            mine = [p for c, p in todo if c is cond]
            stored = verdicts if cond.system is None else {}  # the verdicts are of the bare prompt
            reused = []
            if cond.mode == "scans":
                reused = _unsteered_replies(mine, store, stored)
            elif cond.mode == "guard+steer":
                reused = _guarded_replies(mine, store, stored, cond.name, judge)
            if reused:
                store.append(reused)
                bar.update(len(reused))
                done = {(r["set"], r["label"], r["prompt"]) for r in reused}
                mine = [p for p in mine if p.key not in done]
            for batch in _batches(mine, batch_size):
                bar.set_postfix_str(cond.name)
                known = cond.mode == "scans" and all("coefficient" in stored.get(p.key, {}) for p in batch)
                kwargs = (
                    {"steer": True, "coefficient": [stored[p.key]["coefficient"] for p in batch]}
                    if known
                    else cond.generate_kwargs()
                )
                outputs = engine.generate([cond.conversation(p.prompt) for p in batch], config, **kwargs)
                rows = []
                for p, out in zip(batch, outputs):
                    v = out.verdict
                    known_row = verdicts.get(p.key, {})
                    rows.append(
                        {
                            **_base(p),
                            "condition": cond.name,
                            "score": v.score if v is not None else known_row.get("score"),
                            "direction": known_row["direction"] if known else out.steering.direction,
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


def _guarded_replies(
    prompts: Sequence[EvalPrompt],
    store: JsonlStore,
    verdicts: Mapping[tuple, Mapping],
    condition: str,
    judge: RefusalJudge,
) -> list:
    """Guard+steer rows composed without decoding: the refusal message where the default guard blocks the stored
    verdict, else the run's SCANS reply (where it is in `store`)."""
    scans = {store.key(r)[1:]: r for r in store.rows if r["condition"] == "scans"}
    guard, rows = GuardPolicy(), []
    for p in prompts:
        v = verdicts.get(p.key)
        if v is None or "coefficient" not in v:
            continue
        if guard.decide(verdict_of(v)).blocked:
            rows.append(
                {
                    **_base(p),
                    "condition": condition,
                    "score": v["score"],
                    "direction": v["direction"],
                    "coefficient": 0.0,
                    "response": DEFAULT_REFUSAL,
                    "refused": bool(judge(p.prompt, DEFAULT_REFUSAL)),
                    "finish_reason": "content_filter",
                    "completion_tokens": 0,
                    "reply_of": "guard",
                }
            )
        elif p.key in scans:
            rows.append({**scans[p.key], "condition": condition, "reply_of": "scans"})
    return rows


def verdict_of(row: Mapping) -> SafetyVerdict:
    """The verdict a `run_classification` row stores (its `predicted` is the verdict's label)."""
    fields = {k: v for k, v in row.items() if k in SafetyVerdict.model_fields}
    return SafetyVerdict.model_validate({**fields, "label": row["predicted"]})


def _unsteered_replies(prompts: Sequence[EvalPrompt], store: JsonlStore, verdicts: Mapping[tuple, Mapping]) -> list:
    """SCANS rows for the prompts SCANS leaves unsteered (coefficient 0) whose unsteered reply is in `store`."""
    unsteered = {store.key(r)[1:]: r for r in store.rows if r["condition"] == "unsteered"}
    rows = []
    for p in prompts:
        v, plain = verdicts.get(p.key), unsteered.get(p.key)
        if v is None or plain is None or v.get("coefficient", 1) != 0:
            continue
        rows.append(
            {**plain, "condition": "scans", "score": v["score"], "direction": v["direction"], "reply_of": "unsteered"}
        )
    return rows


def rejudge(rows: Sequence[dict], judge: RefusalJudge) -> list[dict]:
    """Copies of generation rows with `refused` recomputed by another judge (no regeneration needed)."""
    return [{**r, "refused": bool(judge(r["prompt"], r["response"]))} for r in rows]
