"""The integration's decision core: a verdict (or a classification error) and a policy -> band and action.

Every guard and every middleware strategy calls `decide`; the score -> band rule itself is
`scans_guard.sigma.decision` (the same one the engine labels and steers with). What happens on a violation
(`exit_behavior`) and the text put in its place (`violation_text`) are shared too.
"""

from __future__ import annotations

import string
from typing import Any, Literal, NamedTuple

from scans_guard.config import SafetyVerdict
from scans_guard.sigma.decision import DEFAULT_REFUSAL, Band, GuardPolicy

Action = Literal["allow", "block"]
OnError = Literal["raise", "block", "allow"]
ExitBehavior = Literal["end", "error", "replace"]
"""On a violation: "end" the run with the violation message (middleware: jump to the end; guard: return it),
"error" raise `HarmfulPromptError`, "replace" put the violation message in place of the offending content and go
on (a tool result or a reply is replaced; for an input it is the same as "end")."""
Stage = Literal["input", "output", "tool_result"]


class SafetyPolicy(GuardPolicy):
    """How a verdict maps to a band: the core's guard rule (`scans_guard.sigma.decision.GuardPolicy`).

    threshold: T (None: the verdict's `threshold`, i.e. the artifact's `guard` operating point).
    grey_zone: a float g makes [T - g, T) grey (the recipe's convention); a pair (below, above) makes
    [T - below, T + above) grey. out_of_domain: the least band of a prompt outside the calibration domain
    ("harmful" by default: blocked; "grey" lets it through where grey is allowed).
    """

    def band(self, verdict: SafetyVerdict) -> Band:
        return self.score_band(verdict.score, verdict.threshold, verdict.in_domain)


class Decision(NamedTuple):
    """What the core decided about one input: its band, the action, and what it was decided from."""

    band: Band
    action: Action
    verdict: SafetyVerdict | None
    error: BaseException | None


def decide(
    result: SafetyVerdict | BaseException, policy: SafetyPolicy, on_error: OnError = "raise", block_grey: bool = False
) -> Decision:
    """Band and action of a verdict, or of a failed classification under `on_error` ("raise" re-raises it,
    "block" fails closed as harmful, "allow" fails open as benign). Harmful is blocked, grey with `block_grey`."""
    verdict, error = (None, result) if isinstance(result, BaseException) else (result, None)
    if verdict is not None:
        band: Band = policy.band(verdict)
    elif on_error == "raise" and error is not None:  # (no verdict: the error is set)
        raise error
    else:
        band = "harmful" if on_error == "block" else "benign"
    grey_blocks = block_grey or policy.block_grey
    action: Action = "block" if band == "harmful" or (band == "grey" and grey_blocks) else "allow"
    return Decision(band, action, verdict, error)


class _Lenient(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def violation_text(
    template: str, decision: Decision | None = None, *, stage: Stage = "input", content: str = ""
) -> str:
    """The violation message: `template` with {band}, {score}, {threshold}, {label}, {stage} and
    {original_content} filled in (unknown fields are left as written)."""
    fields: dict[str, Any] = {
        "stage": stage,
        "original_content": content,
        "band": "",
        "score": "",
        "threshold": "",
        "label": "",
    }
    if decision is not None:
        fields["band"] = decision.band
        if decision.verdict is not None:
            fields.update(
                score=f"{decision.verdict.score:.4f}",
                threshold=f"{decision.verdict.threshold:.4f}",
                label=decision.verdict.label,
            )
    if not any(name for _, name, _, _ in string.Formatter().parse(template)):
        return template
    return template.format_map(_Lenient(fields))


__all__ = [
    "DEFAULT_REFUSAL",
    "Action",
    "Decision",
    "ExitBehavior",
    "OnError",
    "SafetyPolicy",
    "Stage",
    "decide",
    "violation_text",
]
