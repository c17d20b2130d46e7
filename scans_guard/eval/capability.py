"""Does steering cost capability? Perplexity on WikiText-2 (test split) and accuracy on a fixed MMLU subset.

Steered scoring adds coefficient * v^l at the steering layers (through `engine.steering.apply`, with the plan
`engine.steering_plan` makes for the condition's options, as generation does):
- perplexity: at every position of every window (all positions are scored);
- MMLU: from the last prompt token on, the one position scored (as steered generation does: the prompt before
  it is never touched). The question goes in a user turn; the answer is the letter among A-D whose token has the
  highest logit as the first assistant token.
The coefficient per condition: unsteered 0, always_negative -alpha_benign, always_positive +alpha_harmful, scans the
coefficient sigma(q) gives the window's text or the question (as the SCANS reference does); the helpful system
prompt applies to MMLU only. Both tasks write rows to `capability.jsonl`, so they resume like the rest.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine import ScansEngine
from ..model.prompt_batch import PromptBatch, prefill
from ..steering.plan import SteeringPlan
from .conditions import Condition
from .store import JsonlStore

CAPABILITY_FILE = "capability.jsonl"
CAPABILITY_KEY = ("task", "condition", "item")
WIKITEXT_TEST = Path("wikitext2_tokenized") / "test.txt"
MMLU_DIR = Path("mmlu")
CHOICES = ("A", "B", "C", "D")


def capability_store(out_dir: str | os.PathLike) -> JsonlStore:
    return JsonlStore(Path(out_dir) / CAPABILITY_FILE, CAPABILITY_KEY)


# -- perplexity -----------------------------------------------------------------------------------------------
def wikitext_windows(
    engine: ScansEngine, path: str | os.PathLike, window: int = 1024, max_windows: int | None = None
) -> list[list[int]]:
    """Non-overlapping windows of `window` tokens of the file (the last, shorter one kept if >= 2 tokens)."""
    text = Path(path).read_text(encoding="utf-8")
    window = min(window, engine.handle.context_window)
    ids: list[int] = []
    if max_windows is not None:  # tokenize only a prefix that surely holds enough tokens (never > 8 chars each)
        prefix = text[: max_windows * window * 8]
        ids = engine.handle.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        ids = ids[: max_windows * window] if len(ids) > max_windows * window or len(prefix) == len(text) else []
    if not ids:
        ids = engine.handle.tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) >= 2]
    return windows[:max_windows] if max_windows is not None else windows


def _uses_plain_head(model: torch.nn.Module) -> bool:
    """True if logits are lm_head(decoder output) with nothing in between (no soft-capping or scaling)."""
    cfg = model.config
    return (
        hasattr(model, "get_decoder")
        and not getattr(cfg, "final_logit_softcapping", None)
        and getattr(cfg, "logit_scale", None) in (None, 1.0)
    )


@torch.inference_mode()
def token_nll(
    engine: ScansEngine, windows: Sequence[Sequence[int]], plan: SteeringPlan, chunk: int = 256
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, tokens predicted) per window, every position steered by `plan`."""
    handle = engine.handle
    batch = PromptBatch.left_pad(windows, handle.tokenizer.pad_token_id, handle.device)
    with engine.steering.apply(plan, start_column=0):
        kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        if _uses_plain_head(handle.model):
            hidden = handle.model.get_decoder()(**kwargs, use_cache=False).last_hidden_state
            head = handle.lm_head
        else:
            hidden = handle.model(**kwargs, use_cache=False).logits
            head = None
    targets = batch.input_ids[:, 1:]
    valid = (batch.attention_mask[:, :-1] * batch.attention_mask[:, 1:]).bool()
    nll = torch.zeros(len(windows), dtype=torch.float64)
    for a in range(0, targets.shape[1], chunk):
        b = min(a + chunk, targets.shape[1])
        logits = (head(hidden[:, a:b]) if head is not None else hidden[:, a:b]).float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, a:b, None])[..., 0]
        nll += (-(lp * valid[:, a:b])).sum(-1).double().cpu()
    counts = valid.sum(-1).tolist()
    return [(float(n), int(c)) for n, c in zip(nll.tolist(), counts)]


def run_perplexity(
    engine: ScansEngine,
    windows: Sequence[Sequence[int]],
    conditions: Sequence[Condition],
    store: JsonlStore,
    batch_size: int = 4,
    progress: bool = True,
) -> None:
    """NLL of every window not yet in `store` under each condition without a system prompt."""
    conds = [c for c in conditions if c.system is None]
    todo = [(c, i) for c in conds for i in range(len(windows)) if ("ppl", c.name, str(i)) not in store]
    with tqdm(total=len(todo), desc="perplexity", unit="window", disable=not progress) as bar:
        for cond in conds:
            idx = [i for c, i in todo if c is cond]
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                plan = engine.steering_plan([engine.handle.decode(windows[i]) for i in chunk], **cond.generate_kwargs())
                results = token_nll(engine, [windows[i] for i in chunk], plan)
                store.append(
                    {
                        "task": "ppl",
                        "condition": cond.name,
                        "item": str(i),
                        "nll": nll,
                        "tokens": n,
                        "coefficient": row.coefficient,
                    }
                    for i, (nll, n), row in zip(chunk, results, plan.rows)
                )
                bar.update(len(chunk))


# -- MMLU -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MmluQuestion:
    subject: str
    index: int
    question: str
    choices: tuple[str, str, str, str]
    answer: str

    @property
    def item(self) -> str:
        return f"{self.subject}/{self.index}"


def _read_mmlu(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if len(row) >= 6]


def load_mmlu(
    data_dir: str | os.PathLike,
    per_subject: int = 10,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[MmluQuestion], dict[str, list]]:
    """The fixed subset: the first `per_subject` test questions of every subject (or of `subjects`), at most `limit`
    in all (see `spread_questions`); plus the dev rows of each subject asked."""
    root = Path(data_dir) / MMLU_DIR
    files = {f.name.removesuffix("_test.csv"): f for f in sorted((root / "test").glob("*_test.csv"))}
    if not files:
        raise FileNotFoundError(f"no MMLU test files under {root / 'test'}")
    if subjects is not None:
        if unknown := sorted(set(subjects) - set(files)):
            raise ValueError(f"unknown MMLU subject(s) {unknown}")
        files = {name: f for name, f in files.items() if name in set(subjects)}
    questions = [
        MmluQuestion(subject, i, row[0], (row[1], row[2], row[3], row[4]), row[5].strip())
        for subject, f in files.items()
        for i, row in enumerate(_read_mmlu(f)[:per_subject])
    ]
    if limit is not None and len(questions) > limit:
        questions = spread_questions(questions, limit, seed)
    dev_files = {s: root / "dev" / f"{s}_dev.csv" for s in dict.fromkeys(q.subject for q in questions)}
    return questions, {s: _read_mmlu(f) if f.is_file() else [] for s, f in dev_files.items()}


def spread_questions(questions: Sequence[MmluQuestion], n: int, seed: int = 0) -> list[MmluQuestion]:
    """n questions spread over the subjects: round-robin over a seeded order of the subjects, each subject's
    questions in file order (so a small --limit samples many subjects, not the first ones alphabetically)."""
    by_subject: dict[str, list[MmluQuestion]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    order = sorted(by_subject)
    random.Random(seed).shuffle(order)
    depth = max(map(len, by_subject.values()), default=0)
    picked = [by_subject[s][i] for i in range(depth) for s in order if i < len(by_subject[s])][:n]
    return sorted(picked, key=lambda q: (q.subject, q.index))


def _format_question(question: str, choices: Sequence[str], answer: str | None = None) -> str:
    text = question + "".join(f"\n{letter}. {c}" for letter, c in zip(CHOICES, choices)) + "\nAnswer:"
    return text + (f" {answer}\n\n" if answer is not None else "")


def mmlu_prompt(q: MmluQuestion, dev_rows: Sequence[Sequence[str]] = (), shots: int = 0) -> str:
    """The prompt of the MMLU reference evaluation (Hendrycks et al.): header, `shots` dev examples, the question."""
    header = f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}.\n\n"
    examples = "".join(_format_question(r[0], r[1:5], r[5].strip()) for r in list(dev_rows)[:shots])
    return header + examples + _format_question(q.question, q.choices)


def choice_token_ids(tokenizer) -> list[list[int]]:
    """Per letter, the single-token spellings of its answer ("A" and " A" where each is one token)."""
    out = []
    for letter in CHOICES:
        ids = {
            enc[0]
            for s in (letter, " " + letter)
            if len(enc := tokenizer(s, add_special_tokens=False)["input_ids"]) == 1
        }
        if not ids:
            ids = {tokenizer(letter, add_special_tokens=False)["input_ids"][-1]}
        out.append(sorted(ids))
    return out


def _fits(engine: ScansEngine, conversation: str | list[dict]) -> bool:
    """Whether the prompt plus sigma's answer prefix fits the context window and the engine's max_input_tokens
    (longer questions are skipped)."""
    n, cap = len(engine.handle.chat_ids(conversation)), engine.max_input_tokens
    return n + 8 <= engine.handle.context_window and (cap is None or n <= cap)


@torch.inference_mode()
def choice_logits(engine: ScansEngine, conversations: Sequence[str | list[dict]], plan: SteeringPlan) -> np.ndarray:
    """[n, 4] best logit of each answer letter as the first assistant token, steered from the last prompt token."""
    handle = engine.handle
    rows = [handle.chat_ids(c) for c in conversations]
    batch = PromptBatch.left_pad(rows, handle.tokenizer.pad_token_id, handle.device)
    with engine.steering.apply(plan, start_column=batch.input_ids.shape[1] - 1):
        out = prefill(handle.model, batch)
    if out.logits is None:
        raise RuntimeError(f"{handle.name} returned no logits")
    logits = out.logits[:, -1, :].float().cpu()
    letters = choice_token_ids(handle.tokenizer)
    return np.stack([logits[:, ids].max(-1).values.numpy() for ids in letters], axis=1)


def _mmlu_row(cond: Condition, q: MmluQuestion, pred: str | None, coefficient: float, **extra: object) -> dict:
    return {
        "task": "mmlu",
        "condition": cond.name,
        "item": q.item,
        "subject": q.subject,
        "answer": q.answer,
        "pred": pred,
        "correct": None if pred is None else pred == q.answer,
        "coefficient": coefficient,
        **extra,
    }


def run_mmlu(
    engine: ScansEngine,
    questions: Sequence[MmluQuestion],
    dev: dict[str, list],
    conditions: Sequence[Condition],
    store: JsonlStore,
    shots: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> None:
    """Score every question not yet in `store` under each condition (too-long prompts: rows marked skipped)."""
    todo = [(c, q) for c in conditions for q in questions if ("mmlu", c.name, q.item) not in store]
    with tqdm(total=len(todo), desc="mmlu", unit="question", disable=not progress) as bar:
        for cond in conditions:
            mine = sorted((q for c, q in todo if c is cond), key=lambda q: len(mmlu_prompt(q, dev[q.subject], shots)))
            fits = [q for q in mine if _fits(engine, cond.conversation(mmlu_prompt(q, dev[q.subject], shots)))]
            too_long = [q for q in mine if q not in set(fits)]
            store.append(_mmlu_row(cond, q, None, 0.0, skipped=True) for q in too_long)
            bar.update(len(too_long))
            for start in range(0, len(fits), batch_size):
                chunk = fits[start : start + batch_size]
                convs = [cond.conversation(mmlu_prompt(q, dev[q.subject], shots)) for q in chunk]
                plan = engine.steering_plan(convs, **cond.generate_kwargs())
                scores = choice_logits(engine, convs, plan)
                store.append(
                    _mmlu_row(cond, q, CHOICES[int(np.argmax(s))], row.coefficient)
                    for q, s, row in zip(chunk, scores, plan.rows)
                )
                bar.update(len(chunk))


# -- summary --------------------------------------------------------------------------------------------------
def summarise_capability(rows: Sequence[dict]) -> dict:
    """Perplexity and MMLU accuracy per condition (with counts), and MMLU accuracy per subject."""
    out: dict = {"perplexity": {}, "mmlu": {}, "mmlu_by_subject": {}}
    for r in rows:
        if r["task"] == "ppl":
            e = out["perplexity"].setdefault(r["condition"], {"nll": 0.0, "tokens": 0, "windows": 0, "steered": 0})
            e["nll"] += r["nll"]
            e["tokens"] += r["tokens"]
            e["windows"] += 1
            e["steered"] += r["coefficient"] != 0
        elif r["task"] == "mmlu":
            e = out["mmlu"].setdefault(
                r["condition"],
                {"correct": 0, "n": 0, "towards_refusal": 0, "away_from_refusal": 0, "skipped_too_long": 0},
            )
            if r.get("skipped"):
                e["skipped_too_long"] += 1
                continue
            e["correct"] += bool(r["correct"])
            e["n"] += 1
            e["towards_refusal"] += r["coefficient"] > 0
            e["away_from_refusal"] += r["coefficient"] < 0
            s = out["mmlu_by_subject"].setdefault(r["subject"], {}).setdefault(r["condition"], [0, 0])
            s[0] += bool(r["correct"])
            s[1] += 1
    for e in out["perplexity"].values():
        e["perplexity"] = math.exp(e["nll"] / e["tokens"]) if e["tokens"] else None
    for e in out["mmlu"].values():
        e["accuracy"] = e["correct"] / e["n"] if e["n"] else None
    out["mmlu_by_subject"] = {
        subj: {c: k / n for c, (k, n) in conds.items()} for subj, conds in sorted(out["mmlu_by_subject"].items())
    }
    return out
