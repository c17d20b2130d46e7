"""Typed errors: every failure a user can cause or fix has its own class and a one-line message."""


class ScansGuardError(Exception):
    """Base of all scans-guard errors; the CLI prints these as one line."""


class ModelLoadError(ScansGuardError):
    """The model could not be found, verified or loaded."""


class DefaultModelMissingError(ModelLoadError):
    """The default model's packages are not installed."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's decoder layers, final norm or LM head could not be located."""


class ArtifactError(ScansGuardError):
    """An artifact is missing, incomplete or malformed."""


class FingerprintMismatchError(ArtifactError):
    """The artifact was calibrated on a different model."""


class InvalidPromptError(ScansGuardError, ValueError):
    """The prompt is empty, not text, or does not fit the model's context window."""
