"""The whole evaluation in one call: load sets, classify, generate, measure capability, write the report.

    from scans_guard import ScansEngine
    from scans_guard.eval import EvalConfig, run_eval
    result = run_eval(ScansEngine.load(), EvalConfig(out_dir="results/eval", limit=20))

A results directory holds `run.json` (settings, model, artifact), the JSONL rows, `results.json` (every number),
`report.md` and `plots/`. Running again on the same directory resumes; settings that change the replies (model,
artifact recipe, max_new_tokens, judge, system prompt) must match, or the run stops with an error.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from ..engine import ScansEngine
from ..model.paths import data_dir as resolve_data_dir
from ..model.paths import missing_data_dir_hint
from ..steering.judge import KeywordJudge, RefusalJudge, judge_name
from ..version import __version__
from .benchmarks import SETS, calibration_prompts, generation_prompts, load_benchmarks
from .capability import (
    WIKITEXT_TEST,
    capability_store,
    load_mmlu,
    run_mmlu,
    run_perplexity,
    wikitext_windows,
)
from .conditions import CONDITION_NAMES, HELPFUL_SYSTEM_PROMPT, build_conditions
from .report import write_report
from .results import EvalResults
from .runner import generations_store, rejudge, run_classification, run_generations, scores_store

log = logging.getLogger(__name__)
RUN_FILE = "run.json"


class EvalConfig(BaseModel):
    out_dir: str = Field(description="results directory (created; an existing one is resumed)")
    data_dir: str | None = Field(
        None,
        description="benchmark data; None: $SCANS_GUARD_DATA (no default: without "
        "either only the shipped sets run, and no capability)",
    )
    sets: list[str] | None = Field(None, description="None: every set available")
    conditions: list[str] | None = Field(None, description="None: unsteered, scans and the three baselines")
    limit: int | None = Field(
        None,
        ge=1,
        description="caps every part: prompts per set, MMLU questions in all "
        "(spread over subjects) and perplexity windows",
    )
    generation_limit: int | None = Field(
        None,
        ge=1,
        description="replies for at most N prompts per set (a "
        "label-balanced sample); sigma(q) still scores every prompt",
    )
    generation_full: list[str] = Field(
        default_factory=list, description="sets replied to in full whatever generation_limit says"
    )
    seed: int = Field(0, description="seed of the --limit and generation_limit samples")
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(8, ge=1)
    helpful_system_prompt: str = HELPFUL_SYSTEM_PROMPT
    exclude_threshold_fit: bool = Field(True, description="drop the prompts T was fitted on (False: keep, count)")
    capability: bool = True
    ppl_window: int = Field(1024, ge=16)
    ppl_windows: int | None = Field(None, ge=1, description="None: the whole test split; --limit caps it")
    mmlu_per_subject: int | None = Field(None, ge=1, description="None: 10 (or --limit if smaller)")
    mmlu_shots: int = Field(0, ge=0, le=5)
    mmlu_subjects: list[str] | None = Field(None, description="None: all 57 subjects")
    plots: bool = True
    progress: bool = True

    @field_validator("sets", "conditions", "generation_full")
    @classmethod
    def _known(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        kind = "condition" if info.field_name == "conditions" else "set"
        known = list(CONDITION_NAMES if kind == "condition" else SETS)
        if names is not None and (unknown := [n for n in names if n not in known]):
            raise ValueError(f"unknown {kind}(s) {unknown}; known: {known}")
        return names

    def resolved_mmlu_per_subject(self) -> int:
        if self.mmlu_per_subject is not None:
            return self.mmlu_per_subject
        return min(10, self.limit) if self.limit is not None else 10

    def resolved_ppl_windows(self) -> int | None:
        caps = [n for n in (self.ppl_windows, self.limit) if n is not None]
        return min(caps) if caps else None


def _artifact_summary(engine: ScansEngine) -> dict:
    meta = engine.artifact.meta
    return {
        "model_name": meta.model_name,
        "recipe": meta.recipe.model_dump(),
        "anchors": {k: v.model_dump(exclude={"prompt_sha256"}) for k, v in meta.anchors.items()},
        "threshold_fit": meta.threshold_fit,
        "platt": meta.platt.model_dump() if meta.platt else None,
        "layer_analysis": meta.layer_analysis,
        "notes": meta.notes,
        "library_version": meta.library_version,
    }


def _identity(run: dict) -> dict:
    """The settings that decide the replies: a resumed run must have the same."""
    return {
        "model_fingerprint": run["model"]["fingerprint_sha256"],
        "recipe": run["artifact"]["recipe"],
        **{
            k: run["settings"][k]
            for k in ("max_new_tokens", "judge", "helpful_system_prompt", "mmlu_shots", "ppl_window")
        },
    }


def _check_resume(out: Path, run: dict) -> None:
    path = out / RUN_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    mine, theirs = _identity(run), _identity(old)
    diff = [k for k in mine if mine[k] != theirs.get(k)]
    if diff:
        raise ValueError(f"{out} holds a run with different {', '.join(diff)}; use another --out to start afresh")


def run_eval(engine: ScansEngine, config: EvalConfig, judge: RefusalJudge | None = None) -> EvalResults:
    """Run (or resume) the evaluation and write the report; returns the typed results (also in results.json)."""
    judge = judge or KeywordJudge()
    out = Path(config.out_dir)
    data_dir = resolve_data_dir(config.data_dir)
    conditions = build_conditions(config.conditions, engine.recipe, config.helpful_system_prompt)
    calib = calibration_prompts(engine.artifact)
    sets, infos, skipped = load_benchmarks(
        config.sets, data_dir, calib, config.limit, config.seed, config.exclude_threshold_fit
    )
    gen_sets = generation_prompts(sets, config.generation_limit, config.generation_full, config.seed)
    run: dict[str, Any] = {
        "library_version": __version__,
        "model": {
            "name": engine.handle.name,
            "n_layers": engine.handle.n_layers,
            "fingerprint_sha256": engine.handle.fingerprint()["weight_probe_sha256"],
            "device": str(engine.handle.device),
            "dtype": str(engine.handle.dtype).removeprefix("torch."),
        },
        "artifact": _artifact_summary(engine),
        "settings": {
            **config.model_dump(exclude={"progress"}),
            "data_dir": str(data_dir) if data_dir else None,
            "judge": judge_name(judge),
            "mmlu_per_subject": config.resolved_mmlu_per_subject(),
            "ppl_windows": config.resolved_ppl_windows(),
        },
        "conditions": [asdict(c) for c in conditions],
        "sets": {k: v.model_dump() for k, v in infos.items()},
        "selection": {k: [p.index for p in v] for k, v in sets.items()},  # row numbers in each set's file
        "generation_selection": {k: [p.index for p in v] for k, v in gen_sets.items()},
        "skipped_sets": skipped,
        "calibration_prompts": {
            "anchors_excluded": len(calib.anchor_hashes),
            "anchors_verified": calib.anchors_verified,
            "threshold_fit_prompts": len(calib.threshold_fit_hashes),
            "threshold_fit_verified": calib.threshold_fit_verified,
            "threshold_fit_excluded": config.exclude_threshold_fit,
            "notes": calib.notes,
        },
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _check_resume(out, run)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")

    prompts = [p for ps in sets.values() for p in ps]
    t0 = time.perf_counter()
    score_rows = run_classification(engine, prompts, scores_store(out), config.batch_size, config.progress)
    verdicts = {(r["set"], r["label"], r["prompt"]): r for r in score_rows}
    replied = [p for ps in gen_sets.values() for p in ps]
    gen_rows = run_generations(
        engine,
        replied,
        conditions,
        generations_store(out),
        judge,
        config.max_new_tokens,
        config.batch_size,
        verdicts,
        config.progress,
    )
    cap_rows: list[dict] = []
    run["capability_notes"], run["capability_items"] = [], []
    if config.capability:
        # guard+steer steers what it lets through as SCANS does; perplexity and MMLU have nothing to block
        measured = [c for c in conditions if c.mode != "guard+steer"]
        cap_rows = _run_capability(engine, config, measured, data_dir, out, run["capability_notes"])
        run["capability_items"] = sorted({r["item"] for r in cap_rows}, key=lambda i: (len(i), i))
    run["elapsed_s_this_session"] = round(time.perf_counter() - t0, 1)
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    return write_report(out, run, score_rows, gen_rows, cap_rows, plots=config.plots)


def _run_capability(
    engine: ScansEngine, config: EvalConfig, conditions, data_dir: Path | None, out: Path, notes: list[str]
) -> list[dict]:
    store = capability_store(out)
    if data_dir is None:
        notes.append(
            f"capability skipped: no data directory (WikiText-2 and MMLU are not shipped; {missing_data_dir_hint()})"
        )
        log.warning(notes[-1])
        return []
    wiki = data_dir / WIKITEXT_TEST
    if wiki.is_file():
        windows = wikitext_windows(engine, wiki, config.ppl_window, config.resolved_ppl_windows())
        run_perplexity(engine, windows, conditions, store, max(1, config.batch_size // 2), config.progress)
        wanted = {str(i) for i in range(len(windows))}
    else:
        notes.append(f"perplexity skipped: {wiki} not found")
        wanted = set()
    if (data_dir / "mmlu" / "test").is_dir():
        questions, dev = load_mmlu(
            data_dir, config.resolved_mmlu_per_subject(), config.mmlu_subjects, limit=config.limit, seed=config.seed
        )
        run_mmlu(engine, questions, dev, conditions, store, config.mmlu_shots, config.batch_size, config.progress)
        wanted |= {q.item for q in questions}
    else:
        notes.append(f"MMLU skipped: {data_dir / 'mmlu' / 'test'} not found")
    names = {c.name for c in conditions}
    return [r for r in store.rows if r["condition"] in names and r["item"] in wanted]


def report_only(out_dir: str | os.PathLike, plots: bool = True, judge: RefusalJudge | None = None) -> EvalResults:
    """Rebuild results.json, report.md and the plots from a results directory's files (no model needed).

    With `judge`, every stored reply is judged again and the report uses (and records) that judge's verdicts;
    generations.jsonl itself is left as it is.
    """
    out = Path(out_dir)
    if not (out / RUN_FILE).is_file():
        raise FileNotFoundError(f"{out / RUN_FILE} not found: not a results directory")
    run = json.loads((out / RUN_FILE).read_text())
    names = {c["name"] for c in run["conditions"]}

    def chosen(key: str) -> set[tuple[str, int]]:  # the prompts of the last run (rows of earlier runs stay out)
        return {(name, i) for name, indices in (run.get(key) or run.get("selection") or {}).items() for i in indices}

    scored, generated = chosen("selection"), chosen("generation_selection")
    score_rows = [r for r in scores_store(out).rows if not scored or (r["set"], r["index"]) in scored]
    gen_rows = [
        r
        for r in generations_store(out).rows
        if r["condition"] in names and (not generated or (r["set"], r["index"]) in generated)
    ]
    if judge is not None:
        gen_rows = rejudge(gen_rows, judge)
        run["settings"]["judge"] = (
            f"{judge_name(judge)} (re-judged; generations.jsonl holds {run['settings']['judge']}'s verdicts)"
        )
    items = set(run.get("capability_items", []))
    cap_rows = [r for r in capability_store(out).rows if r["condition"] in names and r["item"] in items]
    return write_report(out, run, score_rows, gen_rows, cap_rows, plots=plots)
