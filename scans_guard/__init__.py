"""scans-guard: safety-conscious activation steering (SCANS, Cao, Yang & Zhao, AAAI 2025) for local chat models."""

__version__ = "0.1.0"

from .artifacts import Artifact  # noqa: E402
from .config import (  # noqa: E402
    CalibrationConfig,
    GenerationConfig,
    RowSteering,
    SafetyVerdict,
    SteeredOutput,
    SteeringRecipe,
)
from .engine import ScansEngine  # noqa: E402
from .errors import (  # noqa: E402
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
from .loading import ModelHandle, load_model  # noqa: E402
from .retry import RetryPolicy  # noqa: E402

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
