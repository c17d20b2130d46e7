"""Typed configuration and result models of the public API (pydantic, so they validate and serialise)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .decoding.constraints import Constraint
from .sigma.decision import Direction, Label, direction, is_harmful, steering_coefficient  # noqa: F401 - is_harmful re-exported
from .sigma.domain import DomainConfig
from .sigma.readings import ReadingConfig

MIN_TEMPERATURE = 1e-3  # smallest sampling temperature; logits / T must stay finite in float32
# The repetition penalty's range: a penalty p divides positive logits by p, so p = 1e-300 made them infinite and a
# sampled row's probabilities NaN (a failed step, found by fuzzing the server); within these bounds logits / p / T stay
# finite in float32.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 1e-3, 1e3
# The seeds torch.Generator.manual_seed accepts: signed and unsigned 64-bit (a negative seed s draws as 2**64 - 1 + s).
# A seed outside them fails when the config is built, not in the batch worker after the sigma pass.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class SteeringRecipe(BaseModel):
    """Everything that decides how a query is classified and steered; stored in every artifact.

    sigma = +1 (harmful) adds alpha_harmful * v, sigma = -1 (benign) subtracts alpha_benign * v.
    Scores within `grey_zone` below the threshold are classified benign but left unsteered, so a
    borderline harmful prompt is never pushed away from refusal.
    """

    # NaN compares false with everything: a NaN threshold would label every prompt benign.
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    steer_layers: list[int] = Field(description="decoder blocks whose output is steered")
    classify_layers: list[int] = Field(description="decoder blocks whose transitions sigma averages")
    threshold: float = Field(description="T: score >= T means harmful")
    alpha_benign: float = Field(1.0, ge=0, description="magnitude of the step away from refusal")
    alpha_harmful: float = Field(1.0, ge=0, description="magnitude of the step towards refusal")
    grey_zone: float = Field(0.0, ge=0, description="scores in [T - grey_zone, T) are not steered")
    r_pos: str = Field("Sure", min_length=1, description="answer prefix whose transition sigma measures")
    domain: DomainConfig = Field(default_factory=DomainConfig, description="where sigma may steer away from refusal")
    readings: ReadingConfig = Field(
        default_factory=ReadingConfig,
        description="what sigma scores besides the "
        "conversation as sent: turns, sentences, decoded text (the most harmful counts)",
    )
    away_step: Literal["add", "ablate"] = Field(
        "add",
        description="how a prompt is steered away from refusal: add -alpha * direction at the steer layers, or "
        "ablate the refusal direction there (h - (h . v)v, the coefficient's magnitude unused)",
    )
    away_direction: Literal["refusal", "false_refusal"] = Field(
        "refusal",
        description="the direction subtracted when steering away: the refusal vectors, or the artifact's "
        "false-refusal vectors (safe look-alikes minus plain benign prompts, orthogonal to the refusal vector)",
    )
    alpha_benign_slope: float = Field(
        0.0,
        ge=0,
        description="added to alpha_benign per unit of score below the steer T: a prompt "
        "sigma is surer of is steered further (capped at alpha_benign_max)",
    )
    alpha_benign_max: float | None = Field(None, ge=0, description="cap of the grown away magnitude (None: no cap)")
    probe_layer: int | None = Field(
        None,
        ge=0,
        description="None: the score is the mean cosine of the transitions to d_harm (the paper's sigma); "
        "a layer: the score is the logit w . t^l + probe_bias of a logistic-regression probe on that layer's "
        "transition (weights in the artifact's tensors), fitted on the contrast set and the anchors",
    )
    probe_bias: float = Field(0.0, description="intercept of the probe's logit")

    @model_validator(mode="after")
    def _probe_layer_is_classified(self) -> SteeringRecipe:
        if self.probe_layer is not None and self.probe_layer not in self.classify_layers:
            raise ValueError(f"probe_layer {self.probe_layer} must be one of the classify layers")
        return self

    @field_validator("steer_layers", "classify_layers")
    @classmethod
    def _sorted_unique(cls, layers: list[int]) -> list[int]:
        if not layers:
            raise ValueError("at least one layer is needed")
        if min(layers) < 0:
            raise ValueError("layer indices are 0-based and non-negative")
        return sorted(set(layers))

    def coefficient(self, score: float, in_domain: bool = True) -> float:
        """Signed steering magnitude for one query: +alpha_harmful, -alpha_benign, or 0 (grey zone).

        Fails closed: a non-finite score counts as harmful, and a prompt outside the calibration domain is never
        steered away from refusal (the rule is `scans_guard.sigma.decision`).
        """
        coef = steering_coefficient(
            score, self.threshold, self.grey_zone, self.alpha_benign, self.alpha_harmful, in_domain
        )
        if coef < 0 and self.alpha_benign_slope > 0:  # grows with the margin below T
            grown = self.alpha_benign + self.alpha_benign_slope * (self.threshold - score)
            coef = -min(grown, self.alpha_benign_max if self.alpha_benign_max is not None else grown)
        return coef


class GenerationConfig(BaseModel):
    """Decoding settings; temperature 0 means greedy.

    The defaults decode greedily whatever the model's own `generation_config` suggests, so outputs are reproducible
    and do not depend on a checkpoint's sampling preferences; `from_model_defaults` opts into them. Temperatures in
    (0, MIN_TEMPERATURE) are refused rather than rounded to greedy: logits / 1e-45 overflow float32 and sampling
    would see NaN probabilities. Use 0 for greedy decoding.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0, description=f"0 (greedy) or at least {MIN_TEMPERATURE}")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, description="sample among the k most likely tokens; None: no limit")
    repetition_penalty: float | None = Field(
        None,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        allow_inf_nan=False,
        description="divide (or, if negative, multiply) the logits of tokens already in the prompt or reply, as in "
        f"transformers; applies to greedy decoding too; None or 1: no penalty; {MIN_REPETITION_PENALTY:g} to "
        f"{MAX_REPETITION_PENALTY:g}",
    )
    stop: list[str] = Field(default_factory=list, description="stop strings; the text is cut before them")
    seed: int | None = Field(
        None,
        ge=SEED_MIN,
        le=SEED_MAX,
        description="seed for sampling, -2**63 .. 2**64 - 1 (what torch.Generator.manual_seed "
        "accepts); None draws a fresh one",
    )
    ignore_eos: bool = Field(False, description="decode all max_new_tokens even past end-of-turn (benchmarks)")
    constraint: Constraint | None = Field(
        None,
        description="what the reply must be (a JSON schema, a call of one of some tools), enforced token by token "
        "(scans_guard.decoding.constraints); None: free text",
    )

    @classmethod
    def from_model_defaults(cls, model: object, **fields: object) -> GenerationConfig:
        """The given `fields`; sampling settings not given come from the model's `generation_config`.

        `model`: a ModelHandle, ScansEngine, HF model or transformers GenerationConfig. Taken when the model sets
        them: do_sample (False or unset: temperature 0), temperature, top_p, top_k (0: none), repetition_penalty.
        max_new_tokens, stop and seed are never taken from the model.
        """
        model = getattr(model, "handle", model)
        gc = getattr(getattr(model, "model", model), "generation_config", model)
        temperature = getattr(gc, "temperature", None)
        found: dict[str, object] = {
            "temperature": (1.0 if temperature is None else temperature) if getattr(gc, "do_sample", None) else 0.0
        }
        for name in ("top_p", "top_k", "repetition_penalty"):
            if getattr(gc, name, None):  # None and 0 (transformers' "off" for top_k) are left at our default
                found[name] = getattr(gc, name)
        return cls(**{**found, **fields})

    @field_validator("temperature")
    @classmethod
    def _greedy_or_sampling(cls, temperature: float) -> float:
        if 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature!r}")
        return temperature

    @model_validator(mode="after")
    def _constraint_can_end(self) -> GenerationConfig:
        if self.constraint is not None and self.ignore_eos:
            raise ValueError(
                "ignore_eos cannot go with a constraint: once the constraint is met, only the end may follow"
            )
        return self

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("a stop string must not be empty (it would match before the first character)")
        return stop


class SafetyVerdict(BaseModel):
    """sigma(q) for one prompt: the score, the decision and how it was reached.

    `label`, `threshold` and `probability` are at `operating_point` (the artifact's `guard` point unless asked
    otherwise); `direction` and `coefficient` are decided at the `steer` point and by `in_domain`.
    """

    score: float = Field(
        description="sigma(q): the most harmful of `renderings` (the artifact's probe logit, or the "
        "mean cosine to d_harm for an artifact without a probe)"
    )
    label: Label
    threshold: float = Field(description="T of the operating point that decided `label`")
    operating_point: str = Field("guard", description="which of the artifact's operating points `label` uses")
    probability: float | None = Field(None, description="calibrated P(harmful); >= 0.5 exactly when label is harmful")
    layer_similarities: dict[int, float] = Field(description="per classification layer cosine similarity")
    renderings: dict[str, float] = Field(
        default_factory=dict,
        description="score of each reading: as sent, without the caller's system prompt, the "
        "user turns joined and alone, each sentence alone, without a counterfactual premise, decoded text "
        "(scans_guard.sigma.readings)",
    )
    in_domain: bool = Field(True, description="inside the calibration domain (language, length, not mostly code)")
    domain_reasons: list[str] = Field(default_factory=list, description="why not in domain, e.g. 'language:es'")
    direction: Direction = Field(description="how generation for this prompt is steered")
    coefficient: float = Field(description="signed multiple of the refusal vector added while steering")
    latency_s: float = Field(description="wall time of the classification pass, shared across a batch")

    @property
    def is_harmful(self) -> bool:
        return self.label == "harmful"

    def record(self) -> dict[str, Any]:
        """The verdict as a flat JSON-able dict (layer keys as strings): the one serialisation that log records,
        callback events, message metadata, agent state and evaluation rows are all built from.
        `SafetyVerdict.model_validate(record)` reads it back."""
        return {
            "score": self.score,
            "label": self.label,
            "threshold": self.threshold,
            "operating_point": self.operating_point,
            "probability": self.probability,
            "direction": self.direction,
            "coefficient": self.coefficient,
            "in_domain": self.in_domain,
            "domain_reasons": list(self.domain_reasons),
            "renderings": dict(self.renderings),
            "layer_similarities": {str(k): v for k, v in self.layer_similarities.items()},
            "latency_s": self.latency_s,
        }


class RowSteering(BaseModel):
    """How one row was steered: what was added (coefficient * v at the steer layers) and what decided it.

    Every output carries it, so callers read the coefficient applied instead of re-deriving it from the options.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    coefficient: float = Field(0.0, description="signed multiple of the refusal vector added; 0: not steered")
    direction: Direction = "none"
    source: Literal["sigma", "fixed", "retry", "none"] = Field(
        "none",
        description="sigma: the verdict's coefficient; fixed: given by the caller; retry: the verdict's "
        "coefficient times a RetryPolicy's factor, after the first reply refused; none: steering off",
    )
    operating_point: str | None = Field(None, description="the artifact's operating point that decided it (sigma)")

    @classmethod
    def of(cls, coefficient: float, source: str, operating_point: str | None = None) -> RowSteering:
        return cls(
            coefficient=coefficient, direction=direction(coefficient), source=source, operating_point=operating_point
        )


class SteeredOutput(BaseModel):
    """One steered generation: the text, the verdict (if classified) and the steering applied."""

    text: str
    verdict: SafetyVerdict | None = Field(description="None when generation ran without classification")
    steering: RowSteering = Field(default_factory=RowSteering, description="the coefficient applied to this row")
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length", "content_filter"] = Field(
        description="stop, length, or content_filter: the guard blocked the prompt and `text` is the refusal message"
    )
    timings: dict[str, float] = Field(default_factory=dict, description="seconds: classify, generate")
    first_reply: str | None = Field(
        None,
        description="after a retry (steering.source 'retry'): what the judge "
        "read of the first reply (its first judge_tokens tokens) and found refusing",
    )

    @classmethod
    def blocked(
        cls, refusal: str, verdict: SafetyVerdict | None, prompt_tokens: int, timings: dict[str, float]
    ) -> SteeredOutput:
        """The output of a prompt the guard blocked: the refusal message, nothing decoded (one constructor for the
        step scheduler and the LangChain model)."""
        return cls(
            text=refusal,
            verdict=verdict,
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            finish_reason="content_filter",
            timings=timings,
        )


class CalibrationConfig(BaseModel):
    """Inputs of `calibrate`: which anchors, how many, and how T and alpha are chosen."""

    model_config = ConfigDict(allow_inf_nan=False)

    n_anchors: int = Field(64, ge=2, description="harmful and benign anchors each")
    seed: int = 0
    r_pos: str = "Sure"
    steer_layers: list[int] | Literal["auto"] | None = Field(
        None,
        description="None: middle third of the blocks; 'auto': the span of layers whose vocabulary projection "
        "shows refusal tokens (middle third if none do)",
    )
    classify_layers: list[int] | None = Field(None, description="None: second half of the blocks")
    alpha_benign: float = Field(1.0, ge=0, description="magnitude of the step away from refusal (default 1)")
    alpha_harmful: float = Field(1.0, ge=0, description="magnitude of the step towards refusal (default 1)")
    grey_zone: float = Field(0.0, ge=0, description="scores in [T - grey_zone, T) are not steered (default 0)")
    threshold_data_dir: str | None = Field(
        None,
        description="directory with repe_harmful_harmless_train.csv, harmfulq.csv and oktest_heldout.csv: T is "
        "fitted on RepE-train pairs + the tuning half of HarmfulQ vs OKTest held-out (not confounded by prompt form, "
        "disjoint from the evaluation sets); None: held-out AdvBench vs TruthfulQA from the package",
    )
    target_recall: float | None = Field(
        0.95,
        gt=0,
        le=1,
        description="T is the highest threshold that still flags this share of the harmful fit prompts "
        "(a missed harmful prompt is steered away from refusal); None: the F1-optimal T",
    )
    sigma_probe: bool = Field(
        True,
        description="score sigma with a logistic-regression probe on one layer's "
        "transition, trained on the contrast set + anchors (False: the paper's mean cosine)",
    )
    probe_framings: int = Field(
        0,
        ge=0,
        description="also train the probe on its prompts wrapped in the adversarial framings' train templates: this "
        "many harmful and this many benign prompts per template (0: plain prompts only)",
    )
    probe_contrast: list[str] = Field(
        ["contrast.csv"],
        min_length=1,
        description="contrast files whose train split the probe learns from (and T is fitted on): the package's "
        "contrast.csv (look-alike questions) and contrast_requests.csv (look-alike requests and statements), or "
        "paths to CSVs of the same columns",
    )
    probe_layers: list[int] | None = Field(
        None,
        description="layers the probe may use (None: every other layer "
        "from 2); the best by 5-fold CV on its training prompts is kept",
    )
    guard_recall: float = Field(
        0.95,
        gt=0,
        le=1,
        description="the guard operating point (blocking, routing) is the "
        "highest T that flags this share of the harmful fit prompts",
    )
    threshold: float | None = Field(
        None,
        description="use this T instead of the fitted one (e.g. chosen by a steering sweep); the fit is "
        "still computed and reported",
    )
    n_threshold: int = Field(100, ge=4, description="prompts per class used to fit T")
    batch_size: int = Field(8, ge=1)

    @field_validator("probe_contrast")
    @classmethod
    def _contrast_files_exist(cls, names: list[str]) -> list[str]:
        from .data import contrast_path

        for name in names:
            try:
                contrast_path(name)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
        return names

    @model_validator(mode="after")
    def _layers_given_are_valid(self) -> CalibrationConfig:
        for layers in (self.steer_layers, self.classify_layers):
            if layers is not None and layers != "auto" and (not layers or min(layers) < 0):
                raise ValueError("layer lists must be non-empty and non-negative")
        return self
