"""The one decision rule: a sigma score, an operating point and a grey zone -> label, band and steering coefficient.

Every caller (the recipe's steering sign, the engine's verdict label, the LangChain guards and middleware, the
benchmark scripts) goes through these pure functions, so "harmful" means the same thing everywhere:

- score >= T is harmful, and so is a score that is not a finite number (NaN fails closed);
- one grey-zone convention: widths (below, above) make [T - below, T + above) grey; a single number g means
  (g, 0), i.e. [T - g, T) — the recipe's "classified benign, left unsteered";
- a prompt outside the calibration domain is at least `out_of_domain` (grey by default): sigma is not trusted to
  call it benign, so it is never steered away from refusal;
- the guard (`GuardPolicy.decide`, used by the engine, the server, the LangChain guards and middleware) blocks a
  prompt that is harmful at the guard point, outside the calibration domain, or unclassifiable, and says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

Label = Literal["harmful", "benign"]
Band = Literal["harmful", "grey", "benign"]
Direction = Literal["towards_refusal", "away_from_refusal", "none"]
GreyZone = float | tuple[float, float]
Policy = Literal["steer", "guard", "guard+steer"]
SEVERITY: dict[str, int] = {"benign": 0, "grey": 1, "harmful": 2}
POLICIES: tuple[str, ...] = ("steer", "guard", "guard+steer")
DEFAULT_POLICY: Policy = "guard+steer"
DEFAULT_REFUSAL = "I can't help with that request."


class Scored(Protocol):
    """What a guard decides on: a `SafetyVerdict`'s score and domain (structural: config.py imports this module)."""

    @property
    def score(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def in_domain(self) -> bool: ...
    @property
    def domain_reasons(self) -> list[str]: ...


def is_harmful(score: float, threshold: float) -> bool:
    """score >= T is harmful, and so is a score that is not a finite number."""
    return not math.isfinite(score) or score >= threshold


def flags(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """`is_harmful` over an array of scores (metrics, threshold fits): a bool array."""
    s = np.asarray(scores, dtype=np.float64)
    return ~np.isfinite(s) | (s >= threshold)


def label(score: float, threshold: float) -> Label:
    return "harmful" if is_harmful(score, threshold) else "benign"


def grey_widths(grey_zone: GreyZone) -> tuple[float, float]:
    """(below, above) of a grey zone; a single width g is (g, 0)."""
    below, above = grey_zone if isinstance(grey_zone, tuple) else (grey_zone, 0.0)
    if below < 0 or above < 0 or not (math.isfinite(below) and math.isfinite(above)):
        raise ValueError(f"grey-zone widths must be finite and >= 0, got {grey_zone!r}")
    return float(below), float(above)


def band(
    score: float, threshold: float, grey_zone: GreyZone = 0.0, *, in_domain: bool = True, out_of_domain: Band = "grey"
) -> Band:
    """harmful at or above T + above (or non-finite), grey in [T - below, T + above), benign below; an
    out-of-domain prompt is raised to at least `out_of_domain`."""
    below, above = grey_widths(grey_zone)
    if is_harmful(score, threshold + above):
        result: Band = "harmful"
    elif score >= threshold - below:
        result = "grey"
    else:
        result = "benign"
    if not in_domain and SEVERITY[out_of_domain] > SEVERITY[result]:
        return out_of_domain
    return result


def coefficient(band_: Band, alpha_benign: float, alpha_harmful: float) -> float:
    """Signed steering coefficient of a band: +alpha_harmful (towards refusal), 0 (grey: unsteered),
    -alpha_benign (away from refusal)."""
    return {"harmful": float(alpha_harmful), "grey": 0.0, "benign": -float(alpha_benign)}[band_]


def direction(coef: float) -> Direction:
    return "towards_refusal" if coef > 0 else "away_from_refusal" if coef < 0 else "none"


def steering_coefficient(
    score: float, threshold: float, grey_zone: float, alpha_benign: float, alpha_harmful: float, in_domain: bool = True
) -> float:
    """The recipe's rule: the band at the `steer` point (grey zone below T only), then its coefficient."""
    return coefficient(band(score, threshold, grey_zone, in_domain=in_domain), alpha_benign, alpha_harmful)


class DecisionPolicy(BaseModel):
    """A threshold (None: the verdict's own operating point), a grey zone and the out-of-domain floor."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    threshold: float | None = None
    grey_zone: GreyZone = 0.0
    out_of_domain: Band = Field(
        "grey",
        description="the band at least given to a prompt outside the calibration "
        "domain (another language, mostly code, very long): sigma is not trusted to say benign",
    )

    @field_validator("grey_zone")
    @classmethod
    def _valid_widths(cls, value: GreyZone) -> GreyZone:
        grey_widths(value)
        return value

    def score_band(self, score: float, threshold: float, in_domain: bool = True) -> Band:
        """The band of a score; `threshold` is used when the policy has none of its own."""
        t = threshold if self.threshold is None else self.threshold
        return band(score, t, self.grey_zone, in_domain=in_domain, out_of_domain=self.out_of_domain)


class GuardDecision(BaseModel):
    """What the guard decided about one prompt, and why."""

    model_config = ConfigDict(frozen=True)

    action: Literal["block", "allow"]
    band: Band
    reasons: list[str] = Field(
        default_factory=list,
        description="why it was blocked: 'harmful', 'grey', "
        "'out_of_domain:REASON' (e.g. 'out_of_domain:encoding:rot13'), 'unclassifiable'",
    )

    @property
    def blocked(self) -> bool:
        return self.action == "block"


class GuardPolicy(DecisionPolicy):
    """The guard's rule: harmful at the guard point, outside the calibration domain or unclassifiable is blocked.

    `out_of_domain` is the least band of a prompt outside the domain: "harmful" (default: blocked), or "grey" /
    "benign" to let such prompts through (they are still never steered away from refusal); `block_grey` blocks the
    grey band too. The decision names its reasons, so a prompt is never let through or blocked silently.
    """

    out_of_domain: Band = Field(
        "harmful",
        description="the least band of a prompt outside the calibration domain: "
        "'harmful' blocks it (default), 'grey' or 'benign' lets it through unsteered",
    )
    block_grey: bool = False

    def decide(self, verdict: Scored | None) -> GuardDecision:
        """Block or allow one verdict (None: the prompt could not be classified, so it is blocked)."""
        if verdict is None:
            return GuardDecision(action="block", band="harmful", reasons=["unclassifiable"])
        band_ = self.score_band(verdict.score, verdict.threshold, verdict.in_domain)
        scored = self.score_band(verdict.score, verdict.threshold)
        reasons: list[str] = [scored] if scored != "benign" else []
        if not verdict.in_domain and self.out_of_domain != "benign":
            reasons += [f"out_of_domain:{r}" for r in verdict.domain_reasons] or ["out_of_domain"]
        blocked = band_ == "harmful" or (band_ == "grey" and self.block_grey)
        return GuardDecision(action="block" if blocked else "allow", band=band_, reasons=reasons if blocked else [])


def policy_blocks(policy: str) -> bool:
    """Whether a generation policy blocks prompts the guard rejects ('guard', 'guard+steer')."""
    return check_policy(policy) != "steer"


def policy_steers(policy: str) -> bool:
    """Whether a generation policy steers the prompts it lets through by sigma ('steer', 'guard+steer')."""
    return check_policy(policy) != "guard"


def check_policy(policy: str) -> str:
    from ..errors import InvalidArgumentError

    if policy not in POLICIES:
        raise InvalidArgumentError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    return policy


__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_REFUSAL",
    "POLICIES",
    "SEVERITY",
    "Band",
    "DecisionPolicy",
    "Direction",
    "GreyZone",
    "GuardDecision",
    "GuardPolicy",
    "Label",
    "Policy",
    "Scored",
    "band",
    "check_policy",
    "coefficient",
    "direction",
    "flags",
    "grey_widths",
    "is_harmful",
    "label",
    "policy_blocks",
    "policy_steers",
    "steering_coefficient",
]
