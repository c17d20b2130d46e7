"""Calibration artifacts: tensors in safetensors, everything else in JSON; never pickle.

An artifact directory holds `tensors.safetensors` (refusal_vectors [n_layers, hidden], d_harm
[n_classify_layers, hidden], and with a sigma probe probe_weight [hidden]) and `artifact.json` (recipe, model
fingerprint, fit report, the sha256 of the tensors file, checked on load, and the sha256 of every prompt it was
fitted on: anchors, T fit, probe training, so evaluations and benchmarks hold them out without re-deriving them).
Writes go to a temporary directory renamed into place, so a reader never sees half an artifact. Every number must be
finite: a NaN threshold or vector would fail open (benign).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from ..config import SteeringRecipe
from ..data import anchor_split, text_sha256
from ..errors import ArtifactError, FingerprintMismatchError, one_line
from ..model.loading import ModelHandle, fingerprints_match
from ..version import __version__

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_VERSION = 2  # 2: anchors and fit splits record a sha256 per prompt (1: anchors only as count, seed, joined hash)
TENSORS_FILE = "tensors.safetensors"
META_FILE = "artifact.json"


class AnchorSet(BaseModel):
    source: str
    n: int
    seed: int
    sha256: str = Field(description="sha256 of the anchor prompts joined by newlines")
    prompt_sha256: list[str] | None = Field(None, description="sha256 of each anchor prompt, in order (meta v2)")

    @classmethod
    def of(cls, source: str, prompts: list[str], seed: int) -> AnchorSet:
        return cls(
            source=source,
            n=len(prompts),
            seed=seed,
            sha256=text_sha256(prompts),
            prompt_sha256=[text_sha256(p) for p in prompts],
        )


class PromptSplit(BaseModel):
    """Prompts the artifact was fitted on, by the sha256 of each (the texts are not stored)."""

    description: str
    prompt_sha256: list[str]

    @classmethod
    def of(cls, description: str, prompts: list[str]) -> PromptSplit:
        return cls(description=description, prompt_sha256=sorted({text_sha256(p) for p in prompts}))


class PlattFit(BaseModel):
    """P(harmful | score) = 1 / (1 + exp(-(a * score + b)))."""

    model_config = ConfigDict(allow_inf_nan=False)

    a: float
    b: float

    def probability(self, score: float) -> float:
        return float(torch.sigmoid(torch.tensor(self.a * score + self.b)))


class OperatingPoint(BaseModel):
    """A named threshold on sigma(q) with the statistics of its fit (harmful is the positive class)."""

    threshold: float = Field(allow_inf_nan=False)
    rule: str = Field(description="how it was chosen, e.g. 'harmful recall >= 0.95, lowest false-positive rate'")
    recall: float | None = None
    false_positive_rate: float | None = None
    f1: float | None = None


class ModelFingerprint(BaseModel):
    """The keys of `ModelHandle.fingerprint()` that matching and the mismatch message read; other keys are kept."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    architecture: str
    n_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    weight_probe: list[float] = Field(min_length=1)
    weight_probe_sha256: str


class ArtifactMeta(BaseModel):
    format_version: int = FORMAT_VERSION
    meta_version: int = Field(
        META_VERSION, description="2: per-prompt hashes of anchors and splits; a file without the field is version 1"
    )
    library_version: str = __version__
    model_name: str
    model_fingerprint: dict = Field(description="ModelFingerprint, kept a dict for callers that index it")
    chat_template_sha256: str
    recipe: SteeringRecipe
    anchors: dict[str, AnchorSet]
    threshold_fit: dict = Field(default_factory=dict, description="data, F1, AUROC, ... of the T fit")
    splits: dict[str, PromptSplit] = Field(
        default_factory=dict,
        description="every prompt set fitted on besides the anchors: 'threshold_fit' (T, "
        "operating points, Platt) and, with a sigma probe, 'probe_train'",
    )
    operating_points: dict[str, OperatingPoint] = Field(
        default_factory=dict, description="named thresholds: 'steer' (= recipe.threshold) and 'guard' (blocking)"
    )
    platt: PlattFit | None = Field(None, description="P(harmful | score), centred on the guard point")
    layer_analysis: list[dict] = Field(default_factory=list)
    notes: dict = Field(default_factory=dict, description="free-form provenance: command, tuning data")
    tensors_sha256: str | None = Field(
        None,
        description="sha256 of tensors.safetensors, written by `save`; "
        "None in artifacts saved before it was recorded (loaded with a warning)",
    )

    @field_validator("model_fingerprint")
    @classmethod
    def _complete_fingerprint(cls, fingerprint: dict) -> dict:
        return ModelFingerprint.model_validate(fingerprint).model_dump()

    def anchor_hashes(self) -> set[str]:
        """sha256 of every anchor prompt; ArtifactError if an anchor set records none (and could not be recomputed)."""
        missing = [k for k, a in self.anchors.items() if a.prompt_sha256 is None]
        if missing:
            raise ArtifactError(
                f"the artifact does not record its {', '.join(missing)} anchor prompts (meta version "
                f"{self.meta_version}, anchors from {self.anchors[missing[0]].source} not reproducible"
                "): recalibrate to hold them out"
            )
        return {h for a in self.anchors.values() for h in a.prompt_sha256 or ()}

    def fit_hashes(self) -> set[str] | None:
        """sha256 of every prompt T was fitted on, or None if the artifact does not record them."""
        split = self.splits.get("threshold_fit")
        return set(split.prompt_sha256) if split is not None else None

    @classmethod
    def parse(cls, data: dict) -> ArtifactMeta:
        """Validate a meta dict, upgrading version 1 (no per-prompt hashes) where they can be recomputed."""
        data = dict(data)
        data.setdefault("meta_version", 1)
        meta = cls.model_validate(data)
        return _upgrade_v1(meta) if meta.meta_version < 2 else meta


def _upgrade_v1(meta: ArtifactMeta) -> ArtifactMeta:
    """Meta v1 kept the anchors as count, seed and joined sha256, and the T-fit prompts' hashes in `threshold_fit`.

    Default anchors come from the deterministic `anchor_split`: recomputed here once, and recorded if their sha256
    matches; the T-fit hashes move to `splits`. What cannot be recovered stays missing (see `anchor_hashes`).
    """
    fit = dict(meta.threshold_fit)
    splits = dict(meta.splits)
    if fit.get("prompt_sha256"):
        splits["threshold_fit"] = PromptSplit(
            description=str(fit.get("data", "")), prompt_sha256=sorted(fit.pop("prompt_sha256"))
        )
    anchors = dict(meta.anchors)
    harm, benign = anchors.get("harmful"), anchors.get("benign")
    if (
        harm
        and benign
        and (harm.source, benign.source) == ("advbench", "truthfulqa")
        and harm.n == benign.n
        and harm.seed == benign.seed
    ):
        h, b = anchor_split(harm.n, harm.seed)
        if text_sha256(h) == harm.sha256 and text_sha256(b) == benign.sha256:
            anchors = {
                "harmful": AnchorSet.of(harm.source, h, harm.seed),
                "benign": AnchorSet.of(benign.source, b, benign.seed),
            }
    upgraded = all(a.prompt_sha256 is not None for a in anchors.values())
    if not upgraded:
        log.warning(
            "artifact meta version 1: its anchor prompts could not be recomputed (not the default anchors, or "
            "their sha256 differs); evaluations cannot hold them out"
        )
    return meta.model_copy(
        update={
            "anchors": anchors,
            "splits": splits,
            "threshold_fit": fit,
            "meta_version": META_VERSION if upgraded else meta.meta_version,
        }
    )


class Artifact:
    """Refusal vectors, d_harm and the recipe calibrated for one model."""

    def __init__(
        self,
        meta: ArtifactMeta,
        refusal_vectors: torch.Tensor,
        d_harm: torch.Tensor,
        probe_weight: torch.Tensor | None = None,
        false_refusal_vectors: torch.Tensor | None = None,
    ):
        n_layers = meta.model_fingerprint.get("n_layers")
        if refusal_vectors.ndim != 2 or refusal_vectors.shape[0] != n_layers:
            raise ArtifactError(f"refusal_vectors must be [{n_layers}, hidden], got {list(refusal_vectors.shape)}")
        if d_harm.shape != (len(meta.recipe.classify_layers), refusal_vectors.shape[1]):
            raise ArtifactError(f"d_harm shape {list(d_harm.shape)} does not match the classify layers")
        if max(meta.recipe.steer_layers + meta.recipe.classify_layers) >= n_layers:
            raise ArtifactError(f"recipe names a layer >= the model's {n_layers} layers")
        if (meta.recipe.probe_layer is None) != (probe_weight is None):
            raise ArtifactError("recipe.probe_layer and the probe_weight tensor go together: one is missing")
        if probe_weight is not None and probe_weight.shape != (refusal_vectors.shape[1],):
            raise ArtifactError(f"probe_weight must be [{refusal_vectors.shape[1]}], got {list(probe_weight.shape)}")
        if (meta.recipe.away_direction == "false_refusal") and false_refusal_vectors is None:
            raise ArtifactError("recipe.away_direction is false_refusal but the artifact has no false_refusal_vectors")
        if false_refusal_vectors is not None and false_refusal_vectors.shape != refusal_vectors.shape:
            raise ArtifactError(
                f"false_refusal_vectors must be {list(refusal_vectors.shape)}, got {list(false_refusal_vectors.shape)}"
            )
        named = {"refusal_vectors": refusal_vectors, "d_harm": d_harm, "probe_weight": probe_weight}
        named["false_refusal_vectors"] = false_refusal_vectors
        for name, tensor in named.items():
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                raise ArtifactError(f"{name} contains NaN or infinite values")
        self.meta = meta
        self.refusal_vectors = refusal_vectors.float()  # [n_layers, hidden]
        self.d_harm = d_harm.float()  # [n_classify_layers, hidden]
        self.probe_weight = None if probe_weight is None else probe_weight.float()  # [hidden]
        # [n_layers, hidden]: mean over safe look-alikes minus plain benign prompts, orthogonal to refusal_vectors
        self.false_refusal_vectors = None if false_refusal_vectors is None else false_refusal_vectors.float()

    @property
    def away_vectors(self) -> torch.Tensor:
        """What steering away from refusal subtracts: [n_layers, hidden], by `recipe.away_direction`."""
        if self.recipe.away_direction == "false_refusal" and self.false_refusal_vectors is not None:
            return self.false_refusal_vectors
        return self.refusal_vectors

    @property
    def probe(self) -> tuple[int, torch.Tensor, float] | None:
        """(index of the probe layer among the classify layers, weight [hidden], bias), or None (mean cosine)."""
        recipe = self.recipe
        if recipe.probe_layer is None or self.probe_weight is None:  # set together (checked on construction)
            return None
        return recipe.classify_layers.index(recipe.probe_layer), self.probe_weight, recipe.probe_bias

    def _copy(self, meta: ArtifactMeta) -> Artifact:
        return Artifact(meta, self.refusal_vectors, self.d_harm, self.probe_weight, self.false_refusal_vectors)

    @property
    def recipe(self) -> SteeringRecipe:
        return self.meta.recipe

    def threshold(self, point: str) -> float:
        """T of a named operating point; 'steer' is always the recipe's T, and an artifact without a 'guard'
        point (made before they existed) guards at its steer T."""
        if point == "steer" or (point == "guard" and point not in self.meta.operating_points):
            return self.recipe.threshold
        if point not in self.meta.operating_points:
            raise ArtifactError(
                f"unknown operating point {point!r}; this artifact has {sorted({'steer', *self.meta.operating_points})}"
            )
        return self.meta.operating_points[point].threshold

    def with_thresholds(self, **thresholds: float) -> Artifact:
        """A copy with operating points set, e.g. `with_thresholds(steer=0.9, guard=0.85)` (rule 'given')."""
        art = self.with_recipe(threshold=thresholds.pop("steer")) if "steer" in thresholds else self
        points = {
            **art.meta.operating_points,
            **{k: OperatingPoint(threshold=t, rule="given") for k, t in thresholds.items()},
        }
        return art._copy(art.meta.model_copy(update={"operating_points": points}))

    def with_recipe(self, **changes: object) -> Artifact:
        """A copy with recipe fields replaced (e.g. alpha, threshold); classify layers must stay the same."""
        recipe = self.recipe.model_copy(update=changes)
        recipe = SteeringRecipe.model_validate(recipe.model_dump())
        if recipe.classify_layers != self.recipe.classify_layers:
            raise ArtifactError("classify_layers are tied to d_harm; recalibrate to change them")
        return self._copy(self.meta.model_copy(update={"recipe": recipe}))

    def save(self, directory: str | os.PathLike) -> Path:
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
            work = Path(tmp) / "artifact"
            work.mkdir()
            tensors = {"refusal_vectors": self.refusal_vectors.contiguous(), "d_harm": self.d_harm.contiguous()}
            if self.probe_weight is not None:
                tensors["probe_weight"] = self.probe_weight.contiguous()
            if self.false_refusal_vectors is not None:
                tensors["false_refusal_vectors"] = self.false_refusal_vectors.contiguous()
            save_file(
                tensors, str(work / TENSORS_FILE), metadata={"format": "scans-guard", "version": str(FORMAT_VERSION)}
            )
            digest = hashlib.sha256((work / TENSORS_FILE).read_bytes()).hexdigest()
            meta = self.meta.model_copy(update={"tensors_sha256": digest})
            (work / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.rename(work, target)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Artifact:
        path = Path(directory)
        if not (path / META_FILE).is_file() or not (path / TENSORS_FILE).is_file():
            raise ArtifactError(f"{path} is not a scans-guard artifact (needs {META_FILE} and {TENSORS_FILE})")
        try:
            meta = ArtifactMeta.parse(json.loads((path / META_FILE).read_text()))
            data = (path / TENSORS_FILE).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if meta.tensors_sha256 is not None and digest != meta.tensors_sha256:
                raise ArtifactError(
                    f"artifact at {path}: its tensors were modified after it was saved (sha256 "
                    f"{digest[:16]}..., artifact.json records {meta.tensors_sha256[:16]}...)"
                )
            tensors = load(data)
        except (ValidationError, SafetensorError, ValueError, OSError) as exc:
            raise ArtifactError(f"corrupt artifact at {path}: {one_line(exc)}") from exc
        if meta.tensors_sha256 is None:
            log.warning(
                "artifact at %s records no tensors_sha256 (saved by an older scans-guard), so its tensors are "
                "not verified; re-save it with Artifact.load(...).save(...)",
                path,
            )
        if meta.format_version != FORMAT_VERSION:
            raise ArtifactError(f"artifact format {meta.format_version} is not supported (expected {FORMAT_VERSION})")
        missing = {"refusal_vectors", "d_harm"} - tensors.keys()
        if missing:
            raise ArtifactError(f"artifact at {path} lacks tensors {sorted(missing)}")
        return cls(
            meta,
            tensors["refusal_vectors"],
            tensors["d_harm"],
            tensors.get("probe_weight"),
            tensors.get("false_refusal_vectors"),
        )

    def check_model(self, handle: ModelHandle) -> None:
        """Raise FingerprintMismatchError unless this artifact was calibrated on `handle`'s model."""
        fp = handle.fingerprint()
        if not fingerprints_match(self.meta.model_fingerprint, fp):
            want, got = self.meta.model_fingerprint, fp
            raise FingerprintMismatchError(
                f"artifact was calibrated on {self.meta.model_name} ({want['architecture']}, "
                f"{want['n_layers']} layers, hidden {want['hidden_size']}, weights {want['weight_probe_sha256']}), "
                f"not on this model ({got['architecture']}, {got['n_layers']} layers, hidden {got['hidden_size']}, "
                f"weights {got['weight_probe_sha256']}); recalibrate with `scans-guard calibrate`"
            )
        if text_sha256(handle.tokenizer.chat_template) != self.meta.chat_template_sha256:
            log.warning("the model's chat template differs from the one the artifact was calibrated with")


def default_artifact_dir(model: str | os.PathLike | None = None) -> Path:
    """The calibrated artifact shipped for an embedded model (None: the default model).

    Any other model needs its own artifact (`scans-guard calibrate`): an ArtifactError says so.
    """
    from ..model.embedded import embedded_model

    spec = embedded_model(model)
    path = Path(str(resources.files("scans_guard.shipped_artifacts") / spec.name)) if spec else None
    if path is None or not (path / "artifact.json").exists():
        raise ArtifactError(
            f"{model} needs an artifact (none ships for it): run `scans-guard calibrate --model "
            f"{model} --out DIR` and pass --artifact DIR"
        )
    return path
