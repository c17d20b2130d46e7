"""Is a prompt inside the domain the artifact was calibrated on? Outside it, sigma(q) is not trusted to say benign.

sigma(q) was calibrated on short English prompts; measured on the default model, the same harmful request in
Spanish, French or Chinese scores below T. A prompt outside the domain is therefore never steered away from
refusal, and the guards treat it as grey. Signs checked, each cheap and offline:
- language: py3langid (a naive Bayes language identifier whose model ships in the package, no download) must
  give the calibrated languages at least half of the probability mass or rank one of them first (texts of 16
  letters or more; ranking first counts because short English questions with names spread the mass, e.g. "Is
  Beyonce married?": en first at 0.25; benchmarks/domain_language.py);
- script: at most 30 % of the letters outside the Latin script (catches short texts the identifier is unsure of);
- code: at most 25 % of the non-space characters code punctuation (a prompt that is mostly code);
- length: at most `max_tokens` prompt tokens (calibration prompts are a few dozen tokens long);
- markup: no special-token text of the model's chat template (`<|im_start|>` typed by the user). Such text is
  tokenised as plain characters, but measured on the default model a forged system turn written out in the user's
  text still moved a methamphetamine request below T, so it is treated as outside the domain.
"""

from __future__ import annotations

import functools
import unicodedata

from pydantic import BaseModel, ConfigDict, Field

# langid's English-lexified creole: its 'pcm' label takes short English questions ("How did X die?").
_LANGUAGE_ALIASES = {"en": ("en", "pcm")}
_CODE_CHARS = frozenset("{}[]()<>;=_#$\\|/*&^%~`@+")


class DomainConfig(BaseModel):
    """The calibration domain, stored in the recipe: languages (ISO 639-1) and limits."""

    model_config = ConfigDict(frozen=True)

    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    min_language_probability: float = Field(0.5, ge=0, le=1)
    min_letters: int = Field(16, ge=0, description="shorter texts skip the language test (too short to identify)")
    top_language_counts: bool = Field(
        True,
        description="a calibrated language ranked first by the identifier "
        "passes the language test even with under min_language_probability of the mass",
    )
    max_non_latin_share: float = Field(0.3, ge=0, le=1)
    max_code_share: float = Field(0.25, ge=0, le=1)
    max_tokens: int = Field(512, ge=1, description="longer prompts are outside the calibration domain")


class DomainCheck(BaseModel):
    in_domain: bool
    reasons: list[str] = Field(default_factory=list, description="why not, e.g. 'language:es', 'script', 'code'")
    language: str | None = None
    language_probability: float | None = None


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _labels(languages: list[str]) -> set[str]:
    """The identifier's labels that count as `languages` (with their aliases)."""
    return {alias for lang in languages for alias in _LANGUAGE_ALIASES.get(lang, (lang,))}


def language_mass(text: str, languages: list[str]) -> tuple[str, float, float]:
    """(most likely language, its probability, probability mass of `languages` and their aliases)."""
    ranked = _identifier().rank(text)
    wanted = _labels(languages)
    return ranked[0][0], float(ranked[0][1]), float(sum(p for lang, p in ranked if lang in wanted))


def language_test(text: str, config: DomainConfig) -> tuple[str | None, float | None, bool]:
    """(most likely language, its probability, foreign?): foreign when the calibrated languages hold too little mass
    and (with top_language_counts) none of them ranks first; (None, None, False) for a text too short to identify."""
    if sum(c.isalpha() for c in text) < config.min_letters:
        return None, None, False
    top, top_p, mass = language_mass(text, config.languages)
    ranks_first = config.top_language_counts and top in _labels(config.languages)
    return top, top_p, mass < config.min_language_probability and not ranks_first


def language_out(text: str, config: DomainConfig) -> bool:
    """Whether the language test alone puts `text` outside the domain."""
    return language_test(text, config)[2]


def non_latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum("LATIN" not in unicodedata.name(c, "") for c in letters) / len(letters)


def code_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c in _CODE_CHARS for c in chars) / len(chars) if chars else 0.0


def check_domain(text: str, n_tokens: int, config: DomainConfig, special_tokens: tuple[str, ...] = ()) -> DomainCheck:
    """Whether `text` (the conversation's user content) lies in the calibration domain, and why not."""
    reasons = []
    if any(t in text for t in special_tokens):  # chat markup typed as text: a forged turn
        reasons.append("special_tokens")
    top, top_p, foreign = language_test(text, config)
    if foreign:
        reasons.append(f"language:{top}")
    if non_latin_share(text) > config.max_non_latin_share and not foreign:
        reasons.append("script")
    if code_share(text) > config.max_code_share:
        reasons.append("code")
    if n_tokens > config.max_tokens:
        reasons.append("length")
    return DomainCheck(in_domain=not reasons, reasons=reasons, language=top, language_probability=top_p)
