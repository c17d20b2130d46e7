"""Typed errors: every failure a user can cause or fix has its own class and a one-line message."""

from pydantic import ValidationError


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


class PromptTooLongError(InvalidPromptError):
    """The prompt has more tokens than the engine's `max_input_tokens` cap."""


class InvalidArgumentError(ScansGuardError, ValueError):
    """An argument other than the prompt is out of range (batch size, steering coefficient, token cap)."""


class NonFiniteScoreError(ScansGuardError):
    """A sigma score came out NaN or infinite: the model's weights or the artifact are damaged.

    Raised rather than returned, because `score >= T` is false for NaN and would read as benign.
    """

    def __init__(self, index: int):
        self.index = index
        super().__init__(
            f"the sigma score of prompt {index} is not finite (NaN or inf in the model's hidden states "
            "or the artifact); refusing to classify it"
        )


def one_line(exc: Exception) -> str:
    """An error as one line; a pydantic ValidationError as 'invalid Model: field: problem; ...' (every field)."""
    if isinstance(exc, ValidationError):
        text = f"invalid {exc.title}: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
