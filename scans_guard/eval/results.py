"""The evaluation's results as typed models: what `results.json` holds (schema `scans-guard-eval/1`), what the report
renders and what `run_eval` returns. Each model's fields are the JSON's keys (aliases where a key is not a name)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..config import SteeringRecipe
from .benchmarks import SetInfo
from .conditions import Condition

SCHEMA = "scans-guard-eval/1"
_OPEN = ConfigDict(extra="allow", populate_by_name=True)  # run.json keeps every setting; the models name the read ones


class RunModel(BaseModel):
    model_config = _OPEN
    name: str
    n_layers: int
    dtype: str
    device: str


class ArtifactSummary(BaseModel):
    model_config = _OPEN
    recipe: SteeringRecipe
    threshold_fit: dict = Field(default_factory=dict)
    layer_analysis: list[dict] = Field(default_factory=list)


class RunSettings(BaseModel):
    model_config = _OPEN
    max_new_tokens: int
    batch_size: int
    judge: str
    limit: int | None = None
    generation_limit: int | None = None
    generation_full: list[str] = Field(default_factory=list)
    seed: int = 0
    exclude_threshold_fit: bool = True
    ppl_window: int = 1024
    mmlu_per_subject: int = 10
    mmlu_shots: int = 0
    mmlu_subjects: list[str] | None = None


class RunInfo(BaseModel):
    """run.json: the model, artifact, settings, conditions and sets of a run."""

    model_config = _OPEN
    library_version: str
    model: RunModel
    artifact: ArtifactSummary
    settings: RunSettings
    conditions: list[Condition]
    sets: dict[str, SetInfo] = Field(default_factory=dict)
    skipped_sets: list[str] = Field(default_factory=list)
    calibration_prompts: dict = Field(default_factory=dict)
    capability_notes: list[str] = Field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return {c.name: c.label for c in self.conditions}


class RefusalRate(BaseModel):
    condition: str
    set: str
    label: str
    n: int
    refused: int
    rate: float
    ci_low: float | None
    ci_high: float | None


class RefusalSummary(BaseModel):
    safe_mean_rate: float | None
    safe_pooled_rate: float | None
    safe_n: int
    unsafe_mean_rate: float | None
    unsafe_pooled_rate: float | None
    unsafe_n: int


class Refusal(BaseModel):
    rates: list[RefusalRate]
    summary: dict[str, RefusalSummary]
    note: str

    def rate(self, condition: str, set_name: str, label: str) -> RefusalRate | None:
        return next((r for r in self.rates if (r.condition, r.set, r.label) == (condition, set_name, label)), None)


class Confusion(BaseModel):
    """Counts and rates for one positive class (see metrics.confusion); AUROC/AUPRC need both classes."""

    tp: int
    fp: int
    tn: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None
    accuracy: float | None
    auroc: float | None = None
    auprc: float | None = None


class ThresholdMetrics(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    threshold: float
    n: int
    n_unsafe: int
    n_safe: int
    unsafe: Confusion = Field(alias="positive=unsafe")
    safe: Confusion = Field(alias="positive=safe")


class SuiteReport(BaseModel):
    suite: str
    sets: list[str]
    at_artifact_T: ThresholdMetrics
    best_T: float | None = None
    at_best_T: ThresholdMetrics | None = None


class SweepRow(BaseModel):
    threshold: float
    precision_unsafe: float | None
    recall_unsafe: float | None
    f1_unsafe: float | None
    precision_safe: float | None
    recall_safe: float | None
    f1_safe: float | None
    fpr: float | None
    fnr: float | None
    accuracy: float | None
    flagged_unsafe: float | None


class LayerRow(BaseModel):
    layer: int
    mean_safe: float | None
    std_safe: float | None
    mean_unsafe: float | None
    std_unsafe: float | None
    auroc: float | None


class Sweep(BaseModel):
    suite: str
    rows: list[SweepRow]


class Classification(BaseModel):
    positive_class_note: str
    artifact_threshold: float
    suites: list[SuiteReport]
    threshold_sweep: Sweep
    layer_profile: dict[str, list[LayerRow]]
    score_stats: dict[str, dict[str, dict[str, float | int | None]]]

    def suite(self, name: str) -> SuiteReport | None:
        return next((e for e in self.suites if e.suite == name), None)


class Perplexity(BaseModel):
    nll: float
    tokens: int
    windows: int
    steered: int
    perplexity: float | None


class Mmlu(BaseModel):
    correct: int
    n: int
    towards_refusal: int
    away_from_refusal: int
    skipped_too_long: int
    accuracy: float | None


class Capability(BaseModel):
    perplexity: dict[str, Perplexity] = Field(default_factory=dict)
    mmlu: dict[str, Mmlu] = Field(default_factory=dict)
    mmlu_by_subject: dict[str, dict[str, float]] = Field(default_factory=dict)


class EvalResults(BaseModel):
    """Every number of an evaluation (results.json)."""

    model_config = ConfigDict(populate_by_name=True)

    schema_id: str = Field(SCHEMA, alias="schema")
    run: RunInfo
    refusal: Refusal
    classification: Classification
    vocabulary_projection: list[dict]
    capability: Capability
    figures: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"
