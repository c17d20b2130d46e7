"""scans-guard: safety-conscious activation steering (SCANS, Cao, Yang & Zhao, AAAI 2025) for local chat models."""

from .calibration.artifacts import Artifact
from .config import (
    CalibrationConfig,
    GenerationConfig,
    RowSteering,
    SafetyVerdict,
    SteeredOutput,
    SteeringRecipe,
)
from .engine import ScansEngine
from .errors import (
    ArtifactError,
    FingerprintMismatchError,
    InvalidArgumentError,
    InvalidPromptError,
    ModelLoadError,
    NonFiniteScoreError,
    PromptTooLongError,
    ScansGuardError,
    UnsupportedArchitectureError,
)
from .model.loading import ModelHandle, load_model
from .steering.retry import RetryPolicy
from .version import __version__ as __version__

__all__ = [
    "Artifact",
    "ArtifactError",
    "CalibrationConfig",
    "FingerprintMismatchError",
    "GenerationConfig",
    "InvalidArgumentError",
    "InvalidPromptError",
    "ModelHandle",
    "ModelLoadError",
    "NonFiniteScoreError",
    "PromptTooLongError",
    "RetryPolicy",
    "RowSteering",
    "SafetyVerdict",
    "ScansEngine",
    "ScansGuardError",
    "SteeredOutput",
    "SteeringRecipe",
    "UnsupportedArchitectureError",
    "load_model",
]
