"""Cheap detectors and decoders for text hidden from sigma(q) in a simple encoding.

A request in base64, hex, a Caesar shift (ROT13 among them), reversed or in leetspeak reads as noise to a probe
calibrated on plain English, so it scores benign; the model, asked to "decode and answer", may still follow it.
Each detector here is a few string operations, offline and without a model: a prompt with encoded text is outside
the calibration domain (`encoding:KIND`), and the decoded text is scored by sigma as one more reading.

English is recognised by its letter pairs (their frequencies in the prompts that ship with the package): a decoding
counts when it reads clearly more like English than the text as written and makes more common English words.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections import Counter
from typing import NamedTuple

# The commonest English words; a text whose decoding hits many more of them than the text itself is encoded English.
COMMON_WORDS = frozenset(
    """
a about after all also an and any are as at be because been but by can could create describe detailed do does
explain for from get give guide have how i if in instructions into is it its just know like make me most my need
no not of on one or other out people provide should so some someone step steps tell than that the their them then
there these they this to up use using want was way we were what when where which who why will with without would
write you your help best kill build steal hack buy find getting caught money exactly assemble bomb weapon weapons
drug drugs gun guns poison person home house car computer password account email information bank credit card fake
illegal dangerous explosive explosives attack harm hurt someone's life time day good new first last long great
little own old right big high different small large next early young important few public bad same able go going
come take see look think say said only very even back there here well much such now thing things work
""".split()
)
_WORD = re.compile(r"[A-Za-z]+")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[\s:]?){8,}(?![0-9A-Fa-f])")
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s", "|": "l"}
)
_LEET_CHARS = frozenset("0134578@$|")
MIN_GAIN = 3  # clauses of fewer words are not read as ciphers
MIN_ENGLISHNESS = -6.5  # English prompts score about -5.3 nats per letter pair, ROT13 of them -8.4
MIN_MARGIN = 0.5  # nats per letter pair a decoding must gain over the text as written


class Decoded(NamedTuple):
    """Encoded text found in a prompt: how it was encoded and what it says."""

    kind: str  # base64, hex, rot13, caesar, reversed, leetspeak
    text: str


def english_hits(text: str) -> int:
    return sum(w.lower() in COMMON_WORDS for w in _WORD.findall(text))


def _looks_english(decoded: str) -> bool:
    return len(_WORD.findall(decoded)) >= 2 and englishness(decoded) >= MIN_ENGLISHNESS


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text and sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text) else None


def _base64(text: str) -> list[str]:
    found = []
    for match in _BASE64.finditer(text):
        chunk = match.group(0)
        try:
            raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        decoded = _printable(raw)
        if decoded and _looks_english(decoded):
            found.append(decoded)
    return found


def _hex(text: str) -> list[str]:
    found = []
    for match in _HEX.finditer(text):
        digits = re.sub(r"[\s:]", "", match.group(0))
        if len(digits) % 2:
            digits = digits[:-1]
        decoded = _printable(bytes.fromhex(digits))
        if decoded and _looks_english(decoded):
            found.append(decoded)
    return found


def shift(text: str, k: int) -> str:
    """Caesar shift of the Latin letters by k (k = 13: ROT13, its own inverse)."""

    def move(c: str) -> str:
        base = 65 if c.isupper() else 97
        return chr((ord(c) - base + k) % 26 + base)

    return re.sub(r"[A-Za-z]", lambda m: move(m.group(0)), text)


@functools.cache
def _bigram_logp() -> dict[str, float]:
    """log P(letter pair) of English, from the prompts that ship with the package (add-one smoothed)."""
    from ..data import load_set

    counts: Counter[str] = Counter()
    for name in ("truthfulqa", "advbench", "xstest"):
        for example in load_set(name):
            for word in _WORD.findall(example.prompt.lower()):
                padded = f" {word} "
                counts.update(padded[i : i + 2] for i in range(len(padded) - 1))
    pairs = [a + b for a in " abcdefghijklmnopqrstuvwxyz" for b in " abcdefghijklmnopqrstuvwxyz"]
    total = sum(counts.values()) + len(pairs)
    return {p: math.log((counts[p] + 1) / total) for p in pairs}


def englishness(text: str) -> float:
    """Mean log-probability of the letter pairs of `text`'s words under English (higher: more English-like)."""
    logp = _bigram_logp()
    pairs = [p for w in _WORD.findall(text.lower()) for p in (f" {w} "[i : i + 2] for i in range(len(w) + 1))]
    return sum(logp[p] for p in pairs) / len(pairs) if pairs else 0.0


def _clauses(text: str) -> list[str]:
    return [c.strip() for c in re.split(r"[:\n]|(?<=[.!?])\s", text) if len(_WORD.findall(c)) >= MIN_GAIN]


def _ciphers(text: str) -> list[Decoded]:
    """Clauses that read as English only after a Caesar shift or reversal (letter-pair statistics, checked by the
    English words the decoding makes)."""
    found = []
    for clause in _clauses(text):
        plain = englishness(clause)
        candidates = [("rot13" if k == 13 else "caesar", shift(clause, k)) for k in range(1, 26)]
        candidates.append(("reversed", " ".join(w[::-1] for w in clause.split()[::-1])))
        kind, decoded = max(candidates, key=lambda c: englishness(c[1]))
        if englishness(decoded) - plain >= MIN_MARGIN and english_hits(decoded) > english_hits(clause):
            found.append(Decoded(kind, decoded))
    return found


def _unleet(token: str) -> str:
    core = token.rstrip(".,;:?\"')")
    if any(c in _LEET_CHARS for c in core) and (any(c.isalpha() for c in core) or len(core) == 1):
        return core.translate(_LEET) + token[len(core) :]
    return token


def _leetspeak(text: str) -> list[Decoded]:
    tokens = text.split()
    changed = [(t, _unleet(t)) for t in tokens]
    gained = sum(t != u and english_hits(u) > english_hits(t) for t, u in changed)
    if gained >= 2:
        return [Decoded("leetspeak", " ".join(u for _, u in changed))]
    return []


def detect(text: str) -> list[Decoded]:
    """Every encoding found in `text`, with the decoded text; [] for plain text."""
    found = [Decoded("base64", d) for d in _base64(text)] + [Decoded("hex", d) for d in _hex(text)]
    rest = _HEX.sub(" ", _BASE64.sub(" ", text))  # the encoded runs found above are not read as ciphers too
    leet = _leetspeak(rest)  # its digits would read as noise to the cipher test: that reads the decoded text
    return found + _ciphers(leet[0].text if leet else rest) + leet


__all__ = ["COMMON_WORDS", "Decoded", "detect", "english_hits", "shift"]
